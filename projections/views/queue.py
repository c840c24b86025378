"""Queue view: the tasks with a free slot, ordered best-first, per project and skill set.

Collections
- "queue"       pk=f"{project_id}|{skill_key}", sk=queue_sort_key(...) → {task_id}
                (priority DESC, deadline ASC with no deadline last, import order, task id)
- "queue_keys"  pk=project_id, sk=f"{skill_key}|{shard}" → {count}   (deleted when it reaches 0)
- "queue_depth" pk="all", sk=f"{project_id}|{shard}" → {depth}      (kept at 0 so gauges drop to 0)
- "queue_task"  pk=task_id, sk="" → the view's own task state (core fields from `taskstate`
                plus project_id, skill_key and the current queue sort key or "", and
                `assignee` while a manager has assigned the task)
- "assigned_queue" pk=f"{project_id}|person:{id}" or f"{project_id}|team:{team}",
                sk=queue sort key → {task_id}: queued tasks assigned to that person or team
                (docs/manager-controls.md). An assigned task is in this collection instead of
                "queue", so the open queue never hands it to anyone else; it still counts in
                "queue_depth".

`skill_key` is the comma-joined sorted set of the task's required skills ("" for none).
Counters are sharded by the event's log partition (`projections.base.shard_of`): tasks of one
project live on many partitions, and each partition's events are applied independently in the
distributed backend. `projections.queries` sums the shards.
"""

from __future__ import annotations

from typing import Any

from coordinator.eventlog.base import RecordedEvent
from projections.base import SHARD_SEP, Doc, ViewTx, shard_of
from projections.views.taskstate import (
    QUEUED,
    TASK_EVENTS,
    Imported,
    evolve,
    imported_of,
    new_core,
    payload_kind,
    queue_sort_key,
)


def queue_pk(project_id: str, key: str) -> str:
    return f"{project_id}|{key}"


def assignee_key(person_id: str, team: str) -> str:
    return f"person:{person_id}" if person_id else f"team:{team}"


def with_priority(sort_key: str, priority: int) -> str:
    """`sort_key` (see `queue_sort_key`) with another priority; deadline and import order stay."""
    return f"{2_147_483_647 - int(priority):010d}{sort_key[10:]}"


_CONTROLS = frozenset({"task_assigned", "task_unassigned", "task_reprioritised"})


class QueueView:
    name: str = "queue"
    collections: tuple[str, ...] = ("queue", "queue_keys", "queue_depth", "queue_task", "assigned_queue")

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = payload_kind(event)
        if kind == "task_imported":
            self._imported(imported_of(event), event.position.offset, shard_of(event), tx)
            return
        if kind in _CONTROLS:
            self._control(kind, getattr(env, kind), shard_of(event), tx)
            return
        if kind not in TASK_EVENTS or kind == "prelabel_ingested":
            return
        p = getattr(env, kind)
        doc = tx.get("queue_task", p.task_id)
        if doc is None:
            return
        was_queued = doc["status"] == QUEUED
        evolve(doc, kind, p)
        now_queued = doc["status"] == QUEUED
        if now_queued and not was_queued:
            self._enqueue(doc, shard_of(event), tx)
        elif was_queued and not now_queued:
            self._dequeue(doc, shard_of(event), tx)
        tx.put("queue_task", p.task_id, "", doc)

    def _imported(self, imp: Imported, offset: int, shard: str, tx: ViewTx) -> None:
        task_id = imp.task_id
        if tx.get("queue_task", task_id) is not None:
            return
        doc = new_core(imp.overlap)
        doc["task_id"] = task_id
        doc["project_id"] = imp.project_id
        doc["skill_key"] = ",".join(imp.skills)  # = skill_key(required_skills)
        doc["sort_key"] = queue_sort_key(imp.priority, imp.deadline_ms, offset, task_id)
        doc["queued"] = False
        if doc["status"] == QUEUED:
            self._enqueue(doc, shard, tx)
        elif tx.get("queue_depth", "all", f"{imp.project_id}{SHARD_SEP}{shard}") is None:
            tx.put("queue_depth", "all", f"{imp.project_id}{SHARD_SEP}{shard}", {"depth": 0})
        tx.put("queue_task", task_id, "", doc)

    def _control(self, kind: str, p: Any, shard: str, tx: ViewTx) -> None:
        """Assignment moves a queued task between the open queue and an assignee's queue; a new
        priority moves it within its queue. Out and back in, so counters stay exact."""
        doc = tx.get("queue_task", p.task_id)
        if doc is None:
            return
        queued = bool(doc.get("queued"))
        if queued:
            self._dequeue(doc, shard, tx)
        if kind == "task_assigned":
            doc["assignee"] = assignee_key(p.person_id, p.team)
        elif kind == "task_unassigned":
            doc.pop("assignee", None)
        else:
            doc["sort_key"] = with_priority(doc["sort_key"], p.priority)
        if queued:
            self._enqueue(doc, shard, tx)
        tx.put("queue_task", p.task_id, "", doc)

    @staticmethod
    def _enqueue(doc: Doc, shard: str, tx: ViewTx) -> None:
        pid, key = doc["project_id"], doc["skill_key"]
        assignee = doc.get("assignee")
        if assignee:  # only its assignee is served it; not in the open queue
            tx.put("assigned_queue", queue_pk(pid, assignee), doc["sort_key"], {"task_id": doc["task_id"]})
        else:
            tx.put("queue", queue_pk(pid, key), doc["sort_key"], {"task_id": doc["task_id"]})
            key_sk = f"{key}{SHARD_SEP}{shard}"
            keys = tx.get("queue_keys", pid, key_sk)
            tx.put("queue_keys", pid, key_sk, {"count": (keys["count"] if keys else 0) + 1})
        doc["queued"] = True
        depth_sk = f"{pid}{SHARD_SEP}{shard}"
        depth = tx.get("queue_depth", "all", depth_sk)
        tx.put("queue_depth", "all", depth_sk, {"depth": (depth["depth"] if depth else 0) + 1})

    @staticmethod
    def _dequeue(doc: Doc, shard: str, tx: ViewTx) -> None:
        if not doc.get("queued"):
            return
        pid, key = doc["project_id"], doc["skill_key"]
        assignee = doc.get("assignee")
        if assignee:
            tx.delete("assigned_queue", queue_pk(pid, assignee), doc["sort_key"])
        else:
            tx.delete("queue", queue_pk(pid, key), doc["sort_key"])
            key_sk = f"{key}{SHARD_SEP}{shard}"
            keys = tx.get("queue_keys", pid, key_sk)
            count = (keys["count"] if keys else 1) - 1
            if count > 0:
                tx.put("queue_keys", pid, key_sk, {"count": count})
            else:
                tx.delete("queue_keys", pid, key_sk)
        doc["queued"] = False
        depth_sk = f"{pid}{SHARD_SEP}{shard}"
        depth = tx.get("queue_depth", "all", depth_sk)
        tx.put("queue_depth", "all", depth_sk, {"depth": max((depth["depth"] if depth else 1) - 1, 0)})
