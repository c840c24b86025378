"""Manager controls in the domain: assignment, reprioritising and pausing decide and evolve, and
every refusal names its field and records nothing (docs/manager-controls.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from coordinator._pb.labelweave.events.v1 import controls_pb2, events_pb2, model_pb2
from coordinator.domain.commands import (
    AssignTask,
    Candidate,
    CreateProject,
    ImportGoldTask,
    ImportTask,
    LeaseTask,
    PauseProject,
    RegisterPerson,
    ReprioritiseTask,
    ResumeProject,
    UnassignTask,
    UpdatePerson,
)
from coordinator.domain.controls import Assignment
from coordinator.domain.project import ProjectState
from coordinator.domain.task import TaskState
from coordinator.errors import FailedPrecondition, InvalidArgument, LabelweaveError, NotFound
from projections import manager_queries, queries
from tests.unit.test_gold_domain import refused, run
from tests.unit.test_views import PROJECT, Script

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ALICE = Candidate("alice", frozenset({"lidar"}))
BOB = Candidate("bob", frozenset())


def task(*, skills: Sequence[str] = (), overlap: int = 1, priority: int = 0) -> TaskState:
    spec = model_pb2.TaskSpec(
        task_id="t1",
        data_uri="s3://b/t1.jpg",
        overlap=overlap,
        required_skills=list(skills),
        priority=priority,
    )
    _, state = run(None, ImportTask("p1", "b1", spec, model_pb2.REVIEW_POLICY_FULL, 600))
    assert isinstance(state, TaskState)
    return state


def assign(
    person: str = "", team: str = "", *, candidates: Sequence[Candidate] = (ALICE,), force: bool = False
) -> AssignTask:
    return AssignTask("t1", person, team, "boss", "knows the site", force, tuple(candidates))


def lease(state: TaskState, person: str, teams: Sequence[str] = (), skills: Sequence[str] = ()) -> TaskState:
    _, new = run(state, LeaseTask("t1", f"L-{person}", person, frozenset(skills), T0, teams=frozenset(teams)))
    assert isinstance(new, TaskState)
    return new


# ------------------------------------------------------------------ assignment


def test_assigning_to_a_person_records_who_by_whom_and_why() -> None:
    events, state = run(task(skills=["lidar"]), assign("alice"))
    [event] = events
    assert isinstance(event, controls_pb2.TaskAssigned)
    assert (event.person_id, event.team, event.assigned_by, event.reason) == (
        "alice",
        "",
        "boss",
        "knows the site",
    )
    assert not event.forced and not event.missing_skills
    assert isinstance(state, TaskState) and state.assignment == Assignment("alice", "", False)


def test_an_assigned_task_is_leased_only_by_its_assignee() -> None:
    _, state = run(task(), assign("alice"))
    assert isinstance(state, TaskState)
    with pytest.raises(FailedPrecondition, match="assigned to alice"):
        lease(state, "bob")
    assert lease(state, "alice").leases


def test_a_team_assignment_admits_its_members_only() -> None:
    _, state = run(task(), assign(team="night", candidates=[BOB]))
    assert isinstance(state, TaskState)
    with pytest.raises(FailedPrecondition, match="assigned to team night"):
        lease(state, "alice", teams=["day"])
    assert lease(state, "bob", teams=["night"]).leases


def test_unassigning_opens_the_task_to_everyone() -> None:
    _, state = run(task(), assign("alice"))
    events, state = run(state, UnassignTask("t1", "boss", "alice is ill"))
    [event] = events
    assert isinstance(event, controls_pb2.TaskUnassigned) and event.person_id == "alice"
    assert isinstance(state, TaskState) and state.assignment is None
    assert lease(state, "bob").leases


def test_a_new_assignment_replaces_the_old_one_and_says_so() -> None:
    _, state = run(task(), assign("alice"))
    events, state = run(state, assign(team="night", candidates=[BOB]))
    [event] = events
    assert isinstance(event, controls_pb2.TaskAssigned)
    assert (event.previous_person_id, event.team) == ("alice", "night")
    assert isinstance(state, TaskState) and state.assignment == Assignment("", "night")


def test_assigning_a_person_without_the_required_skills_is_refused_unless_forced() -> None:
    state = task(skills=["lidar"])
    msg = refused(state, assign("bob", candidates=[BOB]), FailedPrecondition, "person_id")
    assert "lidar" in msg and "force" in msg
    events, forced = run(state, assign("bob", candidates=[BOB], force=True))
    [event] = events
    assert isinstance(event, controls_pb2.TaskAssigned)
    assert event.forced and list(event.missing_skills) == ["lidar"]
    assert isinstance(forced, TaskState)
    # the forced assignment waives the skills for the assignee only
    assert lease(forced, "bob").leases


def test_a_team_needs_a_member_with_the_skills_unless_forced() -> None:
    state = task(skills=["lidar"])
    refused(state, assign(team="night", candidates=[BOB]), FailedPrecondition, "team")
    events, _ = run(state, assign(team="night", candidates=[BOB, ALICE]))
    assert isinstance(events[0], controls_pb2.TaskAssigned) and not events[0].forced


@pytest.mark.parametrize(
    ("cmd", "kind", "field"),
    [
        (assign("alice", "night"), InvalidArgument, "person_id"),
        (assign(), InvalidArgument, "person_id"),
        (assign("bad id"), InvalidArgument, "person_id"),
        (assign("carol", candidates=[]), FailedPrecondition, "person_id"),  # not a member
        (assign(team="night", candidates=[]), FailedPrecondition, "team"),  # nobody of the project
        (
            assign("alice", candidates=[Candidate("alice", frozenset(), suspended=True)]),
            FailedPrecondition,
            "person_id",
        ),
        (AssignTask("t1", "alice", "", "boss", "x" * 2001, False, (ALICE,)), InvalidArgument, "reason"),
    ],
)
def test_assignment_refusals_name_the_field(cmd: AssignTask, kind: type[LabelweaveError], field: str) -> None:
    refused(task(), cmd, kind, field)


def test_assigning_a_missing_completed_or_gold_task_is_refused() -> None:
    refused(None, assign("alice"), NotFound, "task_id")
    state = task()
    done = replace(state, completed=True)
    assert "complete" in refused(done, assign("alice"), FailedPrecondition, "task_id")
    gold_spec = model_pb2.TaskSpec(task_id="t1", data_uri="s3://b/g.jpg", overlap=1)
    _, gold = run(None, ImportGoldTask("p1", "b1", gold_spec, model_pb2.GoldSpec(), 600))
    assert "gold" in refused(gold, assign("alice"), FailedPrecondition, "task_id")


def test_assigning_someone_who_works_on_the_task_already_is_refused() -> None:
    state = lease(task(overlap=2), "alice")
    assert "already" in refused(state, assign("alice"), FailedPrecondition, "person_id")


def test_assigning_the_same_assignee_twice_and_unassigning_an_open_task_are_refused() -> None:
    _, state = run(task(), assign("alice"))
    refused(state, assign("alice"), FailedPrecondition, "person_id")
    refused(task(), UnassignTask("t1", "boss", ""), FailedPrecondition, "task_id")


# ------------------------------------------------------------------ reprioritise


def test_reprioritising_records_the_old_and_new_priority() -> None:
    events, state = run(task(priority=1), ReprioritiseTask("t1", 9, "boss", "customer escalation"))
    [event] = events
    assert isinstance(event, controls_pb2.TaskReprioritised)
    assert (event.priority, event.previous_priority, event.reprioritised_by) == (9, 1, "boss")
    assert isinstance(state, TaskState) and state.spec.priority == 9


def test_reprioritising_to_the_same_priority_or_out_of_range_is_refused() -> None:
    refused(task(priority=3), ReprioritiseTask("t1", 3, "boss", ""), FailedPrecondition, "priority")
    refused(task(), ReprioritiseTask("t1", 2**31, "boss", ""), InvalidArgument, "priority")
    refused(None, ReprioritiseTask("t1", 1, "boss", ""), NotFound, "task_id")


# ------------------------------------------------------------------ pause and resume


def project() -> ProjectState:
    _, state = run(None, CreateProject("p1", "P1", "", model_pb2.ProjectSettings()))
    assert isinstance(state, ProjectState)
    return state


def test_pause_and_resume_are_project_events_with_who_why_and_when() -> None:
    events, paused = run(project(), PauseProject("p1", "boss", "guideline v3 under review", T0))
    [event] = events
    assert isinstance(event, controls_pb2.ProjectPaused)
    assert event.paused_at.ToDatetime(tzinfo=UTC) == T0
    assert isinstance(paused, ProjectState) and paused.pause is not None
    assert (paused.pause.reason, paused.pause.paused_by, paused.pause.paused_at) == (
        "guideline v3 under review",
        "boss",
        T0,
    )
    events, resumed = run(paused, ResumeProject("p1", "boss", "v3 is out", T0))
    assert isinstance(events[0], controls_pb2.ProjectResumed)
    assert isinstance(resumed, ProjectState) and resumed.pause is None


def test_pause_refusals() -> None:
    refused(project(), PauseProject("p1", "boss", " ", T0), InvalidArgument, "reason")
    _, paused = run(project(), PauseProject("p1", "boss", "why", T0))
    assert "paused already" in refused(
        paused, PauseProject("p1", "boss", "why", T0), FailedPrecondition, "project_id"
    )
    refused(project(), ResumeProject("p1", "boss", "", T0), FailedPrecondition, "project_id")
    refused(None, PauseProject("p1", "boss", "why", T0), NotFound, "project_id")


# ------------------------------------------------------------------ teams


def person(*teams: str) -> RegisterPerson:
    return RegisterPerson(
        model_pb2.PersonSpec(
            person_id="ann", roles=[model_pb2.ROLE_ANNOTATOR], time_zone="UTC", teams=list(teams)
        )
    )


def test_teams_are_part_of_the_person_and_are_checked() -> None:
    _, state = run(None, person("night", "lidar-experts"))
    assert list(state.spec.teams) == ["night", "lidar-experts"]  # type: ignore[union-attr]
    refused(None, person("night", "night"), InvalidArgument, "person.teams[1]")
    refused(None, person("no spaces"), InvalidArgument, "person.teams[0]")
    refused(state, UpdatePerson(person("").spec), InvalidArgument, "person.teams[0]")


# ------------------------------------------------------------------ the queue view


def test_the_queue_view_keeps_assigned_tasks_out_of_the_open_queue_and_reorders_on_reprioritise() -> None:
    s = Script()
    s.imported("t1", priority=1)
    s.imported("t2", priority=5)
    s.imported("t3", priority=3)
    s.emit("person:ann", events_pb2.PersonRegistered(person=person("night").spec))
    assert queries.queue_candidates(s.store, PROJECT, set()) == ["t2", "t3", "t1"]

    s.emit("task:t2", controls_pb2.TaskAssigned(task_id="t2", project_id=PROJECT, person_id="alice"))
    s.emit("task:t3", controls_pb2.TaskAssigned(task_id="t3", project_id=PROJECT, team="night"))
    assert queries.queue_candidates(s.store, PROJECT, set()) == ["t1"]
    assert manager_queries.assigned_candidates(s.store, PROJECT, "alice", ["night"]) == ["t2", "t3"]
    assert manager_queries.assigned_candidates(s.store, PROJECT, "bob", []) == []
    assert manager_queries.team_members(s.store, "night") == ["ann"]
    assert queries.queue_depth(s.store, PROJECT) == 3  # assigned work is still waiting work

    s.emit("task:t3", controls_pb2.TaskReprioritised(task_id="t3", project_id=PROJECT, priority=9))
    assert manager_queries.assigned_candidates(s.store, PROJECT, "alice", ["night"]) == ["t3", "t2"]
    s.emit("task:t1", controls_pb2.TaskReprioritised(task_id="t1", project_id=PROJECT, priority=-1))
    assert s.task("t1")["priority"] == -1

    s.lease("t2", "L1", "alice")  # leased: no longer waiting for alice
    assert manager_queries.assigned_candidates(s.store, PROJECT, "alice", []) == []
    s.emit("task:t3", controls_pb2.TaskUnassigned(task_id="t3", project_id=PROJECT, team="night"))
    assert queries.queue_candidates(s.store, PROJECT, set()) == ["t3", "t1"]
    assert queries.queue_depth(s.store, PROJECT) == 2
    s.emit("person:ann", events_pb2.PersonUpdated(person=person("day").spec))
    assert manager_queries.team_members(s.store, "night") == []
    assert manager_queries.team_members(s.store, "day") == ["ann"]
    assert manager_queries.batch_tasks(s.store, PROJECT, "b1", 10) == ["t1", "t2", "t3"]
    assert s.rebuilt_checksum() == s.store.checksum()
