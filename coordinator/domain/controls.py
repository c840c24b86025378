"""Manager controls, decided on the stream they govern (docs/manager-controls.md).

- Assignment (task stream): a manager reserves a task for one person or one team. Until it is
  unassigned only the assignee (or a member of the team) may lease it; every other lease rule
  (overlap, never the same person twice, skills, suspension, shifts) still holds, except that an
  assignment made with `force` waives the required skills for the assignee.
- Reprioritising (task stream): a new priority, recorded with the one it replaces.
- Pausing (project stream): nothing of the project is leased until it is resumed.

Facts that live outside the deciding stream (is the person a member of the project, which members
are in the team, their skills, are they suspended) are resolved by the service and passed in the
command (`AssignTask.candidates`), so `decide` stays pure, as with `LeaseTask.person_skills`.
Teams are a `teams` list on the person (PersonSpec.teams): a person's teams change with
UpdatePerson, in the person's own stream, and routing reads them from there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Final

from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import controls_pb2, model_pb2
from coordinator.domain.commands import (
    AssignTask,
    LeaseTask,
    PauseProject,
    ReprioritiseTask,
    ResumeProject,
    UnassignTask,
)
from coordinator.domain.ids import check_id, require_aware, to_datetime, to_timestamp
from coordinator.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from coordinator.domain.project import ProjectState
    from coordinator.domain.task import TaskState

MAX_REASON_LENGTH: Final = 2000
MAX_TEAMS: Final = 64

TASK_CONTROL_EVENTS: Final[tuple[type[Message], ...]] = (
    controls_pb2.TaskAssigned,
    controls_pb2.TaskUnassigned,
    controls_pb2.TaskReprioritised,
)
PROJECT_CONTROL_EVENTS: Final[tuple[type[Message], ...]] = (
    controls_pb2.ProjectPaused,
    controls_pb2.ProjectResumed,
)


@dataclass(frozen=True)
class Assignment:
    person_id: str = ""  # exactly one of person_id and team
    team: str = ""
    forced: bool = False

    @property
    def label(self) -> str:
        return self.person_id if self.person_id else f"team {self.team}"

    def admits(self, person_id: str, teams: frozenset[str]) -> bool:
        return person_id == self.person_id if self.person_id else self.team in teams


@dataclass(frozen=True)
class Pause:
    reason: str
    paused_by: str
    paused_at: datetime


# ------------------------------------------------------------------ teams (person stream)


def check_teams(spec: model_pb2.PersonSpec) -> None:
    """Team ids follow the id rules (they end up in projection keys); no duplicates."""
    if len(spec.teams) > MAX_TEAMS:
        raise InvalidArgument(f"at most {MAX_TEAMS} teams, got {len(spec.teams)}", field="person.teams")
    seen: set[str] = set()
    for i, team in enumerate(spec.teams):
        check_id(team, f"person.teams[{i}]")
        if team in seen:
            raise InvalidArgument(f"duplicate team {team!r}", field=f"person.teams[{i}]")
        seen.add(team)


# ------------------------------------------------------------------ task stream: decide


def _check_reason(reason: str) -> None:
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidArgument(f"at most {MAX_REASON_LENGTH} characters", field="reason")


def decide_assign(state: TaskState, cmd: AssignTask) -> list[Message]:
    if bool(cmd.person_id) == bool(cmd.team):
        raise InvalidArgument("assign to a person_id or to a team (exactly one)", field="person_id")
    field = "person_id" if cmd.person_id else "team"
    check_id(cmd.person_id or cmd.team, field)
    _check_reason(cmd.reason)
    if state.completed:
        raise FailedPrecondition(
            f"task {state.task_id} is complete; there is nothing to assign", field="task_id"
        )
    if state.gold is not None:
        raise FailedPrecondition(
            f"task {state.task_id} is a gold or training task: the gold mix serves it", field="task_id"
        )
    wanted = Assignment(cmd.person_id, cmd.team)
    current = state.assignment
    if current is not None and (current.person_id, current.team) == (wanted.person_id, wanted.team):
        raise FailedPrecondition(f"task {state.task_id} is assigned to {wanted.label} already", field=field)
    required = frozenset(state.spec.required_skills)
    missing = _check_person(state, cmd, required) if cmd.person_id else _check_team(state, cmd, required)
    event = controls_pb2.TaskAssigned(
        task_id=state.task_id,
        project_id=state.project_id,
        person_id=cmd.person_id,
        team=cmd.team,
        assigned_by=cmd.assigned_by,
        reason=cmd.reason,
        forced=bool(missing),
        missing_skills=missing,
    )
    if current is not None:
        event.previous_person_id = current.person_id
        event.previous_team = current.team
    return [event]


def _check_person(state: TaskState, cmd: AssignTask, required: frozenset[str]) -> list[str]:
    """Refuse a person who could never lease the task; the skills they lack (forced only)."""
    who = next((c for c in cmd.candidates if c.person_id == cmd.person_id), None)
    if who is None:
        raise FailedPrecondition(
            f"{cmd.person_id} is not a member of project {state.project_id}", field="person_id"
        )
    if who.suspended:
        raise FailedPrecondition(
            f"{cmd.person_id} is suspended from project {state.project_id}", field="person_id"
        )
    if any(lease.person_id == cmd.person_id for lease in state.leases.values()) or any(
        a.author_id == cmd.person_id for a in state.live_annotations
    ):
        raise FailedPrecondition(
            f"{cmd.person_id} works on task {state.task_id} in this round already"
            " (nobody annotates a task twice)",
            field="person_id",
        )
    missing = sorted(required - who.skills)
    if missing and not cmd.force:
        raise FailedPrecondition(
            f"{cmd.person_id} lacks the task's required skills: {', '.join(missing)}"
            " (set force to assign anyway; it is recorded)",
            field="person_id",
        )
    return missing


def _check_team(state: TaskState, cmd: AssignTask, required: frozenset[str]) -> list[str]:
    """Refuse a team none of whose members could lease the task; with `force`, the skills the
    best-equipped member lacks."""
    members = [c for c in cmd.candidates if not c.suspended]
    if not members:
        raise FailedPrecondition(
            f"no member of project {state.project_id} who is not suspended is in team {cmd.team}",
            field="team",
        )
    missing = min((sorted(required - c.skills) for c in members), key=len)
    if missing and not cmd.force:
        raise FailedPrecondition(
            f"no member of team {cmd.team} in project {state.project_id} has the task's required"
            f" skills ({', '.join(sorted(required))}); set force to assign anyway",
            field="team",
        )
    return missing


def decide_unassign(state: TaskState, cmd: UnassignTask) -> list[Message]:
    _check_reason(cmd.reason)
    current = state.assignment
    if current is None:
        raise FailedPrecondition(f"task {state.task_id} is not assigned", field="task_id")
    return [
        controls_pb2.TaskUnassigned(
            task_id=state.task_id,
            project_id=state.project_id,
            person_id=current.person_id,
            team=current.team,
            unassigned_by=cmd.unassigned_by,
            reason=cmd.reason,
        )
    ]


def decide_reprioritise(state: TaskState, cmd: ReprioritiseTask) -> list[Message]:
    _check_reason(cmd.reason)
    if not -(2**31) <= cmd.priority < 2**31:
        raise InvalidArgument("must fit a 32-bit signed integer", field="priority")
    if cmd.priority == state.spec.priority:
        raise FailedPrecondition(
            f"task {state.task_id} has priority {cmd.priority} already", field="priority"
        )
    return [
        controls_pb2.TaskReprioritised(
            task_id=state.task_id,
            project_id=state.project_id,
            priority=cmd.priority,
            previous_priority=state.spec.priority,
            reprioritised_by=cmd.reprioritised_by,
            reason=cmd.reason,
        )
    ]


def check_lease(state: TaskState, cmd: LeaseTask) -> bool:
    """Refuse a lease of an assigned task by anyone but its assignee; True when the assignment
    was forced, so the assignee's missing skills are waived."""
    assignment = state.assignment
    if assignment is None:
        return False
    if not assignment.admits(cmd.person_id, cmd.teams):
        raise FailedPrecondition(f"task {state.task_id} is assigned to {assignment.label}")
    return assignment.forced


