"""The `labelweave` CLI end to end: a real server subprocess, every command a real subprocess.

Most tests share one module-scoped server (each uses its own project ids); the ones about
stopping, restarting and offline commands start their own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from coordinator.client import LabelweaveClient
from projections.memory import MemoryStore
from tests.e2e.conftest import (
    CLI_TIMEOUT,
    REPO,
    Launch,
    Server,
    cli_env,
    describe,
    free_port,
    health_status,
    run_cli,
    start_server,
)

SCHEMA = {
    "classes": [
        {
            "name": "car",
            "kinds": ["ANNOTATION_KIND_BOX"],
            "attributes": [{"name": "occluded", "type": "ATTRIBUTE_TYPE_BOOL"}],
        },
        {"name": "pedestrian", "kinds": ["ANNOTATION_KIND_BOX"]},
        {"name": "scene", "kinds": ["ANNOTATION_KIND_CLASSIFICATION"]},
    ],
    "rejectReasons": ["loose_box", "missed_object"],
}
LABEL_FIELDS = (
    "task_id",
    "annotation_id",
    "version",
    "author_id",
    "accepted_by",
    "label_schema_version",
    "guideline_version",
    "annotation",
    "cursor",
    "position",
    "event_id",
    "accepted_at",
)
SIM_TASKS = 60


def task_line(task_id: str, *, media: dict[str, Any] | None = None, **extra: Any) -> str:
    """One TaskSpec in protobuf JSON (camelCase names, as `json_format.MessageToJson` writes)."""
    spec: dict[str, Any] = {
        "taskId": task_id,
        "dataUri": f"s3://e2e-bucket/{task_id}.jpg",
        "mediaType": "MEDIA_TYPE_IMAGE",
        "media": media if media is not None else {"width": 1920, "height": 1080},
        **extra,
    }
    return json.dumps(spec)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    return result


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """Asserts the documented failure shape (exit 2, `error: ...` on stderr, no traceback)."""
    assert result.returncode == 2, describe(result)
    assert result.stderr.startswith("error: "), describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    return result.stderr


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def task_ids(server: Server, project_id: str) -> set[str]:
    with LabelweaveClient(server.target, server.admin_token, timeout=60) as lw:
        return {t.task_id for t in lw.iter_tasks(project_id)}


def metrics_text(port: int) -> str:
    # no proxy: an http_proxy in the environment must not intercept loopback
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        assert response.status == 200
        return str(response.read().decode())


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text(encoding="utf-8").splitlines()) >= count:
            return
        assert proc.poll() is None, f"subscribe exited {proc.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"{path} has fewer than {count} lines after {timeout} s")


# ---------------------------------------------------------------------- shared server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("cli")
    srv = start_server(root / "data", cwd=root)
    try:
        yield srv
    finally:
        if srv.running:
            srv.stop()


@pytest.fixture(scope="module")
def simulated(shared: Server) -> subprocess.CompletedProcess[str]:
    """`simulate --project demo2 --tasks 60 --annotators 4 --reviewers 2`, once per module."""
    return shared.cli(
        "simulate", "--project", "demo2", "--tasks", str(SIM_TASKS), "--annotators", "4", "--reviewers", "2"
    )


@pytest.fixture(scope="module")
def exported(shared: Server, simulated: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    ok(simulated)
    return jsonl(ok(shared.cli("export", "demo2")).stdout)


# ---------------------------------------------------------------------- serve


def test_serve_reports_serving_exposes_metrics_and_stops_cleanly_on_sigterm(server: Server) -> None:
    assert health_status(server.target) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(server.target, service="labelweave.api.v1.AdminService") == (
        health_pb2.HealthCheckResponse.SERVING
    )
    output = server.output()
    assert f"serving gRPC on {server.target}" in output
    assert f"metrics on http://127.0.0.1:{server.metrics_port}/metrics" in output

    ok(server.cli("project", "create", "m1", "--name", "Metrics"))
    metrics = metrics_text(server.metrics_port)
    assert 'labelweave_rpc_total{code="OK",method="CreateProject"} 1.0' in metrics
    for family in (
        "labelweave_rpc_latency_seconds",
        "labelweave_events_appended_total",
        "labelweave_projection_lag_events",
        "labelweave_label_subscribers",
    ):
        assert f"# TYPE {family.removesuffix('_total')}" in metrics, family

    output = server.stop()  # asserts exit status 0 and "stopped cleanly"
    assert "received SIGTERM" in output


def test_restart_on_same_data_dir_keeps_projects_and_does_not_replace_admin_token(launch: Launch) -> None:
    first = launch()
    token_file = first.data_dir / "admin.token"
    token_before = token_file.read_bytes()
    assert token_file.stat().st_mode & 0o777 == 0o600
    ok(first.cli("project", "create", "keep", "--name", "Kept across restarts"))
    assert "bootstrap admin token written" in first.stop()

    second = launch(first.data_dir)
    assert token_file.read_bytes() == token_before
    assert second.admin_token == first.admin_token
    assert "bootstrap admin token written" not in second.output()
    listing = ok(second.cli("project", "list")).stdout
    assert any(line.startswith("keep\tKept across restarts\t") for line in listing.splitlines()), listing
    second.stop()


# ---------------------------------------------------------------------- README walk-through


def test_readme_walkthrough_sets_up_project_people_token_and_imports_tasks(shared: Server) -> None:
    work = shared.cwd / "walkthrough"
    work.mkdir()
    (work / "schema.json").write_text(json.dumps(SCHEMA, indent=2), encoding="utf-8")
    lines = [
        task_line("street-000", metadata={"city": "Warsaw"}),
        task_line("street-001", priority=5),
        task_line("street-002", priority=10, deadline="2027-01-15T17:00:00Z"),
    ]
    (work / "tasks.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    project = json.loads(ok(shared.cli("project", "create", "demo", "--name", "Demo")).stdout)
    assert project["project_id"] == "demo"
    assert project["name"] == "Demo"

    published = ok(shared.cli("project", "schema", "demo", str(work / "schema.json")))
    assert published.stdout.strip() == "published label schema version 1 for demo"

    person = json.loads(
        ok(
            shared.cli(
                "person", "add", "alice", "--name", "Alice", "--role", "annotator", "--tz", "Europe/Warsaw"
            )
        ).stdout
    )
    assert person["spec"] == {
        "person_id": "alice",
        "display_name": "Alice",
        "roles": ["ROLE_ANNOTATOR"],
        "time_zone": "Europe/Warsaw",
    }

    assert ok(shared.cli("project", "add-member", "demo", "alice")).stdout.strip() == "demo: members alice"

    created = ok(shared.cli("token", "create", "--person", "alice"))
    alice_token = created.stdout.strip()
    assert created.stdout == alice_token + "\n", "stdout must be the token and nothing else"
    assert alice_token and " " not in alice_token
    me = json.loads(ok(shared.cli("whoami", token=alice_token)).stdout)
    assert me["spec"]["person_id"] == "alice"
    assert me["projects"] == ["demo"]

    imported = ok(shared.cli("import", "demo", str(work / "tasks.jsonl")))
    assert imported.stdout.strip() == "3"
    assert "imported 3 tasks" in imported.stderr
    listing = ok(shared.cli("task", "list", "demo")).stdout.splitlines()
    assert listing[0] == "task_id\tstatus\tpriority\tannotations\tleases"
    rows = {line.split("\t")[0]: line.split("\t") for line in listing[1:]}
    assert set(rows) == {"street-000", "street-001", "street-002"}
    assert rows["street-002"][1:3] == ["queued", "10"]

    # with a --batch-id, running the same import again is a no-op (the README's form)
    (work / "more.jsonl").write_text(task_line("more-000") + "\n" + task_line("more-001") + "\n")
    for _ in range(2):
        again = ok(shared.cli("import", "demo", str(work / "more.jsonl"), "--batch-id", "more-001"))
        assert again.stdout.strip() == "2"
    assert task_ids(shared, "demo") == {"street-000", "street-001", "street-002", "more-000", "more-001"}


def test_simulate_finishes_every_task_and_prints_summary_on_stdout(
    simulated: subprocess.CompletedProcess[str],
) -> None:
    ok(simulated)
    out = simulated.stdout
    assert f"tasks done {SIM_TASKS}/{SIM_TASKS}" in out, describe(simulated)
    assert "finished:" in out
    assert "Per time zone" in out and "Per person" in out
    for person in ("demo2-ann-00", "demo2-ann-03", "demo2-rev-00", "demo2-rev-01"):
        assert person in out
    assert "imported 60 tasks" in simulated.stderr  # progress and set-up notes stay on stderr


def test_simulate_quality_runs_the_layered_pipeline_and_reports_accuracy_and_agreement(
    shared: Server,
) -> None:
    """--quality: peer review, QA spot checks, disputes to an expert, gold with suspension and
    reinstatement, overlap 2 with consensus; the summary compares simulated skill with what the
    service measured."""
    run = shared.cli(
        "simulate", "--project", "qsim", "--quality", "--tasks", "120", "--annotators", "6",
        "--reviewers", "2", "--overlap", "2", "--gold", "12", "--seed", "3",
    )  # fmt: skip
    ok(run)
    out = run.stdout
    assert "tasks done 120/120" in out, describe(run)
    assert "Quality per annotator" in out and "Quality summary" in out, describe(run)
    for person in ("qsim-ann-00", "qsim-ann-05", "qsim-qa-00", "qsim-exp-00"):
        assert person in out
    assert "gold: rank correlation of skill and measured score" in out
    assert "agreement: items rated by 2+ annotators" in out
    assert "agreement: car box: mean iou of matched" in out
    # every stage did work: QA reviewed, and the expert resolved disputes (reviewers err 5% of the time)
    project = json.loads(ok(shared.cli("project", "get", "qsim")).stdout)
    stages = [s.get("kind") for s in project["settings"]["pipeline"]["stages"]]
    assert stages == [
        "REVIEW_STAGE_KIND_PEER_REVIEW",
        "REVIEW_STAGE_KIND_QA_SPOT_CHECK",
        "REVIEW_STAGE_KIND_EXPERT_RESOLUTION",
    ]
    resolved = ok(shared.cli("dispute", "list", "qsim", "--resolved")).stdout
    assert "qsim-ann-" in resolved, describe(run)

    # every view, split over two processes (consumers/rebuild_views.py), replays this log to what
    # one process does (the server may append lease expiries meanwhile: compare at equal heads)
    from consumers.rebuild import rebuild
    from consumers.rebuild_views import rebuild_by_views
    from coordinator.eventlog.factory import open_event_log

    log_url = f"sqlite:///{(shared.data_dir / 'events.db').resolve()}"
    for attempt in range(5):
        split = rebuild_by_views(
            log_url, f"sqlite:///{shared.cwd / f'split-{attempt}.db'}", workers=2, min_events_per_worker=1
        )
        log = open_event_log(log_url)
        try:
            single = rebuild(log, MemoryStore())
        finally:
            log.close()
        if dict(split.checkpoint) == dict(single.checkpoint):
            break
    assert split.processes == 2
    assert (split.checksum, dict(split.checkpoint)) == (single.checksum, dict(single.checkpoint))


def test_export_writes_one_jsonl_line_per_accepted_label_with_provenance(
    shared: Server, exported: list[dict[str, Any]]
) -> None:
    out_file = shared.cwd / "labels.jsonl"
    result = ok(shared.cli("export", "demo2", "--out", str(out_file)))
    assert result.stdout == ""
    assert f"exported {SIM_TASKS} labels" in result.stderr
    records = jsonl(out_file.read_text(encoding="utf-8"))
    assert records == exported  # same labels, same order, whether to a file or to stdout

    done = ok(shared.cli("task", "list", "demo2", "--status", "done")).stdout.splitlines()[1:]
    assert len(done) == SIM_TASKS
    assert {r["task_id"] for r in records} == {line.split("\t")[0] for line in done}
    assert len(records) == SIM_TASKS  # overlap 1: exactly one accepted label per task
    assert len({r["cursor"] for r in records}) == len(records)
    for record in records:
        missing = [f for f in LABEL_FIELDS if f not in record]
        assert not missing, (missing, record)
        assert record["project_id"] == "demo2"
        assert record["author_id"].startswith("demo2-ann-")
        assert record["accepted_by"].startswith("demo2-rev-")
        assert record["version"] >= 1
        assert record["label_schema_version"] == 1
        assert record["guideline_version"] == 1
        assert record["annotation"]["shapes"], record
        assert record["cursor"]


def test_export_with_a_cursor_continues_after_it_without_duplicates(
    shared: Server, exported: list[dict[str, Any]]
) -> None:
    middle = len(exported) // 2
    token = exported[middle - 1]["cursor"]

    rest = jsonl(ok(shared.cli("export", "demo2", "--cursor", token)).stdout)
    assert rest == exported[middle:]

    # an interrupted export to a file: resuming appends the remainder, nothing twice
    out_file = shared.cwd / "resumed.jsonl"
    out_file.write_text(
        "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in exported[:middle]), encoding="utf-8"
    )
    result = ok(shared.cli("export", "demo2", "--out", str(out_file), "--cursor", token))
    assert f"exported {len(exported) - middle} labels" in result.stderr
    records = jsonl(out_file.read_text(encoding="utf-8"))
    assert records == exported
    assert len({(r["annotation_id"], r["version"]) for r in records}) == len(records)

    last = exported[-1]["cursor"]
    tail = ok(shared.cli("export", "demo2", "--cursor", last))
    assert tail.stdout == ""
    assert "exported 0 labels" in tail.stderr


def _start_subscribe(server: Server, project_id: str, out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as fh:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coordinator",
                "subscribe",
                project_id,
                "--target",
                server.target,
                "--token",
                server.admin_token,
            ],
            cwd=server.cwd,
            env=cli_env(),
            stdout=fh,
            stderr=subprocess.PIPE,
        )


def _terminate(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM a subscriber that is still following; returns its stderr."""
    assert proc.poll() is None, "subscribe must keep following until it is stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    return err.decode()


