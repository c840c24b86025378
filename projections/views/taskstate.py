"""Task status as the projections see it, shared by the tasks and queue views.

Both views keep their *own* copy of the core task state (overlap, round, status, leases,
annotations) in their own collections and evolve it with `evolve`, so neither depends on the
other's rows or on the order in which views run. The rule matches the domain aggregate:

    free_slots = overlap - len(leases)
                 - |{annotations of the current round with status submitted/accepted/rejected}|
    status = "done"        if TaskCompleted was seen since the last TaskReopened
             "queued"      elif free_slots > 0
             "in_progress" elif any lease is held
             "in_review"   otherwise
"""

from __future__ import annotations

from typing import Any, NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp

from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.domain.review import pipeline_of_import, stage_name
from coordinator.eventlog.base import RecordedEvent
from projections.base import Doc

FIRST_ROUND = 1
"""Round of a freshly imported task; TaskReopened carries the new round number."""

LIVE = frozenset({"submitted", "accepted", "rejected"})
"""Annotation statuses that occupy a slot of the current round."""

NO_DEADLINE_MS = 9_999_999_999_999
"""Sorts after every real deadline (13 digits, year 2286)."""

TASK_EVENTS = frozenset(
    {
        "prelabel_ingested",
        "task_leased",
        "lease_released",
        "lease_expired",
        "annotation_submitted",
        "annotation_edited",
        "review_recorded",
        "annotation_accepted",
        "task_completed",
        "task_reopened",
        "annotation_abandoned",
    }
)
"""Task-stream events after TaskImported (every payload has `task_id`)."""

QUEUED, IN_PROGRESS, IN_REVIEW, DONE = "queued", "in_progress", "in_review", "done"


class _Memo:
    """One-entry memos of what every view decodes from the event it is applying: views of one
    process apply an event one after another, so one entry serves all but the first view.

    Each entry is one `(event, value)` tuple replaced by a single assignment, so runners in
    several threads of one process cannot pair one event with another's value; holding the
    event keeps its id from being reused, so `is` is exact."""

    __slots__ = ("imported", "kind", "stages")

    def __init__(self) -> None:
        self.kind: tuple[object, str | None] = (None, None)
        self.imported: tuple[object, Imported | None] = (None, None)
        self.stages: tuple[object, tuple[tuple[str, ...], tuple[int, ...]]] = (None, ((), ()))


class Imported(NamedTuple):
    """What the task views read of a `TaskImported`, decoded once per event (`imported_of`)."""

    task_id: str
    project_id: str
    overlap: int
    priority: int
    deadline_ms: int | None
    skills: tuple[str, ...]
    """Required skills, sorted, without duplicates."""
    expected_seconds: int


_memo = _Memo()


def payload_kind(event: RecordedEvent) -> str | None:
    """`event.envelope.WhichOneof("payload")` (~0.2 µs through upb), once for all views."""
    last = _memo.kind
    if last[0] is event:
        return last[1]
    kind = event.envelope.WhichOneof("payload")
    _memo.kind = (event, kind)
    return kind


def imported_of(event: RecordedEvent) -> Imported:
    """The task fields of a `task_imported` event, decoded once for all views."""
    last = _memo.imported
    if last[0] is event and last[1] is not None:
        return last[1]
    p = event.envelope.task_imported
    spec = p.task
    out = Imported(
        spec.task_id,
        p.project_id,
        int(spec.overlap),
        int(spec.priority),
        ts_ms(spec.deadline) if spec.HasField("deadline") else None,
        tuple(sorted(set(spec.required_skills))),
        int(spec.expected_seconds),
    )
    _memo.imported = (event, out)
    return out


def import_stages(event: RecordedEvent) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(stage names, stage kinds) of the review pipeline a `task_imported` event carries
    (`pipeline_of_import`), computed once for all views."""
    last = _memo.stages
    if last[0] is event:
        return last[1]
    stages = pipeline_of_import(event.envelope.task_imported).stages
    out = (tuple([stage_name(s) for s in stages]), tuple([int(s.kind) for s in stages]))
    _memo.stages = (event, out)
    return out


def ts_ms(ts: Timestamp) -> int:
    """Epoch milliseconds of a protobuf timestamp (integer arithmetic only)."""
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


def new_core(overlap: int) -> Doc:
    return {"overlap": overlap or 1, "round": FIRST_ROUND, "status": QUEUED, "leases": {}, "annotations": {}}


def free_slots(doc: Doc) -> int:
    rnd = doc["round"]
    used = sum(1 for a in doc["annotations"].values() if a["round"] == rnd and a["status"] in LIVE)
    return int(doc["overlap"]) - len(doc["leases"]) - used


def status_of(doc: Doc) -> str:
    if doc["status"] == DONE:
        return DONE
    if free_slots(doc) > 0:
        return QUEUED
    if doc["leases"]:
        return IN_PROGRESS
    return IN_REVIEW


def evolve(doc: Doc, kind: str, p: Any) -> None:
    """Apply one task event (`kind` is the payload field name, `p` the payload) to `doc`'s core
    fields in place and recompute `doc["status"]`."""
    leases: dict[str, Any] = doc["leases"]
    anns: dict[str, Any] = doc["annotations"]
    if kind == "task_leased":
        leases[p.lease_id] = {"person_id": p.person_id, "expires_ms": ts_ms(p.expires_at)}
    elif kind == "lease_released" or kind == "lease_expired":
        leases.pop(p.lease_id, None)
    elif kind == "annotation_submitted":
        leases.pop(p.lease_id, None)
        anns[p.annotation_id] = {
            "author_id": p.person_id,
            "version": int(p.version) or 1,
            "status": "submitted",
            "round": doc["round"],
            "reason_codes": [],
        }
    elif kind == "annotation_edited":
        a = anns.get(p.annotation_id)
        if a is not None:
            a["version"] = int(p.version)
            a["status"] = "submitted"
            a["reason_codes"] = []
    elif kind == "review_recorded":
        if p.verdict == model_pb2.VERDICT_REJECT:
            a = anns.get(p.annotation_id)
            if a is not None:
                a["status"] = "rejected"
                a["reason_codes"] = list(p.reason_codes)
    elif kind == "annotation_accepted":
        a = anns.get(p.annotation_id)
        if a is not None:
            a["status"] = "accepted"
            a["version"] = int(p.version)
    elif kind == "annotation_abandoned":
        a = anns.get(p.annotation_id)
        if a is not None:
            a["status"] = "abandoned"
    elif kind == "task_completed":
        doc["status"] = DONE
        return
    elif kind == "task_reopened":
        rnd = doc["round"]
        for a in anns.values():
            if a["round"] == rnd and a["status"] in LIVE:
                a["status"] = "superseded"
        doc["round"] = int(p.round)
        doc["status"] = QUEUED  # no longer done; recomputed below
    doc["status"] = status_of(doc)


def skill_key(skills: Any) -> str:
    return ",".join(sorted(set(skills)))


def queue_sort_key(priority: int, deadline_ms: int | None, imported_offset: int, task_id: str) -> str:
    """Orders priority DESC, then deadline ASC (none last), then import order, then task id.

    Priority is an int32; `2**31 - 1 - priority` maps it onto 0 … 2**32 - 1 (10 digits).
    """
    inv = 2_147_483_647 - int(priority)
    dl = NO_DEADLINE_MS if deadline_ms is None else min(max(deadline_ms, 0), NO_DEADLINE_MS)
    return f"{inv:010d}|{dl:013d}|{imported_offset:020d}|{task_id}"
