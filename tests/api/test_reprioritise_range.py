"""ReprioritiseTasks by a range of current priorities, over real gRPC on both backends: every open
task of the project in the range (done tasks and other projects' tasks left alone), all or
nothing, bounded, refusals that name the field and append nothing, idempotent retries that answer
as the first attempt (even for tasks the first attempt moved out of the range), the queue's new
order, role checks, the client and the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from coordinator import manager
from coordinator._pb.labelweave.api.v1 import api_pb2, manager_pb2
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.cli import main
from coordinator.client import LabelweaveClient

from .conftest import Env, assert_rebuild_matches, image_task, refused
from .test_manager import Crew

Request = manager_pb2.ReprioritiseTasksRequest
Response = manager_pb2.ReprioritiseTasksResponse
Reprioritise = Callable[[Request], Response]


@pytest.fixture
def env(both_env: Env) -> Env:
    """Every rule in this module is checked on both backends (embedded; Kafka + Cassandra)."""
    return both_env


def ranged(cid: str, priority: int, low: int, high: int, **kw: Any) -> manager_pb2.ReprioritiseTasksRequest:
    return manager_pb2.ReprioritiseTasksRequest(
        command_id=cid,
        project_id=kw.pop("project_id", "p1"),
        priority=priority,
        priority_range=manager_pb2.PriorityRange(min=low, max=high),
        reason="escalation",
        **kw,
    )


def priority_of(env: Env, task_id: str) -> int:
    return env.admin.tasks.GetTask(
        api_pb2.GetTaskRequest(task_id=task_id), metadata=env.admin.md
    ).spec.priority


def finish(c: Crew, task_id: str) -> None:
    """bob annotates the (only queued) task; the project reviews nothing, so it is done."""
    lease = c.bob.tasks.NextTask(
        api_pb2.NextTaskRequest(command_id=f"n-{task_id}", project_id="p2"), metadata=c.bob.md
    )
    assert lease.task.task_id == task_id
    c.bob.tasks.Submit(
        api_pb2.SubmitRequest(
            command_id=f"s-{task_id}",
            task_id=task_id,
            lease_id=lease.lease.lease_id,
            annotation=A.Annotation(
                shapes=[A.Shape(label="car", box=A.BoundingBox(x=1, y=1, width=9, height=9))]
            ),
        ),
        metadata=c.bob.md,
    )
    c.settle()


def test_reprioritising_a_priority_range_moves_every_open_task_in_it(env: Env) -> None:
    c = Crew(env)
    c.imp(*(image_task(f"t{p}", priority=p) for p in (-3, 0, 1, 2, 5, 7)))
    call: Reprioritise = lambda req: c.call(c.mgr, "ReprioritiseTasks", req)  # noqa: E731

    out = call(ranged("r1", 9, 0, 5))
    assert list(out.task_ids) == ["t0", "t1", "t2", "t5"] and not out.unchanged and out.position
    assert [priority_of(env, t) for t in ("t-3", "t0", "t5", "t7")] == [-3, 9, 9, 7]
    moved = [
        e for e in c.env.server.app.log.read_stream("task:t1") if e.envelope.type == "task_reprioritised"
    ]
    assert [e.envelope.command_id for e in moved] == ["r1/t1"]
    # a retry answers the same (the tasks have left the range) and appends nothing
    head = c.head()
    assert call(ranged("r1", 9, 0, 5)) == out
    assert c.head() == head
    c.refused(lambda: call(ranged("r1", 8, 0, 5)), grpc.StatusCode.ABORTED, "command_id")
    # the queue serves the new order: the four at 9 in import order, then 7, then -3
    assert [c.next_id(c.bob, f"n{i}") for i in range(6)] == ["t0", "t1", "t2", "t5", "t7", "t-3"]

    # a range that includes the target: tasks already there are `unchanged`
    out = call(ranged("r2", 9, 7, 9))
    assert list(out.task_ids) == ["t7"] and list(out.unchanged) == ["t0", "t1", "t2", "t5"]
    # the edges of int32 are fine
    out = call(ranged("r3", -(2**31), -(2**31), 2**31 - 1))
    assert len(out.task_ids) == 6 and priority_of(env, "t-3") == -(2**31)
    assert_rebuild_matches(env)


def test_done_tasks_and_other_projects_are_not_selected(env: Env) -> None:
    c = Crew(env)
    env.admin.admin.CreateProject(
        api_pb2.CreateProjectRequest(
            command_id="cp-p2",
            project_id="p2",
            name="P2",
            settings=M.ProjectSettings(
                default_overlap=1, lease_seconds=600, review_policy=M.REVIEW_POLICY_NONE
            ),
        ),
        metadata=env.admin.md,
    )
    from coordinator.testing import sample_schema

    env.admin.admin.PublishLabelSchema(
        api_pb2.PublishLabelSchemaRequest(command_id="schema-p2", project_id="p2", schema=sample_schema()),
        metadata=env.admin.md,
    )
    for m in ("mgr", "bob"):
        env.admin.admin.AddProjectMember(
            api_pb2.ProjectMemberRequest(command_id=f"m-p2-{m}", project_id="p2", person_id=m),
            metadata=env.admin.md,
        )
    c.imp(image_task("done", priority=1), project_id="p2")
    finish(c, "done")
    c.imp(image_task("open", priority=1), project_id="p2")
    c.imp(image_task("mine", priority=1))
    call: Reprioritise = lambda req: c.call(c.mgr, "ReprioritiseTasks", req)  # noqa: E731
    out = call(ranged("r1", 4, 0, 2, project_id="p2"))
    assert list(out.task_ids) == ["open"]
    assert (priority_of(env, "done"), priority_of(env, "mine")) == (1, 1)
    c.refused(
        lambda: call(ranged("r2", 4, 0, 2, project_id="p2")), grpc.StatusCode.NOT_FOUND, "priority_range"
    )
    assert_rebuild_matches(env)


def test_range_refusals_name_the_field_and_append_nothing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Crew(env)
    c.imp(
        image_task("a", priority=1), image_task("b", priority=2), image_task("c", priority=3), batch_id="b1"
    )
    call: Callable[[Request], Callable[[], Response]] = lambda req: (  # noqa: E731
        lambda: c.call(c.mgr, "ReprioritiseTasks", req)
    )
    refused(
        env, call(ranged("x1", 9, 3, 1)), grpc.StatusCode.INVALID_ARGUMENT, "priority_range.max", "above max"
    )
    refused(env, call(ranged("x2", 9, 10, 20)), grpc.StatusCode.NOT_FOUND, "priority_range", "no open task")
    refused(
        env,
        call(ranged("x3", 9, 1, 3, task_ids=["a"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "priority_range",
        "one of them",
    )
    refused(
        env, call(ranged("x4", 9, 1, 3, batch_id="b1")), grpc.StatusCode.INVALID_ARGUMENT, "priority_range"
    )
    refused(  # annotators do not reprioritise
        env,
        lambda: c.call(c.alice, "ReprioritiseTasks", ranged("x5", 9, 1, 3)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # bounded: more open tasks in the range than a request may change → nothing at all changes
    monkeypatch.setattr(manager, "MAX_REPRIORITISE", 2)
    refused(
        env, call(ranged("x6", 9, 1, 3)), grpc.StatusCode.INVALID_ARGUMENT, "priority_range", "more than 2"
    )
    assert [priority_of(env, t) for t in "abc"] == [1, 2, 3]
    monkeypatch.setattr(manager, "MAX_REPRIORITISE", 10_000)
    assert list(c.call(c.mgr, "ReprioritiseTasks", ranged("x7", 9, 1, 3)).task_ids) == ["a", "b", "c"]


def test_client_and_cli_reprioritise_a_range(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    c = Crew(env)
    c.imp(image_task("a", priority=1), image_task("b", priority=2), image_task("c", priority=3))
    with LabelweaveClient(env.target, c.mgr.token) as lw:
        out = lw.reprioritise_tasks("p1", 5, priority_range=(2, 3), command_id="cl-1")
    assert list(out.task_ids) == ["b", "c"]
    capsys.readouterr()
    argv = ["reprioritise", "p1", "--priority=-1", "--min-priority", "4", "--max-priority", "5"]
    assert main([*argv, "--target", env.target, "--token", c.mgr.token, "--command-id", "cli-1"]) == 0
    assert json.loads(capsys.readouterr().out)["task_ids"] == ["b", "c"]
    assert [priority_of(env, t) for t in "abc"] == [1, -1, -1]
    conn = ["--target", env.target, "--token", c.mgr.token]
    assert main(["reprioritise", "p1", "--priority", "1", "--min-priority", "4", *conn]) == 2
    assert "--max-priority" in capsys.readouterr().err  # both bounds, or none
