"""Throughput view: what planning (coverage, SLA risk, dashboards, bottlenecks, forecasts) reads.

Hourly buckets of work done per project and person, hourly flows in and out of every stage,
the remaining annotation work of every open task (with its deadline and expected time), and
each person's schedule and suspensions. `projections.planning_queries` reads these rows;
`coordinator.domain.planning` computes on them.

Single-writer rule (docs/architecture.md): every read-modify-written document is written from
ONE log partition.
- "plan_task" and "plan_person" are keyed by their stream (task, person): one partition.
- "plan_waiting" and "plan_deadlines" rows carry the task id in their key; only that task's
  stream writes them (inserts, deletes and rewrites of its own row).
- Counters fed by many streams ("plan_remaining", "throughput", "stage_flow") keep one row per
  source partition (`projections.base.shard_of`) and queries sum the shards; so does the
  retention index of each bucket family ("throughput_hours", "stage_flow_hours").

Buckets are UTC hours of the event's `occurred_at` (the domain clock; `recorded_at` when
unset), so a rebuild writes the very same rows. Retention is bounded: when a shard opens a new
hour bucket for a key it deletes that key's buckets older than `RETENTION_HOURS` (14 days)
before it, using the key's hour index. Windows longer than the retention are refused by the
queries, so what a query reads is always complete.

Collections
- "plan_task"      pk=task_id → {task_id, project_id, expected_seconds, deadline_ms, skills,
                   stages, kinds, pending {annotation_id: stage}, disputes {dispute_id:
                   annotation_id}, remaining, waiting_sk, + the core task state of `taskstate`}
- "plan_waiting"   pk=project_id, sk=f"{since_ms:013d}|{task_id}" → {task_id}: tasks with a free
                   slot, oldest first (the annotate stage's age)
- "plan_deadlines" pk=project_id, sk=f"{deadline_ms:013d}|{task_id}" → {task_id, deadline_ms,
                   remaining, expected_seconds, skills}: open tasks with a deadline, earliest first
- "plan_remaining" pk=project_id, sk=shard → {slots}: annotation slots still to do (open tasks)
- "plan_person"    pk=person_id → {person_id, time_zone, roles, skills, teams, schedule
                   {shifts [[weekday, "HH:MM", "HH:MM"]], days_off, capacity_per_hour},
                   suspended [project ids]}
- "throughput"     pk=f"{project_id}|{person_id}", sk=f"{hour_ms:013d}|{shard}" → {submitted,
                   accepted, verdicts, rejected, overturned, reviewed, time_on_task_ms,
                   reasons {code: n}}: the person's work as an author (submitted, accepted,
                   verdicts on their work, rejections by reason, overturned rejections) and as
                   a reviewer (reviewed) in that UTC hour
- "throughput_hours" pk=f"{project_id}|{person_id}", sk=shard → {hours [hour_ms, ...]}
- "stage_flow"     pk=project_id, sk=f"{hour_ms:013d}|{stage}|{shard}" → {in, out}: work that
                   arrived at / left a stage in that hour. Stage "annotate": slots that became
                   open (import, reopen, rejection, abandonment) and slots done (submission,
                   rework, completion); review stages: arrivals and departures of annotations;
                   the expert stage: disputes opened and closed
- "stage_flow_hours" pk=project_id, sk=shard → {hours [hour_ms, ...]}
"""

from __future__ import annotations

from typing import Any, Final

from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
from coordinator.eventlog.base import RecordedEvent
from projections.base import SHARD_SEP, Doc, ViewTx, shard_of
from projections.views.taskstate import (
    DONE,
    QUEUED,
    TASK_EVENTS,
    evolve,
    import_stages,
    imported_of,
    new_core,
    payload_kind,
    ts_ms,
)

HOUR_MS: Final = 3_600_000
RETENTION_HOURS: Final = 14 * 24
"""Hourly buckets older than this (behind the newest bucket of the same key) are deleted."""
ANNOTATE: Final = "annotate"
"""The stage name of annotation work in flows, bottleneck reports and gauges."""

BUCKET_FIELDS: Final = (
    "submitted",
    "accepted",
    "verdicts",
    "rejected",
    "overturned",
    "reviewed",
    "time_on_task_ms",
)
_DONE_SLOT: Final = frozenset({"submitted", "accepted"})
_LIVE: Final = frozenset({"submitted", "accepted", "rejected"})
_EXPERT: Final = model_pb2.REVIEW_STAGE_KIND_EXPERT_RESOLUTION
_REVIEW_EVENTS: Final = frozenset({"review_routed", "dispute_opened", "dispute_resolved"})


