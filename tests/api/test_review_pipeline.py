"""The layered review pipeline over real gRPC: peer review, QA spot checks (off, sampled,
stratified), reason codes, disputes to experts, feedback feeds, role checks, refusals that append
nothing, the CLI, and projections equal to a rebuild from the log."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import pytest

from coordinator import cli
from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.domain.review import sample_point
from projections.review_queries import stage_depths

from .conftest import Env, Stubs, assert_rebuild_matches, image_task, refused


@pytest.fixture
def env(both_env: Env) -> Env:
    """Every rule in this module is checked on both backends (embedded; Kafka + Cassandra)."""
    return both_env


SEED = "review-seed"
REASONS = [
    M.ReasonCode(code="loose_box", description="The box is not tight around the object"),
    M.ReasonCode(code="missed_object", description="An object is not labelled"),
    M.ReasonCode(code="wrong_class", description="Wrong class"),
]


def box(x: float = 10) -> A.Annotation:
    return A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=x, y=10, width=30, height=20))])


def pipeline_settings(
    qa: M.ReviewStage | None = None, *, expert: bool = True, peer: M.ReviewStage | None = None
) -> M.ProjectSettings:
    stages = [peer or M.ReviewStage(kind=M.REVIEW_STAGE_KIND_PEER_REVIEW)]
    if qa is not None:
        stages.append(qa)
    if expert:
        stages.append(M.ReviewStage(kind=M.REVIEW_STAGE_KIND_EXPERT_RESOLUTION))
    return M.ProjectSettings(
        default_overlap=1,
        lease_seconds=600,
        pipeline=M.ReviewPipeline(stages=stages, sampling_seed=SEED),
        reason_codes=REASONS,
    )


def qa_stage(
    rate: float, strata: tuple[tuple[float, float], ...] = (), min_verdicts: int = 0
) -> M.ReviewStage:
    return M.ReviewStage(
        kind=M.REVIEW_STAGE_KIND_QA_SPOT_CHECK,
        sample_rate=rate,
        strata=[M.SamplingStratum(below_acceptance=b, sample_rate=r) for b, r in strata],
        min_verdicts=min_verdicts,
    )


@dataclass
class Crew:
    env: Env
    ann: Stubs
    bob: Stubs
    rev: Stubs
    qa: Stubs
    exp: Stubs
    mgr: Stubs

    def settings(self, settings: M.ProjectSettings, project_id: str = "p1") -> api_pb2.Project:
        return self.env.admin.admin.UpdateProjectSettings(
            api_pb2.UpdateProjectSettingsRequest(
                command_id=f"set-{project_id}-{hashlib.sha256(settings.SerializeToString(deterministic=True)).hexdigest()}",
                project_id=project_id,
                settings=settings,
            ),
            metadata=self.env.admin.md,
        )

    def imp(self, *task_ids: str, project_id: str = "p1") -> None:
        self.env.admin.tasks.ImportTasks(
            api_pb2.ImportTasksRequest(
                command_id=f"imp-{'-'.join(task_ids)}",
                project_id=project_id,
                tasks=[image_task(t) for t in task_ids],
            ),
            metadata=self.env.admin.md,
        )
        self.settle()

    def settle(self) -> None:
        self.env.server.app.runner.catch_up()

    def work(self, who: Stubs, tag: str, x: float = 10, project_id: str = "p1") -> tuple[str, str]:
        n = who.tasks.NextTask(
            api_pb2.NextTaskRequest(command_id=f"n-{tag}", project_id=project_id), metadata=who.md
        )
        assert n.HasField("task"), f"nothing to lease for {tag}"
        s = who.tasks.Submit(
            api_pb2.SubmitRequest(
                command_id=f"s-{tag}", task_id=n.task.task_id, lease_id=n.lease.lease_id, annotation=box(x)
            ),
            metadata=who.md,
        )
        self.settle()
        return n.task.task_id, s.annotation_id

    def review(
        self, who: Stubs, task_id: str, ann_id: str, verdict: int, version: int = 1, **kw: Any
    ) -> api_pb2.ReviewResponse:
        out = who.tasks.Review(
            api_pb2.ReviewRequest(
                command_id=kw.pop("command_id", f"r-{task_id}-{ann_id}-{version}-{verdict}-{who.token[-6:]}"),
                task_id=task_id,
                annotation_id=ann_id,
                version=version,
                verdict=verdict,  # type: ignore[arg-type]
                **kw,
            ),
            metadata=who.md,
        )
        self.settle()
        return out

    def head(self) -> dict[int, int]:
        return dict(self.env.server.app.log.head())

    def events(self, task_id: str) -> list[events_pb2.EventEnvelope]:
        return [ev.envelope for ev in self.env.server.app.log.read_stream(f"task:{task_id}")]


def review_crew(env: Env, settings: M.ProjectSettings) -> Crew:
    """Two annotators, a reviewer, a QA, an expert and a manager, all members of project p1,
    whose review pipeline is set to `settings`."""
    people = {
        "ann": env.person("ann", M.ROLE_ANNOTATOR),
        "bob": env.person("bob", M.ROLE_ANNOTATOR),
        "rev": env.person("rev", M.ROLE_REVIEWER),
        "qa": env.person("qa", M.ROLE_QA),
        "exp": env.person("exp", M.ROLE_EXPERT),
        "mgr": env.person("mgr", M.ROLE_MANAGER),
    }
    env.project("p1", members=tuple(people))
    c = Crew(env, **people)
    c.settings(settings)
    return c


@pytest.fixture
def crew(env: Env) -> Crew:
    return review_crew(env, pipeline_settings(qa_stage(0.0, ((1.0, 1.0),), min_verdicts=1)))


# ------------------------------------------------------------------ the three layers


def test_three_layers_with_a_dispute_end_to_end(crew: Crew) -> None:
    env, ann, rev, qa, exp = crew.env, crew.ann, crew.rev, crew.qa, crew.exp
    crew.imp("t1")
    task_id, ann_id = crew.work(ann, "a1")
    task = ann.tasks.GetTask(api_pb2.GetTaskRequest(task_id=task_id), metadata=ann.md)
    assert task.annotations[0].stage == "peer_review"
    queue = rev.reviews.ListReviewQueue(api_pb2.ListReviewQueueRequest(project_id="p1"), metadata=rev.md)
    assert (queue.stage, queue.depth, [i.annotation_id for i in queue.items]) == ("peer_review", 1, [ann_id])

    # 1. peer review rejects with a reason code and a comment: back to the author
    out = crew.review(rev, task_id, ann_id, M.VERDICT_REJECT, reason_codes=["loose_box"], comment="tighter")
    assert (out.stage, out.next_stage, out.annotation_status) == (
        "peer_review",
        "",
        api_pb2.ANNOTATION_STATUS_REJECTED,
    )
    feed = ann.reviews.ListFeedback(api_pb2.ListFeedbackRequest(), metadata=ann.md).items
    assert feed[0].kind == api_pb2.FEEDBACK_KIND_REVIEW and feed[0].verdict == M.VERDICT_REJECT
    assert (feed[0].from_person_id, feed[0].comment, feed[0].stage) == ("rev", "tighter", "peer_review")
    assert [(r.code, r.description) for r in feed[0].reasons] == [
        ("loose_box", "The box is not tight around the object")
    ]

    # 2. the author fixes it: version 2 starts the pipeline again
    edit = ann.tasks.EditAnnotation(
        api_pb2.EditAnnotationRequest(
            command_id="e1", task_id=task_id, annotation_id=ann_id, expected_version=1, annotation=box(12)
        ),
        metadata=ann.md,
    )
    assert edit.version == 2
    crew.settle()

    # 3. peer accepts; QA samples it: ann's recent acceptance (0 of 1) is below the stratum's 1.0
    out = crew.review(rev, task_id, ann_id, M.VERDICT_ACCEPT, version=2, stage="peer_review")
    assert (out.next_stage, out.annotation_status) == ("qa_spot_check", api_pb2.ANNOTATION_STATUS_SUBMITTED)
    routed = [e.review_routed for e in crew.events(task_id) if e.type == "review_routed"]
    assert [(r.stage, r.sampled, r.rate, r.author_acceptance, r.author_verdicts) for r in routed] == [
        ("qa_spot_check", True, 1.0, 0.0, 1)
    ]
    queue = qa.reviews.ListReviewQueue(
        api_pb2.ListReviewQueueRequest(project_id="p1", stage="qa_spot_check"), metadata=qa.md
    )
    assert [(i.task_id, i.version, i.rate) for i in queue.items] == [(task_id, 2, 1.0)] and queue.depth == 1

    # 4. QA rejects
    crew.review(
        qa, task_id, ann_id, M.VERDICT_REJECT, version=2, reason_codes=["missed_object"], comment="a bike"
    )

    # 5. the author disputes; it reaches the experts
    opened = ann.reviews.OpenDispute(
        api_pb2.OpenDisputeRequest(
            command_id="d1", task_id=task_id, annotation_id=ann_id, comment="no bike there"
        ),
        metadata=ann.md,
    )
    assert (opened.status, opened.stage, opened.reviewer_id, list(opened.reason_codes)) == (
        api_pb2.DISPUTE_STATUS_OPEN,
        "qa_spot_check",
        "qa",
        ["missed_object"],
    )
    assert (opened.comment, opened.rejection_comment, opened.version) == ("no bike there", "a bike", 2)
    crew.settle()
    listed = exp.reviews.ListDisputes(api_pb2.ListDisputesRequest(project_id="p1"), metadata=exp.md)
    assert [d.dispute_id for d in listed.disputes] == [opened.dispute_id]
    task = ann.tasks.GetTask(api_pb2.GetTaskRequest(task_id=task_id), metadata=ann.md)
    assert task.annotations[0].dispute_status == api_pb2.DISPUTE_STATUS_OPEN

    # 6. the expert overturns: an accept at QA, the last review stage, so the label is accepted
    resolved = exp.reviews.ResolveDispute(
        api_pb2.ResolveDisputeRequest(
            command_id="x1",
            task_id=task_id,
            dispute_id=opened.dispute_id,
            decision=M.DISPUTE_DECISION_OVERTURN,
            comment="the bike is a reflection",
        ),
        metadata=exp.md,
    )
    assert (resolved.status, resolved.expert_id, resolved.next_stage) == (
        api_pb2.DISPUTE_STATUS_OVERTURNED,
        "exp",
        "",
    )
    assert resolved.resolution_comment == "the bike is a reflection" and resolved.resolved_at.seconds
    crew.settle()
    task = rev.tasks.GetTask(api_pb2.GetTaskRequest(task_id=task_id), metadata=rev.md)
    assert task.status == api_pb2.TASK_STATUS_DONE
    assert task.annotations[0].status == api_pb2.ANNOTATION_STATUS_ACCEPTED
    assert task.annotations[0].dispute_status == api_pb2.DISPUTE_STATUS_OVERTURNED

    # 7. the accepted label is exported and streamed, with the expert as the one who accepted it
    (exported,) = list(
        env.admin.streams.ExportLabels(api_pb2.ExportLabelsRequest(project_id="p1"), metadata=env.admin.md)
    )
    assert (exported.label.task_id, exported.label.version, exported.label.accepted_by) == (task_id, 2, "exp")
    assert exported.label.annotation.shapes[0].box.x == 12
    (streamed,) = list(
        env.admin.streams.SubscribeLabels(
            api_pb2.SubscribeLabelsRequest(project_id="p1"), metadata=env.admin.md
        )
    )
    assert streamed.label.annotation_id == ann_id and streamed.label.author_id == "ann"

    # 8. feedback: the author's whole story, newest first; the QA reviewer hears the outcome
    feed = ann.reviews.ListFeedback(api_pb2.ListFeedbackRequest(), metadata=ann.md).items
    assert [(i.kind, i.stage, i.verdict) for i in feed] == [
        (api_pb2.FEEDBACK_KIND_ACCEPTED, "", 0),
        (api_pb2.FEEDBACK_KIND_DISPUTE_RESOLVED, "qa_spot_check", 0),
        (api_pb2.FEEDBACK_KIND_REVIEW, "qa_spot_check", M.VERDICT_REJECT),
        (api_pb2.FEEDBACK_KIND_REVIEW, "peer_review", M.VERDICT_REJECT),
    ]  # a peer accept is not news: the work went on to QA
    assert feed[1].decision == M.DISPUTE_DECISION_OVERTURN and feed[1].comment == "the bike is a reflection"
    assert feed[2].reasons[0].description == "An object is not labelled"
    qa_feed = qa.reviews.ListFeedback(api_pb2.ListFeedbackRequest(), metadata=qa.md).items
    assert [(i.kind, i.from_person_id) for i in qa_feed] == [
        (api_pb2.FEEDBACK_KIND_DISPUTE_RESOLVED, "exp"),
        (api_pb2.FEEDBACK_KIND_DISPUTE_OPENED, "ann"),
    ]

    # 9. review state per stage, and the queues are empty again
    state = rev.reviews.GetReviewState(api_pb2.GetReviewStateRequest(task_id=task_id), metadata=rev.md)
    assert list(state.stages) == ["peer_review", "qa_spot_check", "expert_resolution"]
    (a,) = state.annotations
    assert a.status == api_pb2.ANNOTATION_STATUS_ACCEPTED and a.pending_stage == ""
    assert [(s.stage, s.state, s.version, s.reviewer_id) for s in a.stages] == [
        ("peer_review", api_pb2.STAGE_STATE_ACCEPTED, 2, "rev"),
        ("qa_spot_check", api_pb2.STAGE_STATE_OVERTURNED, 2, "qa"),
    ]
    assert [d.status for d in a.disputes] == [api_pb2.DISPUTE_STATUS_OVERTURNED]
    assert stage_depths(env.server.app.store, "p1") == {
        "peer_review": 0,
        "qa_spot_check": 0,
        "expert_resolution": 0,
    }

    # the peer rejection counts against ann; the QA rejection the expert overturned does not
    from projections.queries import annotator_metrics

    (ann_metrics,) = annotator_metrics(env.server.app.store, "p1", "ann")
    assert (ann_metrics["rejected"], ann_metrics["accepted"]) == (1, 1)

    # 10. retries return the first outcome and append nothing
    head = crew.head()
    again = exp.reviews.ResolveDispute(
        api_pb2.ResolveDisputeRequest(
            command_id="x1",
            task_id=task_id,
            dispute_id=opened.dispute_id,
            decision=M.DISPUTE_DECISION_OVERTURN,
            comment="the bike is a reflection",
        ),
        metadata=exp.md,
    )
    assert again.dispute_id == resolved.dispute_id and again.status == resolved.status
    assert crew.head() == head
    assert_rebuild_matches(env)


# ------------------------------------------------------------------ sampling


def test_sampling_off_accepts_on_the_peer_accept_and_records_the_skip(crew: Crew) -> None:
    crew.settings(pipeline_settings(qa_stage(0.0)))
    crew.imp("t1")
    task_id, ann_id = crew.work(crew.ann, "a")
    out = crew.review(crew.rev, task_id, ann_id, M.VERDICT_ACCEPT)
    assert (out.next_stage, out.annotation_status, out.task_status) == (
        "",
        api_pb2.ANNOTATION_STATUS_ACCEPTED,
        api_pb2.TASK_STATUS_DONE,
    )
    kinds = [e.type for e in crew.events(task_id)]
    assert kinds[-4:] == ["review_recorded", "review_routed", "annotation_accepted", "task_completed"]
    routed = next(e.review_routed for e in crew.events(task_id) if e.type == "review_routed")
    assert (routed.sampled, routed.rate) == (False, 0.0)


def test_sampled_qa_decides_by_the_recorded_hash(crew: Crew) -> None:
    crew.settings(pipeline_settings(qa_stage(0.5)))
    ids = [f"t{i:02d}" for i in range(20)]
    crew.imp(*ids)
    decided: dict[str, bool] = {}
    for i in range(len(ids)):
        task_id, ann_id = crew.work(crew.ann if i % 2 else crew.bob, f"w{i}")
        out = crew.review(crew.rev, task_id, ann_id, M.VERDICT_ACCEPT)
        routed = next(e.review_routed for e in crew.events(task_id) if e.type == "review_routed")
        point = sample_point(SEED, task_id, ann_id, "qa_spot_check")
        assert routed.sample_point == point and routed.rate == 0.5
        assert routed.sampled == (point < 0.5)
        assert out.next_stage == ("qa_spot_check" if routed.sampled else "")
        decided[task_id] = routed.sampled
    queue = crew.qa.reviews.ListReviewQueue(
        api_pb2.ListReviewQueueRequest(project_id="p1", stage="qa_spot_check", limit=500), metadata=crew.qa.md
    )
    assert {i.task_id for i in queue.items} == {t for t, s in decided.items() if s}
    assert queue.depth == sum(decided.values())
    exported = list(
        crew.env.admin.streams.ExportLabels(
            api_pb2.ExportLabelsRequest(project_id="p1"), metadata=crew.env.admin.md
        )
    )
    assert {e.label.task_id for e in exported} == {t for t, s in decided.items() if not s}
    assert_rebuild_matches(crew.env)


def test_stratified_qa_looks_at_authors_with_lower_recent_acceptance(crew: Crew) -> None:
    # base rate 0; authors below 80 % recent acceptance (with at least 2 verdicts) are all checked
    crew.settings(pipeline_settings(qa_stage(0.0, ((0.8, 1.0),), min_verdicts=2)))
    crew.imp(*(f"t{i}" for i in range(6)))
    # bob: two accepted pieces of work; ann: two rejected, then reworked
    for n in range(2):
        t, a = crew.work(crew.bob, f"b{n}")
        assert crew.review(crew.rev, t, a, M.VERDICT_ACCEPT).next_stage == ""  # too little history yet
    ann_work = [crew.work(crew.ann, f"a{n}") for n in range(2)]
    for t, a in ann_work:
        crew.review(crew.rev, t, a, M.VERDICT_REJECT, reason_codes=["wrong_class"])
    t, a = ann_work[0]
    crew.ann.tasks.EditAnnotation(
        api_pb2.EditAnnotationRequest(
            command_id="fix", task_id=t, annotation_id=a, expected_version=1, annotation=box(3)
        ),
        metadata=crew.ann.md,
    )
    crew.settle()
    out = crew.review(crew.rev, t, a, M.VERDICT_ACCEPT, version=2)
    assert out.next_stage == "qa_spot_check"
    routed = [e.review_routed for e in crew.events(t) if e.type == "review_routed"][-1]
    assert (routed.rate, routed.author_acceptance, routed.author_verdicts) == (1.0, 0.0, 2)
    t, a = crew.work(crew.bob, "b2")
    assert crew.review(crew.rev, t, a, M.VERDICT_ACCEPT).next_stage == ""
    routed = [e.review_routed for e in crew.events(t) if e.type == "review_routed"][-1]
    assert (routed.sampled, routed.rate, routed.author_acceptance, routed.author_verdicts) == (
        False,
        0.0,
        1.0,
        2,
    )


# ------------------------------------------------------------------ refusals append nothing


def test_bad_reviews_are_refused_naming_the_field_and_append_nothing(crew: Crew) -> None:
    crew.imp("t1", "t2")
    t, a = crew.work(crew.ann, "a")

    def rv(
        who: Stubs, verdict: M.Verdict.ValueType = M.VERDICT_REJECT, **kw: Any
    ) -> Callable[[], api_pb2.ReviewResponse]:
        req = api_pb2.ReviewRequest(
            command_id=f"bad-{len(kw)}-{verdict}",
            task_id=t,
            annotation_id=a,
            version=1,
            verdict=verdict,
            **kw,
        )
        return lambda: who.tasks.Review(req, metadata=who.md)

    refused(
        crew,
        rv(crew.rev, reason_codes=["loose_box", "bad_vibes"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reason_codes[1]",
        "unknown reason code 'bad_vibes'",
    )
    refused(crew, rv(crew.rev), grpc.StatusCode.INVALID_ARGUMENT, "reason_codes")
    refused(
        crew,
        rv(crew.bob, reason_codes=["loose_box"]),
        grpc.StatusCode.PERMISSION_DENIED,
        "",
        "Review needs one of the roles",
    )
    refused(
        crew,
        rv(crew.qa, M.VERDICT_ACCEPT),
        grpc.StatusCode.PERMISSION_DENIED,
        "",
        "stage 'peer_review' is reviewed by the roles: reviewer",
    )
    refused(
        crew,
        rv(crew.rev, M.VERDICT_ACCEPT, stage="qa_spot_check"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "stage",
        "waits at stage 'peer_review'",
    )
    outsider = crew.env.person("out", M.ROLE_REVIEWER)
    refused(crew, rv(outsider, M.VERDICT_ACCEPT), grpc.StatusCode.PERMISSION_DENIED, "", "not a member")
    # a rejection by peer review, then the rework reaches QA (ann's acceptance is 0 now)
    crew.review(crew.rev, t, a, M.VERDICT_REJECT, reason_codes=["loose_box"])
    crew.ann.tasks.EditAnnotation(
        api_pb2.EditAnnotationRequest(
            command_id="fix", task_id=t, annotation_id=a, expected_version=1, annotation=box(3)
        ),
        metadata=crew.ann.md,
    )
    crew.settle()
    assert crew.review(crew.rev, t, a, M.VERDICT_ACCEPT, version=2).next_stage == "qa_spot_check"
    refused(
        crew,
        lambda: crew.rev.tasks.Review(
            api_pb2.ReviewRequest(
                command_id="rq", task_id=t, annotation_id=a, version=2, verdict=M.VERDICT_ACCEPT
            ),
            metadata=crew.rev.md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "",
        "stage 'qa_spot_check' is reviewed by the roles: qa",
    )
    # bad pipelines name their field
    bad = pipeline_settings(qa_stage(1.5))
    refused(
        crew,
        lambda: crew.settings(bad),
        grpc.StatusCode.INVALID_ARGUMENT,
        "settings.pipeline.stages[1].sample_rate",
    )
    bad = pipeline_settings(qa_stage(0.5))
    bad.reason_codes.append(M.ReasonCode(code="loose_box"))
    refused(
        crew, lambda: crew.settings(bad), grpc.StatusCode.INVALID_ARGUMENT, "settings.reason_codes[3].code"
    )


def test_bad_disputes_are_refused_and_append_nothing(crew: Crew) -> None:
    crew.imp("t1", "t2")
    t1, a1 = crew.work(crew.ann, "a1")
    t2, a2 = crew.work(crew.bob, "b1")

    def dispute(
        who: Stubs, task_id: str, ann_id: str, cid: str, comment: str = "disagree"
    ) -> Callable[[], Any]:
        req = api_pb2.OpenDisputeRequest(
            command_id=cid, task_id=task_id, annotation_id=ann_id, comment=comment
        )
        return lambda: who.reviews.OpenDispute(req, metadata=who.md)

    refused(
        crew, dispute(crew.ann, t1, a1, "d0"), grpc.StatusCode.FAILED_PRECONDITION, "", "only a rejection"
    )
    crew.review(crew.rev, t1, a1, M.VERDICT_REJECT, reason_codes=["loose_box"])
    crew.review(crew.rev, t2, a2, M.VERDICT_ACCEPT)  # bob has no history: QA rate 0, accepted
    refused(
        crew,
        dispute(crew.bob, t2, a2, "d1"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
        "is accepted: there is no rejection to dispute",
    )
    refused(
        crew,
        dispute(crew.bob, t1, a1, "d2"),
        grpc.StatusCode.PERMISSION_DENIED,
        "annotation_id",
        "only the author",
    )
    refused(crew, dispute(crew.ann, t1, a1, "d3", comment=""), grpc.StatusCode.INVALID_ARGUMENT, "comment")
    refused(crew, dispute(crew.rev, t1, a1, "d4"), grpc.StatusCode.PERMISSION_DENIED, "", "OpenDispute needs")
    first = dispute(crew.ann, t1, a1, "d5")()
    refused(
        crew,
        dispute(crew.ann, t1, a1, "d6"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
        "this rejection was disputed already",
    )

    def resolve(
        who: Stubs, cid: str, decision: M.DisputeDecision.ValueType = M.DISPUTE_DECISION_UPHOLD
    ) -> Callable[[], api_pb2.Dispute]:
        req = api_pb2.ResolveDisputeRequest(
            command_id=cid, task_id=t1, dispute_id=first.dispute_id, decision=decision
        )
        return lambda: who.reviews.ResolveDispute(req, metadata=who.md)

    refused(crew, resolve(crew.qa, "x0"), grpc.StatusCode.PERMISSION_DENIED, "", "ResolveDispute needs")
    refused(
        crew,
        resolve(crew.exp, "x1", M.DISPUTE_DECISION_UNSPECIFIED),
        grpc.StatusCode.INVALID_ARGUMENT,
        "decision",
    )
    upheld = resolve(crew.exp, "x2")()
    assert upheld.status == api_pb2.DISPUTE_STATUS_UPHELD
    refused(
        crew,
        resolve(crew.exp, "x3", M.DISPUTE_DECISION_OVERTURN),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
        "the expert's decision is final",
    )
    refused(
        crew, dispute(crew.ann, t1, a1, "d7"), grpc.StatusCode.FAILED_PRECONDITION, "", "decision is final"
    )
    task = crew.ann.tasks.GetTask(api_pb2.GetTaskRequest(task_id=t1), metadata=crew.ann.md)
    assert task.annotations[0].status == api_pb2.ANNOTATION_STATUS_REJECTED
    assert task.annotations[0].dispute_status == api_pb2.DISPUTE_STATUS_UPHELD
    crew.settle()
    feed = crew.ann.reviews.ListFeedback(api_pb2.ListFeedbackRequest(), metadata=crew.ann.md).items
    assert (
        feed[0].kind == api_pb2.FEEDBACK_KIND_DISPUTE_RESOLVED
        and feed[0].decision == M.DISPUTE_DECISION_UPHOLD
    )


def test_the_author_abandons_rejected_work_and_frees_its_slot(crew: Crew) -> None:
    crew.imp("t1")
    t1, a1 = crew.work(crew.ann, "a1")

    def abandon(who: Stubs, cid: str) -> Callable[[], Any]:
        req = api_pb2.AbandonAnnotationRequest(command_id=cid, task_id=t1, annotation_id=a1, reason="unclear")
        return lambda: who.tasks.AbandonAnnotation(req, metadata=who.md)

    refused(crew, abandon(crew.ann, "x0"), grpc.StatusCode.FAILED_PRECONDITION, "", "only rejected")
    crew.review(crew.rev, t1, a1, M.VERDICT_REJECT, reason_codes=["loose_box"])
    refused(
        crew, abandon(crew.bob, "x1"), grpc.StatusCode.PERMISSION_DENIED, "annotation_id", "only the author"
    )
    refused(crew, abandon(crew.rev, "x2"), grpc.StatusCode.PERMISSION_DENIED, "", "AbandonAnnotation needs")
    dispute = crew.ann.reviews.OpenDispute(
        api_pb2.OpenDisputeRequest(command_id="d1", task_id=t1, annotation_id=a1, comment="it is tight"),
        metadata=crew.ann.md,
    )
    refused(crew, abandon(crew.ann, "x3"), grpc.StatusCode.FAILED_PRECONDITION, "", "dispute")
    crew.exp.reviews.ResolveDispute(
        api_pb2.ResolveDisputeRequest(
            command_id="r1", task_id=t1, dispute_id=dispute.dispute_id, decision=M.DISPUTE_DECISION_UPHOLD
        ),
        metadata=crew.exp.md,
    )
    task = abandon(crew.ann, "x4")()
    assert task.annotations[0].status == api_pb2.ANNOTATION_STATUS_ABANDONED
    assert abandon(crew.ann, "x4")() == task  # a retry returns the same answer and appends nothing
    assert [e.WhichOneof("payload") for e in crew.events(t1)].count("annotation_abandoned") == 1
    crew.settle()
    t, _ = crew.work(crew.bob, "b1")  # the slot is free again: someone else takes the task
    assert t == t1
    assert_rebuild_matches(crew)


def test_projects_without_an_expert_stage_take_no_disputes(crew: Crew) -> None:
    crew.settings(pipeline_settings(expert=False))
    crew.imp("t1")
    t, a = crew.work(crew.ann, "a")
    crew.review(crew.rev, t, a, M.VERDICT_REJECT, reason_codes=["wrong_class"])
    refused(
        crew,
        lambda: crew.ann.reviews.OpenDispute(
            api_pb2.OpenDisputeRequest(command_id="d", task_id=t, annotation_id=a, comment="no"),
            metadata=crew.ann.md,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
        "no expert resolution stage",
    )


def test_the_review_policy_keeps_working_as_the_one_stage_pipeline(env: Env) -> None:
    ann = env.person("ann", M.ROLE_ANNOTATOR)
    qa = env.person("qa", M.ROLE_QA)
    env.project("legacy", members=("ann", "qa"))
    env.admin.tasks.ImportTasks(
        api_pb2.ImportTasksRequest(command_id="i", project_id="legacy", tasks=[image_task("t1")]),
        metadata=env.admin.md,
    )
    env.server.app.runner.catch_up()
    n = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n", project_id="legacy"), metadata=ann.md)
    s = ann.tasks.Submit(
        api_pb2.SubmitRequest(command_id="s", task_id="t1", lease_id=n.lease.lease_id, annotation=box()),
        metadata=ann.md,
    )
    assert [e.type for e in env.server.app.log.read_stream("task:t1")][
        -1
    ] == "annotation_submitted"  # no routing
    out = qa.tasks.Review(  # as before pipelines: QA may review in a FULL project
        api_pb2.ReviewRequest(
            command_id="r", task_id="t1", annotation_id=s.annotation_id, version=1, verdict=M.VERDICT_ACCEPT
        ),
        metadata=qa.md,
    )
    assert (out.stage, out.task_status) == ("peer_review", api_pb2.TASK_STATUS_DONE)


# ------------------------------------------------------------------ visibility


def test_feedback_and_review_state_visibility(crew: Crew) -> None:
    other_mgr = crew.env.person("mgr2", M.ROLE_MANAGER)
    crew.env.project("p2", members=("mgr2",))
    crew.imp("t1", "t2")
    t1, a1 = crew.work(crew.ann, "a")
    t2, a2 = crew.work(crew.bob, "b")
    crew.review(crew.rev, t1, a1, M.VERDICT_REJECT, reason_codes=["loose_box"])
    crew.review(crew.rev, t2, a2, M.VERDICT_REJECT, reason_codes=["wrong_class"])

    def feed(who: Stubs, person: str = "", **kw: Any) -> list[api_pb2.FeedbackItem]:
        return list(
            who.reviews.ListFeedback(
                api_pb2.ListFeedbackRequest(person_id=person, **kw), metadata=who.md
            ).items
        )

    assert [i.task_id for i in feed(crew.ann)] == [t1]  # the caller's own
    assert [i.task_id for i in feed(crew.ann, "ann")] == [t1]
    for who in (crew.ann, crew.rev, crew.qa, crew.exp):
        refused(
            crew,
            partial(feed, who, "bob"),
            grpc.StatusCode.PERMISSION_DENIED,
            "",
            "ListFeedback of other people",
        )
    assert [i.task_id for i in feed(crew.mgr, "bob")] == [t2]  # managers: anyone in their projects
    assert [i.task_id for i in feed(crew.env.admin, "bob")] == [t2]
    assert feed(other_mgr, "bob") == []  # a manager of another project sees none of p1
    refused(
        crew,
        lambda: feed(other_mgr, "bob", project_id="p1"),
        grpc.StatusCode.PERMISSION_DENIED,
        "",
        "not a member",
    )
    # paging
    crew.ann.tasks.EditAnnotation(
        api_pb2.EditAnnotationRequest(
            command_id="fix", task_id=t1, annotation_id=a1, expected_version=1, annotation=box(3)
        ),
        metadata=crew.ann.md,
    )
    crew.settle()
    crew.review(crew.rev, t1, a1, M.VERDICT_REJECT, version=2, reason_codes=["wrong_class"])
    page = crew.ann.reviews.ListFeedback(api_pb2.ListFeedbackRequest(limit=1), metadata=crew.ann.md)
    rest = crew.ann.reviews.ListFeedback(
        api_pb2.ListFeedbackRequest(limit=10, page_token=page.next_page_token), metadata=crew.ann.md
    )
    assert len(page.items) == 1 and page.next_page_token and not rest.next_page_token
    assert [i.cursor for i in [*page.items, *rest.items]] == [i.cursor for i in feed(crew.ann)]
    refused(crew, lambda: feed(crew.ann, page_token="nope"), grpc.StatusCode.INVALID_ARGUMENT, "page_token")
    # review state: an annotator sees only their own work; others' tasks are refused
    mine = crew.ann.reviews.GetReviewState(api_pb2.GetReviewStateRequest(task_id=t1), metadata=crew.ann.md)
    assert [a.author_id for a in mine.annotations] == ["ann"]
    refused(
        crew,
        lambda: crew.ann.reviews.GetReviewState(
            api_pb2.GetReviewStateRequest(task_id=t2), metadata=crew.ann.md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # stage queues: the stage's role or a manager
    refused(
        crew,
        lambda: crew.rev.reviews.ListReviewQueue(
            api_pb2.ListReviewQueueRequest(project_id="p1", stage="qa_spot_check"), metadata=crew.rev.md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "",
        "qa_spot_check",
    )
    assert (
        crew.mgr.reviews.ListReviewQueue(
            api_pb2.ListReviewQueueRequest(project_id="p1", stage="peer_review"), metadata=crew.mgr.md
        ).depth
        == 0
    )
    refused(
        crew,
        lambda: crew.exp.reviews.ListReviewQueue(
            api_pb2.ListReviewQueueRequest(project_id="p1", stage="expert_resolution"), metadata=crew.exp.md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "stage",
        "ListDisputes",
    )


# ------------------------------------------------------------------ CLI


def test_cli_review_dispute_and_feedback(
    crew: Crew, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    env = crew.env
    admin_token = env.admin.token

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

    spec = tmp_path / "pipeline.json"
    spec.write_text(
        '{"pipeline": {"stages": [{"kind": "REVIEW_STAGE_KIND_PEER_REVIEW"},'
        ' {"kind": "REVIEW_STAGE_KIND_QA_SPOT_CHECK", "sampleRate": 0},'
        ' {"kind": "REVIEW_STAGE_KIND_EXPERT_RESOLUTION"}]},'
        ' "reasonCodes": [{"code": "loose_box", "description": "Box not tight"}]}'
    )
    out = run(admin_token, "project", "pipeline", "p1", str(spec))
    assert "peer_review → qa_spot_check → expert_resolution" in out and "loose_box" in out
    crew.imp("t1")
    t, a = crew.work(crew.ann, "a")
    out = run(crew.rev.token, "review", "queue", "p1")
    assert f"{t}\t{a}\t1\tann" in out
    err = fails(crew.rev.token, "review", "reject", t, a, "--version", "1", "--reason", "nope")
    assert "reason_codes[0]" in err and "unknown reason code" in err
    run(
        crew.rev.token,
        "review",
        "reject",
        t,
        a,
        "--version",
        "1",
        "--reason",
        "loose_box",
        "--comment",
        "tighter",
    )
    crew.settle()
    lines = run(crew.ann.token, "feedback").splitlines()
    first = json.loads(lines[0])
    assert (first["kind"], first["verdict"], first["reasons"], first["comment"]) == (
        "review",
        "reject",
        {"loose_box": "Box not tight"},
        "tighter",
    )
    opened = json.loads(run(crew.ann.token, "dispute", "open", t, a, "--comment", "it is tight"))
    crew.settle()
    assert opened["dispute_id"] in run(crew.exp.token, "dispute", "list", "p1")
    resolved = json.loads(run(crew.exp.token, "dispute", "resolve", t, opened["dispute_id"], "overturn"))
    assert resolved["status"] == "DISPUTE_STATUS_OVERTURNED"
    crew.settle()
    state = json.loads(run(crew.mgr.token, "review", "state", t))
    assert state["annotations"][0]["status"] == "ANNOTATION_STATUS_ACCEPTED"
    assert "overturned" in run(crew.exp.token, "dispute", "list", "p1", "--resolved")
    kinds = [
        json.loads(line)["kind"] for line in run(crew.mgr.token, "feedback", "--person", "ann").splitlines()
    ]
    assert kinds == ["accepted", "dispute_resolved", "review"]
