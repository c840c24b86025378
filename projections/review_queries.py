"""Typed reads over the review view (`projections.views.review`): stage queues and depths,
per-task review state, disputes, feedback feeds and authors' recent acceptance rates.

Every function is a point read or an ordered scan of one partition, so it works on every store
backend; sharded counters are summed here. Projections are eventually consistent with the log.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.errors import InvalidArgument
from projections.base import Doc, ProjectionStore, shard_range, unshard
from projections.views.review import disputes_pk, queue_pk, verdicts_pk

# ------------------------------------------------------------------ stages


def stage_depths(store: ProjectionStore, project_id: str) -> dict[str, int]:
    """Work waiting at each stage of a project (open disputes at the expert stage), summed over
    the partition shards. Every stage a task of the project was imported with is present, at 0
    when empty, so gauges fed from this drop to 0."""
    start, end = shard_range(project_id)
    out: dict[str, int] = {}
    for sk, doc in store.scan("review_depth", "all", start=start, end=end):
        stage = unshard(sk).split("|", 1)[1]
        out[stage] = out.get(stage, 0) + int(doc["depth"])
    return out


def all_stage_depths(store: ProjectionStore) -> dict[tuple[str, str], int]:
    """(project_id, stage) → depth for every project: one scan, for Prometheus gauges."""
    out: dict[tuple[str, str], int] = {}
    for sk, doc in store.scan("review_depth", "all"):
        project_id, stage = unshard(sk).split("|", 1)
        out[(project_id, stage)] = out.get((project_id, stage), 0) + int(doc["depth"])
    return out


@dataclass(frozen=True)
class StageBacklog:
    stage: str
    depth: int
    oldest_ms: int | None  # when the longest-waiting item arrived (None: nothing waiting)


def stage_backlog(store: ProjectionStore, project_id: str) -> list[StageBacklog]:
    """Depth and age of the oldest waiting item per stage (bottleneck reports, age gauges)."""
    out: list[StageBacklog] = []
    for stage, depth in sorted(stage_depths(store, project_id).items()):
        oldest: int | None = None
        rows = store.scan("review_queue", queue_pk(project_id, stage), limit=1)
        if rows:
            oldest = int(rows[0][1]["entered_ms"])
        else:
            opened = store.scan("disputes_by_project", disputes_pk(project_id, "open"), limit=1)
            if opened and depth:
                oldest = int(opened[0][1]["opened_ms"])
        out.append(StageBacklog(stage, depth, oldest))
    return out


def review_queue(
    store: ProjectionStore, project_id: str, stage: str, limit: int, page_token: str = ""
) -> tuple[list[Doc], str]:
    """Work waiting at a stage, oldest first, and the next page token ("" on the last page)."""
    limit = max(1, limit)
    start = page_token + "\x00" if page_token else ""
    rows = store.scan("review_queue", queue_pk(project_id, stage), start=start, limit=limit + 1)
    page = rows[:limit]
    token = page[-1][0] if len(rows) > limit else ""
    return [doc for _, doc in page], token


def review_state(store: ProjectionStore, task_id: str) -> Doc | None:
    return store.get("review_task", task_id)


# ------------------------------------------------------------------ authors


def recent_acceptance(
    store: ProjectionStore, project_id: str, person_id: str, window: int
) -> tuple[float, int]:
    """(acceptance rate, verdicts) over the author's last `window` verdicts in the project; an
    overturned rejection counts as accepted. (0.0, 0) when there are none."""
    rows = store.scan(
        "review_verdicts", verdicts_pk(project_id, person_id), reverse=True, limit=max(window, 1)
    )
    if not rows:
        return 0.0, 0
    accepted = sum(1 for _, doc in rows if doc.get("accepted"))
    return accepted / len(rows), len(rows)


# ------------------------------------------------------------------ disputes


def disputes(
    store: ProjectionStore, project_id: str, *, open_: bool, limit: int, page_token: str = ""
) -> tuple[list[Doc], str]:
    """Open disputes oldest first (the experts' queue), or resolved ones newest first."""
    limit = max(1, limit)
    pk = disputes_pk(project_id, "open" if open_ else "resolved")
    if open_:
        start = page_token + "\x00" if page_token else ""
        rows = store.scan("disputes_by_project", pk, start=start, limit=limit + 1)
    else:
        rows = store.scan("disputes_by_project", pk, end=page_token or None, reverse=True, limit=limit + 1)
    page = rows[:limit]
    token = page[-1][0] if len(rows) > limit else ""
    return [doc for _, doc in page], token


def disputes_of_task(store: ProjectionStore, task_id: str) -> list[Doc]:
    return [doc for _, doc in store.scan("disputes", task_id)]


def dispute(store: ProjectionStore, task_id: str, dispute_id: str) -> Doc | None:
    return store.get("disputes", task_id, dispute_id)


# ------------------------------------------------------------------ feedback


def feedback(
    store: ProjectionStore,
    person_id: str,
    *,
    limit: int,
    page_token: str = "",
    project_ids: frozenset[str] | None = None,
) -> tuple[list[tuple[str, Doc]], str]:
    """A person's feed rows, newest first, as (cursor, row), and the next page token."""
    return feed_page(
        store, "feedback", person_id, limit=limit, page_token=page_token, project_ids=project_ids
    )


def feed_page(
    store: ProjectionStore,
    collection: str,
    person_id: str,
    *,
    limit: int,
    page_token: str = "",
    project_ids: frozenset[str] | None = None,
) -> tuple[list[tuple[str, Doc]], str]:
    """One page of a per-person feed collection (sk `{ms:013d}|{event_id}`), newest first, as
    (cursor, row), and the next page token.

    `project_ids` keeps only rows of those projects; the scan then reads at most 20 pages'
    worth of rows per call and returns a token to continue even when the page is short.
    """
    limit = max(1, limit)
    if page_token and not _is_cursor(page_token):
        raise InvalidArgument("not a feedback cursor", field="page_token")
    end = page_token or None
    if project_ids is None:
        rows = store.scan(collection, person_id, end=end, reverse=True, limit=limit + 1)
        page = rows[:limit]
        return page, page[-1][0] if len(rows) > limit else ""
    out: list[tuple[str, Doc]] = []
    chunk = min(limit + 1, 500)
    scanned = 0
    while scanned < limit * 20:
        rows = store.scan(collection, person_id, end=end, reverse=True, limit=chunk)
        for sk, doc in rows:
            scanned += 1
            end = sk
            if doc.get("project_id") not in project_ids:
                continue
            if len(out) == limit:
                return out, out[-1][0]  # one more matches: continue after the page's last row
            out.append((sk, doc))
        if len(rows) < chunk:
            return out, ""
    return out, end or ""  # scan budget spent: continue after the last row looked at


def _is_cursor(token: str) -> bool:
    ms, sep, event_id = token.partition("|")
    return bool(sep) and len(ms) == 13 and ms.isdigit() and bool(event_id)