# ------------------------------------------------------------------ task stream: evolve


def evolve_task_control(state: TaskState, event: Message) -> TaskState:
    if isinstance(event, controls_pb2.TaskAssigned):
        return replace(state, assignment=Assignment(event.person_id, event.team, event.forced))
    if isinstance(event, controls_pb2.TaskUnassigned):
        return replace(state, assignment=None)
    if isinstance(event, controls_pb2.TaskReprioritised):
        spec = model_pb2.TaskSpec()
        spec.CopyFrom(state.spec)
        spec.priority = event.priority
        return replace(state, spec=spec)
    raise TypeError(f"not a task control event: {type(event).__name__}")


# ------------------------------------------------------------------ project stream


def decide_pause(state: ProjectState, cmd: PauseProject) -> list[Message]:
    require_aware(cmd.now)
    if not cmd.reason.strip():
        raise InvalidArgument("say why the project is paused (people asking for work see it)", field="reason")
    _check_reason(cmd.reason)
    if state.pause is not None:
        raise FailedPrecondition(
            f"project {state.project_id} is paused already (since {state.pause.paused_at.isoformat()},"
            f" by {state.pause.paused_by}: {state.pause.reason})",
            field="project_id",
        )
    return [
        controls_pb2.ProjectPaused(
            project_id=state.project_id,
            reason=cmd.reason,
            paused_by=cmd.paused_by,
            paused_at=to_timestamp(cmd.now),
        )
    ]


def decide_resume(state: ProjectState, cmd: ResumeProject) -> list[Message]:
    require_aware(cmd.now)
    _check_reason(cmd.reason)
    if state.pause is None:
        raise FailedPrecondition(f"project {state.project_id} is not paused", field="project_id")
    return [
        controls_pb2.ProjectResumed(
            project_id=state.project_id,
            reason=cmd.reason,
            resumed_by=cmd.resumed_by,
            resumed_at=to_timestamp(cmd.now),
        )
    ]


def evolve_project_control(state: ProjectState, event: Message) -> ProjectState:
    if isinstance(event, controls_pb2.ProjectPaused):
        return replace(state, pause=Pause(event.reason, event.paused_by, to_datetime(event.paused_at)))
    if isinstance(event, controls_pb2.ProjectResumed):
        return replace(state, pause=None)
    raise TypeError(f"not a project control event: {type(event).__name__}")


def paused_message(state: ProjectState) -> str:
    pause = state.pause
    assert pause is not None
    return (
        f"project {state.project_id} is paused (since {pause.paused_at.isoformat()}, by"
        f" {pause.paused_by}): {pause.reason}"
    )
