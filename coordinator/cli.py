"""`labelweave` command line: run the server, administer projects, import, export, simulate.

Client commands talk to a running server over gRPC (`--target`, bearer `--token`); `serve`,
`rebuild` and `token create --offline` work on the data directory directly.
Expected failures print `error: <field>: <message>` on stderr and exit with status 2.
"""

from __future__ import annotations

import os

# gRPC's C core logs handshake failures at INFO on stderr before our own clear error line;
# this must be set before grpc is first imported to take effect.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import contextlib
import json
import logging
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import annotation_pb2, model_pb2
from coordinator.client import LabelweaveClient
from coordinator.errors import InvalidArgument, LabelweaveError
from coordinator.settings import Settings, TlsSettings

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_DATA_DIR = "./labelweave-data"
MAX_IMPORT_BATCH = 10_000  # the server's per-request limit

ROLE_BY_NAME: dict[str, model_pb2.Role.ValueType] = {
    name.removeprefix("ROLE_").lower().replace("_", "-"): value
    for name, value in model_pb2.Role.items()
    if value != model_pb2.ROLE_UNSPECIFIED
}
REVIEW_BY_NAME: dict[str, model_pb2.ReviewPolicy.ValueType] = {
    "none": model_pb2.REVIEW_POLICY_NONE,
    "full": model_pb2.REVIEW_POLICY_FULL,
}
DECISION_BY_NAME: dict[str, model_pb2.DisputeDecision.ValueType] = {
    "uphold": model_pb2.DISPUTE_DECISION_UPHOLD,
    "overturn": model_pb2.DISPUTE_DECISION_OVERTURN,
}
STATUS_BY_NAME: dict[str, api_pb2.TaskStatus.ValueType] = {
    "queued": api_pb2.TASK_STATUS_QUEUED,
    "in-progress": api_pb2.TASK_STATUS_IN_PROGRESS,
    "in-review": api_pb2.TASK_STATUS_IN_REVIEW,
    "done": api_pb2.TASK_STATUS_DONE,
}

Handler = Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------- helpers


def _to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print_json(message: Message) -> None:
    print(json.dumps(_to_dict(message), indent=2, ensure_ascii=False))


def _resolve_token(args: argparse.Namespace) -> str:
    """--token, then --token-file, then $LABELWEAVE_TOKEN, then <data-dir>/admin.token."""
    if args.token:
        return str(args.token).strip()
    if args.token_file:
        return Path(args.token_file).read_text(encoding="utf-8").strip()
    env = os.environ.get("LABELWEAVE_TOKEN", "").strip()
    if env:
        return env
    admin_file = Path(args.data_dir) / "admin.token"
    if admin_file.is_file():
        return admin_file.read_text(encoding="utf-8").strip()
    raise InvalidArgument(
        f"no bearer token: pass --token, --token-file, set LABELWEAVE_TOKEN, or run next to {admin_file}",
        field="--token",
    )


def _client_factory(args: argparse.Namespace) -> Callable[[str], LabelweaveClient]:
    def make(token: str) -> LabelweaveClient:
        return LabelweaveClient(
            args.target,
            token,
            tls_ca=Path(args.tls_ca) if args.tls_ca else None,
            client_cert=Path(args.client_cert) if args.client_cert else None,
            client_key=Path(args.client_key) if args.client_key else None,
            timeout=args.timeout,
        )

    return make


def _client(args: argparse.Namespace) -> LabelweaveClient:
    return _client_factory(args)(_resolve_token(args))


def _offline_settings(args: argparse.Namespace) -> Settings:
    return Settings(
        data_dir=Path(args.data_dir),
        event_log_url=args.event_log or "",
        store_url=args.store or "",
        metrics_port=0,
    )


def _label_fields(label: Any) -> dict[str, Any]:
    """The provenance every label line carries (an `AnnotationAccepted`)."""
    return {
        "project_id": label.project_id,
        "task_id": label.task_id,
        "annotation_id": label.annotation_id,
        "version": label.version,
        "author_id": label.author_id,
        "accepted_by": label.accepted_by,
        "data_uri": label.data_uri,
        "label_schema_version": label.label_schema_version,
        "guideline_version": label.guideline_version,
        "annotation": _to_dict(label.annotation),
    }


def label_record(event: api_pb2.LabelEvent) -> dict[str, Any]:
    """One accepted label of the feed as a self-contained JSON object (the subscribe line format)."""
    envelope = event.envelope
    return {
        **_label_fields(event.label),
        "resume_token": event.resume_token,
        "event_id": envelope.event_id,
        "recorded_at": envelope.recorded_at.ToJsonString() if envelope.HasField("recorded_at") else "",
    }


def export_record(item: api_pb2.ExportedLabel) -> dict[str, Any]:
    """One exported label: the latest accepted version with its provenance and resume cursor."""
    return {
        **_label_fields(item.label),
        "cursor": item.cursor,
        "position": item.position,
        "event_id": item.event_id,
        "accepted_at": item.accepted_at.ToJsonString(),
    }


