"""Manager controls: the use cases behind ManagerService (docs/manager-controls.md).

Assign a task to a person or a team, pause and resume a project, reprioritise tasks. Like every
use case of `coordinator.service`: authorise (admins and the project's managers), validate,
resolve the facts the domain needs, decide and append, and answer a retried `command_id` from
its first outcome. The service calls back into this module from `NextTask` (a paused project
leases nothing; assigned work is served to its assignee before the open queue) and from its
project and task views.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Final

from coordinator import service as svc
from coordinator._pb.labelweave.api.v1 import api_pb2, manager_pb2
from coordinator._pb.labelweave.events.v1 import controls_pb2
from coordinator.auth import Principal
from coordinator.commandbus import Outcome
from coordinator.domain import commands as C
from coordinator.domain.controls import paused_message
from coordinator.domain.person import PersonState
from coordinator.domain.project import ProjectState
from coordinator.domain.task import TaskState
from coordinator.errors import Conflict, FailedPrecondition, InvalidArgument, LabelweaveError, NotFound
from coordinator.eventlog import codec
from coordinator.eventlog.base import Position
from projections import manager_queries

if TYPE_CHECKING:
    from coordinator.service import Service

MAX_REPRIORITISE: Final = 10_000
"""Tasks per ReprioritiseTasks request (the ImportTasks limit)."""
MAX_NAMED: Final = 20
"""Unknown task ids named in a refusal (the count is always given)."""
ASSIGNED_CANDIDATES: Final = 64


# ------------------------------------------------------------------ assignment


def assign_task(service: Service, who: Principal, req: manager_pb2.AssignTaskRequest) -> api_pb2.Task:
    who.require(svc.MANAGE, "AssignTask")
    task = service.task_state(req.task_id)
    project = service.managed_project(who, task.project_id, "AssignTask")
    fp = svc.request_fingerprint("AssignTask", req)
    prior = service.bus.prior(req.command_id, fp)
    if prior is None:
        cmd = C.AssignTask(
            req.task_id,
            req.person_id,
            req.team,
            who.person_id,
            req.reason,
            req.force,
            _candidates(service, project, req.person_id, req.team),
        )
        prior = service.execute(who, cmd, req.command_id, fp, prior_checked=True)
        service.wait_for_projections(prior)  # the assignee's next NextTask sees it
    assigned = svc.event_of(prior, controls_pb2.TaskAssigned)
    return service.task_view(service.task_state(assigned.task_id), prior.position)


def _candidates(
    service: Service, project: ProjectState, person_id: str, team: str
) -> tuple[C.Candidate, ...]:
    """The project members who would work on the task: the person (if a member), or the
    members of the team. Suspension is read from the log (it may come from another process)."""
    if person_id and team:
        return ()  # refused by the domain, naming the field
    ids = [person_id] if person_id else manager_queries.team_members(service.store, team)
    out: list[C.Candidate] = []
    for pid in ids:
        person = service.fresh_person(pid)  # an unknown person: NotFound, naming person_id
        if pid not in project.members or (team and team not in person.spec.teams):
            continue  # not of the project, or left the team (the projection has not caught up)
        suspended = person.suspended_from(project.project_id) is not None
        out.append(C.Candidate(pid, person.skills, suspended))
    return tuple(out)


def unassign_task(service: Service, who: Principal, req: manager_pb2.UnassignTaskRequest) -> api_pb2.Task:
    who.require(svc.MANAGE, "UnassignTask")
    task = service.task_state(req.task_id)
    service.managed_project(who, task.project_id, "UnassignTask")
    fp = svc.request_fingerprint("UnassignTask", req)
    prior = service.bus.prior(req.command_id, fp)
    if prior is None:
        prior = service.execute(
            who,
            C.UnassignTask(req.task_id, who.person_id, req.reason),
            req.command_id,
            fp,
            prior_checked=True,
        )
        service.wait_for_projections(prior)
    unassigned = svc.event_of(prior, controls_pb2.TaskUnassigned)
    return service.task_view(service.task_state(unassigned.task_id), prior.position)


def list_assigned(
    service: Service, who: Principal, req: manager_pb2.ListAssignedRequest
) -> manager_pb2.ListAssignedResponse:
    """Yourself: what waits for you; anyone else (or a team): admins and the project's managers."""
    if bool(req.person_id) == bool(req.team):
        raise InvalidArgument("name a person_id or a team (exactly one)", field="person_id")
    if req.person_id == who.person_id:
        service.require_member_or_admin(who, service.project_state(req.project_id))
    else:
        service.managed_project(who, req.project_id, "ListAssigned")
    limit = min(req.limit or 50, svc.MAX_PAGE)
    teams = [req.team] if req.team else []
    ids = manager_queries.assigned_candidates(service.store, req.project_id, req.person_id, teams, limit)
    return manager_pb2.ListAssignedResponse(task_ids=ids)


