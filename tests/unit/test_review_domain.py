"""Review pipeline rules, pure: settings validation, sampling, stage routing and roles, reason
codes, corrections, disputes and their refusals, and replay of logs written before pipelines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import annotation_pb2, events_pb2, model_pb2
from coordinator.domain import aggregates
from coordinator.domain.commands import (
    AbandonAnnotation,
    CreateProject,
    EditAnnotation,
    ImportTask,
    LeaseTask,
    OpenDispute,
    ReopenTask,
    ResolveDispute,
    ReviewAnnotation,
    SubmitAnnotation,
    TaskCommand,
)
from coordinator.domain.project import ProjectState, decide_project, evolve_project
from coordinator.domain.review import (
    NO_HISTORY,
    AuthorRecord,
    pipeline_of_import,
    resolve_pipeline,
    sample_point,
    stage_rate,
)
from coordinator.domain.task import TaskState, decide_task, evolve_task
from coordinator.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    LabelweaveError,
    NotFound,
    PermissionDenied,
)

M = model_pb2
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
REVIEWER = frozenset({M.ROLE_REVIEWER})
QA = frozenset({M.ROLE_QA})
EXPERT = frozenset({M.ROLE_EXPERT})
REASONS = frozenset({"loose_box", "wrong_class", "missed_object"})


def stage(
    kind: int, rate: float | None = None, strata: Sequence[tuple[float, float]] = (), **kw: object
) -> M.ReviewStage:
    out = M.ReviewStage(kind=kind, **kw)  # type: ignore[arg-type]
    if rate is not None:
        out.sample_rate = rate
    for below, r in strata:
        out.strata.append(M.SamplingStratum(below_acceptance=below, sample_rate=r))
    return out


def three_layers(
    qa_rate: float | None = 0.5, peer_rate: float | None = None, **qa: object
) -> M.ProjectSettings:
    return M.ProjectSettings(
        pipeline=M.ReviewPipeline(
            stages=[
                stage(M.REVIEW_STAGE_KIND_PEER_REVIEW, peer_rate),
                stage(M.REVIEW_STAGE_KIND_QA_SPOT_CHECK, qa_rate, **qa),  # type: ignore[arg-type]
                stage(M.REVIEW_STAGE_KIND_EXPERT_RESOLUTION),
            ],
            sampling_seed="seed-1",
        )
    )


def content(label: str = "car") -> annotation_pb2.Annotation:
    return annotation_pb2.Annotation(
        shapes=[annotation_pb2.Shape(label=label, box=annotation_pb2.BoundingBox(width=3, height=4))]
    )


def run(state: TaskState | None, cmd: TaskCommand) -> tuple[list[Message], TaskState]:
    events = decide_task(state, cmd)
    new = state
    for e in events:
        new = evolve_task(new, e)
    assert new is not None
    return events, new


def kinds(events: Sequence[Message]) -> list[str]:
    return [type(e).__name__ for e in events]


def refused(state: TaskState | None, cmd: TaskCommand, kind: type[LabelweaveError], field: str = "") -> str:
    with pytest.raises(kind) as info:
        decide_task(state, cmd)
    assert type(info.value) is kind
    assert info.value.field == field
    return info.value.message


def task(settings: M.ProjectSettings | None = None, *, task_id: str = "t1") -> TaskState:
    settings = settings if settings is not None else three_layers()
    pipeline = resolve_pipeline("p1", settings)
    spec = M.TaskSpec(task_id=task_id, data_uri="s3://b/i.jpg", overlap=1)
    return run(None, ImportTask("p1", "b1", spec, M.REVIEW_POLICY_FULL, 600, pipeline))[1]


def submit(
    state: TaskState, person: str = "ann", ann_id: str = "A1", author: AuthorRecord = NO_HISTORY
) -> tuple[list[Message], TaskState]:
    state = run(state, LeaseTask(state.task_id, f"L-{person}", person, frozenset(), T0))[1]
    return run(
        state,
        SubmitAnnotation(state.task_id, f"L-{person}", person, ann_id, content(), 1, 1, 100, T0, author),
    )


def review(
    ann_id: str,
    verdict: int,
    *,
    reviewer: str = "rev",
    roles: frozenset[int] | None = REVIEWER,
    version: int = 1,
    reasons: tuple[str, ...] = (),
    stage_name: str = "",
    correction: annotation_pb2.Annotation | None = None,
    author: AuthorRecord = NO_HISTORY,
    task_id: str = "t1",
) -> ReviewAnnotation:
    return ReviewAnnotation(
        task_id,
        ann_id,
        version,
        reviewer,
        verdict,  # type: ignore[arg-type]
        reasons,
        "see comment",
        correction,
        REASONS,
        1,
        1,
        stage=stage_name,
        reviewer_roles=roles,
        author=author,
    )


def qa_point(ann_id: str = "A1", task_id: str = "t1") -> float:
    return sample_point("seed-1", task_id, ann_id, "qa_spot_check")


def ann_for_qa(sampled: bool) -> str:
    """An annotation id whose QA sample point falls below (or above) 0.5."""
    for i in range(100):
        if (qa_point(f"A{i}") < 0.5) == sampled:
            return f"A{i}"
    raise AssertionError("no such id")


def at_qa(ann_id: str) -> TaskState:
    """Submitted, peer-accepted and sampled by QA."""
    state = submit(task(), ann_id=ann_id)[1]
    return run(state, review(ann_id, M.VERDICT_ACCEPT))[1]


def rejected_at_qa() -> tuple[str, TaskState]:
    ann_id = ann_for_qa(True)
    state = run(
        at_qa(ann_id), review(ann_id, M.VERDICT_REJECT, reviewer="qa1", roles=QA, reasons=("loose_box",))
    )[1]
    return ann_id, state


# ------------------------------------------------------------------ project settings


def project(settings: M.ProjectSettings) -> list[Message]:
    return decide_project(None, CreateProject("p1", "P", "", settings))


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (
            M.ProjectSettings(
                review_policy=M.REVIEW_POLICY_NONE, pipeline=M.ReviewPipeline(stages=[stage(1)])
            ),
            "settings.review_policy",
        ),
        (M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[stage(0)])), "settings.pipeline.stages[0].kind"),
        (
            M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[stage(1), stage(1)])),
            "settings.pipeline.stages[1].name",
        ),
        (
            M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[stage(1, name="Peer Review")])),
            "settings.pipeline.stages[0].name",
        ),
        (
            M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[stage(1), stage(3), stage(2)])),
            "settings.pipeline.stages[1].kind",
        ),
        (M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[stage(3)])), "settings.pipeline.stages[0].kind"),
        (
            M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[stage(1), stage(3, 0.5)])),
            "settings.pipeline.stages[1].sample_rate",
        ),
        (
            M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[stage(1, 1.5)])),
            "settings.pipeline.stages[0].sample_rate",
        ),
        (
            M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[stage(2, math.nan)])),
            "settings.pipeline.stages[0].sample_rate",
        ),
        (
            M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[stage(2, 0.1, [(0.0, 1.0)])])),
            "settings.pipeline.stages[0].strata[0].below_acceptance",
        ),
        (
            M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[stage(2, 0.1, [(0.8, -1.0)])])),
            "settings.pipeline.stages[0].strata[0].sample_rate",
        ),
        (
            M.ProjectSettings(
                pipeline=M.ReviewPipeline(
                    stages=[stage(1, reviewer_roles=[M.ROLE_REVIEWER, M.ROLE_ANNOTATOR])]
                )
            ),
            "settings.pipeline.stages[0].reviewer_roles[1]",
        ),
        (
            M.ProjectSettings(
                pipeline=M.ReviewPipeline(stages=[stage(1), stage(3, reviewer_roles=[M.ROLE_QA])])
            ),
            "settings.pipeline.stages[1].reviewer_roles[0]",
        ),
        (
            M.ProjectSettings(reason_codes=[M.ReasonCode(code="ok"), M.ReasonCode(code="Bad Code")]),
            "settings.reason_codes[1].code",
        ),
        (
            M.ProjectSettings(reason_codes=[M.ReasonCode(code="ok"), M.ReasonCode(code="ok")]),
            "settings.reason_codes[1].code",
        ),
    ],
)
def test_bad_pipelines_and_reason_codes_are_refused_naming_the_field(
    settings: M.ProjectSettings, field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        project(settings)
    assert info.value.field == field


def test_settings_store_resolved_stage_names_and_roles() -> None:
    settings = three_layers()
    settings.reason_codes.append(M.ReasonCode(code="loose_box", description="Box not tight"))
    (created,) = project(settings)
    assert isinstance(created, events_pb2.ProjectCreated)
    stages = created.settings.pipeline.stages
    assert [s.name for s in stages] == ["peer_review", "qa_spot_check", "expert_resolution"]
    assert [list(s.reviewer_roles) for s in stages] == [[M.ROLE_REVIEWER], [M.ROLE_QA], [M.ROLE_EXPERT]]
    assert created.settings.review_policy == M.REVIEW_POLICY_FULL
    state = evolve_project(None, created)
    assert isinstance(state, ProjectState)
    # the settings' reason codes win over the label schema's
    state = evolve_project(
        state,
        events_pb2.LabelSchemaPublished(
            project_id="p1", schema=M.LabelSchema(version=1, reject_reasons=["other"])
        ),
    )
    assert state.reject_reasons == frozenset({"loose_box"})
    assert state.reason_description("loose_box") == "Box not tight"


def test_review_policy_is_the_one_stage_pipeline() -> None:
    full = resolve_pipeline("p1", M.ProjectSettings(review_policy=M.REVIEW_POLICY_FULL))
    assert [(s.name, s.kind) for s in full.stages] == [("peer_review", M.REVIEW_STAGE_KIND_PEER_REVIEW)]
    assert set(full.stages[0].reviewer_roles) == {M.ROLE_REVIEWER, M.ROLE_QA, M.ROLE_EXPERT}
    assert not full.stages[0].HasField("sample_rate")  # full: no sampling decision
    assert full.sampling_seed == "p1" and full.accuracy_window == 50
    assert not resolve_pipeline("p1", M.ProjectSettings(review_policy=M.REVIEW_POLICY_NONE)).stages
    # a TaskImported written before pipelines existed derives the same pipeline
    legacy = events_pb2.TaskImported(project_id="p1", review_policy=M.REVIEW_POLICY_FULL)
    assert pipeline_of_import(legacy) == full


# ------------------------------------------------------------------ sampling


def test_sample_points_are_deterministic_uniform_and_per_stage() -> None:
    a = sample_point("s", "t1", "A1", "qa")
    assert a == sample_point("s", "t1", "A1", "qa")
    assert a != sample_point("s", "t1", "A1", "peer") and a != sample_point("other", "t1", "A1", "qa")
    points = [sample_point("s", "t", f"A{i}", "qa") for i in range(4000)]
    assert all(0.0 <= p < 1.0 for p in points)
    assert 0.45 < sum(p < 0.5 for p in points) / len(points) < 0.55
    assert 0.08 < sum(p < 0.1 for p in points) / len(points) < 0.12


def test_stratified_rates_rise_for_authors_with_lower_recent_acceptance() -> None:
    qa = stage(2, 0.1, [(0.9, 0.5), (0.7, 1.0)], min_verdicts=5)
    assert stage_rate(qa, NO_HISTORY) == 0.1  # no history: the base rate
    assert stage_rate(qa, AuthorRecord(0.5, 4)) == 0.1  # too few verdicts to judge
    assert stage_rate(qa, AuthorRecord(0.95, 20)) == 0.1
    assert stage_rate(qa, AuthorRecord(0.85, 20)) == 0.5
    assert stage_rate(qa, AuthorRecord(0.6, 20)) == 1.0  # the highest matching stratum wins
    assert stage_rate(stage(1), AuthorRecord(0.0, 50)) == 1.0  # full stays full


# ------------------------------------------------------------------ routing through stages


def test_full_peer_stage_records_no_decision_and_qa_samples_on_accept() -> None:
    ann_id = ann_for_qa(True)
    events, state = submit(task(), ann_id=ann_id)
    assert kinds(events) == ["AnnotationSubmitted"]  # the full peer stage decides nothing
    assert state.annotations[ann_id].stage == 0
    events, state = run(state, review(ann_id, M.VERDICT_ACCEPT, stage_name="peer_review"))
    assert kinds(events) == ["ReviewRecorded", "ReviewRouted"]
    recorded, routed = events
    assert isinstance(recorded, events_pb2.ReviewRecorded) and isinstance(routed, events_pb2.ReviewRouted)
    assert (recorded.stage, recorded.stage_index) == ("peer_review", 0)
    assert (routed.stage, routed.stage_index, routed.sampled, routed.rate) == ("qa_spot_check", 1, True, 0.5)
    assert routed.sample_point == qa_point(ann_id) and routed.author_id == "ann"
    assert state.annotations[ann_id].stage == 1 and state.annotations[ann_id].status == "submitted"
    events, state = run(state, review(ann_id, M.VERDICT_ACCEPT, reviewer="qa1", roles=QA))
    assert kinds(events) == ["ReviewRecorded", "AnnotationAccepted", "TaskCompleted"]
    accepted = events[1]
    assert isinstance(accepted, events_pb2.AnnotationAccepted) and accepted.accepted_by == "qa1"
    assert state.annotations[ann_id].status == "accepted" and state.completed


def test_work_qa_does_not_sample_is_accepted_on_the_peer_accept() -> None:
    ann_id = ann_for_qa(False)
    _, state = submit(task(), ann_id=ann_id)
    events, state = run(state, review(ann_id, M.VERDICT_ACCEPT))
    assert kinds(events) == ["ReviewRecorded", "ReviewRouted", "AnnotationAccepted", "TaskCompleted"]
    routed, accepted = events[1], events[2]
    assert isinstance(routed, events_pb2.ReviewRouted) and not routed.sampled and routed.rate == 0.5
    assert isinstance(accepted, events_pb2.AnnotationAccepted) and accepted.accepted_by == "rev"


def test_sampling_off_skips_the_stage_and_sampled_peer_review_can_accept_on_submit() -> None:
    events, state = submit(task(three_layers(qa_rate=0.0, peer_rate=0.0)))
    assert kinds(events) == [
        "AnnotationSubmitted",
        "ReviewRouted",
        "ReviewRouted",
        "AnnotationAccepted",
        "TaskCompleted",
    ]
    assert [(e.stage, e.sampled, e.rate) for e in events[1:3]] == [  # type: ignore[attr-defined]
        ("peer_review", False, 0.0),
        ("qa_spot_check", False, 0.0),
    ]
    assert events[3].accepted_by == ""  # type: ignore[attr-defined]
    assert state.annotations["A1"].status == "accepted"


def test_stratified_qa_records_the_rate_and_the_acceptance_it_used() -> None:
    settings = three_layers(qa_rate=0.0, strata=[(0.8, 1.0)], min_verdicts=3)
    weak, strong = AuthorRecord(0.5, 10), AuthorRecord(0.95, 20)
    for author, sampled in ((weak, True), (strong, False), (AuthorRecord(0.1, 2), False)):
        _, state = submit(task(settings))
        events, state = run(state, review("A1", M.VERDICT_ACCEPT, author=author))
        routed = events[1]
        assert isinstance(routed, events_pb2.ReviewRouted)
        assert routed.sampled is sampled
        assert routed.rate == (1.0 if sampled else 0.0)
        assert (routed.author_acceptance, routed.author_verdicts) == (author.acceptance, author.verdicts)
        assert (state.annotations["A1"].status == "accepted") is not sampled


def test_replaying_a_routing_event_never_decides_again() -> None:
    """Evolve trusts the recorded decision, whatever the settings or the hash would say now."""
    _, state = submit(task())
    state = evolve_task(
        state,
        events_pb2.ReviewRecorded(
            task_id="t1",
            annotation_id="A1",
            version=1,
            reviewer_id="rev",
            verdict=M.VERDICT_ACCEPT,
            author_id="ann",
            stage="peer_review",
        ),
    )
    state = evolve_task(
        state,
        events_pb2.ReviewRouted(
            task_id="t1",
            annotation_id="A1",
            version=1,
            stage="qa_spot_check",
            stage_index=1,
            sampled=True,
            rate=0.0001,
            sample_point=0.9,
        ),
    )
    assert state.annotations["A1"].stage == 1


# ------------------------------------------------------------------ who reviews where


def test_only_the_stage_role_may_review_and_nothing_is_decided_otherwise() -> None:
    ann_id = ann_for_qa(True)
    _, state = submit(task(), ann_id=ann_id)
    msg = refused(state, review(ann_id, M.VERDICT_ACCEPT, reviewer="q", roles=QA), PermissionDenied)
    assert "peer_review" in msg and "reviewer" in msg
    state = run(state, review(ann_id, M.VERDICT_ACCEPT))[1]
    msg = refused(state, review(ann_id, M.VERDICT_ACCEPT, reviewer="r2", roles=REVIEWER), PermissionDenied)
    assert "qa_spot_check" in msg and "qa" in msg
    # the peer reviewer holds the QA role too, but one person does not review two layers
    msg = refused(
        state,
        review(ann_id, M.VERDICT_ACCEPT, roles=frozenset({M.ROLE_REVIEWER, M.ROLE_QA})),
        FailedPrecondition,
    )
    assert "another person" in msg
    # naming the wrong stage is refused (the work moved on)
    refused(
        state,
        review(ann_id, M.VERDICT_ACCEPT, reviewer="q", roles=QA, stage_name="peer_review"),
        FailedPrecondition,
        "stage",
    )
    refused(state, review(ann_id, M.VERDICT_ACCEPT, reviewer="ann", roles=QA), PermissionDenied)


def test_unknown_reason_code_names_its_index_and_a_reject_needs_one() -> None:
    _, state = submit(task())
    refused(
        state,
        review("A1", M.VERDICT_REJECT, reasons=("loose_box", "bad_vibes")),
        InvalidArgument,
        "reason_codes[1]",
    )
    refused(state, review("A1", M.VERDICT_REJECT), InvalidArgument, "reason_codes")
    refused(state, review("A1", M.VERDICT_ACCEPT, version=2), Conflict, "version")


def test_reject_at_qa_returns_work_to_its_author_and_rework_starts_the_pipeline_again() -> None:
    ann_id, state = rejected_at_qa()
    ann = state.annotations[ann_id]
    assert ann.status == "rejected" and ann.reason_codes == ("loose_box",) and ann.stage == -1
    assert ann.rejection is not None and (ann.rejection.stage_index, ann.rejection.reviewer_id) == (1, "qa1")
    events, state = run(state, EditAnnotation("t1", ann_id, 1, "ann", content("pedestrian"), 1, 1))
    assert kinds(events) == ["AnnotationEdited"]
    ann = state.annotations[ann_id]
    assert (ann.version, ann.status, ann.stage, ann.reviewers, ann.rejection) == (2, "submitted", 0, (), None)
    # the same peer reviewer may review the new version
    assert run(state, review(ann_id, M.VERDICT_ACCEPT, version=2))[1].annotations[ann_id].stage == 1


def test_a_correction_is_the_reviewers_version_and_goes_on_to_the_next_stage() -> None:
    ann_id = ann_for_qa(True)
    _, state = submit(task(), ann_id=ann_id)
    refused(state, review(ann_id, M.VERDICT_CORRECT), InvalidArgument, "correction")
    events, state = run(state, review(ann_id, M.VERDICT_CORRECT, correction=content("pedestrian")))
    assert kinds(events) == ["AnnotationEdited", "ReviewRecorded", "ReviewRouted"]
    edited = events[0]
    assert isinstance(edited, events_pb2.AnnotationEdited)
    assert (edited.person_id, edited.version) == ("rev", 2)
    ann = state.annotations[ann_id]
    assert (ann.author_id, ann.version, ann.stage) == ("ann", 2, 1)


# ------------------------------------------------------------------ disputes


def dispute(
    ann_id: str, person: str = "ann", dispute_id: str = "D1", comment: str = "tight enough"
) -> OpenDispute:
    return OpenDispute("t1", ann_id, dispute_id, person, comment)


def resolve(
    decision: int, *, expert: str = "exp", roles: frozenset[int] | None = EXPERT, dispute_id: str = "D1"
) -> ResolveDispute:
    return ResolveDispute("t1", dispute_id, expert, decision, "checked", roles)  # type: ignore[arg-type]


def test_the_author_disputes_a_rejection_once() -> None:
    ann_id, state = rejected_at_qa()
    refused(state, dispute(ann_id, person="bob"), PermissionDenied, "annotation_id")
    refused(state, dispute(ann_id, comment="  "), InvalidArgument, "comment")
    events, state = run(state, dispute(ann_id))
    (opened,) = events
    assert isinstance(opened, events_pb2.DisputeOpened)
    assert (opened.stage, opened.reviewer_id, list(opened.reason_codes), opened.version) == (
        "qa_spot_check",
        "qa1",
        ["loose_box"],
        1,
    )
    assert opened.rejection_comment == "see comment" and opened.comment == "tight enough"
    msg = refused(state, dispute(ann_id, dispute_id="D2"), FailedPrecondition)
    assert "disputed already" in msg and "wait" in msg
    # while the expert decides, the author neither reworks nor abandons it
    refused(state, EditAnnotation("t1", ann_id, 1, "ann", content(), 1, 1), FailedPrecondition)
    refused(state, AbandonAnnotation("t1", ann_id, "ann", ""), FailedPrecondition)
    state = run(state, resolve(M.DISPUTE_DECISION_UPHOLD))[1]
    msg = refused(state, dispute(ann_id, dispute_id="D2"), FailedPrecondition)
    assert "final" in msg
    assert state.annotations[ann_id].status == "rejected"
    # after rework, a new rejection is a new rejection: it may be disputed
    state = run(state, EditAnnotation("t1", ann_id, 1, "ann", content(), 1, 1))[1]
    state = run(state, review(ann_id, M.VERDICT_REJECT, version=2, reasons=("wrong_class",)))[1]
    assert kinds(run(state, dispute(ann_id, dispute_id="D3"))[0]) == ["DisputeOpened"]


def test_nothing_but_a_rejection_can_be_disputed() -> None:
    _, state = submit(task())
    assert "only a rejection" in refused(state, dispute("A1"), FailedPrecondition)
    state = run(state, review("A1", M.VERDICT_ACCEPT))[1]
    if state.annotations["A1"].status != "accepted":  # sampled by QA: accept there too
        state = run(state, review("A1", M.VERDICT_ACCEPT, reviewer="qa1", roles=QA))[1]
    assert "accepted" in refused(state, dispute("A1"), FailedPrecondition)
    refused(state, dispute("nope"), NotFound, "annotation_id")


def test_no_dispute_without_an_expert_stage() -> None:
    _, state = submit(task(M.ProjectSettings(review_policy=M.REVIEW_POLICY_FULL)))
    state = run(state, review("A1", M.VERDICT_REJECT, reasons=("loose_box",)))[1]
    assert "no expert resolution stage" in refused(state, dispute("A1"), FailedPrecondition)


def test_only_an_independent_expert_resolves_and_the_decision_is_final() -> None:
    ann_id, state = rejected_at_qa()
    state = run(state, dispute(ann_id))[1]
    refused(state, resolve(M.DISPUTE_DECISION_UPHOLD, roles=QA), PermissionDenied)
    refused(state, resolve(M.DISPUTE_DECISION_UPHOLD, expert="qa1"), PermissionDenied)  # the rejecter
    refused(state, resolve(M.DISPUTE_DECISION_UPHOLD, expert="ann"), PermissionDenied)  # the author
    refused(state, resolve(M.DISPUTE_DECISION_UNSPECIFIED), InvalidArgument, "decision")
    refused(state, resolve(M.DISPUTE_DECISION_UPHOLD, dispute_id="D9"), NotFound, "dispute_id")
    events, state = run(state, resolve(M.DISPUTE_DECISION_OVERTURN))
    assert "final" in refused(state, resolve(M.DISPUTE_DECISION_UPHOLD), FailedPrecondition)
    assert state.disputes["D1"].status == "overturned" and state.disputes["D1"].expert_id == "exp"
    # overturned at QA, the last review stage: accepted, by the expert
    assert kinds(events) == ["DisputeResolved", "AnnotationAccepted", "TaskCompleted"]
    assert events[1].accepted_by == "exp"  # type: ignore[attr-defined]
    assert state.annotations[ann_id].status == "accepted" and state.completed


def test_overturn_at_the_peer_stage_continues_the_pipeline() -> None:
    ann_id = ann_for_qa(True)
    _, state = submit(task(), ann_id=ann_id)
    state = run(state, review(ann_id, M.VERDICT_REJECT, reasons=("wrong_class",)))[1]
    state = run(state, dispute(ann_id))[1]
    events, state = run(state, resolve(M.DISPUTE_DECISION_OVERTURN))
    assert kinds(events) == ["DisputeResolved", "ReviewRouted"]
    ann = state.annotations[ann_id]
    assert (ann.status, ann.stage, ann.reason_codes, ann.rejection) == ("submitted", 1, (), None)
    # neither the rejecting reviewer nor the expert may then do QA on it
    for person in ("rev", "exp"):
        refused(state, review(ann_id, M.VERDICT_ACCEPT, reviewer=person, roles=QA), FailedPrecondition)
    events, state = run(state, review(ann_id, M.VERDICT_ACCEPT, reviewer="qa1", roles=QA))
    assert events[-2].accepted_by == "qa1"  # type: ignore[attr-defined]


def test_reopening_withdraws_an_open_dispute() -> None:
    ann_id, state = rejected_at_qa()
    state = run(state, dispute(ann_id))[1]
    state = run(state, ReopenTask("t1", "new guideline"))[1]
    assert state.disputes["D1"].status == "withdrawn"
    assert "withdrawn" in refused(state, resolve(M.DISPUTE_DECISION_OVERTURN), FailedPrecondition)


# ------------------------------------------------------------------ old logs


def test_a_log_written_before_pipelines_replays_and_its_work_can_still_be_reviewed() -> None:
    old = [
        events_pb2.TaskImported(
            project_id="p1",
            batch_id="b",
            task=M.TaskSpec(task_id="t1", overlap=2),
            review_policy=M.REVIEW_POLICY_FULL,
            lease_seconds=600,
        ),
        events_pb2.TaskLeased(task_id="t1", lease_id="L1", person_id="ann", project_id="p1"),
        events_pb2.AnnotationSubmitted(
            task_id="t1", annotation_id="A1", version=1, lease_id="L1", person_id="ann"
        ),
        events_pb2.ReviewRecorded(
            task_id="t1",
            annotation_id="A1",
            version=1,
            reviewer_id="q",
            verdict=M.VERDICT_ACCEPT,
            author_id="ann",
        ),
        events_pb2.AnnotationAccepted(
            task_id="t1", annotation_id="A1", version=1, author_id="ann", accepted_by="q"
        ),
        events_pb2.TaskLeased(task_id="t1", lease_id="L2", person_id="bob", project_id="p1"),
        events_pb2.AnnotationSubmitted(
            task_id="t1", annotation_id="A2", version=1, lease_id="L2", person_id="bob"
        ),
    ]
    state = aggregates.fold(old)
    assert isinstance(state, TaskState)
    assert state.annotations["A1"].status == "accepted"
    assert state.annotations["A2"].stage == 0 and state.stage_name(0) == "peer_review"
    # the one-stage pipeline keeps its old reviewers: QA and experts may still review there
    events, state = run(state, review("A2", M.VERDICT_ACCEPT, reviewer="q2", roles=QA))
    assert kinds(events) == ["ReviewRecorded", "AnnotationAccepted", "TaskCompleted"]


def test_review_policy_none_accepts_on_submit_as_before() -> None:
    events, state = submit(task(M.ProjectSettings(review_policy=M.REVIEW_POLICY_NONE)))
    assert kinds(events) == ["AnnotationSubmitted", "AnnotationAccepted", "TaskCompleted"]
    assert events[1].accepted_by == ""  # type: ignore[attr-defined]
    assert "not awaiting review" in refused(state, review("A1", M.VERDICT_ACCEPT), FailedPrecondition)
