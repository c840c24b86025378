"""Reads of the manager controls' projections (assigned queues, teams, import batches)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

from projections.base import ProjectionStore
from projections.views.manager import batch_pk
from projections.views.queue import assignee_key, queue_pk


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
