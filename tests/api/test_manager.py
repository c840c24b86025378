"""Manager controls over gRPC, on both backends (docs/manager-controls.md): assigned work goes to
its assignee first and to nobody else, teams, pause and resume, reprioritising (all or nothing),
role checks, refusals that append nothing, and idempotent retries."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC
from functools import partial
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from coordinator._pb.labelweave.api.v1 import api_pb2, manager_pb2, manager_pb2_grpc
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.cli import main

from .conftest import Env, Stubs, image_task, trailers


@pytest.fixture
def env(both_env: Env) -> Env:
    """Every rule in this module is checked on both backends (embedded; Kafka + Cassandra)."""
    return both_env


class Crew:
    """A project p1 with a manager, two annotators (alice has the skill `lidar`) and a team
    `night` of one (nina)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.stub = manager_pb2_grpc.ManagerServiceStub(env.channel)
        self.mgr = env.person("mgr", M.ROLE_MANAGER)
        self.alice = env.person("alice", M.ROLE_ANNOTATOR, skills=("lidar",))
        self.bob = env.person("bob", M.ROLE_ANNOTATOR)
        self.nina = self._with_teams("nina", "night")
        env.project("p1", members=("mgr", "alice", "bob", "nina"))

    def _with_teams(self, person_id: str, *teams: str) -> Stubs:
        env = self.env
        env.admin.admin.RegisterPerson(
            api_pb2.RegisterPersonRequest(
                command_id=f"reg-{person_id}",
                person=M.PersonSpec(
                    person_id=person_id, roles=[M.ROLE_ANNOTATOR], time_zone="UTC", teams=list(teams)
                ),
            ),
            metadata=env.admin.md,
        )
        tok = env.admin.admin.CreateToken(
            api_pb2.CreateTokenRequest(command_id=f"tok-{person_id}", person_id=person_id),
            metadata=env.admin.md,
        )
        return env.as_(tok.token)

    def call(self, who: Stubs, method: str, request: Message) -> Any:
        """ManagerService.`method` as `who`."""
        return getattr(self.stub, method)(request, metadata=who.md)

    def imp(self, *tasks: M.TaskSpec, batch_id: str = "", project_id: str = "p1") -> None:
        self.env.admin.tasks.ImportTasks(
            api_pb2.ImportTasksRequest(
                command_id=f"imp-{'-'.join(t.task_id for t in tasks)}",
                project_id=project_id,
                batch_id=batch_id,
                tasks=list(tasks),
            ),
            metadata=self.env.admin.md,
        )
        self.settle()

    def settle(self) -> None:
        self.env.server.app.runner.catch_up()

    def next_id(self, who: Stubs, cid: str, project_id: str = "p1") -> str:
        res = who.tasks.NextTask(
            api_pb2.NextTaskRequest(command_id=cid, project_id=project_id), metadata=who.md
        )
        self.settle()
        return res.task.task_id if res.HasField("task") else ""

    def head(self) -> object:
        return self.env.server.app.log.head()

    def refused(self, fn: Callable[[], object], code: grpc.StatusCode, field: str = "") -> str:
        """Call `fn`, expect `code` (and `field`), and check nothing was appended; the details."""
        head = self.head()
        with pytest.raises(grpc.RpcError) as err:
            fn()
        assert err.value.code() == code, err.value.details()
        if field:
            assert trailers(err.value)["labelweave-field"] == field
        assert self.head() == head
        return str(err.value.details())


def assign(task_id: str, cid: str, *, person: str = "", team: str = "", force: bool = False) -> Message:
    return manager_pb2.AssignTaskRequest(
        command_id=cid, task_id=task_id, person_id=person, team=team, reason="knows the site", force=force
    )


def test_an_assigned_task_goes_to_its_assignee_first_and_to_nobody_else(env: Env) -> None:
    c = Crew(env)
    c.imp(image_task("low", priority=1), image_task("high", priority=9), image_task("mid", priority=5))
    task = c.call(c.mgr, "AssignTask", assign("low", "a1", person="bob"))
    assert task.assigned_person_id == "bob" and not task.assigned_team
    # a retry answers the same and appends nothing
    head = c.head()
    assert c.call(c.mgr, "AssignTask", assign("low", "a1", person="bob")) == task
    assert c.head() == head
    assert (
        env.admin.tasks.GetTask(
            api_pb2.GetTaskRequest(task_id="low"), metadata=env.admin.md
        ).assigned_person_id
        == "bob"
    )

    # alice is served the open queue best first, never bob's task
    assert c.next_id(c.alice, "n1") == "high"
    assert c.next_id(c.alice, "n2") == "mid"
    assert c.next_id(c.alice, "n3") == ""
    # bob is served his assigned task before anything else
    c.imp(image_task("top", priority=50))
    assert c.next_id(c.bob, "n4") == "low"
    assert c.next_id(c.bob, "n5") == "top"

    listed = c.call(c.mgr, "ListAssigned", manager_pb2.ListAssignedRequest(project_id="p1", person_id="bob"))
    assert list(listed.task_ids) == []  # leased now: no longer waiting


