"""Typed reads over the guidance view (`projections.views.guidance`): guideline versions,
questions with their answers, and the per-person inbox (a fan-out at read time over the
person's projects, merged in log order).

Every function is a point read or an ordered scan of one partition (the inbox: a few per
project). Projections are eventually consistent with the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from projections.base import Doc, ProjectionStore
from projections.views.guidance import guideline_sk, inbox_sk, person_inbox_pk

OPEN, ANSWERED = "open", "answered"

# ------------------------------------------------------------------ guidelines and questions


def guideline(store: ProjectionStore, project_id: str, version: int) -> Doc | None:
    return store.get("guidance_guidelines", project_id, guideline_sk(version))


def question(store: ProjectionStore, project_id: str, question_id: str) -> Doc | None:
    return store.get("guidance_questions", project_id, question_id)


def question_of_answer(store: ProjectionStore, project_id: str, answer_id: str) -> Doc | None:
    ref = store.get("guidance_answers", project_id, answer_id)
    return None if ref is None else question(store, project_id, ref["question_id"])


def _matches(doc: Doc, status: str, section_id: str, task_id: str) -> bool:
    return (
        (not status or doc["status"] == status)
        and (not section_id or doc["section_id"] == section_id)
        and (not task_id or doc["task_id"] == task_id)
    )


def questions(
    store: ProjectionStore,
    project_id: str,
    *,
    status: str = "",
    section_id: str = "",
    task_id: str = "",
    limit: int = 50,
    page_token: str = "",
) -> tuple[list[Doc], str]:
    """A project's questions in ask order, filtered, and the token of the next page ("" : none).

    The token is the id of the last question looked at; a filtered scan reads at most 20 pages'
    worth of rows per call and returns a token to continue even when the page is short."""
    limit = max(1, limit)
    start = page_token
    out: list[Doc] = []
    chunk = min(limit + 1, 500)
    scanned = 0
    while scanned < limit * 20:
        rows = store.scan("guidance_questions", project_id, start=start, limit=chunk + 1)
        rows = [(sk, doc) for sk, doc in rows if sk != page_token]  # start is inclusive
        for sk, doc in rows[:chunk]:
            scanned += 1
            start = sk
            if not _matches(doc, status, section_id, task_id):
                continue
            if len(out) == limit:
                return out, out[-1]["question_id"]  # one more matches: continue after the page
            out.append(doc)
        if len(rows) <= chunk:
            return out, ""
        page_token = start
    return out, start


# ------------------------------------------------------------------ inbox


@dataclass(frozen=True)
class InboxPage:
    rows: list[Doc]  # in log order (per partition by offset; partitions interleaved by time)
    checkpoint: dict[int, int]  # partition → last offset delivered (or skipped)
    more: bool  # rows wait after `checkpoint`


def _partition_of(store: ProjectionStore, pk: str) -> int | None:
    first = store.scan("guidance_inbox", pk, limit=1)
    return int(first[0][1]["partition"]) if first else None


def inbox(
    store: ProjectionStore,
    project_ids: Iterable[str],
    person_id: str,
    after: Mapping[int, int],
    limit: int,
) -> InboxPage:
    """The inbox rows of `person_id` over `project_ids` after the checkpoint `after`, at most
    `limit`: rows for everyone on each project and rows for the person.

    Each project's rows come from one log partition; rows of one partition are delivered in
    offset order, so "everything up to the checkpoint was delivered" holds per partition.
    Among partitions, the row that happened first goes first."""
    limit = max(1, limit)
    per_partition: dict[int, list[Doc]] = {}
    truncated = False
    for project_id in sorted(set(project_ids)):
        for pk in (project_id, person_inbox_pk(project_id, person_id)):
            partition = _partition_of(store, pk)
            if partition is None:
                continue
            start = inbox_sk(after.get(partition, 0) + 1)
            rows = store.scan("guidance_inbox", pk, start=start, limit=limit + 1)
            if len(rows) > limit:
                truncated = True
                rows = rows[:limit]
            per_partition.setdefault(partition, []).extend(doc for _, doc in rows)
    for docs in per_partition.values():
        docs.sort(key=lambda doc: int(doc["offset"]))
    heads = dict.fromkeys(per_partition, 0)
    checkpoint = dict(after)
    out: list[Doc] = []
    while len(out) < limit:
        live = [p for p, i in heads.items() if i < len(per_partition[p])]
        if not live:
            break
        p = min(live, key=lambda q: (int(per_partition[q][heads[q]]["at_ms"]), q))
        doc = per_partition[p][heads[p]]
        heads[p] += 1
        checkpoint[p] = int(doc["offset"])
        out.append(doc)
    more = truncated or any(i < len(per_partition[p]) for p, i in heads.items())
    return InboxPage(out, checkpoint, more)