def hour_of(ms: int) -> int:
    return ms - ms % HOUR_MS


def person_pk(project_id: str, person_id: str) -> str:
    return f"{project_id}{SHARD_SEP}{person_id}"


def hour_sk(hour_ms: int, shard: str) -> str:
    return f"{max(hour_ms, 0):013d}{SHARD_SEP}{shard}"


def flow_sk(hour_ms: int, stage: str, shard: str) -> str:
    return f"{max(hour_ms, 0):013d}{SHARD_SEP}{stage}{SHARD_SEP}{shard}"


def task_sk(ms: int, task_id: str) -> str:
    return f"{min(max(ms, 0), 9_999_999_999_999):013d}{SHARD_SEP}{task_id}"


def remaining_of(doc: Doc) -> int:
    """Annotation slots still to do: overlap minus the current round's submitted or accepted
    annotations (a rejected one is rework still to do); 0 once the task is done."""
    if doc["status"] == DONE:
        return 0
    rnd = doc["round"]
    done = sum(1 for a in doc["annotations"].values() if a["round"] == rnd and a["status"] in _DONE_SLOT)
    return max(int(doc["overlap"]) - done, 0)


def teams_of(spec: model_pb2.PersonSpec) -> list[str]:
    return sorted(set(spec.teams))


def person_doc(spec: model_pb2.PersonSpec, suspended: list[str]) -> Doc:
    sched = spec.schedule
    return {
        "person_id": spec.person_id,
        "time_zone": spec.time_zone,
        "roles": sorted(int(r) for r in spec.roles),
        "skills": sorted({s.name for s in spec.skills}),
        "teams": teams_of(spec),
        "schedule": {
            "shifts": [[int(s.weekday), s.start, s.end] for s in sched.shifts],
            "days_off": list(sched.days_off),
            "capacity_per_hour": float(sched.capacity_per_hour),
        },
        "suspended": suspended,
    }


class ThroughputView:
    name: str = "throughput"
    collections: tuple[str, ...] = (
        "plan_task",
        "plan_waiting",
        "plan_deadlines",
        "plan_remaining",
        "plan_person",
        "throughput",
        "throughput_hours",
        "stage_flow",
        "stage_flow_hours",
    )

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = payload_kind(event) or ""
        if kind == "task_imported":
            self._imported(event, env.task_imported, tx)
        elif kind in TASK_EVENTS or kind in _REVIEW_EVENTS:
            p = getattr(env, kind)
            doc = tx.get("plan_task", p.task_id)
            if doc is not None:
                _TaskApply(event, doc, tx).apply(kind, p)
        elif kind in ("person_registered", "person_updated"):
            spec = getattr(env, kind).person
            old = tx.get("plan_person", spec.person_id)
            tx.put("plan_person", spec.person_id, "", person_doc(spec, old["suspended"] if old else []))
        elif kind == "skill_granted":
            self._person_change(tx, env.skill_granted.person_id, skill=env.skill_granted.skill.name)
        elif kind == "person_suspended":
            self._person_change(tx, env.person_suspended.person_id, suspend=env.person_suspended.project_id)
        elif kind == "person_reinstated":
            self._person_change(
                tx, env.person_reinstated.person_id, reinstate=env.person_reinstated.project_id
            )

    @staticmethod
    def _person_change(
        tx: ViewTx, person_id: str, *, skill: str = "", suspend: str = "", reinstate: str = ""
    ) -> None:
        doc = tx.get("plan_person", person_id)
        if doc is None:
            return
        if skill:
            doc["skills"] = sorted({*doc["skills"], skill})
        if suspend:
            doc["suspended"] = sorted({*doc["suspended"], suspend})
        if reinstate:
            doc["suspended"] = [p for p in doc["suspended"] if p != reinstate]
        tx.put("plan_person", person_id, "", doc)

    @staticmethod
    def _imported(event: RecordedEvent, p: events_pb2.TaskImported, tx: ViewTx) -> None:
        imp = imported_of(event)
        if tx.get("plan_task", imp.task_id) is not None:
            return
        names, kinds = import_stages(event)
        doc = new_core(imp.overlap)
        doc["task_id"] = imp.task_id
        doc["project_id"] = imp.project_id
        doc["expected_seconds"] = imp.expected_seconds
        doc["deadline_ms"] = imp.deadline_ms
        doc["skills"] = list(imp.skills)
        doc["stages"] = list(names)
        doc["kinds"] = list(kinds)
        doc["pending"] = {}
        doc["disputes"] = {}
        doc["remaining"] = 0
        doc["waiting_sk"] = ""
        _TaskApply(event, doc, tx).settle()


