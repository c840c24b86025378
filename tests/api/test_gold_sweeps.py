"""The background timer's gold work and granted skills, over real gRPC on both backends: an
abandoned gold lease is expired by the lease sweep (`LeaseExpired`, like any lease) and the gold
task can be served to its holder again (they never answered it); a scored gold or training answer
whose `RecordGoldResult` was lost (a crash between the two appends) is recorded once by the gold
reconcile sweep; a skill granted by a qualification shows in the directory and planning
projections and is used by NextTask at once, even when another coordinator process granted it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC

import pytest

from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.commandbus import CommandBus, Outcome
from coordinator.domain import commands as C
from coordinator.domain.gold import Scoring, resolve_policy
from coordinator.gold_reconcile import GoldReconciler, gold_command_id
from projections import planning_queries, queries

from .conftest import Env, assert_rebuild_matches, image_task
from .test_gold import QUALIFIED, RIGHT, WRONG, Crew, gold_crew, gold_task, policy, qualify


@pytest.fixture
def env(both_env: Env) -> Env:
    """Every rule in this module is checked on both backends (embedded; Kafka + Cassandra)."""
    return both_env


@pytest.fixture
def crew(env: Env) -> Crew:
    return gold_crew(env)


def wait_for(what: str, pred: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def types(crew: Crew, stream_id: str) -> list[str]:
    return [e.type for e in crew.stream(stream_id)]


def submit_without_record(
    crew: Crew, bus: CommandBus, who: str, lease: api_pb2.NextTaskResponse, annotation_id: str
) -> Outcome:
    """What Submit appends on the task stream (GoldScored included), and then a crash: the
    person's `RecordGoldResult` is never sent."""
    service = crew.env.server.app.service
    project = service.project_state("p1")
    q = resolve_policy("p1", project.settings.quality)
    return bus.execute(
        C.SubmitAnnotation(
            lease.task.task_id,
            lease.lease.lease_id,
            who,
            annotation_id,
            RIGHT,
            project.schema_version,
            project.guideline_version,
            1000,
            crew.env.clock(),
            scoring=Scoring(q.iou_threshold, q.oks_threshold, q.pass_score, project.label_schema),
        ),
        actor=C.Actor(who, M.ROLE_ANNOTATOR),
        command_id=f"crash-{annotation_id}",
    )


# ------------------------------------------------------------------ gold leases expire


def test_an_abandoned_gold_lease_is_expired_by_the_sweep_and_served_again(crew: Crew) -> None:
    env, ann = crew.env, crew.ann
    app = env.server.app
    crew.quality(policy(gold_rate=1.0))
    crew.imp(gold_task("g1"))
    first = crew.next(ann, "first")
    assert first.task.task_id == "g1" and crew.is_gold("g1")
    assert queries.expired_leases(app.store, env.clock(), 10) == []
    # in the expiry index like any lease: due once its time has come
    due = first.lease.expires_at.ToDatetime(tzinfo=UTC)
    assert queries.expired_leases(app.store, due, 10) == [("g1", first.lease.lease_id)]

    env.clock.advance(601)  # the project's leases last 600 s; ann walked away
    wait_for("the sweep to expire the gold lease", lambda: "lease_expired" in types(crew, "task:g1"))
    expired = [e for e in crew.stream("task:g1") if e.type == "lease_expired"]
    assert len(expired) == 1
    assert expired[0].lease_expired.lease_id == first.lease.lease_id
    assert expired[0].lease_expired.person_id == "ann"
    assert expired[0].command_id == f"expire/{first.lease.lease_id}"
    assert expired[0].actor.user_id == "system"
    crew.settle()
    assert queries.expired_leases(app.store, env.clock(), 10) == []  # the index row is gone
    metrics = queries.annotator_metrics(app.store, "p1", "ann")[0]
    assert (metrics["leased"], metrics["expired"]) == (1, 1)  # counted in its project

    # ann never answered g1, so the gold rule (once per person, answered) lets it be served again
    again = crew.next(ann, "again")
    assert again.task.task_id == "g1" and again.lease.lease_id != first.lease.lease_id
    crew.submit(ann, again, RIGHT, "again")
    crew.imp(image_task("r1"))
    assert crew.next(ann, "after").task.task_id == "r1"  # answered: never served it again
    assert types(crew, "task:g1").count("lease_expired") == 1
    assert_rebuild_matches(crew.env)


# ------------------------------------------------------------------ gold reconcile


