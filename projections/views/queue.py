"""Queue view: the tasks with a free slot, ordered best-first, per project and skill set.

Collections
- "queue"       pk=f"{project_id}|{skill_key}", sk=queue_sort_key(...) → {task_id}
                (priority DESC, deadline ASC with no deadline last, import order, task id)
- "queue_keys"  pk=project_id, sk=skill_key → {count}   (row deleted when count reaches 0)
- "queue_depth" pk="all", sk=project_id → {depth}       (kept at 0 so gauges can drop to 0)
- "queue_task"  pk=task_id, sk="" → the view's own task state (core fields from `taskstate`
                plus project_id, skill_key and the current queue sort key or "")

`skill_key` is the comma-joined sorted set of the task's required skills ("" for none).
"""

from __future__ import annotations

from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator.eventlog.base import RecordedEvent
from projections.base import Doc, ViewTx
from projections.views.taskstate import (
    QUEUED,
    TASK_EVENTS,
    evolve,
    new_core,
    queue_sort_key,
    skill_key,
    ts_ms,
)


def queue_pk(project_id: str, key: str) -> str:
    return f"{project_id}|{key}"


class QueueView:
    name: str = "queue"
    collections: tuple[str, ...] = ("queue", "queue_keys", "queue_depth", "queue_task")

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = env.WhichOneof("payload")
        if kind == "task_imported":
            self._imported(env.task_imported, event.position.offset, tx)
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
            self._enqueue(doc, tx)
        elif was_queued and not now_queued:
            self._dequeue(doc, tx)
        tx.put("queue_task", p.task_id, "", doc)

    def _imported(self, p: events_pb2.TaskImported, offset: int, tx: ViewTx) -> None:
        spec = p.task
        if tx.get("queue_task", spec.task_id) is not None:
            return
        doc = new_core(int(spec.overlap))
        deadline = ts_ms(spec.deadline) if spec.HasField("deadline") else None
        doc.update(
            task_id=spec.task_id,
            project_id=p.project_id,
            skill_key=skill_key(spec.required_skills),
            sort_key=queue_sort_key(int(spec.priority), deadline, offset, spec.task_id),
            queued=False,
        )
        if doc["status"] == QUEUED:
            self._enqueue(doc, tx)
        elif tx.get("queue_depth", "all", p.project_id) is None:
            tx.put("queue_depth", "all", p.project_id, {"depth": 0})
        tx.put("queue_task", spec.task_id, "", doc)

    @staticmethod
    def _enqueue(doc: Doc, tx: ViewTx) -> None:
        pid, key = doc["project_id"], doc["skill_key"]
        tx.put("queue", queue_pk(pid, key), doc["sort_key"], {"task_id": doc["task_id"]})
        doc["queued"] = True
        keys = tx.get("queue_keys", pid, key)
        tx.put("queue_keys", pid, key, {"count": (keys["count"] if keys else 0) + 1})
        depth = tx.get("queue_depth", "all", pid)
        tx.put("queue_depth", "all", pid, {"depth": (depth["depth"] if depth else 0) + 1})

    @staticmethod
    def _dequeue(doc: Doc, tx: ViewTx) -> None:
        if not doc.get("queued"):
            return
        pid, key = doc["project_id"], doc["skill_key"]
        tx.delete("queue", queue_pk(pid, key), doc["sort_key"])
        doc["queued"] = False
        keys = tx.get("queue_keys", pid, key)
        count = (keys["count"] if keys else 1) - 1
        if count > 0:
            tx.put("queue_keys", pid, key, {"count": count})
        else:
            tx.delete("queue_keys", pid, key)
        depth = tx.get("queue_depth", "all", pid)
        tx.put("queue_depth", "all", pid, {"depth": max((depth["depth"] if depth else 1) - 1, 0)})