def _event_ms(env: events_pb2.EventEnvelope) -> int:
    return ts_ms(env.occurred_at) if env.HasField("occurred_at") else ts_ms(env.recorded_at)


class _TaskApply:
    """One event applied to one task's planning document and the rows it owns."""

    __slots__ = ("doc", "hour", "ms", "project_id", "shard", "tx")

    def __init__(self, event: RecordedEvent, doc: Doc, tx: ViewTx) -> None:
        self.doc = doc
        self.tx = tx
        self.ms = _event_ms(event.envelope)
        self.hour = hour_of(self.ms)
        self.shard = shard_of(event)
        self.project_id: str = doc["project_id"]

    # ------------------------------------------------------------------ buckets

    def _retain(self, collection: str, index: str, pk: str, sk_of: Any) -> None:
        """Record this hour in the key's hour index; delete buckets beyond the retention."""
        idx = self.tx.get(index, pk, self.shard) or {"hours": []}
        hours: list[int] = idx["hours"]
        if self.hour in hours:
            return
        cutoff = self.hour - RETENTION_HOURS * HOUR_MS
        for old in [h for h in hours if h < cutoff]:
            for sk in sk_of(old):
                self.tx.delete(collection, pk, sk)
        idx["hours"] = sorted({*(h for h in hours if h >= cutoff), self.hour})
        self.tx.put(index, pk, self.shard, idx)

    def count(self, person_id: str, inc: dict[str, int], reasons: list[str] | None = None) -> None:
        if not person_id:
            return
        pk = person_pk(self.project_id, person_id)
        self._retain("throughput", "throughput_hours", pk, lambda h: [hour_sk(h, self.shard)])
        sk = hour_sk(self.hour, self.shard)
        row = self.tx.get("throughput", pk, sk) or {f: 0 for f in BUCKET_FIELDS}
        for f, n in inc.items():
            row[f] = int(row.get(f, 0)) + n
        if reasons:
            by_reason: dict[str, int] = dict(row.get("reasons", {}))
            for code in reasons:
                by_reason[code] = by_reason.get(code, 0) + 1
            row["reasons"] = by_reason
        self.tx.put("throughput", pk, sk, row)

    def flow(self, stage: str, direction: str, n: int = 1) -> None:
        if not stage or n <= 0:
            return
        pid = self.project_id
        self._retain(
            "stage_flow",
            "stage_flow_hours",
            pid,
            lambda h: [flow_sk(h, s, self.shard) for s in (ANNOTATE, *self.doc["stages"])],
        )
        sk = flow_sk(self.hour, stage, self.shard)
        row = self.tx.get("stage_flow", pid, sk) or {"in": 0, "out": 0}
        row[direction] = int(row[direction]) + n
        self.tx.put("stage_flow", pid, sk, row)

    # ------------------------------------------------------------------ review stages

    def _next_stage(self, start: int) -> str:
        kinds = self.doc["kinds"]
        for i in range(max(start, 0), len(kinds)):
            if kinds[i] != _EXPERT:
                return str(self.doc["stages"][i])
        return ""

    def _expert(self) -> str:
        for name, kind in zip(self.doc["stages"], self.doc["kinds"], strict=True):
            if kind == _EXPERT:
                return str(name)
        return ""

    def move(self, annotation_id: str, stage: str) -> None:
        """The annotation now waits at `stage` ("": at none); flows out of and into stages."""
        pending: dict[str, str] = self.doc["pending"]
        old = pending.get(annotation_id, "")
        if old == stage:
            return
        self.flow(old, "out")
        self.flow(stage, "in")
        if stage:
            pending[annotation_id] = stage
        else:
            pending.pop(annotation_id, None)

    def close_dispute(self, dispute_id: str) -> None:
        if self.doc["disputes"].pop(dispute_id, None) is not None:
            self.flow(self._expert(), "out")

    # ------------------------------------------------------------------ events

    def apply(self, kind: str, p: Any) -> None:
        doc = self.doc
        anns: dict[str, Any] = doc["annotations"]
        if kind in TASK_EVENTS:
            if kind == "task_reopened":
                rnd = doc["round"]
                for annotation_id, ann in anns.items():
                    if ann["round"] == rnd and ann["status"] in _LIVE:
                        self.move(annotation_id, "")
                for dispute_id in sorted(doc["disputes"]):
                    self.close_dispute(dispute_id)
            evolve(doc, kind, p)
        if kind == "annotation_submitted":
            self.count(p.person_id, {"submitted": 1, "time_on_task_ms": int(p.time_on_task_ms)})
            self.move(p.annotation_id, self._next_stage(0))
        elif kind == "annotation_edited":
            self.move(p.annotation_id, "")
            self.move(p.annotation_id, self._next_stage(0))
        elif kind == "review_routed":
            index = int(p.stage_index)
            self.move(p.annotation_id, self.stage_at(index) if p.sampled else self._next_stage(index + 1))
        elif kind == "review_recorded":
            index = int(p.stage_index)
            rejected = p.verdict == model_pb2.VERDICT_REJECT
            self.move(p.annotation_id, "" if rejected else self._next_stage(index + 1))
            self.count(p.reviewer_id, {"reviewed": 1})
            self.count(
                p.author_id,
                {"verdicts": 1, "rejected": 1 if rejected else 0},
                list(p.reason_codes) if rejected else None,
            )
        elif kind == "annotation_accepted":
            self.move(p.annotation_id, "")
            self.count(p.author_id, {"accepted": 1})
        elif kind == "annotation_abandoned":
            self.move(p.annotation_id, "")
        elif kind == "dispute_opened":
            doc["disputes"][p.dispute_id] = p.annotation_id
            self.flow(self._expert(), "in")
        elif kind == "dispute_resolved":
            self.close_dispute(p.dispute_id)
            if p.decision == model_pb2.DISPUTE_DECISION_OVERTURN:
                self.count(p.author_id, {"overturned": 1})
                self.move(p.annotation_id, self._next_stage(int(p.stage_index) + 1))
        self.settle()

    def stage_at(self, index: int) -> str:
        stages = self.doc["stages"]
        return str(stages[index]) if 0 <= index < len(stages) else ""

    def settle(self) -> None:
        """Bring the task's derived rows (waiting, deadline, remaining counter, annotate flow) in
        line with its state, and store the document."""
        doc, tx, pid, shard = self.doc, self.tx, self.project_id, self.shard
        task_id = doc["task_id"]
        old, new = int(doc["remaining"]), remaining_of(doc)
        if new != old:
            row = tx.get("plan_remaining", pid, shard)
            tx.put(
                "plan_remaining", pid, shard, {"slots": max((int(row["slots"]) if row else 0) + new - old, 0)}
            )
            self.flow(ANNOTATE, "in" if new > old else "out", abs(new - old))
            doc["remaining"] = new
        elif tx.get("plan_remaining", pid, shard) is None:
            tx.put("plan_remaining", pid, shard, {"slots": 0})  # so the project reads 0, not nothing
        deadline_ms = doc["deadline_ms"]
        if deadline_ms is not None:
            dl_sk = task_sk(int(deadline_ms), task_id)
            if new > 0 and new != old:
                tx.put(
                    "plan_deadlines",
                    pid,
                    dl_sk,
                    {
                        "task_id": task_id,
                        "deadline_ms": deadline_ms,
                        "remaining": new,
                        "expected_seconds": doc["expected_seconds"],
                        "skills": doc["skills"],
                    },
                )
            elif new == 0 and old > 0:
                tx.delete("plan_deadlines", pid, dl_sk)
        queued = doc["status"] == QUEUED
        waiting_sk = doc["waiting_sk"]
        if queued and not waiting_sk:
            doc["waiting_sk"] = waiting_sk = task_sk(self.ms, task_id)
            tx.put("plan_waiting", pid, waiting_sk, {"task_id": task_id})
        elif not queued and waiting_sk:
            tx.delete("plan_waiting", pid, waiting_sk)
            doc["waiting_sk"] = ""
        tx.put("plan_task", task_id, "", doc)