def _json_line(record: dict[str, Any]) -> str:
    # sorted keys: the same labels export to the same bytes (diffable, checksummable)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n"


def _parse_error_field(message: str) -> tuple[str, str]:
    """("media.width", "Value out of range: -1") from a json_format.ParseError message."""
    path: list[str] = []
    rest = message
    while match := re.match(r"Failed to parse (\w+) field: ", rest):
        path.append(match.group(1))
        rest = rest[match.end() :]
    unknown = re.match(r'Message type "[\w.]+" has no field named "([^"]+)" at "([\w.]+)"', rest)
    if unknown:
        path = [*unknown.group(2).split(".")[1:], unknown.group(1)]
        rest = f"unknown field {unknown.group(1)!r}"
    return ".".join(path), rest.split("\n", 1)[0].rstrip(".").strip()


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "import"


# ---------------------------------------------------------------------- serve / offline


def cmd_serve(args: argparse.Namespace) -> int:
    from coordinator.server import serve  # the server stack is imported only when serving

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    tls: TlsSettings | None = None
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            raise InvalidArgument("--tls-cert and --tls-key are required together", field="--tls-cert")
        tls = TlsSettings(
            cert_file=Path(args.tls_cert),
            key_file=Path(args.tls_key),
            client_ca_file=Path(args.tls_client_ca) if args.tls_client_ca else None,
        )
    settings = Settings(
        data_dir=Path(args.data_dir),
        listen=args.listen,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        event_log_url=args.event_log or "",
        store_url=args.store or "",
        projections=args.projections,
        tls=tls,
    )
    return serve(settings)


def cmd_rebuild(args: argparse.Namespace) -> int:
    from coordinator.app import Application

    app = Application.open(_offline_settings(args))
    try:
        result = app.rebuild(args.into or None, replace=args.replace, workers=args.workers)
    finally:
        app.close()
    rebuilt = str(result["rebuilt_checksum"])
    live = str(result["live_checksum"])
    print(f"events:           {result['events']}")
    print(f"seconds:          {float(result['seconds']):.3f}")
    print(f"rate:             {float(result['rate']):,.0f} events/s")
    print(f"position:         {result.get('position', '')}")
    print(f"rebuilt checksum: {rebuilt}")
    print(f"live checksum:    {live}")
    match = rebuilt == live
    print("MATCH" if match else "MISMATCH")
    return 0 if match else 1


def cmd_token_create(args: argparse.Namespace) -> int:
    if args.offline:
        from coordinator.app import Application

        app = Application.open(_offline_settings(args))
        try:
            token_id, secret = app.issue_token(args.person, args.description, args.ttl_seconds)
        finally:
            app.close()
    else:
        with _client(args) as lw:
            response = lw.create_token(args.person, args.description, args.ttl_seconds)
        token_id, secret = response.token_id, response.token
    # stdout carries the secret only (scripts capture it); the id is what `token revoke` needs
    print(f"token id: {token_id}", file=sys.stderr)
    print(secret)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        lw.revoke_token(args.person, args.token_id)
    return 0


# ---------------------------------------------------------------------- projects and people


def cmd_project_create(args: argparse.Namespace) -> int:
    settings = model_pb2.ProjectSettings(
        default_overlap=args.overlap,
        lease_seconds=args.lease_seconds,
        review_policy=REVIEW_BY_NAME[args.review],
    )
    with _client(args) as lw:
        _print_json(lw.create_project(args.project_id, args.name, args.description, settings))
    return 0


def cmd_project_schema(args: argparse.Namespace) -> int:
    schema = model_pb2.LabelSchema()
    path = Path(args.file)
    try:
        json_format.Parse(path.read_text(encoding="utf-8"), schema)
    except json_format.ParseError as exc:
        field, message = _parse_error_field(str(exc))
        raise InvalidArgument(message, field=f"{path}{': ' + field if field else ''}") from None
    with _client(args) as lw:
        project = lw.publish_label_schema(args.project_id, schema)
    print(f"published label schema version {project.label_schema.version} for {args.project_id}")
    return 0


def cmd_project_guideline(args: argparse.Namespace) -> int:
    body = Path(args.body_file).read_text(encoding="utf-8")
    guideline = model_pb2.Guideline(title=args.title, body=body, uri=args.uri)
    with _client(args) as lw:
        project = lw.publish_guideline(args.project_id, guideline)
    print(f"published guideline version {project.guideline.version} for {args.project_id}")
    return 0