def test_a_scored_gold_answer_whose_record_was_lost_is_recorded_once_by_the_sweep(crew: Crew) -> None:
    env, ann = crew.env, crew.ann
    app = env.server.app
    crew.quality(policy(gold_rate=1.0))
    crew.imp(gold_task("g1"), gold_task("g2"))
    lease = crew.next(ann, "g")
    task_id = lease.task.task_id
    before = types(crew, "person:ann")
    outcome = submit_without_record(crew, app.bus, "ann", lease, "lost-answer")
    scored = outcome.first(events_pb2.GoldScored)
    assert isinstance(scored, events_pb2.GoldScored) and scored.passed
    scored_env = next(e.envelope for e in outcome.events if e.envelope.type == "gold_scored")
    assert types(crew, "person:ann") == before  # the crash: nothing on the person's stream

    wait_for("the reconcile sweep", lambda: "gold_result_recorded" in types(crew, "person:ann"))
    recorded = [e for e in crew.stream("person:ann") if e.type == "gold_result_recorded"]
    assert len(recorded) == 1
    r = recorded[0]
    assert (r.gold_result_recorded.task_id, r.gold_result_recorded.annotation_id) == (task_id, "lost-answer")
    assert r.gold_result_recorded.gold_event_id == scored_env.event_id
    assert r.command_id == gold_command_id(task_id, "lost-answer") == f"gold/{task_id}/lost-answer"
    assert r.causation_id == scored_env.event_id and r.actor.user_id == "system"
    crew.settle()
    report = ann.quality.GetAccuracy(api_pb2.GetAccuracyRequest(project_id="p1"), metadata=ann.md)
    assert (report.results, report.passed) == (1, 1)

    # nothing twice: the timer again, a restarted process's sweep (walks everything), and the
    # service's own call (a late retry of the submission) all append nothing
    head = crew.head()
    assert app.service.reconcile_gold() == 0
    assert GoldReconciler(app.service).sweep() == 0
    again = app.service.record_gold_scored(scored_env)
    assert again is not None and again.duplicate
    assert crew.head() == head

    # an ordinary answer is recorded by the submission itself; the sweep leaves it alone
    crew.work(ann, WRONG, "g-next")
    assert types(crew, "person:ann").count("gold_result_recorded") == 2
    crew.settle()
    head = crew.head()
    assert GoldReconciler(app.service).sweep() == 0
    assert crew.head() == head
    assert_rebuild_matches(crew.env)


def test_a_lost_training_result_is_reconciled_and_the_granted_skill_is_used_at_once(crew: Crew) -> None:
    env, ann = crew.env, crew.ann
    app = env.server.app
    crew.quality(QUALIFIED)
    crew.imp(gold_task("t1", training="lidar"))
    crew.imp(image_task("gated", skills=("lidar",)))
    assert not crew.next(ann, "before").HasField("task")
    qualify(ann, "q1")
    item = crew.next(ann, "item")
    assert item.task.task_id == "t1"
    submit_without_record(crew, app.bus, "ann", item, "lost-item")

    wait_for("the reconcile sweep", lambda: "skill_granted" in types(crew, "person:ann"))
    person = types(crew, "person:ann")
    assert person[-3:] == ["gold_result_recorded", "qualification_completed", "skill_granted"]
    crew.settle()
    # the directory and planning projections know the granted skill
    directory = app.store.get("person", "ann")
    assert directory is not None and {"name": "lidar", "level": 1} in directory["skills"]
    planning = planning_queries.person(app.store, "ann")
    assert planning is not None and "lidar" in planning["skills"]
    # and routing uses it without a restart
    assert crew.next(ann, "after").task.task_id == "gated"
    assert_rebuild_matches(crew.env)


def test_a_skill_granted_by_another_coordinator_is_used_by_the_next_lease(crew: Crew) -> None:
    """Another process (its own command bus on the same log) records the qualification's last
    item: this process's cached principal and person state lack the skill, yet NextTask, which
    reads the person from the log, routes with it."""
    env, ann = crew.env, crew.ann
    app = env.server.app
    crew.quality(QUALIFIED)
    crew.imp(gold_task("t1", training="lidar"))
    crew.imp(image_task("gated", skills=("lidar",)))
    qualify(ann, "q1")
    item = crew.next(ann, "item")
    assert item.task.task_id == "t1"
    assert "lidar" not in app.service.authenticate(ann.token).skills  # cached without the skill

    other = CommandBus(app.log)  # the other coordinator: submits and records there
    outcome = submit_without_record(crew, other, "ann", item, "elsewhere")
    scored = next(e.envelope for e in outcome.events if e.envelope.type == "gold_scored")
    project = app.service.project_state("p1")
    other.execute(
        C.RecordGoldResult("ann", scored.gold_scored, scored.event_id, project.settings.quality, env.clock()),
        actor=C.Actor("system", M.ROLE_ADMIN),
        command_id=gold_command_id("t1", "elsewhere"),
    )
    assert types(crew, "person:ann")[-1] == "skill_granted"
    assert "lidar" not in app.service.authenticate(ann.token).skills  # still the stale principal
    crew.settle()
    lease = crew.next(ann, "after")
    assert lease.task.task_id == "gated"
    assert_rebuild_matches(crew.env)