def test_subscribe_prints_accepted_labels_as_json_lines_until_terminated(
    shared: Server, exported: list[dict[str, Any]]
) -> None:
    out = shared.cwd / "subscribe-demo2.jsonl"
    proc = _start_subscribe(shared, "demo2", out)
    try:
        wait_for_lines(out, len(exported), proc)
        time.sleep(0.5)  # a moment more: nothing beyond the backlog may arrive
        stderr = _terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in stderr
    streamed = jsonl(out.read_text(encoding="utf-8"))
    # no task was reopened, so the feed (log order) and the export (task order) hold the same labels
    key = ("task_id", "annotation_id", "version", "event_id", "annotation")
    assert sorted([r[k] for k in key[:4]] for r in streamed) == sorted(
        [r[k] for k in key[:4]] for r in exported
    )
    assert all(r["resume_token"] for r in streamed)


def test_subscribe_follows_labels_accepted_while_it_runs(shared: Server) -> None:
    # a project with people but no tasks yet (simulate --tasks 0 sets it up and finishes at once)
    ok(shared.cli("simulate", "--project", "live", "--tasks", "0", "--annotators", "2", "--reviewers", "1"))
    out = shared.cwd / "subscribe-live.jsonl"
    proc = _start_subscribe(shared, "live", out)
    try:
        time.sleep(1.0)
        assert out.read_text(encoding="utf-8") == ""
        ok(
            shared.cli(
                "simulate", "--project", "live", "--tasks", "5", "--annotators", "2", "--reviewers", "1"
            )
        )
        wait_for_lines(out, 5, proc)
        stderr = _terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in stderr
    records = jsonl(out.read_text(encoding="utf-8"))
    assert len(records) == 5
    assert {r["project_id"] for r in records} == {"live"}
    assert len({r["task_id"] for r in records}) == 5


