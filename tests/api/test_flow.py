"""The coordination loop over real gRPC: import, lease, submit, review, stream, history, expiry."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M

from .conftest import Env, Stubs, image_task, trailers


def box(x: float = 10) -> A.Annotation:
    return A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=x, y=10, width=30, height=20))])


def wait_until(pred: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def team(env: Env) -> tuple[Env, Stubs, Stubs, Stubs]:
    ann = env.person("ann", M.ROLE_ANNOTATOR, tz="Europe/Warsaw")
    bob = env.person("bob", M.ROLE_ANNOTATOR, tz="Asia/Tokyo")
    rev = env.person("rev", M.ROLE_REVIEWER, tz="America/Sao_Paulo")
    env.project("p1", members=("ann", "bob", "rev"))
    return env, ann, bob, rev


def imp(env: Env, *tasks: M.TaskSpec, cid: str = "imp") -> api_pb2.ImportTasksResponse:
    out = env.admin.tasks.ImportTasks(
        api_pb2.ImportTasksRequest(command_id=cid, project_id="p1", tasks=list(tasks)), metadata=env.admin.md
    )
    env.server.app.runner.catch_up()
    return out


def test_health_reports_serving(env: Env) -> None:
    stub = health_pb2_grpc.HealthStub(env.channel)
    assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    name = "labelweave.api.v1.TaskService"
    assert (
        stub.Check(health_pb2.HealthCheckRequest(service=name)).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_submit_review_accept_delivers_the_label_with_provenance(
    team: tuple[Env, Stubs, Stubs, Stubs],
) -> None:
    env, ann, _, rev = team
    imp(env, image_task("t1"))
    nxt = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n1", project_id="p1"), metadata=ann.md)
    assert nxt.task.task_id == "t1" and nxt.label_schema.version == 1
    sub = ann.tasks.Submit(
        api_pb2.SubmitRequest(
            command_id="s1", task_id="t1", lease_id=nxt.lease.lease_id, annotation=box(), time_on_task_ms=4200
        ),
        metadata=ann.md,
    )
    assert sub.version == 1
    task = rev.tasks.GetTask(api_pb2.GetTaskRequest(task_id="t1"), metadata=rev.md)
    assert task.status == api_pb2.TASK_STATUS_IN_REVIEW
    verdict = rev.tasks.Review(
        api_pb2.ReviewRequest(
            command_id="r1",
            task_id="t1",
            annotation_id=sub.annotation_id,
            version=1,
            verdict=M.VERDICT_ACCEPT,
        ),
        metadata=rev.md,
    )
    assert verdict.task_status == api_pb2.TASK_STATUS_DONE
    labels = list(
        env.admin.streams.SubscribeLabels(
            api_pb2.SubscribeLabelsRequest(project_id="p1"), metadata=env.admin.md
        )
    )
    assert len(labels) == 1
    label = labels[0].label
    assert (label.task_id, label.author_id, label.accepted_by, label.label_schema_version) == (
        "t1",
        "ann",
        "rev",
        1,
    )
    assert label.annotation.shapes[0].box.width == 30
    assert label.annotation.source == A.ANNOTATION_SOURCE_HUMAN
    env.server.app.runner.catch_up()
    metrics = env.admin.tasks.GetMetrics(
        api_pb2.GetMetricsRequest(project_id="p1", person_id="ann"), metadata=env.admin.md
    )
    (m,) = metrics.annotators
    assert (m.leased, m.submitted, m.accepted, m.time_on_task_ms) == (1, 1, 1, 4200)


def test_retried_commands_return_the_first_outcome_and_append_nothing(
    team: tuple[Env, Stubs, Stubs, Stubs],
) -> None:
    env, ann, _, _ = team
    imp(env, image_task("t1"), image_task("t2"))
    first = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n1", project_id="p1"), metadata=ann.md)
    head = env.server.app.log.head()
    again = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n1", project_id="p1"), metadata=ann.md)
    assert again.lease.lease_id == first.lease.lease_id and again.task.task_id == first.task.task_id
    assert env.server.app.log.head() == head
    req = api_pb2.SubmitRequest(
        command_id="s1", task_id=first.task.task_id, lease_id=first.lease.lease_id, annotation=box()
    )
    a = ann.tasks.Submit(req, metadata=ann.md)
    head = env.server.app.log.head()
    b = ann.tasks.Submit(req, metadata=ann.md)
    assert (a.annotation_id, a.version, a.position) == (b.annotation_id, b.version, b.position)
    assert env.server.app.log.head() == head
    # the same id with other content is a conflict, not a silent success
    req2 = api_pb2.SubmitRequest(
        command_id="s1", task_id=first.task.task_id, lease_id=first.lease.lease_id, annotation=box(x=99)
    )
    with pytest.raises(grpc.RpcError):
        ann.tasks.Submit(req2, metadata=ann.md)
    assert env.server.app.log.head() == head
    # re-importing the same batch is a no-op
    imp(env, image_task("t1"), image_task("t2"))
    assert env.server.app.log.head() == head


def test_reject_with_reasons_then_edit_then_correct(team: tuple[Env, Stubs, Stubs, Stubs]) -> None:
    env, ann, _, rev = team
    imp(env, image_task("t1"))
    nxt = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n1", project_id="p1"), metadata=ann.md)
    sub = ann.tasks.Submit(
        api_pb2.SubmitRequest(command_id="s1", task_id="t1", lease_id=nxt.lease.lease_id, annotation=box()),
        metadata=ann.md,
    )
    with pytest.raises(grpc.RpcError) as err:
        rev.tasks.Review(
            api_pb2.ReviewRequest(
                command_id="r0",
                task_id="t1",
                annotation_id=sub.annotation_id,
                version=1,
                verdict=M.VERDICT_REJECT,
                reason_codes=["bad_vibes"],
            ),
            metadata=rev.md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err.value)["labelweave-field"] == "reason_codes[0]"
    rev.tasks.Review(
        api_pb2.ReviewRequest(
            command_id="r1",
            task_id="t1",
            annotation_id=sub.annotation_id,
            version=1,
            verdict=M.VERDICT_REJECT,
            reason_codes=["loose_box"],
            comment="tighter",
        ),
        metadata=rev.md,
    )
    task = ann.tasks.GetTask(api_pb2.GetTaskRequest(task_id="t1"), metadata=ann.md)
    assert task.annotations[0].status == api_pb2.ANNOTATION_STATUS_REJECTED
    assert list(task.annotations[0].reason_codes) == ["loose_box"]
    edit = ann.tasks.EditAnnotation(
        api_pb2.EditAnnotationRequest(
            command_id="e1",
            task_id="t1",
            annotation_id=sub.annotation_id,
            expected_version=1,
            annotation=box(x=12),
        ),
        metadata=ann.md,
    )
    assert edit.version == 2
    corrected = rev.tasks.Review(
        api_pb2.ReviewRequest(
            command_id="r2",
            task_id="t1",
            annotation_id=sub.annotation_id,
            version=2,
            verdict=M.VERDICT_CORRECT,
            correction=box(x=13),
        ),
        metadata=rev.md,
    )
    assert corrected.version == 3 and corrected.task_status == api_pb2.TASK_STATUS_DONE
    hist = rev.tasks.History(api_pb2.HistoryRequest(task_id="t1"), metadata=rev.md)
    kinds = [e.event.type for e in hist.entries]
    assert kinds.count("annotation_edited") == 2 and kinds[-1] == "task_completed"
    # point-in-time replay: as of the rejection, the annotation is rejected at version 1
    reject_pos = next(e.position for e in hist.entries if e.event.type == "review_recorded")
    past = rev.tasks.History(api_pb2.HistoryRequest(task_id="t1", as_of_position=reject_pos), metadata=rev.md)
    assert past.task.annotations[0].status == api_pb2.ANNOTATION_STATUS_REJECTED
    assert past.task.annotations[0].version == 1
    (label,) = list(
        env.admin.streams.SubscribeLabels(
            api_pb2.SubscribeLabelsRequest(project_id="p1"), metadata=env.admin.md
        )
    )
    assert label.label.version == 3 and label.label.annotation.shapes[0].box.x == 13


def test_overlap_two_needs_two_people_and_never_the_same_twice(team: tuple[Env, Stubs, Stubs, Stubs]) -> None:
    env, ann, bob, rev = team
    imp(env, image_task("t1", overlap=2))
    a = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="a1", project_id="p1"), metadata=ann.md)
    again = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="a2", project_id="p1"), metadata=ann.md)
    assert a.task.task_id == "t1" and not again.HasField("task")
    b = bob.tasks.NextTask(api_pb2.NextTaskRequest(command_id="b1", project_id="p1"), metadata=bob.md)
    assert b.task.task_id == "t1"
    for who, n, cid in ((ann, a, "sa"), (bob, b, "sb")):
        s = who.tasks.Submit(
            api_pb2.SubmitRequest(command_id=cid, task_id="t1", lease_id=n.lease.lease_id, annotation=box()),
            metadata=who.md,
        )
        rev.tasks.Review(
            api_pb2.ReviewRequest(
                command_id="r" + cid,
                task_id="t1",
                annotation_id=s.annotation_id,
                version=1,
                verdict=M.VERDICT_ACCEPT,
            ),
            metadata=rev.md,
        )
    task = rev.tasks.GetTask(api_pb2.GetTaskRequest(task_id="t1"), metadata=rev.md)
    assert task.status == api_pb2.TASK_STATUS_DONE and len(task.annotations) == 2


def test_priority_then_deadline_then_skills_order_the_queue(team: tuple[Env, Stubs, Stubs, Stubs]) -> None:
    env, ann, _, _ = team
    low, high, skilled = (
        image_task("low", priority=1),
        image_task("high", priority=5),
        image_task("lidar", priority=9, skills=("lidar",)),
    )
    soon, late = image_task("soon", priority=3), image_task("late", priority=3)
    soon.deadline.FromSeconds(1_800_000_000)
    late.deadline.FromSeconds(1_900_000_000)
    imp(env, low, late, soon, high, skilled)
    order = []
    for i in range(5):
        n = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id=f"n{i}", project_id="p1"), metadata=ann.md)
        if not n.HasField("task"):
            break
        order.append(n.task.task_id)
    assert order == ["high", "soon", "late", "low"]  # "lidar" needs a skill ann lacks


def test_leases_expire_on_the_injected_clock_and_the_task_returns_to_the_queue(
    team: tuple[Env, Stubs, Stubs, Stubs],
) -> None:
    env, ann, bob, _ = team
    imp(env, image_task("t1"))
    n = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n1", project_id="p1"), metadata=ann.md)
    assert not bob.tasks.NextTask(
        api_pb2.NextTaskRequest(command_id="b0", project_id="p1"), metadata=bob.md
    ).HasField("task")
    env.clock.advance(601)
    wait_until(lambda: any(e.type == "lease_expired" for e in env.server.app.log.read_stream("task:t1")))
    env.server.app.runner.catch_up()
    assert (
        bob.tasks.NextTask(
            api_pb2.NextTaskRequest(command_id="b1", project_id="p1"), metadata=bob.md
        ).task.task_id
        == "t1"
    )
    with pytest.raises(grpc.RpcError) as err:
        ann.tasks.Submit(
            api_pb2.SubmitRequest(
                command_id="late", task_id="t1", lease_id=n.lease.lease_id, annotation=box()
            ),
            metadata=ann.md,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_release_and_reopen(team: tuple[Env, Stubs, Stubs, Stubs]) -> None:
    env, ann, _, rev = team
    imp(env, image_task("t1"))
    n = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n1", project_id="p1"), metadata=ann.md)
    ann.tasks.ReleaseTask(
        api_pb2.ReleaseTaskRequest(command_id="r", task_id="t1", lease_id=n.lease.lease_id), metadata=ann.md
    )
    env.server.app.runner.catch_up()
    n = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n2", project_id="p1"), metadata=ann.md)
    s = ann.tasks.Submit(
        api_pb2.SubmitRequest(command_id="s", task_id="t1", lease_id=n.lease.lease_id, annotation=box()),
        metadata=ann.md,
    )
    rev.tasks.Review(
        api_pb2.ReviewRequest(
            command_id="v", task_id="t1", annotation_id=s.annotation_id, version=1, verdict=M.VERDICT_ACCEPT
        ),
        metadata=rev.md,
    )
    with pytest.raises(grpc.RpcError) as err:  # accepted work is final for its author
        ann.tasks.EditAnnotation(
            api_pb2.EditAnnotationRequest(
                command_id="e",
                task_id="t1",
                annotation_id=s.annotation_id,
                expected_version=1,
                annotation=box(),
            ),
            metadata=ann.md,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    task = env.admin.tasks.ReopenTask(
        api_pb2.ReopenTaskRequest(command_id="o", task_id="t1", reason="new guideline"), metadata=env.admin.md
    )
    assert task.status == api_pb2.TASK_STATUS_QUEUED and task.round == 2
    assert task.annotations[0].status == api_pb2.ANNOTATION_STATUS_SUPERSEDED


def test_auditor_reads_events_up_to_a_position(team: tuple[Env, Stubs, Stubs, Stubs]) -> None:
    env, _, _, _ = team
    aud = env.person("aud", M.ROLE_AUDITOR)
    out = imp(env, image_task("t1"), image_task("t2"))
    entries = list(
        aud.streams.ReadEvents(api_pb2.ReadEventsRequest(to_position=out.position), metadata=aud.md)
    )
    assert entries[-1].position == out.position
    offsets = [int(e.position.split(":")[1]) for e in entries]
    assert offsets == list(range(1, len(entries) + 1))
    only = list(aud.streams.ReadEvents(api_pb2.ReadEventsRequest(stream_id="task:t2"), metadata=aud.md))
    assert [e.event.type for e in only] == ["task_imported"]


def test_metrics_are_served_with_bounded_labels(team: tuple[Env, Stubs, Stubs, Stubs]) -> None:
    env, ann, _, _ = team
    imp(env, image_task("t1"))
    ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n", project_id="p1"), metadata=ann.md)
    from prometheus_client import generate_latest

    text = generate_latest(env.server.app.metrics.registry).decode()
    assert 'labelweave_rpc_total{code="OK",method="NextTask"}' in text
    assert "labelweave_events_appended_total" in text
    assert "labelweave_projection_lag_events" in text
    samples = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    values = set(re.findall(r'="([^"]*)"', samples))
    assert values and not values & {"ann", "t1"}  # no per-person or per-task label values


def test_export_has_only_the_latest_accepted_labels_while_the_stream_keeps_history(
    team: tuple[Env, Stubs, Stubs, Stubs],
) -> None:
    env, ann, bob, rev = team
    imp(env, image_task("t1"), image_task("t2"))

    def annotate(who: Stubs, tag: str, x: float) -> None:
        n = who.tasks.NextTask(
            api_pb2.NextTaskRequest(command_id=f"n{tag}", project_id="p1"), metadata=who.md
        )
        s = who.tasks.Submit(
            api_pb2.SubmitRequest(
                command_id=f"s{tag}", task_id=n.task.task_id, lease_id=n.lease.lease_id, annotation=box(x=x)
            ),
            metadata=who.md,
        )
        rev.tasks.Review(
            api_pb2.ReviewRequest(
                command_id=f"r{tag}",
                task_id=n.task.task_id,
                annotation_id=s.annotation_id,
                version=1,
                verdict=M.VERDICT_ACCEPT,
            ),
            metadata=rev.md,
        )

    annotate(ann, "1", 10)
    annotate(ann, "2", 20)
    env.admin.tasks.ReopenTask(
        api_pb2.ReopenTaskRequest(command_id="re", task_id="t1", reason="guideline v2"), metadata=env.admin.md
    )
    env.server.app.runner.catch_up()
    annotate(bob, "3", 30)  # the reopened t1, second round
    env.server.app.runner.catch_up()

    exported = list(
        env.admin.streams.ExportLabels(api_pb2.ExportLabelsRequest(project_id="p1"), metadata=env.admin.md)
    )
    assert [(e.label.task_id, e.label.author_id, e.label.annotation.shapes[0].box.x) for e in exported] == [
        ("t1", "bob", 30),
        ("t2", "ann", 20),
    ]
    assert all(e.position and e.event_id and e.accepted_at.seconds for e in exported)
    rest = list(
        env.admin.streams.ExportLabels(
            api_pb2.ExportLabelsRequest(project_id="p1", cursor=exported[0].cursor), metadata=env.admin.md
        )
    )
    assert [e.label.task_id for e in rest] == ["t2"]
    streamed = list(
        env.admin.streams.SubscribeLabels(
            api_pb2.SubscribeLabelsRequest(project_id="p1"), metadata=env.admin.md
        )
    )
    assert len(streamed) == 3  # the feed is the history: the superseded acceptance is in it too


def test_retries_of_every_kind_of_mutation_return_the_first_outcome_and_append_nothing(
    team: tuple[Env, Stubs, Stubs, Stubs],
) -> None:
    env, ann, _, _ = team
    imp(env, image_task("t1"))
    md = env.admin.md
    n = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n1", project_id="p1"), metadata=ann.md)
    calls: list[Callable[[], object]] = [
        lambda: env.admin.admin.RegisterPerson(
            api_pb2.RegisterPersonRequest(
                command_id="rp",
                person=M.PersonSpec(person_id="zoe", roles=[M.ROLE_ANNOTATOR], time_zone="UTC"),
            ),
            metadata=md,
        ),
        lambda: env.admin.admin.UpdatePerson(
            api_pb2.UpdatePersonRequest(
                command_id="up", person=M.PersonSpec(person_id="zoe", roles=[M.ROLE_QA], time_zone="UTC")
            ),
            metadata=md,
        ),
        lambda: env.admin.admin.PublishGuideline(
            api_pb2.PublishGuidelineRequest(
                command_id="pg", project_id="p1", guideline=M.Guideline(title="v2")
            ),
            metadata=md,
        ),
        lambda: ann.tasks.ReleaseTask(
            api_pb2.ReleaseTaskRequest(command_id="rl", task_id="t1", lease_id=n.lease.lease_id),
            metadata=ann.md,
        ),
    ]
    for call in calls:
        first = call()
        head = env.server.app.log.head()
        assert call() == first  # a retry after a lost response: same answer
        assert env.server.app.log.head() == head  # and nothing new in the log


def test_tasks_of_equal_priority_are_leased_in_import_order(team: tuple[Env, Stubs, Stubs, Stubs]) -> None:
    env, ann, _, _ = team
    ids = [f"t{i:02d}" for i in range(24)]
    imp(env, *(image_task(t) for t in ids))
    leased = []
    for i in range(len(ids)):
        n = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id=f"n{i}", project_id="p1"), metadata=ann.md)
        leased.append(n.task.task_id)
        env.server.app.runner.catch_up()
    assert leased == ids


def test_review_stage_gauges_follow_the_pipeline(team: tuple[Env, Stubs, Stubs, Stubs]) -> None:
    env, ann, _, rev = team
    imp(env, image_task("t1"), image_task("t2"))
    for i in (1, 2):
        n = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id=f"n{i}", project_id="p1"), metadata=ann.md)
        ann.tasks.Submit(
            api_pb2.SubmitRequest(
                command_id=f"s{i}", task_id=n.task.task_id, lease_id=n.lease.lease_id, annotation=box()
            ),
            metadata=ann.md,
        )
    app = env.server.app
    registry = app.metrics.registry

    def stage_samples(name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for family in registry.collect():
            for sample in family.samples:
                if (
                    sample.name == name
                    and sample.labels.get("project") == "p1"
                    and sample.labels["stage"] != "annotate"
                ):
                    out[sample.labels["stage"]] = sample.value
        return out

    def refreshed() -> dict[str, float]:
        app.runner.catch_up()
        from consumers.gauges import ProjectionGauges

        ProjectionGauges(app.metrics).refresh(app.store)
        return stage_samples("labelweave_stage_depth")

    (stage,) = refreshed()
    assert refreshed() == {stage: 2}
    assert stage_samples("labelweave_stage_oldest_seconds")[stage] >= 0
    reviewed = rev.tasks.Review(
        api_pb2.ReviewRequest(
            command_id="r1",
            task_id="t1",
            annotation_id=app.store.scan("annotation_versions", "t1")[0][1]["annotation_id"],
            version=1,
            verdict=M.VERDICT_ACCEPT,
        ),
        metadata=rev.md,
    )
    assert reviewed.version >= 0
    assert refreshed() == {stage: 1}
