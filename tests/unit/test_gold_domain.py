"""Gold and qualification rules of the task and person aggregates: each command's allowed path
and each refusal with its error type and field; decisions recorded in events so a replay of the
events gives the same state without deciding again."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.domain import aggregates
from coordinator.domain.commands import (
    ImportGoldTask,
    LeaseTask,
    RecordGoldResult,
    RegisterPerson,
    ReinstatePerson,
    ReopenTask,
    ReviewAnnotation,
    StartQualification,
    SubmitAnnotation,
    UpdatePerson,
)
from coordinator.domain.gold import Scoring, qualification_of
from coordinator.domain.person import PersonState
from coordinator.domain.task import SCORED, TaskState
from coordinator.errors import AlreadyExists, FailedPrecondition, InvalidArgument, LabelweaveError, NotFound

T0 = datetime(2026, 2, 2, 9, 0, tzinfo=UTC)
P = "p1"


def box(x: float, label: str = "car") -> A.Shape:
    return A.Shape(label=label, box=A.BoundingBox(x=x, y=0, width=10, height=10))


ANSWER = A.Annotation(shapes=[box(0), box(50, "pedestrian")])
RIGHT = A.Annotation(shapes=[box(1), box(50, "pedestrian")])
WRONG = A.Annotation(shapes=[box(200)])


def run(state: aggregates.State | None, cmd: aggregates.Command) -> tuple[list[Message], aggregates.State]:
    events = aggregates.decide(state, cmd)
    out = state
    for e in events:
        out = aggregates.evolve(out, e)
    assert out is not None
    return events, out


def refused(
    state: aggregates.State | None, cmd: aggregates.Command, kind: type[LabelweaveError], field: str = ""
) -> str:
    with pytest.raises(kind) as err:
        aggregates.decide(state, cmd)
    assert err.value.field == field, str(err.value)
    return str(err.value)


def kinds(events: Sequence[Message]) -> list[str]:
    return [type(e).__name__ for e in events]


# ------------------------------------------------------------------ task aggregate


def gold_import(task_id: str = "g1", training: str = "") -> ImportGoldTask:
    spec = M.TaskSpec(task_id=task_id, data_uri="s3://b/x.jpg", overlap=1)
    return ImportGoldTask(
        P, "b", spec, M.GoldSpec(answer=ANSWER, training=bool(training), skill=training), 600
    )


def gold_task(training: str = "") -> TaskState:
    _, state = run(None, gold_import(training=training))
    assert isinstance(state, TaskState)
    return state


def lease(
    state: TaskState, person: str, *, gold: bool = True, attempt: int = 0, lease_id: str = ""
) -> TaskState:
    _, out = run(
        state,
        LeaseTask(
            state.task_id,
            lease_id or f"L-{person}-{attempt}",
            person,
            frozenset(),
            T0,
            serve_gold=gold,
            attempt=attempt,
        ),
    )
    assert isinstance(out, TaskState)
    return out


def submit_cmd(person: str, answer: A.Annotation, lease_id: str = "", ann_id: str = "") -> SubmitAnnotation:
    return SubmitAnnotation(
        "g1",
        lease_id or f"L-{person}-0",
        person,
        ann_id or f"A-{person}",
        answer,
        1,
        1,
        100,
        T0,
        scoring=Scoring(iou_threshold=0.5, pass_score=1.0),
    )


def test_a_gold_import_keeps_the_answer_out_of_the_spec() -> None:
    events, state = run(None, gold_import())
    assert kinds(events) == ["GoldTaskImported"]
    assert isinstance(state, TaskState) and state.gold is not None
    assert state.gold.answer == ANSWER and not state.spec.HasField("gold")
    assert state.status == "queued" and not state.pipeline.stages
    spec = M.TaskSpec(task_id="g2", data_uri="s3://b/x.jpg", gold=M.GoldSpec(answer=ANSWER))
    refused(None, ImportGoldTask(P, "b", spec, M.GoldSpec(answer=ANSWER), 600), InvalidArgument, "task.gold")
    no_skill = gold_import(training="x")
    refused(
        None,
        ImportGoldTask(P, "b", no_skill.spec, M.GoldSpec(training=True), 600),
        InvalidArgument,
        "task.gold.skill",
    )
    refused(
        None,
        ImportGoldTask(P, "b", no_skill.spec, M.GoldSpec(skill="x"), 600),
        InvalidArgument,
        "task.gold.skill",
    )
    refused(state, gold_import(), AlreadyExists, "task.task_id")


def test_gold_tasks_are_leased_only_through_the_gold_mix_and_have_no_slots() -> None:
    state = gold_task()
    refused(state, LeaseTask("g1", "L", "ann", frozenset(), T0), FailedPrecondition)
    assert "served only by the gold mix" in refused(
        state, LeaseTask("g1", "L", "ann", frozenset(), T0), FailedPrecondition
    )
    for person in ("ann", "bob", "cid"):  # overlap 1, yet anyone may answer
        state = lease(state, person)
    assert len(state.leases) == 3 and state.status == "queued"
    leased = aggregates.decide(state, LeaseTask("g1", "L-x", "dan", frozenset(), T0, serve_gold=True))[-1]
    assert isinstance(leased, events_pb2.TaskLeased) and leased.attempt == 0


def test_a_gold_answer_is_scored_in_the_same_command_and_never_reviewed() -> None:
    imported, state = run(None, gold_import())
    leased, state = run(state, LeaseTask("g1", "L-ann-0", "ann", frozenset(), T0, serve_gold=True))
    assert isinstance(state, TaskState)
    events, after = run(state, submit_cmd("ann", A.Annotation(shapes=[box(1), box(300, "pedestrian")])))
    assert kinds(events) == ["AnnotationSubmitted", "GoldScored"]  # no routing, no acceptance
    scored = events[1]
    assert isinstance(scored, events_pb2.GoldScored)
    assert (scored.person_id, scored.annotation_id, scored.purpose) == ("ann", "A-ann", M.GOLD_PURPOSE_GOLD)
    assert scored.score == pytest.approx(1 / 3) and not scored.passed
    assert [(c.label, c.matched, c.missed, c.extra) for c in scored.classes] == [
        ("car", 1, 0, 0),
        ("pedestrian", 0, 1, 1),
    ]
    assert (scored.iou_threshold, scored.pass_score) == (0.5, 1.0)
    assert isinstance(after, TaskState)
    assert (
        after.annotations["A-ann"].status == SCORED
        and after.gold is not None
        and "ann" in after.gold.answered
    )
    assert not after.completed and after.status == "queued"
    # once answered, never again
    refused(after, LeaseTask("g1", "L2", "ann", frozenset(), T0, serve_gold=True), FailedPrecondition)
    # and nothing of the review path applies
    refused(
        after,
        ReviewAnnotation("g1", "A-ann", 1, "rev", M.VERDICT_ACCEPT, (), "", None, frozenset(), 1, 1),
        FailedPrecondition,
    )
    refused(after, ReopenTask("g1", "again"), FailedPrecondition)
    # the state replays from the events alone: nothing is scored again
    assert aggregates.fold([*imported, *leased, *events]) == after


def test_a_right_answer_passes_and_others_answer_independently() -> None:
    state: aggregates.State = lease(lease(gold_task(), "ann"), "bob")
    events, state = run(state, submit_cmd("ann", RIGHT))
    assert isinstance(events[1], events_pb2.GoldScored) and events[1].passed and events[1].score == 1.0
    events, state = run(state, submit_cmd("bob", WRONG, lease_id="L-bob-0"))
    assert isinstance(events[1], events_pb2.GoldScored) and not events[1].passed and events[1].score == 0.0
    assert isinstance(state, TaskState) and state.gold is not None
    assert state.gold.answered == frozenset({"ann", "bob"}) and not state.leases


def test_training_items_are_served_per_attempt_and_scored_with_it() -> None:
    state = gold_task(training="lidar")
    assert "only to people taking the qualification" in refused(
        state, LeaseTask("g1", "L", "ann", frozenset(), T0, serve_gold=True), FailedPrecondition
    )
    state = lease(state, "ann", gold=False, attempt=1)
    assert state.leases["L-ann-1"].attempt == 1
    events, state2 = run(state, submit_cmd("ann", WRONG, lease_id="L-ann-1", ann_id="A1"))
    scored = events[1]
    assert isinstance(scored, events_pb2.GoldScored)
    assert (scored.purpose, scored.skill, scored.attempt, scored.passed) == (
        M.GOLD_PURPOSE_TRAINING,
        "lidar",
        1,
        False,
    )
    assert isinstance(state2, TaskState)
    state3 = lease(state2, "ann", gold=False, attempt=2)  # a later attempt answers it again
    events, _ = run(state3, submit_cmd("ann", RIGHT, lease_id="L-ann-2", ann_id="A2"))
    assert isinstance(events[1], events_pb2.GoldScored) and events[1].attempt == 2 and events[1].passed


# ------------------------------------------------------------------ person aggregate: gold record


def person(*skills: str) -> PersonState:
    spec = M.PersonSpec(
        person_id="ann",
        roles=[M.ROLE_ANNOTATOR],
        time_zone="UTC",
        skills=[M.Skill(name=s, level=1) for s in skills],
    )
    _, state = run(None, RegisterPerson(spec))
    assert isinstance(state, PersonState)
    return state


POLICY = M.QualityPolicy(
    min_accuracy=0.6,
    min_results=3,
    accuracy_window=4,
    retraining_skill="lidar",
    qualifications=[
        M.Qualification(skill="lidar", min_score=1.0, max_attempts=2, cooldown_seconds=600, level=2)
    ],
)


def result(
    task: str, passed: bool, *, training: str = "", attempt: int = 0, person_id: str = "ann"
) -> events_pb2.GoldScored:
    return events_pb2.GoldScored(
        task_id=task,
        project_id=P,
        annotation_id=f"A-{task}-{attempt}",
        person_id=person_id,
        purpose=M.GOLD_PURPOSE_TRAINING if training else M.GOLD_PURPOSE_GOLD,
        skill=training,
        attempt=attempt,
        score=1.0 if passed else 0.0,
        passed=passed,
        classes=[M.ClassScore(label="car", matched=int(passed), missed=int(not passed))],
    )


def record(
    state: PersonState,
    task: str,
    passed: bool,
    *,
    policy: M.QualityPolicy = POLICY,
    now: datetime = T0,
    **kw: object,
) -> tuple[list[Message], PersonState]:
    r = result(task, passed, **kw)  # type: ignore[arg-type]
    events, out = run(state, RecordGoldResult("ann", r, f"E-{task}-{r.attempt}", policy, now))
    assert isinstance(out, PersonState)
    return events, out


def test_the_rolling_window_suspends_once_below_the_threshold_with_enough_results() -> None:
    state = person()
    events, state = record(state, "g1", True)
    recorded = events[0]
    assert isinstance(recorded, events_pb2.GoldResultRecorded)
    assert (recorded.window, recorded.results, recorded.passed_results, recorded.accuracy) == (4, 1, 1, 1.0)
    _, state = record(state, "g2", False)
    events, state = record(state, "g3", True)  # 2 of 3 = 67 % >= 60 %
    assert kinds(events) == ["GoldResultRecorded"]
    _, state = record(state, "g4", False)  # 2 of 4 = 50 % < 60 %
    assert state.suspended_from(P) is not None
    suspension = state.suspended_from(P)
    assert (
        suspension is not None
        and suspension.retraining_skill == "lidar"
        and suspension.gold_event_id == "E-g4-0"
    )
    assert suspension.accuracy == 0.5 and suspension.results == 4
    events, state = record(state, "g5", False)  # already suspended: recorded, not suspended again
    assert kinds(events) == ["GoldResultRecorded"]
    assert [e.passed for e in state.standing(P).window] == [False, True, False, False]  # the last 4


def test_no_suspension_below_min_results_or_without_a_threshold() -> None:
    state = person()
    for i in range(2):
        events, state = record(state, f"g{i}", False)
        assert kinds(events) == ["GoldResultRecorded"]
    state = person()
    for i in range(10):
        events, state = record(state, f"g{i}", False, policy=M.QualityPolicy())
        assert kinds(events) == ["GoldResultRecorded"]


def test_suspension_events_and_refusals() -> None:
    state = person()
    for i, ok in enumerate((False, False)):
        _, state = record(state, f"g{i}", ok)
    events, state = record(state, "g9", False)
    assert kinds(events) == ["GoldResultRecorded", "PersonSuspended", "RetrainingAssigned"]
    assert isinstance(events[2], events_pb2.RetrainingAssigned) and events[2].skill == "lidar"
    # the same result, or another result for the same gold task, is refused
    refused(
        state,
        RecordGoldResult("ann", result("g9", True), "E-g9-0", POLICY, T0),
        AlreadyExists,
        "gold_event_id",
    )
    refused(
        state, RecordGoldResult("ann", result("g9", True), "E-other", POLICY, T0), AlreadyExists, "task_id"
    )
    refused(
        state,
        RecordGoldResult("ann", result("x", True, person_id="bob"), "E-x", POLICY, T0),
        InvalidArgument,
        "result.person_id",
    )
    refused(
        state, RecordGoldResult("ann", result("x", True), "", POLICY, T0), InvalidArgument, "gold_event_id"
    )
    bad = result("x", True)
    bad.purpose = M.GOLD_PURPOSE_UNSPECIFIED
    refused(state, RecordGoldResult("ann", bad, "E-x", POLICY, T0), InvalidArgument, "result.purpose")
    refused(person(), ReinstatePerson("ann", P, "mgr", ""), FailedPrecondition)
    refused(state, ReinstatePerson("ann", P, "mgr", "x" * 5000), InvalidArgument, "reason")
    events, reinstated = run(state, ReinstatePerson("ann", P, "mgr", "coached"))
    assert kinds(events) == ["PersonReinstated"]
    assert isinstance(reinstated, PersonState) and reinstated.suspended_from(P) is None
    assert reinstated.standing(P).window == () and reinstated.standing(P).total == 3  # a fresh record
    refused(reinstated, ReinstatePerson("ann", P, "mgr", ""), FailedPrecondition)
    refused(None, ReinstatePerson("ann", P, "mgr", ""), NotFound, "person_id")


# ------------------------------------------------------------------ person aggregate: qualification


LIDAR = qualification_of(POLICY, "lidar")


def start(state: PersonState, *items: str, now: datetime = T0) -> tuple[list[Message], PersonState]:
    events, out = run(state, StartQualification("ann", P, "lidar", LIDAR, items or ("t1", "t2"), now))
    assert isinstance(out, PersonState)
    return events, out


def test_starting_a_qualification_and_its_refusals() -> None:
    state = person()
    refused(state, StartQualification("ann", P, "sonar", None, ("t1",), T0), InvalidArgument, "skill")
    refused(state, StartQualification("ann", P, "", LIDAR, ("t1",), T0), InvalidArgument, "skill")
    refused(state, StartQualification("ann", P, "lidar", LIDAR, (), T0), FailedPrecondition)
    refused(
        state, StartQualification("ann", P, "lidar", LIDAR, ("t1", "t1"), T0), InvalidArgument, "task_ids"
    )
    events, state = start(state)
    started = events[0]
    assert isinstance(started, events_pb2.QualificationStarted)
    assert (started.attempt, started.cycle_attempt, list(started.task_ids)) == (1, 1, ["t1", "t2"])
    assert (started.min_score, started.cooldown_seconds, started.level, started.max_attempts) == (
        1.0,
        600,
        2,
        2,
    )
    assert "is in progress" in refused(
        state, StartQualification("ann", P, "lidar", LIDAR, ("t1",), T0), FailedPrecondition
    )
    assert "has the skill" in refused(
        person("lidar"), StartQualification("ann", P, "lidar", LIDAR, ("t1",), T0), FailedPrecondition
    )


def test_a_passed_attempt_grants_the_skill_at_its_level() -> None:
    _, state = start(person())
    events, state = record(state, "t1", True, training="lidar", attempt=1)
    assert kinds(events) == ["GoldResultRecorded"]
    # items outside the attempt, of another attempt, or scored twice are refused
    refused(
        state,
        RecordGoldResult("ann", result("t9", True, training="lidar", attempt=1), "E-9", POLICY, T0),
        FailedPrecondition,
    )
    refused(
        state,
        RecordGoldResult("ann", result("t2", True, training="lidar", attempt=7), "E-7", POLICY, T0),
        FailedPrecondition,
    )
    refused(
        state,
        RecordGoldResult("ann", result("t1", True, training="lidar", attempt=1), "E-1b", POLICY, T0),
        AlreadyExists,
        "task_id",
    )
    events, state = record(state, "t2", True, training="lidar", attempt=1)
    assert kinds(events) == ["GoldResultRecorded", "QualificationCompleted", "SkillGranted"]
    completed, granted = events[1], events[2]
    assert (
        isinstance(completed, events_pb2.QualificationCompleted)
        and completed.passed
        and completed.score == 1.0
    )
    assert isinstance(granted, events_pb2.SkillGranted) and (granted.skill.name, granted.skill.level) == (
        "lidar",
        2,
    )
    assert state.skills == frozenset({"lidar"}) and state.standing(P).window == ()  # training is not gold
    assert [(s.name, s.level) for s in state.spec.skills] == [("lidar", 2)]
    # an UpdatePerson replaces skills as before; a later grant raises a level in place
    spec = M.PersonSpec(
        person_id="ann", roles=[M.ROLE_ANNOTATOR], time_zone="UTC", skills=[M.Skill(name="lidar", level=1)]
    )
    _, lower = run(state, UpdatePerson(spec))
    assert isinstance(lower, PersonState)
    after = aggregates.evolve(
        lower, events_pb2.SkillGranted(person_id="ann", skill=M.Skill(name="lidar", level=3))
    )
    assert isinstance(after, PersonState) and [(s.name, s.level) for s in after.spec.skills] == [("lidar", 3)]


def test_a_failed_attempt_says_what_was_wrong_and_enforces_cooldown_and_attempts() -> None:
    _, state = start(person())
    _, state = record(state, "t1", True, training="lidar", attempt=1)
    events, state = record(state, "t2", False, training="lidar", attempt=1)
    completed = events[-1]
    assert isinstance(completed, events_pb2.QualificationCompleted) and not completed.passed
    assert [(i.task_id, i.passed) for i in completed.items] == [("t1", True), ("t2", False)]
    assert completed.score == 0.5 and completed.attempts_left == 1
    assert completed.retry_after.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=600)
    assert "cool-down" in refused(
        state,
        StartQualification("ann", P, "lidar", LIDAR, ("t1",), T0 + timedelta(seconds=599)),
        FailedPrecondition,
    )
    events, state = start(state, now=T0 + timedelta(seconds=600))
    assert isinstance(events[0], events_pb2.QualificationStarted) and (
        events[0].attempt,
        events[0].cycle_attempt,
    ) == (2, 2)
    _, state = record(state, "t1", False, training="lidar", attempt=2)
    events, state = record(state, "t2", False, training="lidar", attempt=2)
    assert isinstance(events[-1], events_pb2.QualificationCompleted) and events[-1].attempts_left == 0
    later = T0 + timedelta(days=1)
    assert "no attempts left" in refused(
        state, StartQualification("ann", P, "lidar", LIDAR, ("t1",), later), FailedPrecondition
    )


def test_retraining_starts_a_new_cycle_and_passing_it_reinstates() -> None:
    state = person("lidar")  # qualified once; then suspended
    for i in range(3):
        _, state = record(state, f"g{i}", False)
    assert state.suspended_from(P) is not None
    events, state = start(state)  # allowed although ann has the skill: it is her retraining
    _, state = record(state, "t1", True, training="lidar", attempt=1)
    events, state = record(state, "t2", True, training="lidar", attempt=1)
    assert kinds(events) == [
        "GoldResultRecorded",
        "QualificationCompleted",
        "SkillGranted",
        "PersonReinstated",
    ]
    reinstated = events[-1]
    assert isinstance(reinstated, events_pb2.PersonReinstated)
    assert (reinstated.reinstated_by, reinstated.skill) == ("", "lidar")
    assert state.suspended_from(P) is None and state.standing(P).window == ()
    # a retraining resets the attempts of its qualification
    exhausted = person()
    for attempt in (1, 2):
        _, exhausted = start(exhausted, now=T0 + timedelta(hours=attempt))
        for t in ("t1", "t2"):
            _, exhausted = record(
                exhausted, t, False, training="lidar", attempt=attempt, now=T0 + timedelta(hours=attempt)
            )
    refused(
        exhausted,
        StartQualification("ann", P, "lidar", LIDAR, ("t1",), T0 + timedelta(days=1)),
        FailedPrecondition,
    )
    for i in range(3):
        _, exhausted = record(exhausted, f"g{i}", False)
    events, exhausted = start(exhausted, now=T0 + timedelta(days=1))
    assert isinstance(events[0], events_pb2.QualificationStarted) and (
        events[0].attempt,
        events[0].cycle_attempt,
    ) == (3, 1)


def test_person_states_replay_from_their_events() -> None:
    state = person()
    log: list[Message] = [events_pb2.PersonRegistered(person=state.spec)]
    for cmd in (
        RecordGoldResult("ann", result("g1", False), "E1", POLICY, T0),
        RecordGoldResult("ann", result("g2", False), "E2", POLICY, T0),
        RecordGoldResult("ann", result("g3", False), "E3", POLICY, T0),
        StartQualification("ann", P, "lidar", LIDAR, ("t1",), T0),
        RecordGoldResult("ann", result("t1", True, training="lidar", attempt=1), "E4", POLICY, T0),
    ):
        events, new = run(state, cmd)
        assert isinstance(new, PersonState)
        state = new
        log.extend(events)
    assert aggregates.fold(log) == state
    assert state.suspended_from(P) is None and state.skills == frozenset({"lidar"})