def test_a_team_assignment_is_served_to_the_team_and_unassigning_opens_it(env: Env) -> None:
    c = Crew(env)
    c.imp(image_task("t1"), image_task("t2", priority=-5))
    task = c.call(c.mgr, "AssignTask", assign("t1", "a1", team="night"))
    assert task.assigned_team == "night"
    assert list(
        c.call(c.mgr, "ListAssigned", manager_pb2.ListAssignedRequest(project_id="p1", team="night")).task_ids
    ) == ["t1"]
    assert c.next_id(c.alice, "n1") == "t2"  # t1 is the night team's
    assert c.next_id(c.alice, "n2") == ""
    c.imp(image_task("t3"))
    c.call(c.mgr, "AssignTask", assign("t3", "a2", team="night"))
    c.call(
        c.mgr,
        "UnassignTask",
        manager_pb2.UnassignTaskRequest(command_id="u1", task_id="t3", reason="no night shift"),
    )
    assert c.next_id(c.nina, "n3") == "t1"  # a team's task comes first for its member
    assert c.next_id(c.bob, "n4") == "t3"  # open again
    # a team nobody of the project is in is refused, naming the field
    c.imp(image_task("t4"))
    c.refused(
        lambda: c.call(c.mgr, "AssignTask", assign("t4", "a3", team="day")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "team",
    )


def test_assignment_refusals_name_the_field_and_append_nothing(env: Env) -> None:
    c = Crew(env)
    env.person("outsider", M.ROLE_ANNOTATOR)
    c.imp(image_task("t1", skills=("lidar",)), image_task("t2"))
    fp = grpc.StatusCode.FAILED_PRECONDITION
    msg = c.refused(
        lambda: c.call(c.mgr, "AssignTask", assign("t1", "x1", person="outsider")), fp, "person_id"
    )
    assert "not a member" in msg
    msg = c.refused(lambda: c.call(c.mgr, "AssignTask", assign("t1", "x2", person="bob")), fp, "person_id")
    assert "lidar" in msg
    c.refused(
        lambda: c.call(c.mgr, "AssignTask", assign("nope", "x3", person="bob")),
        grpc.StatusCode.NOT_FOUND,
        "task_id",
    )
    c.refused(
        lambda: c.call(c.mgr, "AssignTask", assign("t1", "x4", person="bob", team="night")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "person_id",
    )
    c.refused(
        lambda: c.call(c.mgr, "UnassignTask", manager_pb2.UnassignTaskRequest(command_id="x5", task_id="t2")),
        fp,
        "task_id",
    )
    # forced: recorded, and bob may lease it although he lacks the skill
    task = c.call(c.mgr, "AssignTask", assign("t1", "x6", person="bob", force=True))
    assert task.assigned_person_id == "bob"
    history = env.admin.tasks.History(api_pb2.HistoryRequest(task_id="t1"), metadata=env.admin.md)
    assigned = [e.event.task_assigned for e in history.entries if e.event.HasField("task_assigned")]
    assert [(a.forced, list(a.missing_skills), a.assigned_by) for a in assigned] == [(True, ["lidar"], "mgr")]
    assert c.next_id(c.bob, "n1") == "t1"
    # a completed task cannot be assigned
    env.project("p2", review=M.REVIEW_POLICY_NONE, members=("mgr", "alice"))
    c.imp(image_task("d1"), project_id="p2")
    lease = c.alice.tasks.NextTask(
        api_pb2.NextTaskRequest(command_id="n2", project_id="p2"), metadata=c.alice.md
    )
    c.alice.tasks.Submit(
        api_pb2.SubmitRequest(
            command_id="s2",
            task_id="d1",
            lease_id=lease.lease.lease_id,
            annotation=A.Annotation(
                shapes=[A.Shape(label="car", box=A.BoundingBox(x=1, y=1, width=5, height=5))]
            ),
        ),
        metadata=c.alice.md,
    )
    assert "complete" in c.refused(
        lambda: c.call(c.mgr, "AssignTask", assign("d1", "x7", person="bob")), fp, "task_id"
    )


def test_a_paused_project_leases_nothing_until_resumed(env: Env) -> None:
    c = Crew(env)
    c.imp(image_task("t1", priority=2), image_task("t2", priority=1))
    first = c.alice.tasks.NextTask(
        api_pb2.NextTaskRequest(command_id="n1", project_id="p1"), metadata=c.alice.md
    )
    assert first.task.task_id == "t1"
    project = c.call(
        c.mgr,
        "PauseProject",
        manager_pb2.PauseProjectRequest(command_id="p1", project_id="p1", reason="guideline v3"),
    )
    assert (project.paused, project.paused_reason, project.paused_by) == (True, "guideline v3", "mgr")
    assert project.paused_at.ToDatetime(tzinfo=UTC) == env.clock()
    # a retry answers the same; a second pause is refused
    head = c.head()
    assert (
        c.call(
            c.mgr,
            "PauseProject",
            manager_pb2.PauseProjectRequest(command_id="p1", project_id="p1", reason="guideline v3"),
        )
        == project
    )
    assert c.head() == head
    c.refused(
        lambda: c.call(
            c.mgr,
            "PauseProject",
            manager_pb2.PauseProjectRequest(command_id="p2", project_id="p1", reason="x"),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "project_id",
    )
    msg = c.refused(lambda: c.next_id(c.bob, "n2"), grpc.StatusCode.FAILED_PRECONDITION, "project_id")
    assert "paused" in msg and "guideline v3" in msg
    assert c.next_id(c.bob, "n3", project_id="") == ""  # without a project: skipped
    # work already leased may still be submitted
    c.alice.tasks.Submit(
        api_pb2.SubmitRequest(
            command_id="s1",
            task_id="t1",
            lease_id=first.lease.lease_id,
            annotation=A.Annotation(
                shapes=[A.Shape(label="car", box=A.BoundingBox(x=1, y=1, width=5, height=5))]
            ),
        ),
        metadata=c.alice.md,
    )
    resumed = c.call(
        c.mgr, "ResumeProject", manager_pb2.ResumeProjectRequest(command_id="r1", project_id="p1")
    )
    assert not resumed.paused and not resumed.HasField("paused_at")
    assert c.next_id(c.bob, "n4") == "t2"
    c.refused(
        lambda: c.call(
            c.mgr, "ResumeProject", manager_pb2.ResumeProjectRequest(command_id="r2", project_id="p1")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "project_id",
    )


def test_reprioritising_reorders_the_queue_all_or_nothing(env: Env) -> None:
    c = Crew(env)
    c.imp(
        image_task("a", priority=1), image_task("b", priority=2), image_task("c", priority=3), batch_id="b1"
    )
    c.imp(image_task("d", priority=4), batch_id="b2")

    def repri(cid: str, priority: int, *ids: str, batch: str = "") -> Any:
        return c.call(
            c.mgr,
            "ReprioritiseTasks",
            manager_pb2.ReprioritiseTasksRequest(
                command_id=cid,
                project_id="p1",
                task_ids=list(ids),
                batch_id=batch,
                priority=priority,
                reason="escalation",
            ),
        )

    # unknown ids: nothing changes, and the refusal names them
    msg = c.refused(lambda: repri("r0", 10, "a", "ghost-1", "ghost-2"), grpc.StatusCode.NOT_FOUND, "task_ids")
    assert "ghost-1" in msg and "ghost-2" in msg and "2 of 3" in msg
    assert (
        env.admin.tasks.GetTask(api_pb2.GetTaskRequest(task_id="a"), metadata=env.admin.md).spec.priority == 1
    )

    out = repri("r1", 10, "a", "a", "b")  # duplicates ignored
    assert list(out.task_ids) == ["a", "b"] and not out.unchanged and out.position
    head = c.head()
    assert repri("r1", 10, "a", "a", "b") == out  # a retry answers the same, appends nothing
    assert c.head() == head
    c.refused(lambda: repri("r1", 11, "a", "b"), grpc.StatusCode.ABORTED, "command_id")

    # by import batch: a and b are at 10 already
    out = repri("r2", 10, batch="b1")
    assert list(out.task_ids) == ["c"] and list(out.unchanged) == ["a", "b"]
    c.refused(lambda: repri("r3", 10, batch="nope"), grpc.StatusCode.NOT_FOUND, "batch_id")
    c.refused(lambda: repri("r4", 10), grpc.StatusCode.INVALID_ARGUMENT, "task_ids")
    # the queue serves the new order: a, b, c at 10 (import order), then d at 4
    assert [c.next_id(c.bob, f"n{i}") for i in range(4)] == ["a", "b", "c", "d"]


def test_only_admins_and_the_projects_managers_use_the_controls(env: Env) -> None:
    c = Crew(env)
    c.imp(image_task("t1"))
    others = [env.person("other-mgr", M.ROLE_MANAGER)]  # a manager, but not of p1
    for role in (
        M.ROLE_ANNOTATOR,
        M.ROLE_REVIEWER,
        M.ROLE_QA,
        M.ROLE_EXPERT,
        M.ROLE_AUDITOR,
        M.ROLE_ML_CLIENT,
    ):
        name = M.Role.Name(role).removeprefix("ROLE_").lower().replace("_", "-")
        others.append(env.person(name, role))
        env.admin.admin.AddProjectMember(
            api_pb2.ProjectMemberRequest(command_id=f"m-{name}", project_id="p1", person_id=name),
            metadata=env.admin.md,
        )
    calls: list[tuple[str, Message]] = [
        ("AssignTask", assign("t1", "z1", person="bob")),
        ("UnassignTask", manager_pb2.UnassignTaskRequest(command_id="z2", task_id="t1")),
        ("PauseProject", manager_pb2.PauseProjectRequest(command_id="z3", project_id="p1", reason="x")),
        ("ResumeProject", manager_pb2.ResumeProjectRequest(command_id="z4", project_id="p1")),
        (
            "ReprioritiseTasks",
            manager_pb2.ReprioritiseTasksRequest(
                command_id="z5", project_id="p1", task_ids=["t1"], priority=3
            ),
        ),
        ("ListAssigned", manager_pb2.ListAssignedRequest(project_id="p1", person_id="bob")),
    ]
    for who in others:
        for method, request in calls:
            c.refused(partial(c.call, who, method, request), grpc.StatusCode.PERMISSION_DENIED)
    # an annotator may see what waits for them; the project's managers and admins may do everything
    c.call(c.alice, "ListAssigned", manager_pb2.ListAssignedRequest(project_id="p1", person_id="alice"))
    for method, request in calls:
        c.call(c.mgr, method, request)
    assert c.call(env.admin, "AssignTask", assign("t1", "z6", person="alice")).assigned_person_id == "alice"


def test_the_cli_drives_every_control(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    c = Crew(env)
    c.imp(image_task("t1"), image_task("t2"), batch_id="b1")
    conn = ["--target", env.target, "--token", env.admin.token]

    def cli(*argv: str) -> dict[str, Any]:
        assert main([*argv, *conn]) == 0
        return dict(json.loads(capsys.readouterr().out))

    assert cli("teams", "bob", "night", "lidar-fans")["spec"]["teams"] == ["night", "lidar-fans"]
    assert cli("assign", "t1", "--team", "night", "--reason", "night work")["assigned_team"] == "night"
    assert cli("assigned", "p1", "--team", "night")["task_ids"] == ["t1"]
    assert "assigned_team" not in cli("unassign", "t1")
    assert cli("assign", "t1", "--person", "alice")["assigned_person_id"] == "alice"
    out = cli("reprioritise", "p1", "--priority", "7", "--batch-id", "b1", "--command-id", "cli-r1")
    assert out["task_ids"] == ["t1", "t2"]
    assert cli("pause", "p1", "--reason", "audit")["paused_reason"] == "audit"
    assert "paused" not in cli("resume", "p1")
    with pytest.raises(SystemExit):
        main(["pause", "p1", *conn])  # --reason is required
    capsys.readouterr()
    assert main(["unassign", "t2", *conn]) == 2  # not assigned: a clear error, exit status 2
    assert "not assigned" in capsys.readouterr().err


def test_assigned_work_still_follows_shifts_and_never_the_same_person_twice(env: Env) -> None:
    c = Crew(env)
    # ManualClock starts Monday 09:00 UTC: a 09:00-17:00 shift has 8 hours left
    spec = env.admin.admin.GetPerson(api_pb2.GetPersonRequest(person_id="nina"), metadata=env.admin.md).spec
    spec.schedule.CopyFrom(
        M.WorkScheduleSpec(shifts=[M.ShiftSpec(weekday=d, start="09:00", end="17:00") for d in range(5)])
    )
    env.admin.admin.UpdatePerson(
        api_pb2.UpdatePersonRequest(command_id="sched", person=spec), metadata=env.admin.md
    )
    long, pair = image_task("long", priority=9), image_task("pair", overlap=2)
    long.expected_seconds = 9 * 3600
    c.imp(long, pair)
    c.call(c.mgr, "AssignTask", assign("long", "a1", team="night"))
    c.call(c.mgr, "AssignTask", assign("pair", "a2", team="night"))
    lease = c.nina.tasks.NextTask(
        api_pb2.NextTaskRequest(command_id="n1", project_id="p1"), metadata=c.nina.md
    )
    assert lease.task.task_id == "pair"  # "long" would outlast the shift
    c.nina.tasks.Submit(
        api_pb2.SubmitRequest(
            command_id="s1",
            task_id="pair",
            lease_id=lease.lease.lease_id,
            annotation=A.Annotation(
                shapes=[A.Shape(label="car", box=A.BoundingBox(x=1, y=1, width=5, height=5))]
            ),
        ),
        metadata=c.nina.md,
    )
    c.settle()
    # the second slot of "pair" waits for another member of the team: nina never gets it twice
    assert c.next_id(c.nina, "n2") == ""
    assert c.next_id(c.bob, "n3") == ""
