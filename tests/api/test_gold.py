"""Gold standard, accuracy, suspension, reinstatement and qualification over real gRPC: gold mixed
into NextTask at the configured rate and indistinguishable to annotators (no known answer on any
RPC they can call), rolling accuracy per person and class, suspension below the threshold (once,
however many answers race), reinstatement by managers only, qualifications that grant skills used
by routing, feedback on failed attempts with retry limits and cool-downs, refusals that name the
field and append nothing, the CLI, and projections equal to a rebuild from the log."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from coordinator import cli
from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.domain.gold import gold_turn

from .conftest import Env, Stubs, assert_rebuild_matches, image_task, refused


@pytest.fixture
def env(both_env: Env) -> Env:
    """Every rule in this module is checked on both backends (embedded; Kafka + Cassandra)."""
    return both_env


SEED = "gold-seed"


def box(x: float, y: float = 10, w: float = 40, h: float = 30, label: str = "car") -> A.Shape:
    return A.Shape(label=label, box=A.BoundingBox(x=x, y=y, width=w, height=h))


def ann_of(*shapes: A.Shape) -> A.Annotation:
    return A.Annotation(shapes=list(shapes))


# The known answer of every gold task here: a car and a pedestrian at distinctive places, so its
# bytes can be searched for in every response an annotator gets.
ANSWER = ann_of(box(111.25, 77.5), box(301.75, 201.5, 20, 60, "pedestrian"))
RIGHT = ann_of(box(112, 78), box(302, 202, 20, 60, "pedestrian"))  # both IoU > 0.9
HALF = ann_of(box(112, 78), box(500, 400, 20, 60, "pedestrian"))  # the car right, the pedestrian not
WRONG = ann_of(box(10, 10))  # a car elsewhere, no pedestrian


def gold_task(task_id: str, *, training: str = "", answer: A.Annotation = ANSWER, **kw: Any) -> M.TaskSpec:
    spec = image_task(task_id, **kw)
    spec.gold.CopyFrom(M.GoldSpec(answer=answer, training=bool(training), skill=training))
    return spec


def policy(**kw: Any) -> M.QualityPolicy:
    kw.setdefault("seed", SEED)
    return M.QualityPolicy(**kw)


@dataclass
class Crew:
    env: Env
    ann: Stubs
    bob: Stubs
    mgr: Stubs
    qa: Stubs
    rev: Stubs

    def quality(self, q: M.QualityPolicy, project_id: str = "p1") -> api_pb2.Project:
        admin = self.env.admin
        settings = M.ProjectSettings()
        settings.CopyFrom(
            admin.admin.GetProject(
                api_pb2.GetProjectRequest(project_id=project_id), metadata=admin.md
            ).settings
        )
        settings.quality.CopyFrom(q)
        return admin.admin.UpdateProjectSettings(
            api_pb2.UpdateProjectSettingsRequest(
                command_id=f"q-{project_id}-{q.SerializeToString(deterministic=True).hex()}",
                project_id=project_id,
                settings=settings,
            ),
            metadata=admin.md,
        )

    def imp(self, *tasks: M.TaskSpec, project_id: str = "p1") -> None:
        self.env.admin.tasks.ImportTasks(
            api_pb2.ImportTasksRequest(
                command_id=f"imp-{'-'.join(t.task_id for t in tasks)}", project_id=project_id, tasks=tasks
            ),
            metadata=self.env.admin.md,
        )
        self.settle()

    def settle(self) -> None:
        self.env.server.app.runner.catch_up()

    def next(self, who: Stubs, tag: str, project_id: str = "p1") -> api_pb2.NextTaskResponse:
        out = who.tasks.NextTask(
            api_pb2.NextTaskRequest(command_id=f"n-{tag}", project_id=project_id), metadata=who.md
        )
        self.settle()
        return out

    def submit(self, who: Stubs, n: api_pb2.NextTaskResponse, answer: A.Annotation, tag: str) -> str:
        out = who.tasks.Submit(
            api_pb2.SubmitRequest(
                command_id=f"s-{tag}", task_id=n.task.task_id, lease_id=n.lease.lease_id, annotation=answer
            ),
            metadata=who.md,
        )
        self.settle()
        return out.annotation_id

    def work(self, who: Stubs, answer: A.Annotation, tag: str, project_id: str = "p1") -> str:
        n = self.next(who, tag, project_id)
        assert n.HasField("task"), f"nothing to lease for {tag}"
        self.submit(who, n, answer, tag)
        return n.task.task_id

    def head(self) -> dict[int, int]:
        return dict(self.env.server.app.log.head())

    def stream(self, stream_id: str) -> list[events_pb2.EventEnvelope]:
        return [ev.envelope for ev in self.env.server.app.log.read_stream(stream_id)]

    def is_gold(self, task_id: str) -> bool:
        return self.stream(f"task:{task_id}")[0].type == "gold_task_imported"


def gold_crew(env: Env) -> Crew:
    """Two annotators, a manager, a QA and a reviewer, all members of project p1."""
    people = {
        "ann": env.person("ann", M.ROLE_ANNOTATOR),
        "bob": env.person("bob", M.ROLE_ANNOTATOR),
        "mgr": env.person("mgr", M.ROLE_MANAGER),
        "qa": env.person("qa", M.ROLE_QA),
        "rev": env.person("rev", M.ROLE_REVIEWER),
    }
    env.project("p1", members=tuple(people))
    return Crew(env, **people)


@pytest.fixture
def crew(env: Env) -> Crew:
    return gold_crew(env)


def no_answer_in(messages: Iterable[Message]) -> None:
    """No known answer (nor any part of one) in anything an annotator received."""
    needles = [ANSWER.SerializeToString(), *(s.SerializeToString() for s in ANSWER.shapes)]
    for message in messages:
        data = message.SerializeToString()
        for needle in needles:
            assert needle not in data, f"a known answer leaked in {type(message).__name__}"
        text = _json(message)
        assert "gold" not in text, f"{type(message).__name__} mentions gold: {text[:300]}"


def _json(message: Message) -> str:
    from google.protobuf import json_format

    return json_format.MessageToJson(message, preserving_proto_field_name=True)


def normalized(task: api_pb2.Task) -> api_pb2.Task:
    """A task view without what differs between any two tasks (ids, uri, times, positions)."""
    out = api_pb2.Task()
    out.CopyFrom(task)
    for name in ("task_id", "position", "batch_id"):
        out.ClearField(name)
    out.spec.ClearField("task_id")
    out.spec.ClearField("data_uri")
    for lease in out.leases:
        lease.ClearField("lease_id")
        lease.ClearField("expires_at")
    for a in out.annotations:
        a.ClearField("annotation_id")
    return out


# ------------------------------------------------------------------ gold mix and no leaks


def test_gold_is_mixed_in_at_the_rate_and_looks_like_any_other_task(crew: Crew) -> None:
    env, ann, mgr = crew.env, crew.ann, crew.mgr
    crew.quality(policy(gold_rate=0.3))
    crew.imp(*(image_task(f"r{i:02d}") for i in range(30)))
    crew.imp(*(gold_task(f"g{i:02d}") for i in range(20)))
    rounds = 24
    served: list[tuple[str, api_pb2.NextTaskResponse]] = []
    for n in range(rounds):
        lease = crew.next(ann, f"mix{n}")
        assert lease.HasField("task")
        served.append((lease.task.task_id, lease))
        crew.submit(ann, lease, WRONG, f"mix{n}")
    expected = [gold_turn(SEED, "p1", "ann", n, 0.3) for n in range(rounds)]
    assert [crew.is_gold(t) for t, _ in served] == expected  # decided by (seed, person, n), exactly
    assert 3 <= sum(expected) <= 12  # and about 30 % of 24
    gold_ids = [t for t, _ in served if crew.is_gold(t)]
    plain_ids = [t for t, _ in served if not crew.is_gold(t)]
    assert len(set(gold_ids)) == len(gold_ids)  # nobody answers a gold task twice

    # what the annotator got from NextTask is shaped exactly like an ordinary task
    by_id = dict(served)
    gold_lease, plain_lease = by_id[gold_ids[0]], by_id[plain_ids[0]]
    assert normalized(gold_lease.task) == normalized(plain_lease.task)
    assert gold_lease.label_schema == plain_lease.label_schema
    assert gold_lease.guideline_version == plain_lease.guideline_version
    assert gold_lease.task.status == api_pb2.TASK_STATUS_IN_PROGRESS and not gold_lease.task.spec.HasField(
        "gold"
    )

    # ... and so is everything else an annotator can ask about it, after answering it too
    seen: list[Message] = [lease for _, lease in served]
    views = {}
    for task_id in (gold_ids[0], plain_ids[0]):
        views[task_id] = (
            ann.tasks.GetTask(api_pb2.GetTaskRequest(task_id=task_id), metadata=ann.md),
            ann.tasks.History(api_pb2.HistoryRequest(task_id=task_id), metadata=ann.md),
            ann.reviews.GetReviewState(api_pb2.GetReviewStateRequest(task_id=task_id), metadata=ann.md),
        )
        seen.extend(views[task_id])
    (g_task, g_hist, g_state), (p_task, p_hist, p_state) = views[gold_ids[0]], views[plain_ids[0]]
    assert normalized(g_task) == normalized(p_task)
    assert g_task.status == api_pb2.TASK_STATUS_IN_REVIEW
    assert [(a.status, a.stage) for a in g_task.annotations] == [
        (api_pb2.ANNOTATION_STATUS_SUBMITTED, "peer_review")
    ]
    assert [e.event.type for e in g_hist.entries] == [e.event.type for e in p_hist.entries]
    assert [e.event.type for e in g_hist.entries] == ["task_imported", "task_leased", "annotation_submitted"]
    assert g_hist.entries[0].event.task_imported.task.task_id == gold_ids[0]
    assert normalized(g_hist.task) == normalized(p_hist.task)
    assert list(g_state.stages) == list(p_state.stages) == ["peer_review"]
    assert [(a.status, a.pending_stage) for a in g_state.annotations] == [
        (api_pb2.ANNOTATION_STATUS_SUBMITTED, "peer_review")
    ]
    seen.append(ann.reviews.ListFeedback(api_pb2.ListFeedbackRequest(), metadata=ann.md))
    mine = ann.quality.GetAccuracy(api_pb2.GetAccuracyRequest(project_id="p1"), metadata=ann.md)
    assert mine.results == len(gold_ids) and not mine.recent  # numbers, never which tasks
    seen.append(mine)
    seen.append(
        ann.tasks.GetMetrics(api_pb2.GetMetricsRequest(project_id="p1", person_id="ann"), metadata=ann.md)
    )
    no_answer_in(seen)
    # the policy is no secret, its seed is: with it the gold turns could be foretold
    mine_p = ann.admin.GetProject(api_pb2.GetProjectRequest(project_id="p1"), metadata=ann.md)
    assert mine_p.settings.quality.gold_rate == 0.3 and not mine_p.settings.quality.seed
    theirs = mgr.admin.GetProject(api_pb2.GetProjectRequest(project_id="p1"), metadata=mgr.md)
    assert theirs.settings.quality.seed == SEED
    # another annotator cannot look at a gold task at all, whatever its name suggests
    refused(
        crew,
        lambda: crew.bob.tasks.GetTask(api_pb2.GetTaskRequest(task_id=gold_ids[0]), metadata=crew.bob.md),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    # gold work is never reviewed, never a label: not in review queues, feeds or exports
    queue = crew.rev.reviews.ListReviewQueue(
        api_pb2.ListReviewQueueRequest(project_id="p1"), metadata=crew.rev.md
    )
    assert {i.task_id for i in queue.items} == set(plain_ids)
    reviewed = crew.rev.tasks.GetTask(api_pb2.GetTaskRequest(task_id=plain_ids[0]), metadata=crew.rev.md)
    crew.rev.tasks.Review(
        api_pb2.ReviewRequest(
            command_id="acc",
            task_id=plain_ids[0],
            annotation_id=reviewed.annotations[0].annotation_id,
            version=1,
            verdict=M.VERDICT_ACCEPT,
        ),
        metadata=crew.rev.md,
    )
    crew.settle()
    exported = list(
        env.admin.streams.ExportLabels(api_pb2.ExportLabelsRequest(project_id="p1"), metadata=env.admin.md)
    )
    streamed = list(
        env.admin.streams.SubscribeLabels(
            api_pb2.SubscribeLabelsRequest(project_id="p1"), metadata=env.admin.md
        )
    )
    assert [e.label.task_id for e in exported] == [plain_ids[0]] == [s.label.task_id for s in streamed]

    # the project's manager sees the known answer and the scored answers
    full = mgr.tasks.GetTask(api_pb2.GetTaskRequest(task_id=gold_ids[0]), metadata=mgr.md)
    assert full.spec.gold.answer == ANSWER
    with pytest.raises(AssertionError, match="leaked"):
        no_answer_in([full])  # the leak check would have caught it
    assert [a.status for a in full.annotations] == [api_pb2.ANNOTATION_STATUS_SCORED]
    history = mgr.tasks.History(api_pb2.HistoryRequest(task_id=gold_ids[0]), metadata=mgr.md)
    assert [e.event.type for e in history.entries] == [
        "gold_task_imported",
        "task_leased",
        "annotation_submitted",
        "gold_scored",
    ]
    report = mgr.quality.GetAccuracy(
        api_pb2.GetAccuracyRequest(project_id="p1", person_id="ann"), metadata=mgr.md
    )
    assert sorted(r.task_id for r in report.recent) == sorted(gold_ids[-report.window :])
    assert_rebuild_matches(env)


# ------------------------------------------------------------------ accuracy


def test_accuracy_per_person_and_class(crew: Crew) -> None:
    ann, bob, qa = crew.ann, crew.bob, crew.qa
    crew.quality(policy(gold_rate=1.0, accuracy_window=4))
    crew.imp(*(gold_task(f"g{i}") for i in range(6)))
    for i in range(3):
        crew.work(ann, HALF, f"a{i}")  # the car right, the pedestrian wrong: score 1/3, not passed
    crew.work(ann, RIGHT, "a3")
    crew.work(bob, RIGHT, "b0")
    events = [e for e in crew.stream("person:ann") if e.type == "gold_result_recorded"]
    assert [(e.gold_result_recorded.results, e.gold_result_recorded.passed) for e in events] == [
        (1, False),
        (2, False),
        (3, False),
        (4, True),
    ]
    scored = next(
        e.gold_scored
        for e in crew.stream(f"task:{events[0].gold_result_recorded.task_id}")
        if e.type == "gold_scored"
    )
    assert scored.score == pytest.approx(1 / 3) and not scored.passed
    assert {(c.label, c.matched, c.missed, c.extra) for c in scored.classes} == {
        ("car", 1, 0, 0),
        ("pedestrian", 0, 1, 1),
    }
    assert (scored.iou_threshold, scored.oks_threshold, scored.pass_score) == (0.5, 0.5, 1.0)

    report = ann.quality.GetAccuracy(api_pb2.GetAccuracyRequest(project_id="p1"), metadata=ann.md)
    assert (report.results, report.passed, report.window, report.total_results) == (4, 1, 4, 4)
    assert report.accuracy == pytest.approx(0.25)
    assert report.mean_score == pytest.approx((3 * (1 / 3) + 1) / 4)
    classes = {c.label: c for c in report.classes}
    assert (classes["car"].matched, classes["car"].accuracy, classes["car"].results) == (4, 1.0, 4)
    assert (classes["pedestrian"].matched, classes["pedestrian"].missed, classes["pedestrian"].extra) == (
        1,
        3,
        3,
    )
    assert classes["pedestrian"].accuracy == pytest.approx(1 / 7)
    assert not report.recent and not report.suspended

    # the window moves on: a fifth result pushes out the first
    crew.work(ann, RIGHT, "a4")
    report = qa.quality.GetAccuracy(
        api_pb2.GetAccuracyRequest(project_id="p1", person_id="ann"), metadata=qa.md
    )
    assert (report.results, report.passed, report.total_results) == (4, 2, 5)
    assert len(report.recent) == 4 and all(r.task_id for r in report.recent)
    people = qa.quality.ListAccuracy(api_pb2.ListAccuracyRequest(project_id="p1"), metadata=qa.md).people
    assert {(p.person_id, p.results, p.passed) for p in people} == {("ann", 4, 2), ("bob", 1, 1)}

    # annotators see their own record only
    refused(
        crew,
        lambda: ann.quality.GetAccuracy(
            api_pb2.GetAccuracyRequest(project_id="p1", person_id="bob"), metadata=ann.md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "",
        "GetAccuracy of other people",
    )
    assert_rebuild_matches(crew.env)


# ------------------------------------------------------------------ suspension and reinstatement


def test_suspension_below_the_threshold_refuses_work_until_a_manager_reinstates(crew: Crew) -> None:
    env, ann, mgr = crew.env, crew.ann, crew.mgr
    crew.quality(policy(gold_rate=1.0, min_accuracy=0.6, min_results=3, accuracy_window=5))
    crew.imp(*(gold_task(f"g{i}") for i in range(8)))
    crew.work(ann, RIGHT, "a0")
    crew.work(ann, WRONG, "a1")
    assert not any(e.type == "person_suspended" for e in crew.stream("person:ann"))  # 2 < min_results
    crew.work(ann, WRONG, "a2")  # 1 of 3 = 33 % < 60 %
    person = crew.stream("person:ann")
    suspended = next(e for e in person if e.type == "person_suspended")
    retraining = next(e for e in person if e.type == "retraining_assigned")
    assert suspended.person_suspended.accuracy == pytest.approx(1 / 3)
    assert (suspended.person_suspended.threshold, suspended.person_suspended.results) == (0.6, 3)
    assert "33%" in suspended.person_suspended.reason and "60%" in suspended.person_suspended.reason
    # decided right after the third GoldScored, in one command whose id derives from its task
    # and annotation (the same id the gold reconcile sweep would use)
    gold_event = suspended.person_suspended.gold_event_id
    recorded = next(
        e.gold_result_recorded
        for e in person
        if e.type == "gold_result_recorded" and e.gold_result_recorded.gold_event_id == gold_event
    )
    assert (
        suspended.command_id == retraining.command_id == f"gold/{recorded.task_id}/{recorded.annotation_id}"
    )
    assert suspended.causation_id == gold_event and suspended.actor.user_id == "system"

    details = refused(
        crew,
        lambda: ann.tasks.NextTask(
            api_pb2.NextTaskRequest(command_id="x1", project_id="p1"), metadata=ann.md
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "project_id",
        "ann is suspended from project p1",
    )
    assert "a manager of the project can reinstate you" in details
    refused(  # without a project: every project with work refused it
        crew,
        lambda: ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="x2"), metadata=ann.md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "project_id",
        "suspended",
    )
    listed = mgr.quality.ListSuspensions(api_pb2.ListSuspensionsRequest(project_id="p1"), metadata=mgr.md)
    assert [(s.person_id, s.results) for s in listed.suspensions] == [("ann", 3)] and listed.suspensions[
        0
    ].since.seconds
    feed = ann.reviews.ListFeedback(api_pb2.ListFeedbackRequest(), metadata=ann.md).items
    assert feed[0].kind == api_pb2.FEEDBACK_KIND_SUSPENDED
    assert feed[0].suspension.accuracy == pytest.approx(1 / 3) and "reinstate" in feed[0].retraining.note
    report = ann.quality.GetAccuracy(api_pb2.GetAccuracyRequest(project_id="p1"), metadata=ann.md)
    assert report.suspended and report.suspension.reason == suspended.person_suspended.reason

    # an annotator cannot reinstate anyone, themselves included
    for who in (ann, crew.bob, crew.qa):
        refused(
            crew,
            lambda who=who: who.quality.ReinstatePerson(  # type: ignore[misc]
                api_pb2.ReinstatePersonRequest(command_id="r-bad", project_id="p1", person_id="ann"),
                metadata=who.md,
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "",
            "ReinstatePerson needs one of the roles",
        )
    request = api_pb2.ReinstatePersonRequest(
        command_id="r1", project_id="p1", person_id="ann", reason="retrained on pedestrians"
    )
    back = mgr.quality.ReinstatePerson(request, metadata=mgr.md)
    assert (back.suspended, back.results, back.accuracy, back.total_results) == (False, 0, 0.0, 3)
    head = crew.head()
    assert mgr.quality.ReinstatePerson(request, metadata=mgr.md) == back  # a retry: same answer
    assert crew.head() == head
    refused(
        crew,
        lambda: mgr.quality.ReinstatePerson(
            api_pb2.ReinstatePersonRequest(command_id="r2", project_id="p1", person_id="ann"), metadata=mgr.md
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
        "ann is not suspended from project p1",
    )
    reinstated = next(e for e in crew.stream("person:ann") if e.type == "person_reinstated")
    assert reinstated.person_reinstated.reinstated_by == "mgr"
    assert (
        mgr.quality.ListSuspensions(
            api_pb2.ListSuspensionsRequest(project_id="p1"), metadata=mgr.md
        ).suspensions
        == []
    )
    feed = ann.reviews.ListFeedback(api_pb2.ListFeedbackRequest(), metadata=ann.md).items
    assert (feed[0].kind, feed[0].from_person_id) == (api_pb2.FEEDBACK_KIND_REINSTATED, "mgr")
    # work again, with a fresh record: one more wrong answer is not enough to suspend again
    crew.work(ann, WRONG, "a3")
    assert sum(e.type == "person_suspended" for e in crew.stream("person:ann")) == 1
    assert_rebuild_matches(env)


def test_answers_racing_past_the_threshold_suspend_once(crew: Crew) -> None:
    ann = crew.ann
    crew.quality(policy(gold_rate=1.0, min_accuracy=0.9, min_results=2, accuracy_window=10))
    crew.imp(*(gold_task(f"g{i}") for i in range(6)))
    leases = [crew.next(ann, f"l{i}") for i in range(6)]  # held before the first answer
    assert all(n.HasField("task") for n in leases)
    errors: list[BaseException] = []

    def answer(i: int) -> None:
        try:
            crew.env.as_(ann.token).tasks.Submit(
                api_pb2.SubmitRequest(
                    command_id=f"race{i}",
                    task_id=leases[i].task.task_id,
                    lease_id=leases[i].lease.lease_id,
                    annotation=WRONG,
                ),
                metadata=ann.md,
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    person = crew.stream("person:ann")
    assert sum(e.type == "gold_result_recorded" for e in person) == 6  # answers in flight still count
    assert sum(e.type == "person_suspended" for e in person) == 1
    crew.settle()
    assert_rebuild_matches(crew.env)


# ------------------------------------------------------------------ qualification


QUALIFIED = policy(
    qualifications=[M.Qualification(skill="lidar", min_score=1.0, max_attempts=2, cooldown_seconds=3600)]
)


def qualify(who: Stubs, cid: str, skill: str = "lidar") -> api_pb2.QualificationStatus:
    return who.quality.StartQualification(
        api_pb2.StartQualificationRequest(command_id=cid, project_id="p1", skill=skill), metadata=who.md
    )


def test_passing_a_qualification_grants_the_skill_and_routing_then_serves_gated_work(crew: Crew) -> None:
    ann = crew.ann
    crew.quality(QUALIFIED)
    crew.imp(gold_task("t1", training="lidar"), gold_task("t2", training="lidar"))
    crew.imp(image_task("gated", skills=("lidar",)))
    assert not crew.next(ann, "before").HasField("task")  # gated work needs the skill; training is not served
    status = qualify(ann, "q1")
    assert (status.state, status.attempt, status.items_total, status.items_done) == (
        api_pb2.QUALIFICATION_STATE_IN_PROGRESS,
        1,
        2,
        0,
    )
    served = [crew.work(ann, RIGHT, f"item{i}") for i in range(2)]
    assert served == ["t1", "t2"]
    person = [e.type for e in crew.stream("person:ann")]
    assert person[-2:] == ["qualification_completed", "skill_granted"]
    me = ann.admin.WhoAmI(api_pb2.WhoAmIRequest(), metadata=ann.md)
    assert [(s.name, s.level) for s in me.spec.skills] == [("lidar", 1)]
    status = ann.quality.GetQualification(
        api_pb2.GetQualificationRequest(project_id="p1", skill="lidar"), metadata=ann.md
    )
    assert (status.state, status.has_skill, status.last.score) == (
        api_pb2.QUALIFICATION_STATE_PASSED,
        True,
        1.0,
    )
    lease = crew.next(ann, "after")
    assert lease.task.task_id == "gated"  # routing uses the granted skill at once
    feed = ann.reviews.ListFeedback(api_pb2.ListFeedbackRequest(), metadata=ann.md).items
    assert feed[0].kind == api_pb2.FEEDBACK_KIND_QUALIFICATION and feed[0].qualification.passed
    refused(
        crew,
        lambda: qualify(ann, "q2"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
        "has the skill 'lidar' already",
    )
    assert_rebuild_matches(crew.env)


def test_failing_a_qualification_gives_feedback_and_enforces_retries_and_cooldown(crew: Crew) -> None:
    env, ann, bob = crew.env, crew.ann, crew.bob
    crew.quality(QUALIFIED)
    crew.imp(gold_task("t1", training="lidar"), gold_task("t2", training="lidar"))
    assert not crew.next(bob, "bob").HasField("task")  # training items only for people taking it
    qualify(ann, "q1")
    crew.work(ann, RIGHT, "i1")
    crew.work(ann, HALF, "i2")
    completed = next(
        e.qualification_completed for e in crew.stream("person:ann") if e.type == "qualification_completed"
    )
    assert (completed.passed, completed.score, completed.attempts_left) == (False, 0.5, 1)
    feed = ann.reviews.ListFeedback(api_pb2.ListFeedbackRequest(), metadata=ann.md)
    item = feed.items[0]
    assert item.kind == api_pb2.FEEDBACK_KIND_QUALIFICATION and not item.qualification.passed
    assert [(i.task_id, i.passed) for i in item.qualification.items] == [("t1", True), ("t2", False)]
    wrong = {c.label: (c.matched, c.missed, c.extra) for c in item.qualification.items[1].classes}
    assert wrong == {"car": (1, 0, 0), "pedestrian": (0, 1, 1)}  # which class was wrong, not the answer
    assert item.qualification.retry_after.seconds == int(env.clock().timestamp()) + 3600
    no_answer_in([feed])
    assert "lidar" not in {
        s.name for s in ann.admin.WhoAmI(api_pb2.WhoAmIRequest(), metadata=ann.md).spec.skills
    }

    refused(crew, lambda: qualify(ann, "q2"), grpc.StatusCode.FAILED_PRECONDITION, "", "cool-down")
    env.clock.advance(3600)
    status = qualify(ann, "q3")
    assert (status.attempt, status.attempts_used) == (2, 2)
    crew.work(ann, WRONG, "j1")
    crew.work(ann, WRONG, "j2")
    status = ann.quality.GetQualification(
        api_pb2.GetQualificationRequest(project_id="p1", skill="lidar"), metadata=ann.md
    )
    assert (status.state, status.attempts_used, status.max_attempts) == (
        api_pb2.QUALIFICATION_STATE_EXHAUSTED,
        2,
        2,
    )
    assert [i.task_id for i in status.last.items if not i.passed] == ["t1", "t2"]
    env.clock.advance(7200)
    refused(crew, lambda: qualify(ann, "q4"), grpc.StatusCode.FAILED_PRECONDITION, "", "no attempts left")
    assert_rebuild_matches(env)


def test_a_suspended_person_is_reinstated_by_passing_the_retraining_qualification(crew: Crew) -> None:
    env, ann = crew.env, crew.ann
    q = policy(
        gold_rate=1.0,
        min_accuracy=0.5,
        min_results=2,
        retraining_skill="lidar",
        qualifications=[M.Qualification(skill="lidar", items=1)],
    )
    crew.quality(q)
    crew.imp(
        *(gold_task(f"g{i}") for i in range(4)),
        gold_task("t1", training="lidar"),
        gold_task("t2", training="lidar"),
    )
    crew.work(ann, WRONG, "a0")
    crew.work(ann, WRONG, "a1")
    details = refused(
        crew,
        lambda: ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="x", project_id="p1"), metadata=ann.md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "project_id",
        "pass the 'lidar' qualification again",
    )
    assert "suspended" in details
    status = qualify(ann, "retrain")
    assert status.items_total == 1  # one item of two, chosen by hash
    item = crew.work(ann, RIGHT, "retrain-item")  # served while suspended: it is the retraining
    assert item in ("t1", "t2")
    person = [e for e in crew.stream("person:ann")]
    assert [e.type for e in person[-3:]] == ["qualification_completed", "skill_granted", "person_reinstated"]
    assert person[-1].person_reinstated.reinstated_by == "" and person[-1].person_reinstated.skill == "lidar"
    assert crew.next(ann, "back").HasField("task")
    assert_rebuild_matches(env)


# ------------------------------------------------------------------ refusals append nothing


def test_bad_gold_input_is_refused_naming_the_field_and_appends_nothing(crew: Crew) -> None:
    env, ann, mgr = crew.env, crew.ann, crew.mgr
    crew.quality(QUALIFIED)
    admin = env.admin

    def imp(*tasks: M.TaskSpec) -> Callable[[], Any]:
        req = api_pb2.ImportTasksRequest(command_id=f"bad-{tasks[-1].task_id}", project_id="p1", tasks=tasks)
        return lambda: admin.tasks.ImportTasks(req, metadata=admin.md)

    refused(
        crew,
        imp(image_task("ok"), gold_task("bad1", answer=ann_of(box(1, label="spaceship")))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tasks[1].gold.answer.shapes[0].label",
        "unknown class",
    )
    refused(
        crew,
        imp(gold_task("bad2", answer=ann_of(box(630, 10)))),  # out of the 640 px frame
        grpc.StatusCode.INVALID_ARGUMENT,
        "tasks[0].gold.answer.shapes[0].box.width",
    )
    lane = A.Shape(label="lane", polyline=A.Polyline(points=[A.Point2(x=1, y=1), A.Point2(x=5, y=5)]))
    refused(
        crew,
        imp(gold_task("bad3", answer=ann_of(lane))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tasks[0].gold.answer.shapes[0]",
        "polyline cannot be scored",
    )
    no_skill = gold_task("bad4")
    no_skill.gold.training = True
    refused(crew, imp(no_skill), grpc.StatusCode.INVALID_ARGUMENT, "tasks[0].gold.skill", "names the skill")
    refused(
        crew,
        imp(gold_task("bad5", training="sonar")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tasks[0].gold.skill",
        "no qualification for 'sonar' (qualifications: lidar)",
    )
    stray = gold_task("bad6")
    stray.gold.skill = "lidar"
    refused(crew, imp(stray), grpc.StatusCode.INVALID_ARGUMENT, "tasks[0].gold.skill", "only training items")

    def settings(q: M.QualityPolicy) -> Callable[[], Any]:
        return lambda: crew.quality(q)

    for q, field in (
        (policy(gold_rate=1.5), "settings.quality.gold_rate"),
        (policy(iou_threshold=-0.1), "settings.quality.iou_threshold"),
        (policy(min_results=30, accuracy_window=10), "settings.quality.min_results"),
        (policy(retraining_skill="sonar"), "settings.quality.retraining_skill"),
        (
            policy(qualifications=[M.Qualification(skill="lidar"), M.Qualification(skill="lidar")]),
            "settings.quality.qualifications[1].skill",
        ),
        (policy(qualifications=[M.Qualification(skill="a,b")]), "settings.quality.qualifications[0].skill"),
        (
            policy(qualifications=[M.Qualification(skill="x", min_score=2)]),
            "settings.quality.qualifications[0].min_score",
        ),
    ):
        refused(crew, settings(q), grpc.StatusCode.INVALID_ARGUMENT, field)
    refused(
        crew,
        lambda: qualify(ann, "sq1", "sonar"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "skill",
        "no qualification",
    )
    refused(crew, lambda: qualify(ann, "sq2", ""), grpc.StatusCode.INVALID_ARGUMENT, "skill", "required")
    refused(
        crew,
        lambda: qualify(ann, "sq3"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
        "no training items for 'lidar'",
    )
    refused(
        crew,
        lambda: mgr.quality.ReinstatePerson(
            api_pb2.ReinstatePersonRequest(command_id="ri1", project_id="p1"), metadata=mgr.md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "person_id",
    )
    refused(
        crew,
        lambda: mgr.quality.ReinstatePerson(
            api_pb2.ReinstatePersonRequest(command_id="ri2", project_id="p1", person_id="nobody"),
            metadata=mgr.md,
        ),
        grpc.StatusCode.NOT_FOUND,
        "person_id",
    )
    outsider = env.person("out", M.ROLE_ANNOTATOR)
    refused(crew, lambda: qualify(outsider, "sq4"), grpc.StatusCode.PERMISSION_DENIED, "", "not a member")
    assert_rebuild_matches(env)


# ------------------------------------------------------------------ CLI


def test_cli_quality_commands(crew: Crew, capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    env, ann = crew.env, crew.ann

    def run(token: str, *argv: str) -> str:
        capsys.readouterr()
        code = cli.main([*argv, "--target", env.target, "--token", token])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    def fails(token: str, *argv: str) -> str:
        capsys.readouterr()
        assert cli.main([*argv, "--target", env.target, "--token", token]) == 2
        return capsys.readouterr().err

    spec = tmp_path / "quality.json"
    spec.write_text(
        json.dumps(
            {
                "goldRate": 1.0,
                "minAccuracy": 0.5,
                "minResults": 2,
                "retrainingSkill": "lidar",
                "qualifications": [{"skill": "lidar", "minScore": 1.0}],
            }
        )
    )
    out = run(env.admin.token, "quality", "policy", "p1", str(spec))
    assert "gold rate 1; suspend below 0.5" in out and "qualifications lidar" in out
    seed = json.loads(run(crew.mgr.token, "project", "get", "p1"))["settings"]["quality"]["seed"]
    assert len(seed) == 32  # none given: a random secret one, kept by later changes
    assert "seed" not in json.loads(run(ann.token, "project", "get", "p1"))["settings"]["quality"]
    run(env.admin.token, "quality", "policy", "p1", str(spec))
    assert json.loads(run(crew.mgr.token, "project", "get", "p1"))["settings"]["quality"]["seed"] == seed
    bad = tmp_path / "bad.json"
    bad.write_text('{"goldRate": 2}')
    assert "settings.quality.gold_rate" in fails(env.admin.token, "quality", "policy", "p1", str(bad))
    # gold and training tasks come in through the ordinary import, with `gold` on the line
    lines = tmp_path / "gold.jsonl"
    from google.protobuf import json_format

    lines.write_text(
        "".join(
            json_format.MessageToJson(t, indent=None) + "\n"
            for t in (gold_task("g1"), gold_task("g2"), gold_task("t1", training="lidar"))
        )
    )
    run(env.admin.token, "import", "p1", str(lines), "--batch-id", "gold-1")
    crew.settle()
    crew.work(ann, WRONG, "c1")
    crew.work(ann, WRONG, "c2")
    record = json.loads(run(ann.token, "quality", "accuracy", "p1"))
    assert (record["results"], record["suspended"], record["retraining_skill"]) == (2, True, "lidar")
    assert "recent" not in record
    assert "ann\t0.000\t0.500\t2" in run(crew.mgr.token, "quality", "suspended", "p1")
    everyone = [
        json.loads(line) for line in run(crew.qa.token, "quality", "accuracy", "p1", "--all").splitlines()
    ]
    assert [(r["person_id"], len(r["recent"]) if "recent" in r else 0) for r in everyone] == [("ann", 0)]
    assert "ReinstatePerson needs one of the roles" in fails(ann.token, "quality", "reinstate", "p1", "ann")
    status = json.loads(run(ann.token, "quality", "qualify", "p1", "lidar"))
    assert (status["state"], status["items_total"]) == ("in_progress", 1)
    back = json.loads(run(crew.mgr.token, "quality", "reinstate", "p1", "ann", "--reason", "coached"))
    assert (back["suspended"], back["results"]) == (False, 0)
    assert (
        json.loads(run(crew.mgr.token, "quality", "qualification", "p1", "lidar", "--person", "ann"))["state"]
        == "in_progress"
    )
    assert_rebuild_matches(env)
