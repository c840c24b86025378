"""Manager controls view: teams and import batches (docs/manager-controls.md).

Collections
- "team_members" pk=team, sk=person_id → {}            (PersonSpec.teams, as of the person's
                 latest PersonRegistered / PersonUpdated)
- "person_teams" pk=person_id, sk="" → {teams: [...]}  (the view's own memory of a person's teams,
                 so an update can delete the rows of the teams they left)
- "batch_tasks"  pk=f"{project_id}|{batch_id}", sk=task_id → {}
                 (every task an ImportTasks batch brought, by task id: the selector of
                 ReprioritiseTasks; a replayed import writes the same row)
- "reprioritised" pk=f"{project_id}|{command_id}", sk=task_id → {priority}: the tasks a
                 ReprioritiseTasks request changed (its events' correlation id), so a retried
                 priority-range request answers with the tasks its first attempt moved out of
                 the range

The queued tasks assigned to a person or a team are in the queue view ("assigned_queue"), which
already knows which tasks are queued.

Single-writer rule (docs/architecture.md): a team_members row is written only by the events of
its person's stream, a batch_tasks row only by its task's import, a reprioritised row only by its
task's TaskReprioritised of that request, so every row has one writer.
"""

from __future__ import annotations

from coordinator.eventlog.base import RecordedEvent
from projections.base import ViewTx
from projections.views.taskstate import imported_of, payload_kind


def batch_pk(project_id: str, batch_id: str) -> str:
    return f"{project_id}|{batch_id}"


def request_pk(project_id: str, command_id: str) -> str:
    return f"{project_id}|{command_id}"


class ManagerView:
    name: str = "manager"
    collections: tuple[str, ...] = ("team_members", "person_teams", "batch_tasks", "reprioritised")

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = payload_kind(event)
        if kind == "task_imported":
            imp = imported_of(event)
            tx.put("batch_tasks", batch_pk(imp.project_id, env.task_imported.batch_id), imp.task_id, {})
        elif kind == "task_reprioritised":
            r = env.task_reprioritised
            if env.correlation_id:
                tx.put(
                    "reprioritised",
                    request_pk(r.project_id, env.correlation_id),
                    r.task_id,
                    {"priority": int(r.priority)},
                )
        elif kind in ("person_registered", "person_updated"):
            spec = getattr(env, kind).person
            known = tx.get("person_teams", spec.person_id)
            before = set(known["teams"]) if known else set()
            after = set(spec.teams)
            for team in sorted(before - after):
                tx.delete("team_members", team, spec.person_id)
            for team in sorted(after - before):
                tx.put("team_members", team, spec.person_id, {})
            if after and after != before:
                tx.put("person_teams", spec.person_id, "", {"teams": sorted(after)})
            elif known is not None and not after:
                tx.delete("person_teams", spec.person_id, "")
