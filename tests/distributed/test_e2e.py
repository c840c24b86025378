"""The distributed backend end to end, on real services: Kafka, Cassandra, two coordinators, two
faust workers, and `labelweave simulate` driving work through both coordinators at once.

Afterwards the Cassandra projections have the same checksum as an embedded rebuild of the same
Kafka log, and replaying that log shows no task leased beyond its overlap, nobody leasing a task
twice, and every acknowledged command in the log.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.projector import CONSUMER
from consumers.rebuild import rebuild
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.client import LabelweaveClient
from coordinator.eventlog import codec
from coordinator.eventlog.base import EventLog
from coordinator.eventlog.factory import open_event_log
from coordinator.testing import sample_schema
from projections.factory import open_store
from projections.memory import MemoryStore
from tests.backends.cassandra_util import cassandra_admin_fixture, cassandra_hosts_fixture  # noqa: F401
from tests.backends.kafka_util import BOOTSTRAP, kafka_broker  # noqa: F401 - fixture
from tests.e2e.conftest import REPO, Server, cli_env, describe, start_server

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("kafka_broker", "cassandra_admin")]

CASSANDRA = "127.0.0.1:9042"


class Distributed:
    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.tmp = tmp
        self.event_log = (
            f"kafka://{BOOTSTRAP}/?prefix=lwe2e-{tag}&task_partitions=6&project_partitions=2"
            "&workforce_partitions=2&reply_partitions=2"
        )
        self.keyspace = f"lwtest_e2e_{tag}"
        self.store = f"cassandra://{CASSANDRA}/{self.keyspace}"
        self.servers: list[Server] = []
        self.workers: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "coordinator", *args],
            cwd=self.tmp,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def migrate(self) -> None:
        result = self.cli("migrate", "--store", self.store)
        assert result.returncode == 0, describe(result)

    def start_worker(self) -> subprocess.Popen[bytes]:
        n = len(self.workers)
        log = (self.tmp / f"worker-{n}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coordinator",
                "workers",
                "--event-log",
                self.event_log,
                "--store",
                self.store,
                "--metrics-port",
                "0",
                "--data-dir",
                str(self.tmp / f"worker-{n}"),
            ],
            cwd=REPO,
            env=cli_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(proc)
        return proc

    def start_server(self, n: int) -> Server:
        data = self.tmp / f"coordinator-{n}"
        if self.servers:  # the first coordinator bootstrapped the admin; share its token
            data.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.servers[0].data_dir / "admin.token", data / "admin.token")
        server = start_server(
            data,
            cwd=self.tmp,
            extra_args=["--event-log", self.event_log, "--store", self.store],
        )
        self.servers.append(server)
        return server

    def close(self) -> None:
        failures: list[str] = []
        for server in self.servers:
            if server.running:
                try:
                    server.stop()
                except AssertionError as exc:  # stop the rest anyway, then report
                    failures.append(str(exc))
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        assert not failures, failures


def contend(first: Server, second: Server, tasks: int = 40, per_side: int = 3) -> set[str]:
    """Annotators split over both coordinators lease and submit on one project (overlap 2, no
    review) until its queue is empty; returns the task ids. Invariants are checked on the log."""
    with LabelweaveClient(first.target, first.admin_token) as admin:
        admin.create_project(
            "shared",
            name="shared",
            settings=M.ProjectSettings(default_overlap=2, review_policy=M.REVIEW_POLICY_NONE),
        )
        admin.publish_label_schema("shared", sample_schema())
        tokens: dict[str, tuple[Server, str]] = {}
        for side, server in (("via1", first), ("via2", second)):
            for k in range(per_side):
                pid = f"{side}-ann-{k}"
                admin.register_person(
                    M.PersonSpec(person_id=pid, display_name=pid, roles=[M.ROLE_ANNOTATOR], time_zone="UTC")
                )
                admin.add_project_member("shared", pid)
                tokens[pid] = (server, admin.create_token(pid, "e2e").token)
        ids = [f"race-{i:03d}" for i in range(tasks)]
        admin.import_tasks(
            "shared",
            [
                M.TaskSpec(
                    task_id=t,
                    data_uri=f"s3://b/{t}.jpg",
                    media_type=M.MEDIA_TYPE_IMAGE,
                    media=M.MediaInfo(width=640, height=480),
                )
                for t in ids
            ],
            command_id="race-import",
        )
    errors: list[str] = []
    box = A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=1, y=1, width=10, height=10))])

    def work(pid: str, server: Server, token: str) -> None:
        with LabelweaveClient(server.target, token) as lw:
            empty = 0
            n = 0
            while empty < 30:
                n += 1
                try:
                    nxt = lw.next_task("shared", command_id=f"{pid}-n{n}")
                    if not nxt.HasField("task"):
                        empty += 1
                        time.sleep(0.1)
                        continue
                    empty = 0
                    lw.submit(nxt.task.task_id, nxt.lease.lease_id, box, command_id=f"{pid}-s{n}")
                except Exception as exc:
                    errors.append(f"{pid}: {exc!r}")
                    return

    threads = [threading.Thread(target=work, args=(pid, srv, tok)) for pid, (srv, tok) in tokens.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:5]
    return set(ids)


def assert_projections_converge(cluster: Distributed, log: EventLog, timeout: float = 180) -> None:
    """The workers reach the log's head, and then the Cassandra projections have the checksum of
    an embedded rebuild of the same Kafka log."""
    head = log.head()
    store = open_store(cluster.store)
    try:
        deadline = time.monotonic() + timeout
        while True:
            applied = store.checkpoint(CONSUMER)
            if all(applied.get(p, 0) >= o for p, o in head.items()):
                break
            assert time.monotonic() < deadline, f"workers stuck at {applied}, log head {head}"
            time.sleep(0.5)
        live = store.checksum()
    finally:
        store.close()
    result = rebuild(log, MemoryStore())
    assert result.checksum == live, "Cassandra projections differ from an embedded rebuild of the log"


def unfinished(cluster: Distributed) -> str:
    """The history of every task that is not done, for a failure message."""
    log = open_event_log(cluster.event_log)
    try:
        by_task: dict[str, list[str]] = defaultdict(list)
        done: set[str] = set()
        for ev in log.read({}, 10_000_000):
            if not ev.stream_id.startswith("task:"):
                continue
            p = codec.payload_of(ev.envelope)
            by_task[ev.stream_id].append(
                f"{ev.position} {ev.type} by {ev.envelope.actor.user_id} {getattr(p, 'person_id', '')}"
                f" {getattr(p, 'reason_codes', '')}"
            )
            if ev.type == "task_completed":
                done.add(ev.stream_id)
        return "\n\n".join(f"{t}:\n  " + "\n  ".join(h) for t, h in by_task.items() if t not in done)
    finally:
        log.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Distributed]:
    d = Distributed(tmp_path)
    try:
        yield d
    finally:
        d.close()


def test_two_coordinators_two_workers_simulate_then_cassandra_equals_a_rebuild(cluster: Distributed) -> None:
    cluster.migrate()
    cluster.start_worker()
    cluster.start_worker()
    first = cluster.start_server(1)
    second = cluster.start_server(2)

    # 1. A simulated workforce through each coordinator at once: one with review, rework and
    #    releases, one with the quality pipeline (peer review, QA, disputes, gold, consensus).
    sims = []
    for i, server in enumerate((first, second)):
        args = ["simulate", "--project", f"site{i}", "--annotators", "4", "--reviewers", "1"]
        args += ["--tasks", "30", "--overlap", "2", "--seed", str(11 + i), "--duration-limit", "240"]
        if i == 1:  # the whole quality pipeline: QA, disputes, gold, consensus, all views under workers
            args += ["--quality", "--gold", "6"]
        sims.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "coordinator",
                    *args,
                    "--target",
                    server.target,
                    "--token",
                    server.admin_token,
                ],
                cwd=cluster.tmp,
                env=cli_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    for sim in sims:
        out, _ = sim.communicate(timeout=400)
        outputs.append((sim.returncode, out))
    print(*(out for _, out in outputs), sep="\n")
    if any(code != 0 for code, _ in outputs):
        raise AssertionError(f"a simulation failed:\n{outputs}\n\nunfinished tasks:\n{unfinished(cluster)}")

    # 2. Contention: annotators on BOTH coordinators race for the same tasks of one project.
    shared_tasks = contend(first, second)

    log = open_event_log(cluster.event_log)
    try:
        assert_projections_converge(cluster, log)

        # Replay: never beyond overlap, nobody twice on a task.
        holders: dict[str, set[str]] = defaultdict(set)
        overlap: dict[str, int] = {}
        leased_by: Counter[tuple[str, str]] = Counter()
        gold: set[str] = set()
        for ev in log.read({}, 10_000_000):
            p = codec.payload_of(ev.envelope)
            if ev.type == "task_imported":
                overlap[p.task.task_id] = p.task.overlap or 1  # type: ignore[attr-defined]
            elif ev.type == "gold_task_imported":
                gold.add(p.task.task_id)  # type: ignore[attr-defined]
            elif ev.type == "task_leased":
                assert p.person_id not in holders[p.task_id]  # type: ignore[attr-defined]
                holders[p.task_id].add(p.person_id)  # type: ignore[attr-defined]
                leased_by[(p.task_id, p.person_id)] += 1  # type: ignore[attr-defined]
                if p.task_id not in gold:  # type: ignore[attr-defined]  # gold: anyone answers once, no slots
                    assert len(holders[p.task_id]) <= overlap[p.task_id], f"{p.task_id} over its overlap"  # type: ignore[attr-defined]
            elif ev.type in ("lease_released", "lease_expired"):
                holders[p.task_id].discard(p.person_id)  # type: ignore[attr-defined]
        assert len(overlap) == 60 + len(shared_tasks), "the simulations and the contention imported tasks"
        accepted = Counter(
            codec.payload_of(ev.envelope).task_id  # type: ignore[attr-defined]
            for ev in log.read({}, 10_000_000)
            if ev.type == "annotation_accepted"
        )
        assert accepted == Counter(dict.fromkeys(overlap, 2)), (
            "every task got exactly its two accepted labels"
        )
        racers = {person for (task, person) in leased_by if task in shared_tasks}
        assert {p.split("-")[0] for p in racers} == {"via1", "via2"}, "both coordinators leased shared tasks"
    finally:
        log.close()
