"""Typed reads over the gold view (`projections.views.gold`): gold and training tasks, results,
rolling accuracy per person and class, suspensions, and the quality feed.

Every function is a point read or an ordered scan of one partition. Projections are eventually
consistent with the log; decisions (suspension, qualification outcomes) are made by the person
aggregate, never from these rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from projections.base import Doc, ProjectionStore, unshard
from projections.review_queries import feed_page
from projections.views.gold import gold_tasks_pk, results_pk

# ------------------------------------------------------------------ tasks


def gold_tasks(store: ProjectionStore, project_id: str) -> list[Doc]:
    """The project's gold tasks (not training items), by task id."""
    return [doc for _, doc in store.scan("gold_tasks", gold_tasks_pk(project_id))]


def training_tasks(store: ProjectionStore, project_id: str, skill: str) -> list[Doc]:
    """The training items of the project's qualification for `skill`, by task id."""
    return [doc for _, doc in store.scan("gold_tasks", gold_tasks_pk(project_id, skill))]


# ------------------------------------------------------------------ reconciliation


def scored_buckets(store: ProjectionStore) -> list[tuple[str, str]]:
    """(shard, bucket pk) of every non-empty bucket of the scored-answer log, in order."""
    return [(unshard(sk), sk) for sk, _ in store.scan("gold_scored_buckets", "all")]


def scored_after(store: ProjectionStore, bucket: str, after_sk: str, limit: int) -> list[tuple[str, Doc]]:
    """Scored answers of one bucket in log order, after the sort key `after_sk` ("" : all)."""
    start = after_sk + "\x00" if after_sk else ""
    return store.scan("gold_scored", bucket, start=start, limit=limit)


def is_recorded(store: ProjectionStore, gold_event_id: str) -> bool:
    """The GoldScored event's result is in its author's record (as far as the view knows)."""
    return store.get("gold_recorded", gold_event_id) is not None


# ------------------------------------------------------------------ accuracy


@dataclass(frozen=True)
class ClassFigures:
    label: str
    matched: int
    missed: int
    extra: int
    results: int

    @property
    def accuracy(self) -> float:
        total = self.matched + self.missed + self.extra
        return self.matched / total if total else 0.0


def accuracy(store: ProjectionStore, project_id: str, person_id: str) -> Doc | None:
    return store.get("gold_accuracy", project_id, person_id)


def accuracy_of_project(store: ProjectionStore, project_id: str) -> list[Doc]:
    """Everyone's rolling record in a project, by person id."""
    return [doc for _, doc in store.scan("gold_accuracy", project_id)]


def class_figures(doc: Doc) -> list[ClassFigures]:
    """Per-class sums over the results in a record's window, by label."""
    sums: dict[str, list[int]] = {}
    for entry in doc.get("entries", ()):
        for label, (matched, missed, extra) in entry.get("classes", {}).items():
            acc = sums.setdefault(label, [0, 0, 0, 0])
            acc[0] += int(matched)
            acc[1] += int(missed)
            acc[2] += int(extra)
            acc[3] += 1
    return [ClassFigures(label, *sums[label]) for label in sorted(sums)]


def mean_score(doc: Doc) -> float:
    entries = doc.get("entries", ())
    return sum(float(e["score"]) for e in entries) / len(entries) if entries else 0.0


def recent_results(store: ProjectionStore, project_id: str, person_id: str, limit: int) -> list[Doc]:
    """A person's scored gold and training answers in a project, newest first."""
    return [
        doc
        for _, doc in store.scan("gold_results", results_pk(project_id, person_id), reverse=True, limit=limit)
    ]


def suspensions(store: ProjectionStore, project_id: str) -> list[tuple[str, Doc]]:
    """(person id, suspension) of everyone suspended from the project now."""
    return store.scan("gold_suspensions", project_id)


# ------------------------------------------------------------------ feed

Page = tuple[list[tuple[str, Doc]], str]


def quality_feed(
    store: ProjectionStore,
    person_id: str,
    *,
    limit: int,
    page_token: str = "",
    project_ids: frozenset[str] | None = None,
) -> Page:
    """A person's quality feed rows, newest first, as (cursor, row), and the next page token
    (the same cursor format and paging rules as `review_queries.feedback`)."""
    return feed_page(
        store, "quality_feedback", person_id, limit=limit, page_token=page_token, project_ids=project_ids
    )


def merge_pages(pages: Sequence[Page], limit: int) -> Page:
    """Merge newest-first pages of feeds that share one cursor format into one page.

    Each page holds every row of its feed from the requested end down to its token (inclusive;
    rows below a non-empty token are unknown). So only rows at or above the highest token are
    known in every feed; they are merged, the first `limit` returned, and the token says where
    to continue."""
    limit = max(1, limit)
    bound = max((token for _, token in pages if token), default="")
    rows = sorted((row for page, _ in pages for row in page), key=lambda row: row[0], reverse=True)
    if bound:
        rows = [row for row in rows if row[0] >= bound]
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1][0]
    if bound:
        return rows, rows[-1][0] if len(rows) == limit else bound
    return rows, ""