# ---------------------------------------------------------------------- import errors


@pytest.fixture(scope="module")
def import_project(shared: Server) -> str:
    (shared.cwd / "schema.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    ok(shared.cli("project", "create", "imports", "--name", "Import errors"))
    ok(shared.cli("project", "schema", "imports", str(shared.cwd / "schema.json")))
    return "imports"


@pytest.mark.parametrize(
    ("case", "lines", "expected"),
    [
        (
            "invalid-json",
            [task_line("bad-json-1"), task_line("bad-json-2"), '{"taskId": "bad-json-3", "dataUri":'],
            "error: line 3: ",
        ),
        (
            # rejected by the server; the blank line proves tasks[2] is mapped back to line 4
            "zero-width",
            [
                task_line("zero-1"),
                "",
                task_line("zero-3"),
                task_line("zero-4", media={"width": 0, "height": 1080}),
                task_line("zero-5"),
            ],
            "error: line 4: media.width: ",
        ),
        (
            "negative-width",
            [task_line("neg-1"), task_line("neg-2", media={"width": -1, "height": 1080}), task_line("neg-3")],
            "error: line 2: media.width: ",
        ),
        (
            "unknown-field",
            [task_line("unk-1"), task_line("unk-2", media={"widht": 3, "height": 1080})],
            "error: line 2: media.widht: unknown field 'widht'",
        ),
    ],
)
def test_import_bad_line_exits_2_naming_line_and_field_and_imports_nothing(
    shared: Server, import_project: str, case: str, lines: list[str], expected: str
) -> None:
    path = shared.cwd / f"{case}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = task_ids(shared, import_project)
    result = shared.cli("import", import_project, str(path))
    stderr = failed(result)
    assert stderr.startswith(expected), describe(result)
    assert result.stdout == ""
    assert task_ids(shared, import_project) == before, "part of a rejected batch was imported"


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "command",
    [
        ["project", "get", "nope"],
        ["project", "add-member", "nope", "admin"],
        ["task", "list", "nope"],
        ["import", "nope", "TASKS"],
        ["export", "nope"],
        ["subscribe", "nope"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_unknown_project_exits_2_with_project_id_error_and_no_traceback(
    shared: Server, command: list[str]
) -> None:
    tasks = shared.cwd / "one-task.jsonl"
    tasks.write_text(task_line("one") + "\n", encoding="utf-8")
    args = [str(tasks) if a == "TASKS" else a for a in command]
    stderr = failed(shared.cli(*args, timeout=120))
    assert stderr == "error: project_id: no project 'nope'\n"


def test_missing_token_exits_2_saying_how_to_pass_one(shared: Server, tmp_path: Path) -> None:
    result = run_cli("whoami", "--target", shared.target, "--data-dir", str(tmp_path / "none"), cwd=tmp_path)
    stderr = failed(result)
    assert stderr.startswith("error: --token: no bearer token"), stderr


@pytest.mark.parametrize("token", ["lw_not-a-real-token", "garbage"])
def test_invalid_token_exits_2_with_unauthenticated_message(shared: Server, token: str) -> None:
    stderr = failed(shared.cli("project", "list", token=token))
    assert stderr == "error: invalid, expired or revoked token\n"


def test_revoked_token_stops_working(shared: Server) -> None:
    ok(shared.cli("person", "add", "bob", "--role", "reviewer"))
    created = ok(shared.cli("token", "create", "--person", "bob"))
    token = created.stdout.strip()
    token_id = created.stderr.split("token id: ", 1)[1].split()[0]
    assert json.loads(ok(shared.cli("whoami", token=token)).stdout)["spec"]["person_id"] == "bob"
    ok(shared.cli("token", "revoke", "--person", "bob", "--token-id", token_id))
    assert failed(shared.cli("whoami", token=token)) == "error: invalid, expired or revoked token\n"


def test_unreachable_server_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run_cli("whoami", "--target", f"127.0.0.1:{free_port()}", "--token", "x", cwd=tmp_path)
    assert failed(result).startswith("error: failed to connect"), describe(result)


# ---------------------------------------------------------------------- offline commands


def test_offline_token_create_while_stopped_works_after_restart(launch: Launch) -> None:
    first = launch()
    first.stop()
    data = str(first.data_dir)

    created = ok(
        run_cli("token", "create", "--offline", "--data-dir", data, "--person", "admin", cwd=first.cwd)
    )
    token = created.stdout.strip()
    assert created.stdout == token + "\n"
    assert created.stderr.startswith("token id: ")
    assert token != first.admin_token
    unknown = run_cli("token", "create", "--offline", "--data-dir", data, "--person", "nobody", cwd=first.cwd)
    assert failed(unknown) == "error: person_id: no person 'nobody'\n"

    second = launch(first.data_dir)
    with LabelweaveClient(second.target, token, timeout=60) as lw:
        me = lw.who_am_i()
    assert me.spec.person_id == "admin"
    assert json.loads(ok(second.cli("whoami", token=token)).stdout)["spec"]["person_id"] == "admin"
    second.stop()


def test_rebuild_after_stop_prints_match_and_exits_0(launch: Launch) -> None:
    srv = launch()
    ok(srv.cli("simulate", "--project", "rb", "--tasks", "12", "--annotators", "2", "--reviewers", "1"))
    srv.stop()
    result = ok(run_cli("rebuild", "--data-dir", str(srv.data_dir), cwd=srv.cwd))
    lines = result.stdout.splitlines()
    assert lines[-1] == "MATCH", result.stdout
    fields = dict(line.split(":", 1) for line in lines[:-1])
    assert int(fields["events"]) > 12
    assert fields["rebuilt checksum"].strip() == fields["live checksum"].strip()


def test_cli_help_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", "--help"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    ok(result)
    for command in ("serve", "rebuild", "project", "person", "whoami", "token", "task", "import", "export"):
        assert command in result.stdout
