"""Review view: the layered review pipeline as read models.

Single-writer rule (the distributed backend applies each log partition on its own worker, in
parallel): a document that is read-modify-written is only ever written by events of ONE stream,
which here is always the task's own stream, so always one log partition. Rows that events of
many streams write are pure inserts and deletes under keys no other stream uses (the task id or
the event id is part of the key). Counters fed by many tasks are sharded by the event's log
partition (`projections.base.shard_of`, sk suffix `|00000`) and summed by the queries
(`projections.review_queries`). Nothing here reads another stream's documents, so the rows do
not depend on how partitions interleave.

Collections
- "review_task"   pk=task_id, sk="" → the task's review state (read-modify-write, task stream):
      {task_id, project_id, round, stages: [name, ...], kinds: [ReviewStageKind, ...],
       annotations: {annotation_id: {author_id, version, round, status, pending, pending_sk,
                                     stages: {stage: StageRecord},
                                     reject_row?: [pk, sk], disputes?: [dispute_id, ...]}}}
      StageRecord = {state, version, at_ms, reviewer_id?, reason_codes?, comment?, sampled?,
                     rate?, sample_point?}; state is pending | skipped | accepted | rejected |
      corrected | overturned (the latest record per stage). Keys marked ? are written only when
      they carry something (readers default them: "", [], sampled true, rate 1.0, point 0.0),
      which keeps the rows small: this view writes a few rows for every piece of work.
- "review_queue"  pk=f"{project_id}|{stage}", sk=f"{entered_ms:013d}|{task_id}|{annotation_id}" →
      {task_id, annotation_id, version, author_id, stage, entered_ms, rate}: work waiting at a
      stage, oldest first (insert when it arrives, delete when it leaves).
- "review_depth"  pk="all", sk=f"{project_id}|{stage}|{shard}" → {depth}: sharded counter of the
      work waiting at each stage (open disputes for the expert stage); kept at 0, not deleted.
- "review_verdicts" pk=f"{project_id}|{author_id}", sk=f"{recorded_ms:013d}|{event_id}" →
      {accepted, stage, task_id, annotation_id, version}: one row per verdict on the author's
      work (an overturn rewrites its rejection's row, same task stream); the last N make the
      author's recent acceptance rate.
- "disputes"      pk=task_id, sk=dispute_id → Dispute document (task stream):
      {dispute_id, task_id, project_id, annotation_id, version, author_id, stage, reviewer_id,
       reason_codes, rejection_comment, comment, status, expert_id, resolution_comment,
       opened_ms, resolved_ms, position}
- "disputes_by_project" pk=f"{project_id}|open", sk=f"{opened_ms:013d}|{dispute_id}" and
      pk=f"{project_id}|resolved", sk=f"{resolved_ms:013d}|{dispute_id}" → a copy of the dispute
      document (insert/delete; a dispute leaves "open" when resolved or withdrawn).
- "feedback"      pk=person_id, sk=f"{recorded_ms:013d}|{event_id}" → a feed row (insert only):
      {kind, project_id, task_id, annotation_id, version, at_ms, position, event_id, stage?,
       from_person_id?, verdict?, reason_codes?, comment?, dispute_id?, decision?}
      kind: review (a rejection or correction of your work at any stage, or a QA stage's
      accept: "QA results"; a peer accept is not news, the work goes on), accepted (passed the
      whole pipeline), dispute_opened (your rejection is disputed), dispute_resolved (to the
      author and to the reviewer whose rejection it was).
"""

from __future__ import annotations

from typing import Any

from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
from coordinator.eventlog.base import RecordedEvent
from projections.base import Doc, ViewTx, shard_of
from projections.views.taskstate import import_stages, imported_of, payload_kind, ts_ms