# ------------------------------------------------------------------ pause and resume


def pause_project(service: Service, who: Principal, req: manager_pb2.PauseProjectRequest) -> api_pb2.Project:
    service.managed_project(who, req.project_id, "PauseProject")
    cmd = C.PauseProject(req.project_id, who.person_id, req.reason, service.clock())
    return service.mutate_project(who, "PauseProject", req, cmd, req.command_id)


def resume_project(
    service: Service, who: Principal, req: manager_pb2.ResumeProjectRequest
) -> api_pb2.Project:
    service.managed_project(who, req.project_id, "ResumeProject")
    cmd = C.ResumeProject(req.project_id, who.person_id, req.reason, service.clock())
    return service.mutate_project(who, "ResumeProject", req, cmd, req.command_id)


# ------------------------------------------------------------------ reprioritise


def reprioritise_tasks(
    service: Service, who: Principal, req: manager_pb2.ReprioritiseTasksRequest
) -> manager_pb2.ReprioritiseTasksResponse:
    """All or nothing: every task must be a task of the project, else nothing is appended and
    the refusal names the unknown ids. One TaskReprioritised per task whose priority changes,
    appended with `execute_many` (in order, one durable commit on SQLite, one transaction on
    Kafka). Task `t`'s command id is `<command_id>/<t>`, so a retry answers from what was
    appended and completes what was not."""
    service.managed_project(who, req.project_id, "ReprioritiseTasks")
    if not req.command_id:
        raise InvalidArgument("required, so a retried request changes nothing twice", field="command_id")
    ids = _selected(service, req)
    done: dict[str, Position] = {}  # appended by an earlier attempt of this request
    todo: list[str] = []
    unchanged: list[str] = []
    unknown: list[str] = []
    for task_id in ids:
        prior = service.bus.prior(f"{req.command_id}/{task_id}")
        if prior is not None:
            event = prior.first(controls_pb2.TaskReprioritised)
            if not isinstance(event, controls_pb2.TaskReprioritised) or event.priority != req.priority:
                raise Conflict(
                    f"command_id {req.command_id!r} was used before for a different command",
                    field="command_id",
                )
            done[task_id] = prior.events[-1].position
            continue
        _, state = service.bus.load(f"task:{task_id}")
        if not isinstance(state, TaskState) or state.project_id != req.project_id:
            unknown.append(task_id)
        elif state.spec.priority == req.priority:
            unchanged.append(task_id)
        else:
            todo.append(task_id)
    if unknown:
        named = ", ".join(unknown[:MAX_NAMED]) + (", …" if len(unknown) > MAX_NAMED else "")
        raise NotFound(
            f"{len(unknown)} of {len(ids)} tasks are not tasks of project {req.project_id}: {named};"
            " nothing was changed",
            field="task_ids",
        )
    cmds: list[tuple[C.TaskCommand, str]] = [
        (C.ReprioritiseTask(t, req.priority, who.person_id, req.reason), f"{req.command_id}/{t}")
        for t in todo
    ]
    results = service.bus.execute_many(cmds, actor=service.actor(who), correlation_id=req.command_id)
    last: Outcome | None = None
    for (cmd, _), result in zip(cmds, results, strict=True):
        assert isinstance(cmd, C.ReprioritiseTask)
        if isinstance(result, LabelweaveError):
            raise result  # a race with another writer; a retry with the same command_id completes it
        done[cmd.task_id] = result.events[-1].position
        last = result
    if last is not None:
        service.wait_for_projections(last)  # NextTask serves the new order at once
    out = manager_pb2.ReprioritiseTasksResponse(task_ids=[t for t in ids if t in done], unchanged=unchanged)
    out.position = str(max(done.values())) if done else ""
    return out


def _selected(service: Service, req: manager_pb2.ReprioritiseTasksRequest) -> list[str]:
    if req.HasField("priority_range"):
        if req.task_ids or req.batch_id:
            raise InvalidArgument(
                "give task_ids, a batch_id or a priority_range (one of them)", field="priority_range"
            )
        return _in_priority_range(service, req)
    if req.task_ids and req.batch_id:
        raise InvalidArgument("list task_ids or name a batch_id, not both", field="batch_id")
    if req.batch_id:
        ids = manager_queries.batch_tasks(service.store, req.project_id, req.batch_id, MAX_REPRIORITISE + 1)
        if not ids:
            raise NotFound(
                f"project {req.project_id} has no tasks imported in batch {req.batch_id!r}", field="batch_id"
            )
        if len(ids) > MAX_REPRIORITISE:
            raise InvalidArgument(
                f"batch {req.batch_id!r} has more than {MAX_REPRIORITISE} tasks; list task_ids in chunks",
                field="batch_id",
            )
        return ids
    if not req.task_ids:
        raise InvalidArgument("list task_ids, name a batch_id or give a priority_range", field="task_ids")
    if len(req.task_ids) > MAX_REPRIORITISE:
        raise InvalidArgument(
            f"at most {MAX_REPRIORITISE} tasks per request, got {len(req.task_ids)}", field="task_ids"
        )
    for i, task_id in enumerate(req.task_ids):
        if not task_id:
            raise InvalidArgument("required", field=f"task_ids[{i}]")
    return list(dict.fromkeys(req.task_ids))  # duplicates ignored, first position kept


