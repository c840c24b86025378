"""Disputes in the task and queue projections, over real gRPC on both backends: a task whose
rejected annotation is disputed shows the dispute in ListTasks, GetTask and the task projection,
keeps the slot held (never handed out, not counted in the queue) while the dispute is open or
upheld, and the projection follows the expert's decision (overturned: the work goes on; upheld:
still rejected, and the rework keeps the slot) and a reopen (withdrawn)."""

from __future__ import annotations

import pytest

from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from projections import queries
from projections.base import Doc

from .conftest import Env, assert_rebuild_matches
from .test_review_pipeline import Crew, box, pipeline_settings, review_crew


@pytest.fixture
def env(both_env: Env) -> Env:
    """Every rule in this module is checked on both backends (embedded; Kafka + Cassandra)."""
    return both_env


@pytest.fixture
def crew(env: Env) -> Crew:
    return review_crew(env, pipeline_settings())  # peer review, then expert resolution (disputes only)


def rejected_and_disputed(crew: Crew, tag: str) -> tuple[str, str, str]:
    """ann's work on a fresh task, rejected by the peer reviewer and disputed: (task, annotation,
    dispute)."""
    crew.imp(f"t-{tag}")
    task_id, ann_id = crew.work(crew.ann, tag)
    crew.review(crew.rev, task_id, ann_id, M.VERDICT_REJECT, reason_codes=["loose_box"])
    opened = crew.ann.reviews.OpenDispute(
        api_pb2.OpenDisputeRequest(
            command_id=f"d-{tag}", task_id=task_id, annotation_id=ann_id, comment="it is tight"
        ),
        metadata=crew.ann.md,
    )
    crew.settle()
    return task_id, ann_id, opened.dispute_id


def resolve(crew: Crew, task_id: str, dispute_id: str, decision: int) -> None:
    crew.exp.reviews.ResolveDispute(
        api_pb2.ResolveDisputeRequest(
            command_id=f"res-{dispute_id}",
            task_id=task_id,
            dispute_id=dispute_id,
            decision=decision,  # type: ignore[arg-type]
            comment="decided",
        ),
        metadata=crew.exp.md,
    )
    crew.settle()


def listed(crew: Crew, status: int = 0) -> dict[str, api_pb2.Task]:
    out = crew.mgr.tasks.ListTasks(
        api_pb2.ListTasksRequest(project_id="p1", status=status),  # type: ignore[arg-type]
        metadata=crew.mgr.md,
    )
    return {t.task_id: t for t in out.tasks}


def doc(crew: Crew, task_id: str) -> Doc:
    found = crew.env.server.app.store.get("task", task_id)
    assert found is not None
    return found


def assert_projection_agrees(crew: Crew, task: api_pb2.Task) -> None:
    """The task projection says what the aggregate (ListTasks / GetTask) says."""
    d = doc(crew, task.task_id)
    assert api_pb2.TaskStatus.Name(task.status) == f"TASK_STATUS_{d['status'].upper()}"
    for a in task.annotations:
        row = d["annotations"][a.annotation_id]
        assert api_pb2.AnnotationStatus.Name(a.status) == f"ANNOTATION_STATUS_{row['status'].upper()}"
        assert list(a.reason_codes) == row["reason_codes"]
        if a.dispute_id:
            assert (row["dispute_id"], f"DISPUTE_STATUS_{row['dispute_status'].upper()}") == (
                a.dispute_id,
                api_pb2.DisputeStatus.Name(a.dispute_status),
            )
        else:
            assert "dispute_id" not in row