PENDING, SKIPPED, ACCEPTED, REJECTED, CORRECTED, OVERTURNED = (
    "pending",
    "skipped",
    "accepted",
    "rejected",
    "corrected",
    "overturned",
)
_LIVE = frozenset({"submitted", "accepted", "rejected"})
_VERDICT_STATE = {
    model_pb2.VERDICT_ACCEPT: ACCEPTED,
    model_pb2.VERDICT_REJECT: REJECTED,
    model_pb2.VERDICT_CORRECT: CORRECTED,
}


def queue_pk(project_id: str, stage: str) -> str:
    return f"{project_id}|{stage}"


def depth_sk(project_id: str, stage: str, shard: str) -> str:
    return f"{project_id}|{stage}|{shard}"


def verdicts_pk(project_id: str, person_id: str) -> str:
    return f"{project_id}|{person_id}"


def time_sk(ms: int, event_id: str) -> str:
    return f"{max(ms, 0):013d}|{event_id}"


def disputes_pk(project_id: str, state: str) -> str:
    return f"{project_id}|{state}"


_EXPERT = model_pb2.REVIEW_STAGE_KIND_EXPERT_RESOLUTION
_QA = model_pb2.REVIEW_STAGE_KIND_QA_SPOT_CHECK


def _next_stage(doc: Doc, start: int) -> int:
    kinds = doc["kinds"]
    for i in range(max(start, 0), len(kinds)):
        if kinds[i] != _EXPERT:
            return i
    return -1


def _expert_name(doc: Doc) -> str:
    for name, kind in zip(doc["stages"], doc["kinds"], strict=True):
        if kind == _EXPERT:
            return str(name)
    return ""


def _compact(doc: Doc, **optional: Any) -> Doc:
    """`doc` plus the optional fields that carry something."""
    for key, value in optional.items():
        if value:
            doc[key] = value
    return doc


class ReviewView:
    name: str = "review"
    collections: tuple[str, ...] = (
        "review_task",
        "review_queue",
        "review_depth",
        "review_verdicts",
        "disputes",
        "disputes_by_project",
        "feedback",
    )

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = payload_kind(event)
        if kind == "task_imported":
            self._imported(event, env.task_imported, tx)
            return
        handler = _HANDLERS.get(kind or "")
        if handler is None:
            return
        p = getattr(env, kind or "")
        doc = tx.get("review_task", p.task_id)
        if doc is None:
            return
        handler(_Apply(event, doc, tx), p)
        tx.put("review_task", p.task_id, "", doc)

    @staticmethod
    def _imported(event: RecordedEvent, p: events_pb2.TaskImported, tx: ViewTx) -> None:
        imp = imported_of(event)
        task_id = imp.task_id
        if tx.get("review_task", task_id) is not None:
            return
        names, kinds = import_stages(event)
        project_id = imp.project_id
        tx.put(
            "review_task",
            task_id,
            "",
            {
                "task_id": task_id,
                "project_id": project_id,
                "round": 1,
                "stages": list(names),
                "kinds": list(kinds),
                "annotations": {},
            },
        )
        shard = shard_of(event)
        for name in names:  # depth rows exist from the start, so gauges read 0, not nothing
            sk = depth_sk(project_id, name, shard)
            if tx.get("review_depth", "all", sk) is None:
                tx.put("review_depth", "all", sk, {"depth": 0})


