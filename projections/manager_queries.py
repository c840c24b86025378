"""Reads of the manager controls' projections (assigned queues, teams, import batches, open tasks
by priority)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

from projections.base import ProjectionStore
from projections.views.manager import batch_pk, request_pk
from projections.views.queue import assignee_key, queue_pk
from projections.views.tasks import priority_bound


def assigned_candidates(
    store: ProjectionStore, project_id: str, person_id: str, teams: Iterable[str], limit: int = 64
) -> list[str]:
    """Queued task ids assigned to the person or to one of their teams, best first (priority
    DESC, deadline ASC, import order: the open queue's order). `person_id` "": teams only."""
    keys = [assignee_key(person_id, "")] if person_id else []
    keys += [assignee_key("", team) for team in sorted(set(teams))]
    runs = [
        [
            (sk, doc["task_id"])
            for sk, doc in store.scan("assigned_queue", queue_pk(project_id, key), limit=limit)
        ]
        for key in keys
    ]
    return [task_id for _, task_id in itertools.islice(heapq.merge(*runs), limit)]


def team_members(store: ProjectionStore, team: str) -> list[str]:
    return [sk for sk, _ in store.scan("team_members", team)]


def batch_tasks(store: ProjectionStore, project_id: str, batch_id: str, limit: int) -> list[str]:
    """Task ids of an import batch, in id order (at most `limit`)."""
    return [sk for sk, _ in store.scan("batch_tasks", batch_pk(project_id, batch_id), limit=limit)]


def open_tasks_by_priority(
    store: ProjectionStore, project_id: str, low: int, high: int, limit: int
) -> list[str]:
    """Open (not done) task ids of the project whose priority is in [low, high], lowest priority
    first (then by task id); at most `limit`."""
    start, end = priority_bound(low), priority_bound(high + 1)  # 2**31 still has 10 digits biased
    rows = store.scan("tasks_by_priority", project_id, start=start, end=end, limit=limit)
    return [doc["task_id"] for _, doc in rows]


def reprioritised_by(store: ProjectionStore, project_id: str, command_id: str, limit: int) -> list[str]:
    """Task ids a ReprioritiseTasks request (its command id) changed, by task id."""
    return [sk for sk, _ in store.scan("reprioritised", request_pk(project_id, command_id), limit=limit)]
