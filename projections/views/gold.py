"""Gold view: gold and training tasks, gold results, rolling accuracy, suspensions, and the
quality feed (docs/quality.md).

Single-writer rule (each log partition is applied on its own, in parallel): the only documents
that are read-modify-written are "gold_accuracy" rows, and each is written only by events of one
person's stream (its key holds the person id). Everything else is a pure insert or delete under
a key no other stream (or, for the scored log, no other partition) writes (the task id, the
event id or the partition is part of it). Nothing here reads a
document another stream writes, so the rows do not depend on how partitions interleave.

Collections
- "gold_tasks"       pk=f"{project_id}|gold" or f"{project_id}|training|{skill}", sk=task_id →
      {task_id, required_skills, expected_seconds}: what NextTask mixes in or a qualification
      attempt serves (task stream, insert).
- "gold_results"     pk=f"{project_id}|{person_id}", sk=f"{recorded_ms:013d}|{event_id}" →
      {task_id, annotation_id, purpose, skill, attempt, score, passed, classes, at_ms, event_id,
       position}: one row per scored answer (task stream `GoldScored`, insert).
- "gold_accuracy"    pk=project_id, sk=person_id → the person's rolling record (person stream):
      {person_id, project_id, window, results, passed, accuracy, total, entries: [{task_id,
       event_id, score, passed, at_ms, classes: {label: [matched, missed, extra]}}],
       suspended, suspension?: {reason, accuracy, threshold, results, since_ms, retraining_skill,
       position}, position}
      `results`, `passed` and `accuracy` are the values the person aggregate decided with
      (`GoldResultRecorded`); `entries` are the window's results for the per-class figures.
      A reinstatement empties the window.
- "gold_suspensions" pk=project_id, sk=person_id → the suspension while it lasts (person stream:
      insert on PersonSuspended, delete on PersonReinstated).
- "gold_scored"      pk=scored_pk(shard, offset), sk=f"{offset:020d}" → {task_id, annotation_id,
      person_id, project_id, event_id, at_ms}: every scored answer in log order per partition
      (task stream `GoldScored`, insert), in buckets of 2**20 offsets.
- "gold_scored_buckets" pk="all", sk=f"{shard}|{bucket:08d}" → {}: the non-empty buckets (written
      only by events of that partition).
- "gold_recorded"    pk=gold_event_id (the GoldScored event's id), sk="" → {task_id, annotation_id,
      person_id}: the answers entered into their author's record (person stream
      `GoldResultRecorded`, insert).
      Scored minus recorded = answers whose `RecordGoldResult` was lost (a crash between the
      two appends); the gold reconciler (`coordinator/gold_reconcile.py`) walks "gold_scored" in
      log order per partition and records those. Both sides are pure inserts written by one
      stream each, so the difference does not depend on how partitions interleave.
- "quality_feedback" pk=person_id, sk=f"{recorded_ms:013d}|{event_id}" → a feed row (person
      stream, insert): {kind: qualification | suspended | reinstated, project_id, at_ms, position,
      event_id, event: the payload as protobuf JSON, retraining?: RetrainingAssigned as JSON (a
      suspension's row gains it from the event that follows in the same command)}.
      ListFeedback merges it with the review feed.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import json_format

from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.eventlog.base import RecordedEvent
from projections.base import SHARD_SEP, Doc, ViewTx, shard_of
from projections.views.taskstate import payload_kind, ts_ms


def gold_tasks_pk(project_id: str, training_skill: str | None = None) -> str:
    return f"{project_id}|gold" if training_skill is None else f"{project_id}|training|{training_skill}"


def results_pk(project_id: str, person_id: str) -> str:
    return f"{project_id}|{person_id}"


def time_sk(ms: int, event_id: str) -> str:
    return f"{max(ms, 0):013d}|{event_id}"


SCORED_BUCKET: Final = 1 << 20
"""Offsets per "gold_scored" partition, so no store partition grows without bound."""


def scored_bucket(shard: str, offset: int) -> str:
    return f"{shard}{SHARD_SEP}{offset // SCORED_BUCKET:08d}"


def offset_sk(offset: int) -> str:
    return f"{offset:020d}"


def classes_doc(classes: Any) -> Doc:
    return {c.label: [int(c.matched), int(c.missed), int(c.extra)] for c in classes}


def _json(message: Any) -> Doc:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class GoldView:
    name: str = "gold"
    collections: tuple[str, ...] = (
        "gold_tasks",
        "gold_results",
        "gold_accuracy",
        "gold_suspensions",
        "quality_feedback",
        "gold_scored",
        "gold_scored_buckets",
        "gold_recorded",
    )

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = payload_kind(event)
        if kind == "gold_task_imported":
            p = env.gold_task_imported
            spec = p.task
            tx.put(
                "gold_tasks",
                gold_tasks_pk(p.project_id, p.gold.skill if p.gold.training else None),
                spec.task_id,
                {
                    "task_id": spec.task_id,
                    "required_skills": sorted(set(spec.required_skills)),
                    "expected_seconds": int(spec.expected_seconds),
                },
            )
        elif kind == "gold_scored":
            s = env.gold_scored
            ms = ts_ms(env.recorded_at)
            tx.put(
                "gold_results",
                results_pk(s.project_id, s.person_id),
                time_sk(ms, env.event_id),
                {
                    "task_id": s.task_id,
                    "annotation_id": s.annotation_id,
                    "purpose": int(s.purpose),
                    "skill": s.skill,
                    "attempt": int(s.attempt),
                    "score": float(s.score),
                    "passed": bool(s.passed),
                    "classes": classes_doc(s.classes),
                    "at_ms": ms,
                    "event_id": env.event_id,
                    "position": str(event.position),
                },
            )
            offset = event.position.offset
            bucket = scored_bucket(shard_of(event), offset)
            tx.put(
                "gold_scored",
                bucket,
                offset_sk(offset),
                {
                    "task_id": s.task_id,
                    "annotation_id": s.annotation_id,
                    "person_id": s.person_id,
                    "project_id": s.project_id,
                    "event_id": env.event_id,
                    "at_ms": ms,
                },
            )
            tx.put("gold_scored_buckets", "all", bucket, {})
        elif kind == "gold_result_recorded":
            gr = env.gold_result_recorded
            tx.put(
                "gold_recorded",
                gr.gold_event_id,
                "",
                {"task_id": gr.task_id, "annotation_id": gr.annotation_id, "person_id": gr.person_id},
            )
            self._recorded(event, tx)
        elif kind == "person_suspended":
            self._suspended(event, tx)
        elif kind == "retraining_assigned":
            r = env.retraining_assigned
            doc = tx.get("gold_accuracy", r.project_id, r.person_id)
            if doc is None or not doc.get("suspension"):
                return
            suspension = doc["suspension"]
            suspension["retraining_skill"] = r.skill
            tx.put("gold_accuracy", r.project_id, r.person_id, doc)
            tx.put("gold_suspensions", r.project_id, r.person_id, dict(suspension))
            row = tx.get("quality_feedback", r.person_id, suspension.get("feed_sk", ""))
            if row is not None:  # the suspension's feed row says what to pass again
                row["retraining"] = _json(r)
                tx.put("quality_feedback", r.person_id, suspension["feed_sk"], row)
        elif kind == "person_reinstated":
            ri = env.person_reinstated
            doc = tx.get("gold_accuracy", ri.project_id, ri.person_id) or _empty(ri.person_id, ri.project_id)
            doc.update(entries=[], results=0, passed=0, accuracy=0.0, suspended=False)
            doc.pop("suspension", None)
            doc["position"] = str(event.position)
            tx.put("gold_accuracy", ri.project_id, ri.person_id, doc)
            tx.delete("gold_suspensions", ri.project_id, ri.person_id)
            _feed(event, tx, ri.person_id, ri.project_id, "reinstated", ri)
        elif kind == "qualification_completed":
            q = env.qualification_completed
            _feed(event, tx, q.person_id, q.project_id, "qualification", q)

    @staticmethod
    def _recorded(event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        r = env.gold_result_recorded
        if r.purpose != model_pb2.GOLD_PURPOSE_GOLD:
            return  # training answers count towards their qualification, not the gold record
        doc = tx.get("gold_accuracy", r.project_id, r.person_id) or _empty(r.person_id, r.project_id)
        entries: list[Doc] = doc["entries"]
        entries.append(
            {
                "task_id": r.task_id,
                "event_id": r.gold_event_id,
                "score": float(r.score),
                "passed": bool(r.passed),
                "at_ms": ts_ms(env.recorded_at),
                "classes": classes_doc(r.classes),
            }
        )
        window = max(int(r.window), 1)
        doc["entries"] = entries[-window:]
        doc.update(
            window=window,
            results=int(r.results),
            passed=int(r.passed_results),
            accuracy=float(r.accuracy),
            total=int(doc.get("total", 0)) + 1,
            position=str(event.position),
        )
        tx.put("gold_accuracy", r.project_id, r.person_id, doc)

    @staticmethod
    def _suspended(event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        s = env.person_suspended
        doc = tx.get("gold_accuracy", s.project_id, s.person_id) or _empty(s.person_id, s.project_id)
        suspension: Doc = {
            "reason": s.reason,
            "accuracy": float(s.accuracy),
            "threshold": float(s.threshold),
            "results": int(s.results),
            "since_ms": ts_ms(env.recorded_at),
            "retraining_skill": "",
            "position": str(event.position),
            "feed_sk": _feed(event, tx, s.person_id, s.project_id, "suspended", s),
        }
        doc["suspended"] = True
        doc["suspension"] = suspension
        doc["position"] = str(event.position)
        tx.put("gold_accuracy", s.project_id, s.person_id, doc)
        tx.put("gold_suspensions", s.project_id, s.person_id, dict(suspension))


def _feed(event: RecordedEvent, tx: ViewTx, person_id: str, project_id: str, kind: str, payload: Any) -> str:
    """Insert a feed row for `person_id`; returns its sort key."""
    env = event.envelope
    ms = ts_ms(env.recorded_at)
    sk = time_sk(ms, env.event_id)
    tx.put(
        "quality_feedback",
        person_id,
        sk,
        {
            "kind": kind,
            "project_id": project_id,
            "at_ms": ms,
            "position": str(event.position),
            "event_id": env.event_id,
            "event": _json(payload),
        },
    )
    return sk


def _empty(person_id: str, project_id: str) -> Doc:
    return {
        "person_id": person_id,
        "project_id": project_id,
        "window": 0,
        "results": 0,
        "passed": 0,
        "accuracy": 0.0,
        "total": 0,
        "entries": [],
        "suspended": False,
        "position": "",
    }