def _in_priority_range(service: Service, req: manager_pb2.ReprioritiseTasksRequest) -> list[str]:
    """The project's open tasks whose current priority is in the range (the tasks view's
    priority index), by task id; with the tasks an earlier attempt of this request already moved
    (they may have left the range), so a retry answers as the first attempt did."""
    low, high = req.priority_range.min, req.priority_range.max
    if low > high:
        raise InvalidArgument(f"min {low} is above max {high}", field="priority_range.max")
    ids = manager_queries.open_tasks_by_priority(
        service.store, req.project_id, low, high, MAX_REPRIORITISE + 1
    )
    if len(ids) > MAX_REPRIORITISE:
        raise InvalidArgument(
            f"more than {MAX_REPRIORITISE} open tasks have a priority in [{low}, {high}];"
            " narrow the range or list task_ids in chunks",
            field="priority_range",
        )
    moved = manager_queries.reprioritised_by(
        service.store, req.project_id, req.command_id, MAX_REPRIORITISE + 1
    )
    selected = sorted({*ids, *moved})
    if not selected:
        raise NotFound(
            f"project {req.project_id} has no open task with a priority in [{low}, {high}]",
            field="priority_range",
        )
    if len(selected) > MAX_REPRIORITISE:
        raise InvalidArgument(
            f"more than {MAX_REPRIORITISE} tasks selected; narrow the range", field="priority_range"
        )
    return selected


# ------------------------------------------------------------------ hooks of the service


def skip_paused(service: Service, project_id: str, *, named: bool) -> bool:
    """NextTask: True to skip a paused project; refused when the caller named it. The project is
    read from the log, so a pause by another coordinator counts at once."""
    _, state = service.bus.load(f"project:{project_id}")
    if not isinstance(state, ProjectState) or state.pause is None:
        return False
    if named:
        raise FailedPrecondition(paused_message(state), field="project_id")
    return True


def lease_assigned(
    service: Service, who: Principal, person: PersonState, project_id: str, command_id: str, fp: str
) -> Outcome | None:
    """NextTask: lease the best task assigned to the caller or one of their teams, if any. The
    domain still applies every lease rule; shifts are applied here as for the open queue."""
    teams = frozenset(person.spec.teams)
    ids = manager_queries.assigned_candidates(
        service.store, project_id, who.person_id, teams, ASSIGNED_CANDIDATES
    )
    if not ids:
        return None
    now = service.clock()
    left = service.shift_seconds_left(who.person_id, now)
    if left is not None and left <= 0:
        return None  # off shift
    ids = [t for t in ids if _worth_trying(service, t, who.person_id, now, left)]
    return service.lease_first_allowed(
        who,
        ids,
        command_id,
        fp,
        lambda task_id: C.LeaseTask(task_id, codec.uuid7(), who.person_id, who.skills, now, teams=teams),
    )


def _worth_trying(service: Service, task_id: str, person_id: str, now: datetime, left: float | None) -> bool:
    """Skip, without I/O where the bus has the task cached, what the domain would refuse (full,
    or the caller works on it already) and what cannot be finished before the shift ends."""
    cached = service.bus.peek(f"task:{task_id}")
    if isinstance(cached, TaskState) and (
        not svc.could_lease(cached, person_id, now)
        or any(a.author_id == person_id for a in cached.live_annotations)
    ):
        return False
    if left is None:
        return True
    task = cached if isinstance(cached, TaskState) else service.task_state(task_id)
    return task.spec.expected_seconds <= left


def show_pause(out: api_pb2.Project, state: ProjectState) -> None:
    pause = state.pause
    if pause is not None:
        out.paused = True
        out.paused_reason = pause.reason
        out.paused_by = pause.paused_by
        out.paused_at.CopyFrom(codec.timestamp(pause.paused_at))


def show_assignment(out: api_pb2.Task, state: TaskState) -> None:
    assignment = state.assignment
    if assignment is not None:
        out.assigned_person_id = assignment.person_id
        out.assigned_team = assignment.team
