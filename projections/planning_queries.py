"""Typed reads for planning (`coordinator.domain.planning`): workers and their schedules, open
tasks with deadlines, remaining work, hourly throughput buckets and stage flows.

Every function is a point read or an ordered scan of one partition (a project's members are
read one point each), so it works on every store backend; sharded rows are summed here.
Projections are eventually consistent with the log.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.domain.planning import Bucket, OpenTask, SlaAssessment, Worker, sla_risks
from coordinator.domain.schedule import WorkSchedule, schedule_from_spec
from coordinator.errors import InvalidArgument
from projections import queries
from projections.base import SHARD_SEP, Doc, ProjectionStore, unshard
from projections.views.throughput import BUCKET_FIELDS, HOUR_MS, person_pk

log = logging.getLogger(__name__)

WORK_ROLES: Final = frozenset({model_pb2.ROLE_ANNOTATOR, model_pb2.ROLE_EXPERT})
"""Roles that lease annotation work (NextTask's)."""
MAX_OPEN_TASKS: Final = 5000
"""At most this many deadline tasks (earliest first) are planned per query."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _dt(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def ms_of(dt: datetime) -> int:
    delta = dt.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# ------------------------------------------------------------------ people


def person(store: ProjectionStore, person_id: str) -> Doc | None:
    return store.get("plan_person", person_id)


def schedule_of(doc: Doc) -> WorkSchedule | None:
    sched = doc.get("schedule") or {}
    spec = model_pb2.WorkScheduleSpec(
        shifts=[model_pb2.ShiftSpec(weekday=w, start=s, end=e) for w, s, e in sched.get("shifts", [])],
        days_off=list(sched.get("days_off", [])),
        capacity_per_hour=float(sched.get("capacity_per_hour", 0.0)),
    )
    try:
        return schedule_from_spec(str(doc["time_zone"]), spec)
    except InvalidArgument:  # validated when registered; a bad one plans as always available
        return None


def worker_of(doc: Doc) -> Worker:
    return Worker(
        person_id=str(doc["person_id"]),
        time_zone=str(doc["time_zone"]) or "UTC",
        skills=frozenset(doc.get("skills", ())),
        schedule=schedule_of(doc),
        capacity_per_hour=float((doc.get("schedule") or {}).get("capacity_per_hour", 0.0)),
        teams=tuple(doc.get("teams", ())),
    )


def members(store: ProjectionStore, project_id: str) -> list[Doc]:
    """The planning documents of the project's members, by person id."""
    out: list[Doc] = []
    for person_id in queries.members_of(store, project_id):
        doc = person(store, person_id)
        if doc is not None:
            out.append(doc)
    return out


def workers(store: ProjectionStore, project_id: str) -> list[Worker]:
    """Members who annotate (annotator or expert role) and are not suspended from the project."""
    return [
        worker_of(doc)
        for doc in members(store, project_id)
        if WORK_ROLES & set(doc.get("roles", ())) and project_id not in doc.get("suspended", ())
    ]


def teams(store: ProjectionStore, project_id: str) -> dict[str, list[str]]:
    """Team name → member ids, for the members that belong to a team."""
    out: dict[str, list[str]] = {}
    for doc in members(store, project_id):
        for team in doc.get("teams", ()):
            out.setdefault(str(team), []).append(str(doc["person_id"]))
    return out


# ------------------------------------------------------------------ tasks


def required_skills(store: ProjectionStore, project_id: str) -> set[str]:
    """Skills the project's queued tasks require (from the queue view's skill sets)."""
    out: set[str] = set()
    for sk, _ in store.scan("queue_keys", project_id):
        key = unshard(sk)
        if key:
            out.update(key.split(","))
    return out


def open_deadline_tasks(
    store: ProjectionStore, project_id: str, limit: int = MAX_OPEN_TASKS
) -> list[OpenTask]:
    """Open tasks with a deadline and work left, earliest deadline first."""
    return [
        OpenTask(
            task_id=str(doc["task_id"]),
            deadline=_dt(int(doc["deadline_ms"])),
            remaining=int(doc["remaining"]),
            expected_seconds=int(doc.get("expected_seconds", 0)),
            skills=frozenset(doc.get("skills", ())),
        )
        for _, doc in store.scan("plan_deadlines", project_id, limit=limit)
    ]


def sla_assessments(store: ProjectionStore, project_id: str, now: datetime) -> list[SlaAssessment]:
    """Every open task with a deadline of the project, planned against its workers' coming
    shifts (`coordinator.domain.planning.sla_risks`): the SLA-risk list and gauge both read this."""
    return sla_risks(open_deadline_tasks(store, project_id), workers(store, project_id), now)


def remaining_slots(store: ProjectionStore, project_id: str) -> int:
    return sum(int(doc["slots"]) for _, doc in store.scan("plan_remaining", project_id))


def annotate_oldest(store: ProjectionStore, project_id: str) -> datetime | None:
    """Since when the longest-waiting task with a free slot has had one."""
    rows = store.scan("plan_waiting", project_id, limit=1)
    return _dt(int(rows[0][0].split(SHARD_SEP, 1)[0])) if rows else None


def projects_with_deadlines(store: ProjectionStore) -> list[str]:
    return [pid for pid in queries.list_projects(store) if store.scan("plan_deadlines", pid, limit=1)]


# ------------------------------------------------------------------ throughput and flows


def _hour_bounds(start: datetime, end: datetime) -> tuple[str, str]:
    lo = ms_of(start) - ms_of(start) % HOUR_MS
    return f"{lo:013d}", f"{ms_of(end):013d}"


def buckets(
    store: ProjectionStore, project_id: str, person_id: str, start: datetime, end: datetime
) -> list[Bucket]:
    """The person's hourly buckets whose hour starts in [hour of start, end), shards summed."""
    lo, hi = _hour_bounds(start, end)
    merged: dict[int, dict[str, Any]] = {}
    for sk, doc in store.scan("throughput", person_pk(project_id, person_id), start=lo, end=hi):
        hour = int(sk.split(SHARD_SEP, 1)[0])
        acc = merged.setdefault(hour, {f: 0 for f in BUCKET_FIELDS} | {"reasons": {}})
        for f in BUCKET_FIELDS:
            acc[f] += int(doc.get(f, 0))
        for code, n in doc.get("reasons", {}).items():
            acc["reasons"][code] = acc["reasons"].get(code, 0) + int(n)
    return [Bucket(hour_start=_dt(hour), **acc) for hour, acc in sorted(merged.items())]


def stage_flows(
    store: ProjectionStore, project_id: str, start: datetime, end: datetime
) -> dict[str, tuple[int, int]]:
    """Stage → (arrivals, departures) in the hours starting in [hour of start, end)."""
    lo, hi = _hour_bounds(start, end)
    out: dict[str, tuple[int, int]] = {}
    for sk, doc in store.scan("stage_flow", project_id, start=lo, end=hi):
        stage = sk.split(SHARD_SEP)[1]
        i, o = out.get(stage, (0, 0))
        out[stage] = (i + int(doc["in"]), o + int(doc["out"]))
    return out


# ------------------------------------------------------------------ agreement (another view)


def agreement_summary(store: ProjectionStore, project_id: str) -> dict[str, Any] | None:
    """The project's inter-annotator agreement from `projections.agreement_queries` when that
    module exists (another change adds it); None: unknown."""
    try:
        module = importlib.import_module("projections.agreement_queries")
    except ImportError:
        return None
    fn: Callable[[ProjectionStore, str], Any] | None = getattr(module, "agreement_summary", None)
    if fn is None:
        return None
    try:
        summary = fn(store, project_id)
    except Exception:  # another view's bug must not take the dashboards down: unknown
        log.exception("agreement_summary(%r) failed; agreement reported as unknown", project_id)
        return None
    return dict(summary) if isinstance(summary, dict) else None


def done_by_person(
    store: ProjectionStore, project_id: str, people: Iterable[str], start: datetime, end: datetime
) -> tuple[dict[str, int], list[int]]:
    """Work units (submissions + review verdicts given) per person over [start, end), and the
    project's units per hour of that window (for the forecast's band)."""
    per_person: dict[str, int] = {}
    hours = max(int((end - start) / timedelta(hours=1)), 1)
    first = ms_of(start) - ms_of(start) % HOUR_MS
    hourly = [0] * (hours + 1)
    for pid in people:
        n = 0
        for b in buckets(store, project_id, pid, start, end):
            units = b.submitted + b.reviewed
            n += units
            h = (ms_of(b.hour_start) - first) // HOUR_MS
            if 0 <= h < len(hourly):
                hourly[h] += units
        per_person[pid] = n
    return per_person, hourly