class _Apply:
    """One event applied to one task's review document (and the rows it owns)."""

    __slots__ = ("doc", "env", "event", "ms", "project_id", "tx")

    def __init__(self, event: RecordedEvent, doc: Doc, tx: ViewTx) -> None:
        self.event = event
        self.env = event.envelope
        self.doc = doc
        self.tx = tx
        self.ms = ts_ms(event.envelope.recorded_at)
        self.project_id: str = doc["project_id"]

    # ------------------------------------------------------------------ helpers

    def ann(self, annotation_id: str) -> Doc | None:
        found: Doc | None = self.doc["annotations"].get(annotation_id)
        return found

    def stage_at(self, index: int) -> str:
        stages = self.doc["stages"]
        return str(stages[index]) if 0 <= index < len(stages) else ""

    def bump(self, stage: str, by: int) -> None:
        sk = depth_sk(self.project_id, stage, shard_of(self.event))
        row = self.tx.get("review_depth", "all", sk)
        depth = (int(row["depth"]) if row else 0) + by
        self.tx.put("review_depth", "all", sk, {"depth": max(depth, 0)})

    def set_pending(self, ann: Doc, annotation_id: str, index: int, rate: float = 1.0) -> None:
        """Move the annotation's place in the stage queues to stage `index` (-1: none)."""
        stage = self.stage_at(index) if index >= 0 else ""
        if ann["pending"] == stage:
            return
        if ann["pending"]:
            self.tx.delete("review_queue", queue_pk(self.project_id, ann["pending"]), ann["pending_sk"])
            self.bump(ann["pending"], -1)
        ann["pending"], ann["pending_sk"] = stage, ""
        if not stage:
            return
        task_id = self.doc["task_id"]
        sk = f"{self.ms:013d}|{task_id}|{annotation_id}"
        self.tx.put(
            "review_queue",
            queue_pk(self.project_id, stage),
            sk,
            {
                "task_id": task_id,
                "annotation_id": annotation_id,
                "version": ann["version"],
                "author_id": ann["author_id"],
                "stage": stage,
                "entered_ms": self.ms,
                "rate": rate,
            },
        )
        ann["pending_sk"] = sk
        self.bump(stage, 1)
        ann["stages"][stage] = self.record(PENDING, ann["version"], rate=rate if rate != 1.0 else None)

    def record(self, state: str, version: int, **optional: Any) -> Doc:
        """A stage record; `sampled=False` is kept (true is the default), other empties dropped."""
        out: Doc = {"state": state, "version": int(version), "at_ms": self.ms}
        for key, value in optional.items():
            if key == "sampled":
                if value is False:
                    out[key] = False
            elif value:
                out[key] = value
        return out

    def feed(self, person_id: str, kind: str, p: Any, **optional: Any) -> None:
        if not person_id:
            return
        row: Doc = {
            "kind": kind,
            "project_id": self.project_id,
            "task_id": self.doc["task_id"],
            "annotation_id": p.annotation_id,
            "version": int(p.version),
            "at_ms": self.ms,
            "position": str(self.event.position),
            "event_id": self.env.event_id,
        }
        self.tx.put("feedback", person_id, time_sk(self.ms, self.env.event_id), _compact(row, **optional))

    def put_dispute(self, dispute: Doc) -> None:
        self.tx.put("disputes", self.doc["task_id"], dispute["dispute_id"], dispute)

    # ------------------------------------------------------------------ events

    def submitted(self, p: Any) -> None:
        ann = self.ann(p.annotation_id)
        if ann is None:
            ann = self.doc["annotations"][p.annotation_id] = {
                "author_id": p.person_id,
                "version": 0,
                "round": self.doc["round"],
                "status": "submitted",
                "pending": "",
                "pending_sk": "",
                "stages": {},
            }
        ann["version"] = int(p.version) or 1
        ann["status"] = "submitted"
        ann.pop("reject_row", None)
        # re-enter the pipeline at its first review stage (a ReviewRouted that follows moves it on)
        self.set_pending(ann, p.annotation_id, -1)
        self.set_pending(ann, p.annotation_id, _next_stage(self.doc, 0))

    def routed(self, p: events_pb2.ReviewRouted) -> None:
        ann = self.ann(p.annotation_id)
        if ann is None:
            return
        if p.sampled:
            self.set_pending(ann, p.annotation_id, -1)  # re-queued with the rate that sent it there
            self.set_pending(ann, p.annotation_id, int(p.stage_index), rate=float(p.rate))
        else:
            self.set_pending(ann, p.annotation_id, _next_stage(self.doc, int(p.stage_index) + 1))
        ann["stages"][p.stage or self.stage_at(int(p.stage_index))] = self.record(
            PENDING if p.sampled else SKIPPED,
            p.version,
            sampled=bool(p.sampled),
            rate=float(p.rate) if p.rate != 1.0 else None,
            sample_point=float(p.sample_point),
        )

    def reviewed(self, p: events_pb2.ReviewRecorded) -> None:
        ann = self.ann(p.annotation_id)
        if ann is None:
            return
        index = int(p.stage_index)
        stage = p.stage or self.stage_at(index)
        previous = ann["stages"].get(stage, {})
        state = _VERDICT_STATE.get(p.verdict, ACCEPTED)
        ann["version"] = max(int(ann["version"]), int(p.version))
        if p.verdict == model_pb2.VERDICT_REJECT:
            ann["status"] = "rejected"
            self.set_pending(ann, p.annotation_id, -1)
        else:
            self.set_pending(ann, p.annotation_id, _next_stage(self.doc, index + 1))
        ann["stages"][stage] = self.record(
            state,
            p.version,
            reviewer_id=p.reviewer_id,
            reason_codes=list(p.reason_codes),
            comment=p.comment,
            rate=previous.get("rate"),
            sample_point=previous.get("sample_point"),
        )
        row_pk = verdicts_pk(self.project_id, p.author_id)
        row_sk = time_sk(self.ms, self.env.event_id)
        self.tx.put(
            "review_verdicts",
            row_pk,
            row_sk,
            {
                "accepted": p.verdict == model_pb2.VERDICT_ACCEPT,
                "stage": stage,
                "task_id": self.doc["task_id"],
                "annotation_id": p.annotation_id,
                "version": int(p.version),
            },
        )
        if p.verdict == model_pb2.VERDICT_REJECT:
            ann["reject_row"] = [row_pk, row_sk]
        else:
            ann.pop("reject_row", None)
        kinds = self.doc["kinds"]
        qa_result = 0 <= index < len(kinds) and kinds[index] == _QA
        if p.verdict != model_pb2.VERDICT_ACCEPT or qa_result:
            self.feed(
                p.author_id,
                "review",
                p,
                stage=stage,
                from_person_id=p.reviewer_id,
                verdict=int(p.verdict),
                reason_codes=list(p.reason_codes),
                comment=p.comment,
            )

    def accepted(self, p: events_pb2.AnnotationAccepted) -> None:
        ann = self.ann(p.annotation_id)
        if ann is None:
            return
        ann["status"] = "accepted"
        ann["version"] = int(p.version)
        self.set_pending(ann, p.annotation_id, -1)
        self.feed(p.author_id, "accepted", p, from_person_id=p.accepted_by)

    def abandoned(self, p: events_pb2.AnnotationAbandoned) -> None:
        ann = self.ann(p.annotation_id)
        if ann is not None:
            ann["status"] = "abandoned"
            self.set_pending(ann, p.annotation_id, -1)

    def reopened(self, p: events_pb2.TaskReopened) -> None:
        rnd = self.doc["round"]
        for annotation_id, ann in self.doc["annotations"].items():
            if ann["round"] != rnd or ann["status"] not in _LIVE:
                continue
            ann["status"] = "superseded"
            self.set_pending(ann, annotation_id, -1)
            for dispute_id in ann.get("disputes", ()):
                dispute = self.tx.get("disputes", self.doc["task_id"], dispute_id)
                if dispute is not None and dispute["status"] == "open":
                    self.close_dispute(dispute, "withdrawn")
        self.doc["round"] = int(p.round)

    def close_dispute(self, dispute: Doc, status: str) -> None:
        self.tx.delete(
            "disputes_by_project",
            disputes_pk(self.project_id, "open"),
            time_sk(dispute["opened_ms"], dispute["dispute_id"]),
        )
        dispute["status"] = status
        dispute["resolved_ms"] = self.ms
        dispute["position"] = str(self.event.position)
        self.put_dispute(dispute)
        self.tx.put(
            "disputes_by_project",
            disputes_pk(self.project_id, "resolved"),
            time_sk(self.ms, dispute["dispute_id"]),
            dict(dispute),
        )
        expert = _expert_name(self.doc)
        if expert:
            self.bump(expert, -1)

    def dispute_opened(self, p: events_pb2.DisputeOpened) -> None:
        ann = self.ann(p.annotation_id)
        if ann is None:
            return
        dispute: Doc = {
            "dispute_id": p.dispute_id,
            "task_id": p.task_id,
            "project_id": self.project_id,
            "annotation_id": p.annotation_id,
            "version": int(p.version),
            "author_id": p.author_id,
            "stage": p.stage,
            "reviewer_id": p.reviewer_id,
            "reason_codes": list(p.reason_codes),
            "rejection_comment": p.rejection_comment,
            "comment": p.comment,
            "status": "open",
            "expert_id": "",
            "resolution_comment": "",
            "opened_ms": self.ms,
            "resolved_ms": 0,
            "position": str(self.event.position),
        }
        self.put_dispute(dispute)
        self.tx.put(
            "disputes_by_project",
            disputes_pk(self.project_id, "open"),
            time_sk(self.ms, p.dispute_id),
            dict(dispute),
        )
        ann.setdefault("disputes", []).append(p.dispute_id)
        expert = _expert_name(self.doc)
        if expert:
            self.bump(expert, 1)
        self.feed(
            p.reviewer_id,
            "dispute_opened",
            p,
            stage=p.stage,
            from_person_id=p.author_id,
            reason_codes=list(p.reason_codes),
            comment=p.comment,
            dispute_id=p.dispute_id,
        )

    def dispute_resolved(self, p: events_pb2.DisputeResolved) -> None:
        ann = self.ann(p.annotation_id)
        dispute = self.tx.get("disputes", p.task_id, p.dispute_id)
        if ann is None or dispute is None:
            return
        overturned = p.decision == model_pb2.DISPUTE_DECISION_OVERTURN
        dispute["expert_id"] = p.expert_id
        dispute["resolution_comment"] = p.comment
        self.close_dispute(dispute, "overturned" if overturned else "upheld")
        if overturned:
            ann["status"] = "submitted"
            stage = p.stage or self.stage_at(int(p.stage_index))
            record = dict(ann["stages"].get(stage) or self.record(REJECTED, p.version))
            record.update(state=OVERTURNED, at_ms=self.ms)
            ann["stages"][stage] = record
            row = ann.pop("reject_row", None)
            if row:
                verdict = self.tx.get("review_verdicts", row[0], row[1])
                if verdict is not None:
                    verdict["accepted"] = True
                    verdict["overturned"] = True
                    self.tx.put("review_verdicts", row[0], row[1], verdict)
            self.set_pending(ann, p.annotation_id, _next_stage(self.doc, int(p.stage_index) + 1))
        for person in (p.author_id, p.reviewer_id):
            self.feed(
                person,
                "dispute_resolved",
                p,
                stage=p.stage,
                from_person_id=p.expert_id,
                comment=p.comment,
                dispute_id=p.dispute_id,
                decision=int(p.decision),
            )


_HANDLERS: dict[str, Any] = {
    "annotation_submitted": _Apply.submitted,
    "annotation_edited": _Apply.submitted,
    "review_routed": _Apply.routed,
    "review_recorded": _Apply.reviewed,
    "annotation_accepted": _Apply.accepted,
    "annotation_abandoned": _Apply.abandoned,
    "task_reopened": _Apply.reopened,
    "dispute_opened": _Apply.dispute_opened,
    "dispute_resolved": _Apply.dispute_resolved,
}