def cmd_project_add_member(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        project = lw.add_project_member(args.project_id, args.person_id)
    print(f"{args.project_id}: members {', '.join(project.members)}")
    return 0


def cmd_project_get(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(lw.get_project(args.project_id))
    return 0


def cmd_project_list(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        projects = lw.list_projects().projects
    print("project_id\tname\tmembers\tqueue_depth\tschema\tguideline")
    for p in projects:
        print(
            f"{p.project_id}\t{p.name}\t{len(p.members)}\t{p.queue_depth}\t"
            f"v{p.label_schema.version}\tv{p.guideline.version}"
        )
    return 0


def _parse_skill(text: str) -> model_pb2.Skill:
    name, _, level = text.partition(":")
    if not name:
        raise InvalidArgument(f"bad skill {text!r}: expected NAME[:LEVEL]", field="--skill")
    try:
        return model_pb2.Skill(name=name, level=int(level) if level else 1)
    except ValueError:
        raise InvalidArgument(f"bad skill level in {text!r}: expected an integer", field="--skill") from None


def cmd_person_add(args: argparse.Namespace) -> int:
    spec = model_pb2.PersonSpec(
        person_id=args.person_id,
        display_name=args.name or args.person_id,
        roles=[ROLE_BY_NAME[r] for r in args.role],
        skills=[_parse_skill(s) for s in args.skill],
        time_zone=args.tz,
    )
    with _client(args) as lw:
        _print_json(lw.register_person(spec))
    return 0


def cmd_person_get(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(lw.get_person(args.person_id))
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(lw.who_am_i())
    return 0


# ---------------------------------------------------------------------- tasks


def cmd_task_get(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(lw.get_task(args.task_id))
    return 0


def cmd_task_abandon(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(lw.abandon_annotation(args.task_id, args.annotation_id, args.reason))
    return 0


def cmd_task_list(args: argparse.Namespace) -> int:
    status = STATUS_BY_NAME[args.status] if args.status else api_pb2.TASK_STATUS_UNSPECIFIED
    with _client(args) as lw:
        print("task_id\tstatus\tpriority\tannotations\tleases")
        for n, task in enumerate(lw.iter_tasks(args.project_id, status)):
            if args.limit and n >= args.limit:
                break
            status_name = api_pb2.TaskStatus.Name(task.status).removeprefix("TASK_STATUS_").lower()
            print(
                f"{task.task_id}\t{status_name}\t{task.spec.priority}\t{len(task.annotations)}\t{len(task.leases)}"
            )
    return 0


def _task_batches(
    path: Path, batch_size: int, batch_id: str
) -> Iterator[tuple[list[model_pb2.TaskSpec], list[int]]]:
    """(specs, their line numbers) per batch; a bad line raises before its batch is yielded."""
    specs: list[model_pb2.TaskSpec] = []
    lines: list[int] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            spec = model_pb2.TaskSpec()
            try:
                json_format.Parse(line, spec)
            except json_format.ParseError as exc:
                field, message = _parse_error_field(str(exc))
                where = f"line {lineno}" + (f": {field}" if field else "")
                raise InvalidArgument(message, field=where) from None
            if not spec.task_id:
                # stable ids (by line) so a re-run with the same --batch-id imports nothing twice
                spec.task_id = f"{batch_id}-{lineno:06d}"
            specs.append(spec)
            lines.append(lineno)
            if len(specs) >= batch_size:
                yield specs, lines
                specs, lines = [], []
    if specs:
        yield specs, lines


def _line_field(err: LabelweaveError, lines: Sequence[int]) -> LabelweaveError:
    """Rewrite a server field path `tasks[3].media.width` to `line 17: media.width`."""
    match = re.match(r"tasks\[(\d+)\]\.?(.*)", err.field)
    if match and int(match.group(1)) < len(lines):
        rest = match.group(2)
        err.field = f"line {lines[int(match.group(1))]}" + (f": {rest}" if rest else "")
    return err


def cmd_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not 1 <= args.batch_size <= MAX_IMPORT_BATCH:
        raise InvalidArgument(f"must be between 1 and {MAX_IMPORT_BATCH}", field="--batch-size")
    if not path.is_file():
        raise InvalidArgument(f"no such file {str(path)!r}", field="FILE")
    batch_id = args.batch_id or f"{_safe_id(path.stem)}-{uuid.uuid4().hex[:8]}"
    imported = 0
    with _client(args) as lw:
        try:
            for chunk, (specs, lines) in enumerate(_task_batches(path, args.batch_size, batch_id)):
                # deterministic per (project, batch, chunk): re-running an interrupted import
                # with the same --batch-id replays the finished chunks as no-ops
                command_id = str(
                    uuid.uuid5(uuid.NAMESPACE_URL, f"labelweave:import:{args.project_id}:{batch_id}:{chunk}")
                )
                try:
                    response = lw.import_tasks(args.project_id, specs, batch_id, command_id=command_id)
                except LabelweaveError as err:
                    raise _line_field(err, lines) from None
                imported += len(response.task_ids)
                print(f"\rimported {imported} tasks", end="", file=sys.stderr, flush=True)
        finally:
            if imported:
                print(file=sys.stderr)
        if imported == 0:
            print("no tasks in file", file=sys.stderr)
    print(imported)
    return 0


# ---------------------------------------------------------------------- review pipeline


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower() if value else ""


def _read_message(path_text: str, message: Message) -> None:
    path = Path(path_text)
    try:
        json_format.Parse(path.read_text(encoding="utf-8"), message)
    except json_format.ParseError as exc:
        field, text = _parse_error_field(str(exc))
        raise InvalidArgument(text, field=f"{path}{': ' + field if field else ''}") from None


def cmd_project_pipeline(args: argparse.Namespace) -> int:
    """Replace the review pipeline (and reason codes, when the file has them); other settings stay."""
    given = model_pb2.ProjectSettings()
    _read_message(args.file, given)
    with _client(args) as lw:
        settings = model_pb2.ProjectSettings()
        settings.CopyFrom(lw.get_project(args.project_id).settings)
        settings.pipeline.CopyFrom(given.pipeline)
        if given.reason_codes:
            del settings.reason_codes[:]
            settings.reason_codes.extend(given.reason_codes)
        if given.pipeline.stages:
            settings.review_policy = model_pb2.REVIEW_POLICY_FULL
        project = lw.update_project_settings(args.project_id, settings)
    stages = [s.name for s in project.settings.pipeline.stages]
    codes = [r.code for r in project.settings.reason_codes]
    shown = " → ".join(stages) or "(from the review policy)"
    print(f"{args.project_id}: stages {shown}; reason codes {', '.join(codes) or '-'}")
    return 0


def cmd_review_queue(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        page = lw.list_review_queue(args.project_id, args.stage, args.limit)
    print(f"# stage {page.stage}: {page.depth} waiting", file=sys.stderr)
    print("task_id\tannotation_id\tversion\tauthor_id\tentered_at\trate")
    for item in page.items:
        print(
            f"{item.task_id}\t{item.annotation_id}\t{item.version}\t{item.author_id}\t"
            f"{item.entered_at.ToJsonString()}\t{item.rate:g}"
        )
    return 0


def _verdict(args: argparse.Namespace, verdict: model_pb2.Verdict.ValueType) -> int:
    correction = None
    if verdict == model_pb2.VERDICT_CORRECT:
        correction = annotation_pb2.Annotation()
        _read_message(args.file, correction)
    with _client(args) as lw:
        response = lw.review(
            args.task_id,
            args.annotation_id,
            args.version,
            verdict,
            reason_codes=getattr(args, "reason", None) or (),
            comment=args.comment,
            correction=correction,
            stage=args.stage,
        )
    _print_json(response)
    return 0


def cmd_review_accept(args: argparse.Namespace) -> int:
    return _verdict(args, model_pb2.VERDICT_ACCEPT)


def cmd_review_reject(args: argparse.Namespace) -> int:
    return _verdict(args, model_pb2.VERDICT_REJECT)


def cmd_review_correct(args: argparse.Namespace) -> int:
    return _verdict(args, model_pb2.VERDICT_CORRECT)


def cmd_review_state(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(lw.get_review_state(args.task_id))
    return 0


def cmd_dispute_open(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(lw.open_dispute(args.task_id, args.annotation_id, args.comment))
    return 0


def cmd_dispute_resolve(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(
            lw.resolve_dispute(args.task_id, args.dispute_id, DECISION_BY_NAME[args.decision], args.comment)
        )
    return 0


def cmd_dispute_list(args: argparse.Namespace) -> int:
    status = api_pb2.DISPUTE_STATUS_UPHELD if args.resolved else api_pb2.DISPUTE_STATUS_OPEN
    with _client(args) as lw:
        page = lw.list_disputes(args.project_id, status, args.limit)
    print("dispute_id\ttask_id\tannotation_id\tauthor_id\tstage\treviewer_id\tstatus\texpert_id\treasons")
    for d in page.disputes:
        state = _enum_name(api_pb2.DisputeStatus, d.status, "DISPUTE_STATUS_")
        print(
            f"{d.dispute_id}\t{d.task_id}\t{d.annotation_id}\t{d.author_id}\t{d.stage}\t{d.reviewer_id}\t"
            f"{state}\t{d.expert_id}\t{','.join(d.reason_codes)}"
        )
    return 0


def feedback_record(item: api_pb2.FeedbackItem) -> dict[str, Any]:
    return {
        "cursor": item.cursor,
        "at": item.at.ToJsonString(),
        "kind": _enum_name(api_pb2.FeedbackKind, item.kind, "FEEDBACK_KIND_"),
        "project_id": item.project_id,
        "task_id": item.task_id,
        "annotation_id": item.annotation_id,
        "version": item.version,
        "stage": item.stage,
        "from": item.from_person_id,
        "verdict": _enum_name(model_pb2.Verdict, item.verdict, "VERDICT_"),
        "reasons": {r.code: r.description for r in item.reasons},
        "comment": item.comment,
        "dispute_id": item.dispute_id,
        "decision": _enum_name(model_pb2.DisputeDecision, item.decision, "DISPUTE_DECISION_"),
    }


def cmd_feedback(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        items = lw.iter_feedback(args.person, args.project)
        for n, item in enumerate(items):
            if args.limit and n >= args.limit:
                break
            sys.stdout.write(_json_line(feedback_record(item)))
    return 0


# ---------------------------------------------------------------------- gold and qualification


def cmd_quality_policy(args: argparse.Namespace) -> int:
    """Replace the project's quality policy (protobuf JSON of QualityPolicy); other settings stay."""
    policy = model_pb2.QualityPolicy()
    _read_message(args.file, policy)
    with _client(args) as lw:
        settings = model_pb2.ProjectSettings()
        settings.CopyFrom(lw.get_project(args.project_id).settings)
        settings.quality.CopyFrom(policy)
        project = lw.update_project_settings(args.project_id, settings)
    q = project.settings.quality
    skills = ", ".join(x.skill for x in q.qualifications) or "-"
    print(
        f"{args.project_id}: gold rate {q.gold_rate:g}; suspend below {q.min_accuracy:g}"
        f" (0: never); qualifications {skills}"
    )
    return 0


def accuracy_record(report: api_pb2.AccuracyReport) -> dict[str, Any]:
    out: dict[str, Any] = {
        "person_id": report.person_id,
        "project_id": report.project_id,
        "results": report.results,
        "passed": report.passed,
        "accuracy": round(report.accuracy, 6),
        "window": report.window,
        "suspended": report.suspended,
        "classes": {c.label: round(c.accuracy, 6) for c in report.classes},
    }
    if report.suspended:
        out["reason"] = report.suspension.reason
        out["retraining_skill"] = report.suspension.retraining_skill
    if report.recent:
        out["recent"] = [
            {"task_id": r.task_id, "score": round(r.score, 6), "passed": r.passed} for r in report.recent
        ]
    return out


def cmd_quality_accuracy(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        if args.all:
            reports = list(lw.list_accuracy(args.project_id).people)
        else:
            reports = [lw.get_accuracy(args.project_id, args.person)]
    for report in reports:
        sys.stdout.write(_json_line(accuracy_record(report)))
    return 0


def cmd_quality_suspended(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        page = lw.list_suspensions(args.project_id)
    print("person_id\taccuracy\tthreshold\tresults\tsince\tretraining\treason")
    for x in page.suspensions:
        print(
            f"{x.person_id}\t{x.accuracy:.3f}\t{x.threshold:.3f}\t{x.results}\t{x.since.ToJsonString()}\t"
            f"{x.retraining_skill or '-'}\t{x.reason}"
        )
    return 0


def cmd_quality_reinstate(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        report = lw.reinstate_person(args.project_id, args.person_id, args.reason)
    sys.stdout.write(_json_line(accuracy_record(report)))
    return 0


def qualification_record(status: api_pb2.QualificationStatus) -> dict[str, Any]:
    out: dict[str, Any] = {
        "person_id": status.person_id,
        "project_id": status.project_id,
        "skill": status.skill,
        "state": _enum_name(api_pb2.QualificationState, status.state, "QUALIFICATION_STATE_"),
        "attempt": status.attempt,
        "attempts_used": status.attempts_used,
        "max_attempts": status.max_attempts,
        "items_done": status.items_done,
        "items_total": status.items_total,
        "has_skill": status.has_skill,
    }
    if status.HasField("retry_after"):
        out["retry_after"] = status.retry_after.ToJsonString()
    if status.HasField("last"):
        out["score"] = round(status.last.score, 6)
        out["wrong"] = [item.task_id for item in status.last.items if not item.passed]
    return out


def cmd_quality_qualify(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        status = lw.start_qualification(args.project_id, args.skill)
    sys.stdout.write(_json_line(qualification_record(status)))
    return 0


def cmd_quality_qualification(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        status = lw.get_qualification(args.project_id, args.skill, args.person)
    sys.stdout.write(_json_line(qualification_record(status)))
    return 0


def _add_quality_commands(
    parser: argparse.ArgumentParser, command: Callable[..., argparse.ArgumentParser], sub: Any, client: Any
) -> None:
    """`labelweave quality ...`: gold policy, accuracy, suspensions, qualifications."""
    quality = command(
        sub, "quality", _usage(parser, "quality"), "gold accuracy, suspensions and qualifications"
    )
    qsub = quality.add_subparsers(dest="quality_command", required=True, metavar="ACTION")
    p = command(
        qsub,
        "policy",
        cmd_quality_policy,
        "set a project's quality policy (protobuf JSON of QualityPolicy: goldRate, minAccuracy,"
        " qualifications, ...; docs/quality.md)",
        parents=[client],
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("file", metavar="FILE.json")
    p = command(
        qsub, "accuracy", cmd_quality_accuracy, "rolling gold accuracy, one JSON line each", parents=[client]
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--person", default="", help="whose (default: yours; others need manager or QA)")
    p.add_argument("--all", action="store_true", help="everyone with gold results in the project")
    p = command(qsub, "suspended", cmd_quality_suspended, "people suspended from a project", parents=[client])
    p.add_argument("project_id", metavar="PROJECT")
    p = command(
        qsub, "reinstate", cmd_quality_reinstate, "end a person's suspension (managers)", parents=[client]
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("person_id", metavar="PERSON")
    p.add_argument("--reason", default="", help="recorded with the reinstatement")
    p = command(
        qsub,
        "qualify",
        cmd_quality_qualify,
        "take a project's qualification for a skill (NextTask then serves its items)",
        parents=[client],
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("skill", metavar="SKILL")
    p = command(
        qsub,
        "qualification",
        cmd_quality_qualification,
        "where a person stands with a qualification",
        parents=[client],
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("skill", metavar="SKILL")
    p.add_argument("--person", default="", help="whose (default: yours)")


# ---------------------------------------------------------------------- label streams


def cmd_export(args: argparse.Namespace) -> int:
    count = 0
    with contextlib.ExitStack() as stack:
        # resuming appends to the earlier export; a fresh export truncates
        mode = "a" if args.cursor else "w"
        out: IO[str] = (
            stack.enter_context(Path(args.out).open(mode, encoding="utf-8")) if args.out else sys.stdout
        )
        lw = stack.enter_context(_client(args))
        for item in lw.export_labels(args.project_id, args.cursor):
            out.write(_json_line(export_record(item)))
            count += 1
            if count % 1000 == 0:
                out.flush()
                print(f"\rexported {count} labels", end="", file=sys.stderr, flush=True)
        out.flush()
    print(f"\rexported {count} labels", file=sys.stderr)
    return 0


def cmd_subscribe(args: argparse.Namespace) -> int:
    out: TextIO = sys.stdout
    with _client(args) as lw:
        for event in lw.subscribe_labels_resilient(args.project_id, args.resume_token, follow=True):
            out.write(_json_line(label_record(event)))
            out.flush()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from coordinator import simulate

    make = _client_factory(args)
    return simulate.run(args, make, _resolve_token(args))


# ---------------------------------------------------------------------- parser


def _client_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection")
    g.add_argument(
        "--target",
        default=os.environ.get("LABELWEAVE_TARGET", DEFAULT_TARGET),
        help="server HOST:PORT (default: $LABELWEAVE_TARGET or %(default)s)",
    )
    g.add_argument("--token", default=None, help="bearer token")
    g.add_argument("--token-file", default=None, help="file holding the bearer token")
    g.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help="its admin.token is the last token fallback (default: %(default)s)",
    )
    g.add_argument(
        "--tls-ca", default=None, help="CA bundle that signed the server certificate (enables TLS)"
    )
    g.add_argument("--client-cert", default=None, help="client certificate for mutual TLS")
    g.add_argument("--client-key", default=None, help="client private key for mutual TLS")
    g.add_argument("--timeout", type=float, default=30.0, help="per-call deadline in seconds")
    return common


def _backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--event-log", default=None, help="event log URL (default: sqlite under --data-dir)")
    parser.add_argument(
        "--store", default=None, help="projection store URL (default: sqlite under --data-dir)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labelweave", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    client = _client_flags()

    def command(parent: Any, name: str, handler: Handler, help_: str, **kw: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_, **kw)
        p.set_defaults(func=handler)
        return p

    # serve
    p = command(sub, "serve", cmd_serve, "run the coordination server")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="default: %(default)s")
    p.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (default: %(default)s)")
    p.add_argument(
        "--metrics-port", type=int, default=9464, help="Prometheus port, 0 disables (default: %(default)s)"
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics endpoint binds (0.0.0.0 in containers; default: %(default)s)",
    )
    _backend_flags(p)
    p.add_argument(
        "--projections",
        default="auto",
        choices=["auto", "in-process", "workers"],
        help="who applies the views: this process, or `labelweave workers` (auto: workers when the "
        "event log is kafka://; default: %(default)s)",
    )
    p.add_argument("--tls-cert", default=None, help="server certificate (PEM)")
    p.add_argument("--tls-key", default=None, help="server private key (PEM)")
    p.add_argument(
        "--tls-client-ca", default=None, help="require client certificates signed by this CA (mTLS)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    # rebuild
    p = command(
        sub, "rebuild", cmd_rebuild, "replay the event log into a fresh store and compare checksums (offline)"
    )
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="default: %(default)s")
    _backend_flags(p)
    p.add_argument("--into", default=None, help="store URL to rebuild into (default: a scratch sqlite file)")
    p.add_argument("--replace", action="store_true", help="swap the rebuilt store in as the live one")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes replaying the views of an embedded (SQLite) log in parallel; 0: one per core, "
        "at most 4 (docs/architecture.md, 'Rebuilding on several cores')",
    )

    # project
    project = command(sub, "project", _usage(parser, "project"), "manage projects")
    psub = project.add_subparsers(dest="project_command", required=True, metavar="ACTION")
    p = command(psub, "create", cmd_project_create, "create a project", parents=[client])
    p.add_argument("project_id", metavar="ID")
    p.add_argument("--name", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--overlap", type=int, default=1, help="annotations per task (default: %(default)s)")
    p.add_argument("--lease-seconds", type=int, default=0, help="lease length; 0: server default (1800)")
    p.add_argument("--review", choices=sorted(REVIEW_BY_NAME), default="full", help="default: %(default)s")
    p = command(
        psub, "schema", cmd_project_schema, "publish a label schema (protobuf JSON)", parents=[client]
    )
    p.add_argument("project_id", metavar="ID")
    p.add_argument("file", metavar="FILE.json")
    p = command(psub, "guideline", cmd_project_guideline, "publish a guideline", parents=[client])
    p.add_argument("project_id", metavar="ID")
    p.add_argument("--title", required=True)
    p.add_argument("--body-file", required=True, help="markdown file")
    p.add_argument("--uri", default="", help="optional external document")
    p = command(psub, "add-member", cmd_project_add_member, "add a person to a project", parents=[client])
    p.add_argument("project_id", metavar="ID")
    p.add_argument("person_id", metavar="PERSON")
    p = command(psub, "get", cmd_project_get, "show a project", parents=[client])
    p.add_argument("project_id", metavar="ID")
    command(psub, "list", cmd_project_list, "list projects", parents=[client])

    # person
    person = command(sub, "person", _usage(parser, "person"), "manage people")
    persub = person.add_subparsers(dest="person_command", required=True, metavar="ACTION")
    p = command(persub, "add", cmd_person_add, "register a person", parents=[client])
    p.add_argument("person_id", metavar="ID")
    p.add_argument("--name", default="", help="display name")
    p.add_argument("--role", action="append", required=True, choices=sorted(ROLE_BY_NAME), help="repeatable")
    p.add_argument("--skill", action="append", default=[], metavar="NAME[:LEVEL]", help="repeatable")
    p.add_argument("--tz", default="UTC", help="IANA time zone, e.g. Europe/Warsaw")
    p = command(persub, "get", cmd_person_get, "show a person", parents=[client])
    p.add_argument("person_id", metavar="ID")
    command(sub, "whoami", cmd_whoami, "show the person behind the token", parents=[client])

    # token
    token = command(sub, "token", _usage(parser, "token"), "manage bearer tokens")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    p = command(tsub, "create", cmd_token_create, "create a token and print it (only)", parents=[client])
    p.add_argument("--person", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--ttl-seconds", type=int, default=0, help="0: never expires")
    p.add_argument("--offline", action="store_true", help="write to --data-dir directly (server stopped)")
    _backend_flags(p)
    p = command(tsub, "revoke", cmd_token_revoke, "revoke a token", parents=[client])
    p.add_argument("--person", required=True)
    p.add_argument("--token-id", required=True)

    # task
    task = command(sub, "task", _usage(parser, "task"), "inspect tasks")
    tasksub = task.add_subparsers(dest="task_command", required=True, metavar="ACTION")
    p = command(tasksub, "get", cmd_task_get, "show a task", parents=[client])
    p.add_argument("task_id", metavar="ID")
    p = command(tasksub, "list", cmd_task_list, "list a project's tasks", parents=[client])
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--status", choices=sorted(STATUS_BY_NAME), default=None)
    p.add_argument("--limit", type=int, default=0)
    p = command(
        tasksub,
        "abandon",
        cmd_task_abandon,
        "give up your rejected annotation (frees its slot)",
        parents=[client],
    )
    p.add_argument("task_id", metavar="TASK")
    p.add_argument("annotation_id", metavar="ANNOTATION")
    p.add_argument("--reason", default="")

    # review pipeline
    p = command(
        psub,
        "pipeline",
        cmd_project_pipeline,
        "set a project's review pipeline and reason codes (protobuf JSON of ProjectSettings:"
        ' {"pipeline": {"stages": [...]}, "reasonCodes": [...]}); tasks imported later follow it',
        parents=[client],
    )
    p.add_argument("project_id", metavar="ID")
    p.add_argument("file", metavar="FILE.json")
    review = command(sub, "review", _usage(parser, "review"), "review work stage by stage")
    rsub = review.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    p = command(rsub, "queue", cmd_review_queue, "list the work waiting at a stage", parents=[client])
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--stage", default="", help="stage name (default: the first stage)")
    p.add_argument("--limit", type=int, default=50)
    for name, handler, help_ in (
        ("accept", cmd_review_accept, "accept work at the stage it waits at"),
        ("reject", cmd_review_reject, "reject work with reason codes; it returns to its author"),
        ("correct", cmd_review_correct, "correct work (a new version by you) and accept it at this stage"),
    ):
        p = command(rsub, name, handler, help_, parents=[client])
        p.add_argument("task_id", metavar="TASK")
        p.add_argument("annotation_id", metavar="ANNOTATION")
        p.add_argument("--version", type=int, required=True, help="the version you looked at")
        p.add_argument("--stage", default="", help="refuse unless the work waits at this stage")
        p.add_argument("--comment", default="")
        if name == "reject":
            p.add_argument("--reason", action="append", required=True, metavar="CODE", help="repeatable")
        if name == "correct":
            p.add_argument(
                "--file", required=True, metavar="ANNOTATION.json", help="the corrected annotation"
            )
    p = command(rsub, "state", cmd_review_state, "show a task's review state per stage", parents=[client])
    p.add_argument("task_id", metavar="TASK")
    dispute = command(sub, "dispute", _usage(parser, "dispute"), "dispute rejections; experts resolve them")
    dsub = dispute.add_subparsers(dest="dispute_command", required=True, metavar="ACTION")
    p = command(dsub, "open", cmd_dispute_open, "dispute the rejection of your annotation", parents=[client])
    p.add_argument("task_id", metavar="TASK")
    p.add_argument("annotation_id", metavar="ANNOTATION")
    p.add_argument("--comment", required=True, help="why the rejection is wrong")
    p = command(
        dsub, "list", cmd_dispute_list, "list a project's open (or resolved) disputes", parents=[client]
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--resolved", action="store_true", help="resolved disputes, newest first")
    p.add_argument("--limit", type=int, default=50)
    p = command(
        dsub,
        "resolve",
        cmd_dispute_resolve,
        "uphold or overturn a disputed rejection (final)",
        parents=[client],
    )
    p.add_argument("task_id", metavar="TASK")
    p.add_argument("dispute_id", metavar="DISPUTE")
    p.add_argument("decision", choices=sorted(DECISION_BY_NAME))
    p.add_argument("--comment", default="")
    p = command(
        sub,
        "feedback",
        cmd_feedback,
        "a person's feedback feed, newest first, one JSON line each",
        parents=[client],
    )
    p.add_argument("--person", default="", help="whose feed (default: yours; others need manager)")
    p.add_argument("--project", default="", help="only this project")
    p.add_argument("--limit", type=int, default=0, help="at most this many items (0: all)")

    _add_quality_commands(parser, command, sub, client)
    from coordinator.cli_manager import add_manager_commands  # assign, pause, reprioritise, ...

    add_manager_commands(command, sub, client)
    from coordinator.cli_consensus import add_commands as add_consensus_commands  # agreement, consensus

    add_consensus_commands(command, sub, client)
    from coordinator.cli_guidance import add_commands as add_guidance_commands  # guideline, question, ...

    add_guidance_commands(parser, command, sub, client)

    # import / export / subscribe
    p = command(
        sub, "import", cmd_import, "import tasks from JSONL (one TaskSpec per line)", parents=[client]
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("file", metavar="FILE.jsonl")
    p.add_argument("--batch-size", type=int, default=500, help="tasks per request (default: %(default)s)")
    p.add_argument("--batch-id", default="", help="stable batch id: re-running the same import is a no-op")
    p = command(sub, "export", cmd_export, "write accepted labels as JSONL", parents=[client])
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--out", default=None, help="output file (default: stdout; appended to when resuming)")
    p.add_argument(
        "--cursor", default="", help="continue after the label with this cursor (resumes an export)"
    )
    p = command(
        sub, "subscribe", cmd_subscribe, "follow accepted labels live, one JSON line each", parents=[client]
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--resume-token", default="")

    # simulate
    from coordinator import simulate
    from coordinator.cli_distributed import add_commands as add_distributed_commands

    add_distributed_commands(command, sub)
    from coordinator.cli_planning import add_commands as add_planning_commands

    add_planning_commands(command, sub, client)

    p = command(
        sub, "simulate", cmd_simulate, "drive a simulated workforce through the API", parents=[client]
    )
    simulate.add_arguments(p)
    return parser


def _usage(parser: argparse.ArgumentParser, name: str) -> Handler:
    def show(args: argparse.Namespace) -> int:
        parser.parse_args([name, "--help"])
        return 2

    return show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.func
    try:
        return handler(args)
    except LabelweaveError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if isinstance(err, BrokenPipeError):
            return 0
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
