"""Tasks view: one document per task, per-project indexes by status and by priority, and the
lease-expiry index.

Collections
- "task"              pk=task_id, sk=""  → task document (see `TasksView`)
- "tasks_by_project"  pk=project_id, sk=f"{status}|{imported_offset:020d}|{task_id}" → {task_id}
                      plus sk=f"all|{imported_offset:020d}|{task_id}" for every task
- "tasks_by_priority" pk=project_id, sk=priority_sk(priority, task_id) → {task_id, priority}: the
                      project's open (not done) tasks by current priority, ascending
                      (ReprioritiseTasks by priority range, docs/manager-controls.md)
- "lease_expiry"      pk="all", sk=f"{expires_ms:013d}|{task_id}|{lease_id}" → {task_id, lease_id, person_id}
                      every lease of every task, gold and training tasks included (the sweeper
                      expires them all with `LeaseExpired`)
- "gold_lease"        pk=task_id, sk=lease_id → {expires_ms}: the live leases of a gold or
                      training task (such tasks have no "task" document), so the lease's
                      expiry row can be found and deleted when the lease ends

Every row is keyed by its task (or is an index row unique to one task and written only by that
task's events), so partitions may be applied in any order (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from coordinator._pb.labelweave.events.v1 import controls_pb2, events_pb2, model_pb2
from coordinator.eventlog.base import RecordedEvent
from projections.base import Doc, ViewTx
from projections.views.taskstate import (
    DONE,
    TASK_EVENTS,
    Imported,
    evolve,
    imported_of,
    new_core,
    payload_kind,
    ts_ms,
)


def status_sk(status: str, imported_offset: int, task_id: str) -> str:
    return f"{status}|{imported_offset:020d}|{task_id}"


def expiry_sk(expires_ms: int, task_id: str, lease_id: str) -> str:
    return f"{max(expires_ms, 0):013d}|{task_id}|{lease_id}"


PRIORITY_BIAS = 2_147_483_648
"""Added to an int32 priority so it sorts as 10 unsigned digits, lowest first."""


def priority_sk(priority: int, task_id: str) -> str:
    return f"{int(priority) + PRIORITY_BIAS:010d}|{task_id}"


def priority_bound(priority: int) -> str:
    """Scan bound: every sort key of `priority` is >= it and every key of `priority - 1` < it."""
    return f"{int(priority) + PRIORITY_BIAS:010d}|"


_DISPUTE_EVENTS = frozenset({"dispute_opened", "dispute_resolved"})


_ENDS_LEASE = frozenset({"lease_released", "lease_expired", "annotation_submitted"})


class TasksView:
    """Task documents:

    {task_id, project_id, batch_id, data_uri, media_type, priority, deadline_ms, required_skills,
     overlap, round, status, leases {lease_id: {person_id, expires_ms}},
     annotations {annotation_id: {author_id, version, status, round, reason_codes,
                                  dispute_id?, dispute_status? (open | upheld | overturned | withdrawn)}},
     imported_offset, last_offset}
    """

    name: str = "tasks"
    collections: tuple[str, ...] = (
        "task",
        "tasks_by_project",
        "tasks_by_priority",
        "lease_expiry",
        "gold_lease",
    )

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = payload_kind(event)
        offset = event.position.offset
        if kind == "task_imported":
            self._imported(env.task_imported, imported_of(event), offset, tx)
            return
        if kind == "task_reprioritised":  # manager controls: the document shows the priority now
            self._reprioritised(env.task_reprioritised, offset, tx)
            return
        if kind in _DISPUTE_EVENTS:
            self._dispute(kind, getattr(env, kind), offset, tx)
            return
        if kind not in TASK_EVENTS:
            return
        p = getattr(env, kind)
        task_id = p.task_id
        doc = tx.get("task", task_id)
        if doc is None:  # a gold or training task: only its leases are indexed, for the sweeper
            self._gold_lease(kind, p, tx)
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
        if kind == "task_reopened":  # an open dispute of superseded work is withdrawn
            for a in doc["annotations"].values():
                if a.get("dispute_status") == "open" and a["status"] == "superseded":
                    a["dispute_status"] = "withdrawn"
        doc["last_offset"] = offset
        tx.put("task", task_id, "", doc)
        after = doc["status"]
        if after != before:
            pid, imported = doc["project_id"], doc["imported_offset"]
            tx.delete("tasks_by_project", pid, status_sk(before, imported, task_id))
            tx.put("tasks_by_project", pid, status_sk(after, imported, task_id), {"task_id": task_id})
            if after == DONE:
                tx.delete("tasks_by_priority", pid, priority_sk(doc["priority"], task_id))
            elif before == DONE:
                _index_priority(doc, tx)

    @staticmethod
    def _gold_lease(kind: str, p: Any, tx: ViewTx) -> None:
        """Gold and training leases go into the expiry index like any lease (their task has no
        document here; "gold_lease" remembers each live lease's expiry to find its row)."""
        task_id = p.task_id
        if kind == "task_leased":
            expires = ts_ms(p.expires_at)
            tx.put("gold_lease", task_id, p.lease_id, {"expires_ms": expires})
            tx.put(
                "lease_expiry",
                "all",
                expiry_sk(expires, task_id, p.lease_id),
                {"task_id": task_id, "lease_id": p.lease_id, "person_id": p.person_id},
            )
        elif kind in _ENDS_LEASE:
            lease = tx.get("gold_lease", task_id, p.lease_id)
            if lease is not None:
                tx.delete("gold_lease", task_id, p.lease_id)
                tx.delete("lease_expiry", "all", expiry_sk(int(lease["expires_ms"]), task_id, p.lease_id))

    @staticmethod
    def _dispute(kind: str, p: Any, offset: int, tx: ViewTx) -> None:
        """The annotation's latest dispute, as GetTask shows it. An overturned rejection sends the
        work on (`submitted`; the events that follow in the same command route or accept it);
        an upheld one leaves it rejected. Either way the annotation keeps its slot, as in the
        domain: a disputed rejection is live work of the round."""
        doc = tx.get("task", p.task_id)
        if doc is None:
            return
        a = doc["annotations"].get(p.annotation_id)
        if a is None:
            return
        a["dispute_id"] = p.dispute_id
        if kind == "dispute_opened":
            a["dispute_status"] = "open"
        elif p.decision == model_pb2.DISPUTE_DECISION_OVERTURN:
            a["dispute_status"] = "overturned"
            if a["status"] == "rejected":
                a["status"] = "submitted"
                a["reason_codes"] = []
        else:
            a["dispute_status"] = "upheld"
        doc["last_offset"] = offset  # the status cannot change: the work stays live either way
        tx.put("task", p.task_id, "", doc)

    @staticmethod
    def _reprioritised(p: controls_pb2.TaskReprioritised, offset: int, tx: ViewTx) -> None:
        doc = tx.get("task", p.task_id)
        if doc is not None:
            if doc["status"] != DONE:
                tx.delete("tasks_by_priority", doc["project_id"], priority_sk(doc["priority"], p.task_id))
            doc["priority"] = int(p.priority)
            doc["last_offset"] = offset
            tx.put("task", p.task_id, "", doc)
            if doc["status"] != DONE:
                _index_priority(doc, tx)

    def _imported(self, p: events_pb2.TaskImported, imp: Imported, offset: int, tx: ViewTx) -> None:
        task_id = imp.task_id
        if tx.get("task", task_id) is not None:
            return  # the domain never imports a task twice; keep the first
        project_id = imp.project_id
        spec = p.task
        doc = new_core(imp.overlap)
        doc["task_id"] = task_id
        doc["project_id"] = project_id
        doc["batch_id"] = p.batch_id
        doc["data_uri"] = spec.data_uri
        doc["media_type"] = int(spec.media_type)
        doc["priority"] = imp.priority
        doc["deadline_ms"] = imp.deadline_ms
        doc["required_skills"] = list(imp.skills)
        doc["imported_offset"] = offset
        doc["last_offset"] = offset
        tx.put("task", task_id, "", doc)
        tx.put("tasks_by_project", project_id, status_sk("all", offset, task_id), {"task_id": task_id})
        tx.put(
            "tasks_by_project", project_id, status_sk(doc["status"], offset, task_id), {"task_id": task_id}
        )
        _index_priority(doc, tx)


def _index_priority(doc: Doc, tx: ViewTx) -> None:
    tx.put(
        "tasks_by_priority",
        doc["project_id"],
        priority_sk(doc["priority"], doc["task_id"]),
        {"task_id": doc["task_id"], "priority": int(doc["priority"])},
    )
