"""Tasks view: one document per task, a per-project index by status, and the lease-expiry index.

Collections
- "task"             pk=task_id, sk=""  → task document (see `TasksView`)
- "tasks_by_project" pk=project_id, sk=f"{status}|{imported_offset:020d}|{task_id}" → {task_id}
                     plus sk=f"all|{imported_offset:020d}|{task_id}" for every task
- "lease_expiry"     pk="all", sk=f"{expires_ms:013d}|{task_id}|{lease_id}" → {task_id, lease_id, person_id}
"""

from __future__ import annotations

from coordinator._pb.labelweave.events.v1 import controls_pb2, events_pb2
from coordinator.eventlog.base import RecordedEvent
from projections.base import ViewTx
from projections.views.taskstate import TASK_EVENTS, evolve, new_core, ts_ms


def status_sk(status: str, imported_offset: int, task_id: str) -> str:
    return f"{status}|{imported_offset:020d}|{task_id}"


def expiry_sk(expires_ms: int, task_id: str, lease_id: str) -> str:
    return f"{max(expires_ms, 0):013d}|{task_id}|{lease_id}"


_ENDS_LEASE = frozenset({"lease_released", "lease_expired", "annotation_submitted"})


class TasksView:
    """Task documents:

    {task_id, project_id, batch_id, data_uri, media_type, priority, deadline_ms, required_skills,
     overlap, round, status, leases {lease_id: {person_id, expires_ms}},
     annotations {annotation_id: {author_id, version, status, round, reason_codes}},
     imported_offset, last_offset}
    """

    name: str = "tasks"
    collections: tuple[str, ...] = ("task", "tasks_by_project", "lease_expiry")

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = env.WhichOneof("payload")
        offset = event.position.offset
        if kind == "task_imported":
            self._imported(env.task_imported, offset, tx)
            return
        if kind == "task_reprioritised":  # manager controls: the document shows the priority now
            self._reprioritised(env.task_reprioritised, offset, tx)
            return
        if kind not in TASK_EVENTS:
            return
        p = getattr(env, kind)
        task_id = p.task_id
        doc = tx.get("task", task_id)
        if doc is None:
            return
        before = doc["status"]
        if kind == "task_leased":
            tx.put(
                "lease_expiry",
                "all",
                expiry_sk(ts_ms(p.expires_at), task_id, p.lease_id),
                {"task_id": task_id, "lease_id": p.lease_id, "person_id": p.person_id},
            )
        elif kind in _ENDS_LEASE:
            lease = doc["leases"].get(p.lease_id)
            if lease is not None:
                tx.delete("lease_expiry", "all", expiry_sk(lease["expires_ms"], task_id, p.lease_id))
        evolve(doc, kind, p)
        doc["last_offset"] = offset
        tx.put("task", task_id, "", doc)
        after = doc["status"]
        if after != before:
            pid, imported = doc["project_id"], doc["imported_offset"]
            tx.delete("tasks_by_project", pid, status_sk(before, imported, task_id))
            tx.put("tasks_by_project", pid, status_sk(after, imported, task_id), {"task_id": task_id})

    @staticmethod
    def _reprioritised(p: controls_pb2.TaskReprioritised, offset: int, tx: ViewTx) -> None:
        doc = tx.get("task", p.task_id)
        if doc is not None:
            doc["priority"] = int(p.priority)
            doc["last_offset"] = offset
            tx.put("task", p.task_id, "", doc)

    def _imported(self, p: events_pb2.TaskImported, offset: int, tx: ViewTx) -> None:
        spec = p.task
        task_id = spec.task_id
        if tx.get("task", task_id) is not None:
            return  # the domain never imports a task twice; keep the first
        project_id = p.project_id
        doc = new_core(int(spec.overlap))
        doc.update(
            task_id=task_id,
            project_id=project_id,
            batch_id=p.batch_id,
            data_uri=spec.data_uri,
            media_type=int(spec.media_type),
            priority=int(spec.priority),
            deadline_ms=ts_ms(spec.deadline) if spec.HasField("deadline") else None,
            required_skills=sorted(set(spec.required_skills)),
            imported_offset=offset,
            last_offset=offset,
        )
        tx.put("task", task_id, "", doc)
        tx.put("tasks_by_project", project_id, status_sk("all", offset, task_id), {"task_id": task_id})
        tx.put(
            "tasks_by_project", project_id, status_sk(doc["status"], offset, task_id), {"task_id": task_id}
        )
