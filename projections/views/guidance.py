"""Guidance view: guideline versions, questions and answers, and the inbox rows
(docs/guidelines-and-communication.md).

Single-writer rule: every document here is written only by events of ONE project stream
(`project:<id>`, so one log partition): its key starts with the project id. The question
documents are read-modify-written, by their project's stream only; the inbox rows and the
guideline versions are pure inserts. Acknowledgements (person stream) are not projected here:
the inbox reads them from the person aggregate at read time, so no document is written from two
streams. The per-person inbox is a fan-out at read time over the person's projects
(`projections.guidance_queries.inbox`).

Collections
- "guidance_guidelines" pk=project_id, sk=f"{version:010d}" → {version, title, guideline:
      Guideline as protobuf JSON, included_answer_ids, at_ms, position} (insert).
- "guidance_questions"  pk=project_id, sk=question_id (UUIDv7: ask order) → {question_id,
      project_id, asker_id, task_id, section_id, guideline_version, text, status: open |
      answered, asked_ms, position, answers: [{answer_id, answerer_id, text, at_ms, position,
      promoted, promoted_by, promoted_section_id, included_in}]} (read-modify-write).
- "guidance_answers"    pk=project_id, sk=answer_id → {question_id}: which question holds an
      answer (insert; read when a promotion or a publication updates the answer).
- "guidance_inbox"      pk=project_id (rows for everyone on the project: kind announcement |
      guideline) or pk=f"{project_id}|{person_id}" (rows for one person: kind answer, an answer
      to their question), sk=f"{offset:020d}" (the event's log offset; all rows of one pk come
      from one partition) → {kind, project_id, partition, offset, position, event_id, at_ms, ...}
      announcement: announcement_id, author_id, title, body
      guideline:    version, title
      answer:       question_id, answer_id, answerer_id, text, question_text, task_id, section_id
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from coordinator.eventlog.base import RecordedEvent
from projections.base import Doc, ViewTx
from projections.views.taskstate import payload_kind, ts_ms


def guideline_sk(version: int) -> str:
    return f"{version:010d}"


def inbox_sk(offset: int) -> str:
    return f"{offset:020d}"


def person_inbox_pk(project_id: str, person_id: str) -> str:
    return f"{project_id}|{person_id}"


def _json(message: Any) -> Doc:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class GuidanceView:
    name: str = "guidance"
    collections: tuple[str, ...] = (
        "guidance_guidelines",
        "guidance_questions",
        "guidance_answers",
        "guidance_inbox",
    )

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = payload_kind(event)
        if kind == "guideline_published":
            self._published(event, tx)
        elif kind == "question_asked":
            q = env.question_asked
            tx.put(
                "guidance_questions",
                q.project_id,
                q.question_id,
                {
                    "question_id": q.question_id,
                    "project_id": q.project_id,
                    "asker_id": q.asker_id,
                    "task_id": q.task_id,
                    "section_id": q.section_id,
                    "guideline_version": int(q.guideline_version),
                    "text": q.text,
                    "status": "open",
                    "asked_ms": ts_ms(env.occurred_at),
                    "position": str(event.position),
                    "answers": [],
                },
            )
        elif kind == "question_answered":
            self._answered(event, tx)
        elif kind == "answer_promoted":
            p = env.answer_promoted
            self._update_answer(
                tx,
                p.project_id,
                p.answer_id,
                promoted=True,
                promoted_by=p.promoted_by,
                promoted_section_id=p.section_id,
            )
        elif kind == "announcement_posted":
            a = env.announcement_posted
            self._inbox(
                event,
                tx,
                a.project_id,
                a.project_id,
                "announcement",
                announcement_id=a.announcement_id,
                author_id=a.author_id,
                title=a.title,
                body=a.body,
            )

    @staticmethod
    def _inbox(event: RecordedEvent, tx: ViewTx, project_id: str, pk: str, kind: str, **fields: Any) -> None:
        env = event.envelope
        tx.put(
            "guidance_inbox",
            pk,
            inbox_sk(event.position.offset),
            {
                "kind": kind,
                "project_id": project_id,
                "partition": event.position.partition,
                "offset": event.position.offset,
                "position": str(event.position),
                "event_id": env.event_id,
                "at_ms": ts_ms(env.occurred_at),
                **fields,
            },
        )

    def _published(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        gp = env.guideline_published
        g = gp.guideline
        tx.put(
            "guidance_guidelines",
            gp.project_id,
            guideline_sk(g.version),
            {
                "version": int(g.version),
                "title": g.title,
                "guideline": _json(g),
                "included_answer_ids": list(gp.included_answer_ids),
                "at_ms": ts_ms(env.occurred_at),
                "position": str(event.position),
            },
        )
        for answer_id in gp.included_answer_ids:
            self._update_answer(tx, gp.project_id, answer_id, included_in=int(g.version))
        self._inbox(
            event, tx, gp.project_id, gp.project_id, "guideline", version=int(g.version), title=g.title
        )

    def _answered(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        a = env.question_answered
        doc = tx.get("guidance_questions", a.project_id, a.question_id)
        if doc is None:
            return
        at_ms = ts_ms(env.occurred_at)
        doc["answers"].append(
            {
                "answer_id": a.answer_id,
                "answerer_id": a.answerer_id,
                "text": a.text,
                "at_ms": at_ms,
                "position": str(event.position),
                "promoted": False,
                "promoted_by": "",
                "promoted_section_id": "",
                "included_in": 0,
            }
        )
        doc["status"] = "answered"
        tx.put("guidance_questions", a.project_id, a.question_id, doc)
        tx.put("guidance_answers", a.project_id, a.answer_id, {"question_id": a.question_id})
        self._inbox(
            event,
            tx,
            a.project_id,
            person_inbox_pk(a.project_id, a.asker_id),
            "answer",
            question_id=a.question_id,
            answer_id=a.answer_id,
            answerer_id=a.answerer_id,
            text=a.text,
            question_text=doc["text"],
            task_id=a.task_id,
            section_id=a.section_id,
        )

    @staticmethod
    def _update_answer(tx: ViewTx, project_id: str, answer_id: str, **fields: Any) -> None:
        ref = tx.get("guidance_answers", project_id, answer_id)
        if ref is None:
            return
        doc = tx.get("guidance_questions", project_id, ref["question_id"])
        if doc is None:
            return
        for answer in doc["answers"]:
            if answer["answer_id"] == answer_id:
                answer.update(fields)
        tx.put("guidance_questions", project_id, ref["question_id"], doc)