def test_an_open_dispute_shows_everywhere_and_its_slot_stays_held(crew: Crew) -> None:
    app = crew.env.server.app
    task_id, ann_id, dispute_id = rejected_and_disputed(crew, "open")
    task = listed(crew)[task_id]
    (summary,) = task.annotations
    assert (summary.annotation_id, summary.dispute_id) == (ann_id, dispute_id)
    assert summary.status == api_pb2.ANNOTATION_STATUS_REJECTED
    assert summary.dispute_status == api_pb2.DISPUTE_STATUS_OPEN
    assert task.status == api_pb2.TASK_STATUS_IN_REVIEW
    assert_projection_agrees(crew, task)
    got = crew.mgr.tasks.GetTask(api_pb2.GetTaskRequest(task_id=task_id), metadata=crew.mgr.md)
    assert got.annotations[0].dispute_id == dispute_id
    # listed by the status the domain gives it, and not queued: nobody else is handed the slot
    assert task_id in listed(crew, api_pb2.TASK_STATUS_IN_REVIEW)
    assert task_id not in listed(crew, api_pb2.TASK_STATUS_QUEUED)
    assert queries.queue_depth(app.store, "p1") == 0
    assert queries.queue_candidates(app.store, "p1", (), 10) == []
    assert not crew.bob.tasks.NextTask(
        api_pb2.NextTaskRequest(command_id="bob-1", project_id="p1"), metadata=crew.bob.md
    ).HasField("task")

    # overturned: the rejection is void and the work goes on (accepted: no stage after the peer's)
    resolve(crew, task_id, dispute_id, M.DISPUTE_DECISION_OVERTURN)
    task = listed(crew)[task_id]
    assert task.annotations[0].dispute_status == api_pb2.DISPUTE_STATUS_OVERTURNED
    assert task.annotations[0].status == api_pb2.ANNOTATION_STATUS_ACCEPTED
    assert task.status == api_pb2.TASK_STATUS_DONE
    assert_projection_agrees(crew, task)
    assert_rebuild_matches(crew.env)


def test_an_upheld_dispute_keeps_the_slot_through_the_rework(crew: Crew) -> None:
    app = crew.env.server.app
    task_id, ann_id, dispute_id = rejected_and_disputed(crew, "upheld")
    resolve(crew, task_id, dispute_id, M.DISPUTE_DECISION_UPHOLD)
    task = listed(crew)[task_id]
    assert task.annotations[0].dispute_status == api_pb2.DISPUTE_STATUS_UPHELD
    assert task.annotations[0].status == api_pb2.ANNOTATION_STATUS_REJECTED
    assert task.status == api_pb2.TASK_STATUS_IN_REVIEW
    assert_projection_agrees(crew, task)
    assert queries.queue_depth(app.store, "p1") == 0

    # the author reworks it: back at the peer stage, the dispute's outcome still shown
    crew.ann.tasks.EditAnnotation(
        api_pb2.EditAnnotationRequest(
            command_id="rework", task_id=task_id, annotation_id=ann_id, expected_version=1, annotation=box(12)
        ),
        metadata=crew.ann.md,
    )
    crew.settle()
    task = listed(crew)[task_id]
    assert task.annotations[0].status == api_pb2.ANNOTATION_STATUS_SUBMITTED
    assert task.annotations[0].dispute_status == api_pb2.DISPUTE_STATUS_UPHELD
    assert_projection_agrees(crew, task)
    assert queries.queue_depth(app.store, "p1") == 0
    assert not crew.bob.tasks.NextTask(
        api_pb2.NextTaskRequest(command_id="bob-2", project_id="p1"), metadata=crew.bob.md
    ).HasField("task")
    crew.review(crew.rev, task_id, ann_id, M.VERDICT_ACCEPT, version=2)
    task = listed(crew)[task_id]
    assert task.status == api_pb2.TASK_STATUS_DONE
    assert_projection_agrees(crew, task)
    assert_rebuild_matches(crew.env)


def test_reopening_withdraws_an_open_dispute_in_the_projection_too(crew: Crew) -> None:
    task_id, _, dispute_id = rejected_and_disputed(crew, "reopen")
    crew.mgr.tasks.ReopenTask(
        api_pb2.ReopenTaskRequest(command_id="reopen", task_id=task_id, reason="new guideline"),
        metadata=crew.mgr.md,
    )
    crew.settle()
    task = listed(crew)[task_id]
    assert task.annotations[0].dispute_id == dispute_id
    assert task.annotations[0].dispute_status == api_pb2.DISPUTE_STATUS_WITHDRAWN
    assert task.annotations[0].status == api_pb2.ANNOTATION_STATUS_SUPERSEDED
    assert task.status == api_pb2.TASK_STATUS_QUEUED
    assert_projection_agrees(crew, task)
    assert_rebuild_matches(crew.env)
