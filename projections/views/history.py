"""History view: every annotation version, every review, and the current accepted labels.

Collections
- "annotation_versions" pk=task_id, sk=f"{annotation_id}|{version:08d}" →
      {annotation_id, version, person_id, kind, offset, recorded_ms, occurred_ms,
       label_schema_version, guideline_version, annotation, event_id}
  `kind` is "submitted" (AnnotationSubmitted), "edited" (AnnotationEdited), or "corrected":
  an edit that a ReviewRecorded CORRECT then names (same annotation and version) is re-marked
  "corrected" and gains `reviewer_id`.
- "reviews"  pk=task_id, sk=f"{offset:020d}" →
      {annotation_id, version, reviewer_id, verdict, reason_codes, comment, offset, stage}
  `stage` is the pipeline stage of the verdict ("" in logs written before pipelines).
  Per-stage review state, disputes and feedback are in `projections.views.review`.
- "accepted" pk=project_id, sk=f"{task_id}|{annotation_id}" → the latest accepted version:
      {task_id, annotation_id, version, author_id, accepted_by, label_schema_version,
       guideline_version, data_uri, annotation, offset, event_id, recorded_ms}
  TaskReopened removes the task's rows here (their versions stay in "annotation_versions").
- "accepted_keys" pk=task_id, sk="" → {project_id, sks: [accepted sk, ...]} so a reopen can
  find the rows to remove.

`annotation` is `MessageToDict(annotation, preserving_proto_field_name=True)`.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.eventlog.base import RecordedEvent
from projections.base import Doc, ViewTx
from projections.views.taskstate import payload_kind, ts_ms


def version_sk(annotation_id: str, version: int) -> str:
    return f"{annotation_id}|{version:08d}"


def annotation_dict(annotation: Any) -> Doc:
    return json_format.MessageToDict(annotation, preserving_proto_field_name=True)


class _AnnotationDicts:
    """Memo of `annotation_dict` by serialized content: an AnnotationAccepted usually carries the
    content of the version just submitted or edited, and MessageToDict is slow. The dicts are
    shared between documents, so nothing may modify a document's `annotation` in place."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._memo: dict[bytes, Doc] = {}

    def __call__(self, annotation: Any) -> Doc:
        key = annotation.SerializeToString(deterministic=True)
        doc = self._memo.get(key)
        if doc is None:
            if len(self._memo) >= self.capacity:
                self._memo.clear()
            doc = self._memo[key] = annotation_dict(annotation)
        return doc


class HistoryView:
    name: str = "history"
    collections: tuple[str, ...] = ("annotation_versions", "reviews", "accepted", "accepted_keys")

    def __init__(self) -> None:
        self._annotation = _AnnotationDicts()

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = payload_kind(event)
        if kind == "annotation_submitted" or kind == "annotation_edited":
            p = getattr(env, kind)
            version = int(p.version) or 1
            tx.put(
                "annotation_versions",
                p.task_id,
                version_sk(p.annotation_id, version),
                {
                    "annotation_id": p.annotation_id,
                    "version": version,
                    "person_id": p.person_id,
                    "kind": "submitted" if kind == "annotation_submitted" else "edited",
                    "offset": event.position.offset,
                    "recorded_ms": ts_ms(env.recorded_at),
                    "occurred_ms": ts_ms(env.occurred_at),
                    "label_schema_version": int(p.label_schema_version),
                    "guideline_version": int(p.guideline_version),
                    "annotation": self._annotation(p.annotation),
                    "event_id": env.event_id,
                },
            )
        elif kind == "review_recorded":
            r = env.review_recorded
            offset = event.position.offset
            tx.put(
                "reviews",
                r.task_id,
                f"{offset:020d}",
                {
                    "annotation_id": r.annotation_id,
                    "version": int(r.version),
                    "reviewer_id": r.reviewer_id,
                    "verdict": int(r.verdict),
                    "reason_codes": list(r.reason_codes),
                    "comment": r.comment,
                    "offset": offset,
                    "stage": r.stage,
                },
            )
            if r.verdict == model_pb2.VERDICT_CORRECT:
                sk = version_sk(r.annotation_id, int(r.version))
                row = tx.get("annotation_versions", r.task_id, sk)
                if row is not None and row["kind"] == "edited":
                    row["kind"] = "corrected"
                    row["reviewer_id"] = r.reviewer_id
                    tx.put("annotation_versions", r.task_id, sk, row)
        elif kind == "annotation_accepted":
            a = env.annotation_accepted
            sk = f"{a.task_id}|{a.annotation_id}"
            tx.put(
                "accepted",
                a.project_id,
                sk,
                {
                    "task_id": a.task_id,
                    "annotation_id": a.annotation_id,
                    "version": int(a.version),
                    "author_id": a.author_id,
                    "accepted_by": a.accepted_by,
                    "label_schema_version": int(a.label_schema_version),
                    "guideline_version": int(a.guideline_version),
                    "data_uri": a.data_uri,
                    "annotation": self._annotation(a.annotation),
                    "offset": event.position.offset,
                    "position": str(event.position),
                    "event_id": env.event_id,
                    "recorded_ms": ts_ms(env.recorded_at),
                },
            )
            index = tx.get("accepted_keys", a.task_id) or {"project_id": a.project_id, "sks": []}
            if sk not in index["sks"]:
                index["sks"].append(sk)
                tx.put("accepted_keys", a.task_id, "", index)
        elif kind == "task_reopened":
            t = env.task_reopened
            keys = tx.get("accepted_keys", t.task_id)
            if keys is not None:
                for sk in keys["sks"]:
                    tx.delete("accepted", keys["project_id"], sk)
                tx.delete("accepted_keys", t.task_id, "")
