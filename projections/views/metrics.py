"""Annotator metrics per project and across projects.

Collections
- "annotator_metrics" pk=project_id (or "*" for all projects), sk=f"{person_id}|{shard}" →
      {person_id, leased, submitted, accepted, rejected, edits, expired, time_on_task_ms}
      One row per log partition the person's work came from (`projections.base.shard_of`: the
      distributed backend applies each partition independently); `projections.queries` sums them.
- "metrics_task"      pk=task_id, sk="" → {project_id}   (for payloads without project_id)

Counted: TaskLeased → leased (lessee); AnnotationSubmitted → submitted and time_on_task_ms
(author); AnnotationAccepted → accepted (author); ReviewRecorded REJECT → rejected (author);
AnnotationEdited → edits (editor); LeaseExpired → expired (lease holder); DisputeResolved
OVERTURN → rejected - 1 (author): an overturned rejection does not count against anyone.
"""

from __future__ import annotations

from typing import Any

from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.eventlog.base import RecordedEvent
from projections.base import SHARD_SEP, Doc, ViewTx, shard_of
from projections.views.taskstate import imported_of, payload_kind

FIELDS = ("leased", "submitted", "accepted", "rejected", "edits", "expired", "time_on_task_ms")
ALL_PROJECTS = "*"


def zero(person_id: str) -> Doc:
    doc: Doc = {"person_id": person_id}
    for f in FIELDS:
        doc[f] = 0
    return doc


class MetricsView:
    name: str = "metrics"
    collections: tuple[str, ...] = ("annotator_metrics", "metrics_task")

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = payload_kind(event)
        shard = shard_of(event)
        if kind == "task_imported":
            imp = imported_of(event)
            tx.put("metrics_task", imp.task_id, "", {"project_id": imp.project_id})
        elif kind == "gold_task_imported":  # gold: its leases expire too
            g = env.gold_task_imported
            tx.put("metrics_task", g.task.task_id, "", {"project_id": g.project_id})
        elif kind == "task_leased":
            p1 = env.task_leased
            self._bump(tx, shard, self._project(tx, p1), p1.person_id, {"leased": 1})
        elif kind == "annotation_submitted":
            p2 = env.annotation_submitted
            self._bump(
                tx,
                shard,
                self._project(tx, p2),
                p2.person_id,
                {"submitted": 1, "time_on_task_ms": int(p2.time_on_task_ms)},
            )
        elif kind == "annotation_accepted":
            p3 = env.annotation_accepted
            self._bump(tx, shard, self._project(tx, p3), p3.author_id, {"accepted": 1})
        elif kind == "review_recorded":
            p4 = env.review_recorded
            if p4.verdict == model_pb2.VERDICT_REJECT:
                self._bump(tx, shard, self._project(tx, p4), p4.author_id, {"rejected": 1})
        elif kind == "dispute_resolved":
            d = env.dispute_resolved
            if d.decision == model_pb2.DISPUTE_DECISION_OVERTURN:
                # the expert voided the rejection: it no longer counts against the author
                self._bump(tx, shard, self._project(tx, d), d.author_id, {"rejected": -1})
        elif kind == "annotation_edited":
            p5 = env.annotation_edited
            self._bump(tx, shard, self._project(tx, p5), p5.person_id, {"edits": 1})
        elif kind == "lease_expired":
            p6 = env.lease_expired
            self._bump(tx, shard, self._project(tx, p6), p6.person_id, {"expired": 1})

    @staticmethod
    def _project(tx: ViewTx, p: Any) -> str:
        pid: str = getattr(p, "project_id", "")
        if pid:
            return pid
        doc = tx.get("metrics_task", p.task_id)
        return str(doc["project_id"]) if doc else ""

    @staticmethod
    def _bump(tx: ViewTx, shard: str, project_id: str, person_id: str, inc: dict[str, int]) -> None:
        if not person_id:
            return
        scopes = (project_id, ALL_PROJECTS) if project_id else (ALL_PROJECTS,)
        sk = f"{person_id}{SHARD_SEP}{shard}"
        for scope in scopes:
            doc = tx.get("annotator_metrics", scope, sk) or zero(person_id)
            for f, n in inc.items():
                doc[f] = doc.get(f, 0) + n
            tx.put("annotator_metrics", scope, sk, doc)
