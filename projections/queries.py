"""Typed reads over the projection store, used by the API layer.

Every function is a point read or an ordered scan of one partition (or a merge of a few), so it
works the same on every store backend. Projections are eventually consistent with the log.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from coordinator.errors import InvalidArgument
from projections.base import Doc, ProjectionStore, shard_range, unshard
from projections.views.metrics import FIELDS as METRIC_FIELDS
from projections.views.metrics import zero as zero_metrics
from projections.views.queue import queue_pk

_STATUSES = ("queued", "in_progress", "in_review", "done")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _dt(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


# ------------------------------------------------------------------ directory


@dataclass(frozen=True)
class TokenRef:
    person_id: str
    token_id: str
    expires_at: datetime | None
    revoked: bool


def find_token(store: ProjectionStore, token_sha256: str) -> TokenRef | None:
    doc = store.get("token", token_sha256)
    if doc is None:
        return None
    expires = doc.get("expires_ms")
    return TokenRef(
        person_id=doc["person_id"],
        token_id=doc["token_id"],
        expires_at=None if expires is None else _dt(int(expires)),
        revoked=bool(doc.get("revoked", False)),
    )


def projects_of(store: ProjectionStore, person_id: str) -> list[str]:
    return [sk for sk, _ in store.scan("person_projects", person_id)]


def members_of(store: ProjectionStore, project_id: str) -> list[str]:
    return [sk for sk, _ in store.scan("project_members", project_id)]


def list_projects(store: ProjectionStore) -> list[str]:
    return [sk for sk, _ in store.scan("projects", "all")]


# ------------------------------------------------------------------ queue


def queue_candidates(
    store: ProjectionStore, project_id: str, skills: Iterable[str], limit: int = 16
) -> list[str]:
    """Queued task ids, best first, whose required skills are a subset of `skills`.

    Merges the per-skill-set queues (each already ordered by priority DESC, deadline ASC,
    import order) by their sort key. Skill names must not contain ",".
    """
    if limit <= 0:
        return []
    have = set(skills)
    runs: list[Iterator[tuple[str, str]]] = []
    keys = sorted({unshard(sk) for sk, _ in store.scan("queue_keys", project_id)})
    for key in keys:
        if key and not set(key.split(",")) <= have:
            continue
        rows = store.scan("queue", queue_pk(project_id, key), limit=limit)
        runs.append(iter([(sk, doc["task_id"]) for sk, doc in rows]))
    if not runs:
        return []
    merged = heapq.merge(*runs) if len(runs) > 1 else runs[0]
    return [task_id for _, task_id in itertools.islice(merged, limit)]


def queue_depth(store: ProjectionStore, project_id: str) -> int:
    start, end = shard_range(project_id)
    return sum(int(doc["depth"]) for _, doc in store.scan("queue_depth", "all", start=start, end=end))


def queue_depths(store: ProjectionStore) -> dict[str, int]:
    """Depth per project (projects with an empty queue included, at 0)."""
    out: dict[str, int] = {}
    for sk, doc in store.scan("queue_depth", "all"):
        pid = unshard(sk)
        out[pid] = out.get(pid, 0) + int(doc["depth"])
    return out


# ------------------------------------------------------------------ tasks


def get_task_doc(store: ProjectionStore, task_id: str) -> Doc | None:
    return store.get("task", task_id)


def list_tasks(
    store: ProjectionStore, project_id: str, status: str | None, limit: int, page_token: str
) -> tuple[list[str], str]:
    """Task ids of a project in import order, optionally of one status, and the next page token
    ("" when this is the last page). The token is the last sort key returned."""
    prefix = f"{status or 'all'}|"
    if status is not None and status not in _STATUSES:
        raise InvalidArgument(f"unknown task status {status!r}", field="status")
    if page_token and not page_token.startswith(prefix):
        raise InvalidArgument("page token does not belong to this listing", field="page_token")
    limit = max(1, limit)
    start = page_token + "\x00" if page_token else prefix
    rows = store.scan("tasks_by_project", project_id, start=start, end=prefix[:-1] + "}", limit=limit + 1)
    page = rows[:limit]
    token = page[-1][0] if len(rows) > limit else ""
    return [doc["task_id"] for _, doc in page], token


def expired_leases(store: ProjectionStore, now: datetime, limit: int = 500) -> list[tuple[str, str]]:
    """(task_id, lease_id) of leases whose expiry is at or before `now`, earliest first."""
    rows = store.scan("lease_expiry", "all", end=f"{_ms(now) + 1:013d}", limit=limit)
    return [(doc["task_id"], doc["lease_id"]) for _, doc in rows]


# ------------------------------------------------------------------ metrics and history


def annotator_metrics(store: ProjectionStore, project_id: str, person_id: str | None) -> list[Doc]:
    """Counters of one person (zeros if none yet) or of everyone with any, for a project or "*"."""
    if person_id:
        start, end = shard_range(person_id)
        rows = store.scan("annotator_metrics", project_id, start=start, end=end)
    else:
        rows = store.scan("annotator_metrics", project_id)
    merged: dict[str, Doc] = {}
    for sk, doc in rows:  # one row per log partition: sum them
        pid = unshard(sk)
        total = merged.setdefault(pid, zero_metrics(pid))
        for f in METRIC_FIELDS:
            total[f] += int(doc.get(f, 0))
    if person_id and not merged:
        return [zero_metrics(person_id)]
    return list(merged.values())


def annotation_versions(store: ProjectionStore, task_id: str) -> list[Doc]:
    return [doc for _, doc in store.scan("annotation_versions", task_id)]


def accepted_labels(
    store: ProjectionStore, project_id: str, after: str = "", limit: int = 1000
) -> list[tuple[str, Doc]]:
    """The current accepted label of every (task, annotation) in the project, by sort key
    f"{task_id}|{annotation_id}"; page on with `after` = the last sort key received."""
    start = after + "\x00" if after else ""
    return store.scan("accepted", project_id, start=start, limit=limit)
