"""One entry point for all aggregates, so the command bus never needs to know which kind it runs.

Routing is by type: commands to their stream, events to their aggregate's evolve. A state of the
wrong kind for a command means the stream name was wrong, which is a programming error, hence
`TypeError` rather than a `LabelweaveError`.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import Message

from coordinator.domain.commands import (
    AcknowledgeGuideline,
    ImportGoldTask,
    ImportTask,
    IssueToken,
    PersonCommand,
    ProjectCommand,
    RecordGoldResult,
    RegisterPerson,
    ReinstatePerson,
    RevokeToken,
    StartQualification,
    TaskCommand,
    UpdatePerson,
)
from coordinator.domain.person import PERSON_EVENTS, PersonState, decide_person, evolve_person
from coordinator.domain.project import PROJECT_EVENTS, ProjectState, decide_project, evolve_project
from coordinator.domain.task import TASK_EVENTS, TaskState, decide_task, evolve_task

Command = TaskCommand | ProjectCommand | PersonCommand
State = TaskState | ProjectState | PersonState


def stream_of(cmd: Command) -> str:
    if isinstance(cmd, RegisterPerson | UpdatePerson):
        return f"person:{cmd.spec.person_id}"
    if isinstance(cmd, IssueToken | RevokeToken | RecordGoldResult | StartQualification | ReinstatePerson):
        return f"person:{cmd.person_id}"
    if isinstance(cmd, AcknowledgeGuideline):
        return f"person:{cmd.person_id}"
    if isinstance(cmd, ImportTask | ImportGoldTask):
        return f"task:{cmd.spec.task_id}"
    if isinstance(cmd, TaskCommand):
        return f"task:{cmd.task_id}"
    if isinstance(cmd, ProjectCommand):
        return f"project:{cmd.project_id}"
    raise TypeError(f"not a command: {type(cmd).__name__}")


def decide(state: State | None, cmd: Command) -> list[Message]:
    if isinstance(cmd, TaskCommand):
        if state is not None and not isinstance(state, TaskState):
            raise TypeError(f"task command {type(cmd).__name__} applied to {type(state).__name__}")
        return decide_task(state, cmd)
    if isinstance(cmd, ProjectCommand):
        if state is not None and not isinstance(state, ProjectState):
            raise TypeError(f"project command {type(cmd).__name__} applied to {type(state).__name__}")
        return decide_project(state, cmd)
    if isinstance(cmd, PersonCommand):
        if state is not None and not isinstance(state, PersonState):
            raise TypeError(f"person command {type(cmd).__name__} applied to {type(state).__name__}")
        return decide_person(state, cmd)
    raise TypeError(f"not a command: {type(cmd).__name__}")


def evolve(state: State | None, event: Message) -> State:
    if isinstance(event, TASK_EVENTS):
        if state is not None and not isinstance(state, TaskState):
            raise TypeError(f"task event {type(event).__name__} applied to {type(state).__name__}")
        return evolve_task(state, event)
    if isinstance(event, PROJECT_EVENTS):
        if state is not None and not isinstance(state, ProjectState):
            raise TypeError(f"project event {type(event).__name__} applied to {type(state).__name__}")
        return evolve_project(state, event)
    if isinstance(event, PERSON_EVENTS):
        if state is not None and not isinstance(state, PersonState):
            raise TypeError(f"person event {type(event).__name__} applied to {type(state).__name__}")
        return evolve_person(state, event)
    raise TypeError(f"not an event payload: {type(event).__name__}")


def fold(events: Iterable[Message]) -> State | None:
    state: State | None = None
    for event in events:
        state = evolve(state, event)
    return state
