"""Consensus of overlapping annotations (coordinator/domain/consensus.py): pure fusion per kind,
deterministic ties, quorum, the escalation threshold and the task aggregate's decision."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from google.protobuf.message import Message

from consumers.quality import iou_boxes
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import consensus_pb2 as CP
from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.domain.commands import (
    CreateProject,
    ImportTask,
    LeaseTask,
    ReopenTask,
    SubmitAnnotation,
)
from coordinator.domain.consensus import (
    Consensus,
    Contribution,
    aggregate,
    check_consensus,
    resolve_consensus,
)
from coordinator.domain.project import decide_project
from coordinator.domain.review import resolve_pipeline
from coordinator.domain.task import TaskState
from coordinator.errors import InvalidArgument
from tests.unit.test_review_domain import run

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
POLICY = Consensus()


def box(
    x: float, y: float = 10, w: float = 40, h: float = 30, label: str = "car", score: float = 0
) -> A.Shape:
    return A.Shape(label=label, score=score, box=A.BoundingBox(x=x, y=y, width=w, height=h))


def cls(label: str, **attrs: object) -> A.Shape:
    shape = A.Shape(label=label, classification=A.Classification())
    for k, v in attrs.items():
        if isinstance(v, bool):
            shape.attributes[k].bool_value = v
        else:
            shape.attributes[k].string_value = str(v)
    return shape


def contribs(*annotations: Sequence[A.Shape]) -> list[Contribution]:
    return [Contribution(f"a{i}", f"p{i}", A.Annotation(shapes=list(s))) for i, s in enumerate(annotations)]


# ------------------------------------------------------------------ classification


def test_majority_vote_with_attribute_votes() -> None:
    fused, objects, agreement, unfused = aggregate(
        contribs([cls("cat", colour="red")], [cls("cat", colour="red")], [cls("dog", colour="blue")]),
        POLICY,
    )
    assert [(s.label, s.WhichOneof("geometry")) for s in fused.shapes] == [("cat", "classification")]
    assert fused.shapes[0].attributes["colour"].string_value == "red"
    label, colour = objects
    assert (label.field, label.value, label.method) == ("label", "cat", "majority_vote")
    assert label.agreement == pytest.approx(2 / 3)
    assert list(label.annotation_ids) == ["a0", "a1", "a2"]
    assert (colour.field, colour.value, colour.agreement) == ("attributes.colour", '"red"', 1.0)
    assert agreement == pytest.approx((2 / 3 + 1) / 2)
    assert unfused == []


def test_ties_go_to_the_smallest_label_whatever_the_order() -> None:
    for order in (("dog", "cat"), ("cat", "dog")):
        fused, objects, agreement, _ = aggregate(contribs(*[[cls(x)] for x in order]), POLICY)
        assert fused.shapes[0].label == "cat"
        assert objects[0].agreement == 0.5
        assert agreement == 0.5


def test_abstentions_do_not_vote_and_nothing_labelled_agrees_fully() -> None:
    _fused, objects, _agreement, _ = aggregate(contribs([cls("cat")], [], [cls("cat")]), POLICY)
    assert objects[0].agreement == 1.0 and list(objects[0].annotation_ids) == ["a0", "a2"]
    assert aggregate(contribs([], [], []), POLICY)[2] == 1.0


# ------------------------------------------------------------------ boxes


def test_boxes_cluster_by_iou_fuse_by_mean_and_drop_objects_below_quorum() -> None:
    a = [box(100), box(300, label="pedestrian")]
    b = [box(102)]
    c = [box(104), box(500)]  # the second car is nobody else's
    fused, objects, agreement, _ = aggregate(contribs(a, b, c), POLICY)
    cars = [o for o in objects if o.label == "car"]
    assert [len(o.annotation_ids) for o in cars] == [3, 1]
    main = cars[0]
    assert main.fused and main.method == "mean"
    ious = iou_boxes(
        [[100, 10, 40, 30], [102, 10, 40, 30], [104, 10, 40, 30]],
        [[100, 10, 40, 30], [102, 10, 40, 30], [104, 10, 40, 30]],
    )
    tight = (ious[0, 1] + ious[0, 2] + ious[1, 2]) / 3
    assert main.agreement == pytest.approx(tight, abs=1e-12)
    assert not cars[1].fused and cars[1].note == "below quorum 2"
    ped = next(o for o in objects if o.label == "pedestrian")
    assert not ped.fused and ped.agreement == pytest.approx(1 / 3)
    assert [(s.label, round(s.box.x, 9)) for s in fused.shapes] == [("car", 102.0)]
    assert agreement == pytest.approx((tight + 1 / 3 + 1 / 3) / 3)


def test_box_fusion_is_weighted_by_score_when_scores_are_given() -> None:
    fused, objects, _, _ = aggregate(contribs([box(100, score=3)], [box(104, score=1)]), POLICY)
    assert objects[0].method == "weighted_mean"
    assert fused.shapes[0].box.x == pytest.approx(101.0)


def test_complete_linkage_never_chains_shapes_below_the_threshold() -> None:
    # a-b and b-c overlap enough, a-c do not: b joins its closer neighbour only
    _fused, objects, _, _ = aggregate(
        contribs([box(0, w=100)], [box(30, w=100)], [box(65, w=100)]), Consensus(iou_threshold=0.5)
    )
    sizes = sorted(len(o.annotation_ids) for o in objects)
    assert sizes == [1, 2]


def test_a_higher_threshold_splits_objects_and_a_quorum_of_one_keeps_everything() -> None:
    shapes = contribs([box(100)], [box(110)])
    assert len(aggregate(shapes, Consensus(iou_threshold=0.5))[1]) == 1
    fused, objects, _, _ = aggregate(shapes, Consensus(iou_threshold=0.9, quorum=1))
    assert len(objects) == 2 and all(o.fused for o in objects) and len(fused.shapes) == 2


# ------------------------------------------------------------------ polygons, keypoints, others


def square(x: float, side: float = 10, label: str = "car") -> A.Shape:
    pts = [(x, 0), (x + side, 0), (x + side, side), (x, side)]
    return A.Shape(
        label=label, polygon=A.Polygon(exterior=A.Ring(points=[A.Point2(x=p, y=q) for p, q in pts]))
    )


def test_polygons_fuse_to_the_medoid() -> None:
    fused, objects, _, _ = aggregate(contribs([square(0)], [square(1)], [square(3)]), POLICY)
    assert objects[0].method == "medoid" and len(objects[0].annotation_ids) == 3
    assert fused.shapes[0].polygon.exterior.points[0].x == 1  # the middle one is closest to both


def kp(*pts: tuple[str, float, float, int]) -> A.Shape:
    return A.Shape(
        label="person",
        keypoints=A.Keypoints(points=[A.Keypoint(name=n, x=x, y=y, visibility=v) for n, x, y, v in pts]),  # type: ignore[arg-type]
    )


def test_keypoints_average_weighted_by_visibility_with_oks_agreement() -> None:
    a = kp(("nose", 10, 10, 2), ("left_eye", 40, 40, 2), ("right_eye", 10, 40, 2))
    b = kp(("nose", 13, 10, 1), ("left_eye", 40, 41, 2), ("right_eye", 0, 0, 0))
    fused, objects, _, _ = aggregate(contribs([a], [b]), POLICY)
    (obj,) = objects
    assert obj.method == "weighted_mean" and 0.5 <= obj.agreement < 1
    points = {p.name: p for p in fused.shapes[0].keypoints.points}
    assert points["nose"].x == pytest.approx((2 * 10 + 1 * 13) / 3)
    assert points["nose"].visibility == A.VISIBILITY_VISIBLE  # tie between visible and occluded
    assert points["left_eye"].y == pytest.approx(40.5)
    assert (points["right_eye"].x, points["right_eye"].y) == (10, 40)  # b did not label it


def test_kinds_without_fusion_are_recorded_and_masks_use_the_medoid() -> None:
    line = A.Shape(label="lane", polyline=A.Polyline(points=[A.Point2(x=0, y=0), A.Point2(x=5, y=5)]))
    mask = A.Shape(
        label="car", instance_mask=A.InstanceMask(mask=A.RleMask(height=2, width=2, counts=[0, 4]))
    )
    fused, objects, _, unfused = aggregate(contribs([line, mask], [line, mask]), POLICY)
    assert unfused == ["polyline"]
    assert [(o.kind, o.method, o.agreement) for o in objects] == [("instance_mask", "medoid", 1.0)]
    assert [s.WhichOneof("geometry") for s in fused.shapes] == ["instance_mask"]


# ------------------------------------------------------------------ policy


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (CP.ConsensusPolicy(iou_threshold=1.5), "settings.consensus.iou_threshold"),
        (CP.ConsensusPolicy(oks_threshold=-0.1), "settings.consensus.oks_threshold"),
        (CP.ConsensusPolicy(min_agreement=math.nan), "settings.consensus.min_agreement"),
        (CP.ConsensusPolicy(quorum=101), "settings.consensus.quorum"),
        (CP.ConsensusPolicy(method=7), "settings.consensus.method"),  # type: ignore[arg-type]
    ],
)
def test_bad_policies_are_refused_naming_the_field(policy: CP.ConsensusPolicy, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_consensus(policy)
    assert info.value.field == field
    with pytest.raises(InvalidArgument) as info:
        decide_project(None, CreateProject("p1", "P", "", M.ProjectSettings(consensus=policy)))
    assert info.value.field == field


def test_defaults_resolve_and_zero_min_agreement_never_escalates() -> None:
    c = resolve_consensus(CP.ConsensusPolicy())
    assert (c.iou_threshold, c.min_agreement, c.oks_threshold, c.quorum_for(3), c.quorum_for(4)) == (
        0.5,
        0.6,
        0.5,
        2,
        3,
    )
    assert resolve_consensus(CP.ConsensusPolicy(min_agreement=0)).min_agreement == 0.0
    assert Consensus(quorum=5).quorum_for(3) == 3


# ------------------------------------------------------------------ the task's decision


def task(overlap: int = 3, settings: M.ProjectSettings | None = None) -> TaskState:
    settings = settings or M.ProjectSettings(
        pipeline=M.ReviewPipeline(
            stages=[
                M.ReviewStage(kind=M.REVIEW_STAGE_KIND_PEER_REVIEW, sample_rate=0.0),
                M.ReviewStage(kind=M.REVIEW_STAGE_KIND_EXPERT_RESOLUTION),
            ]
        )
    )
    spec = M.TaskSpec(task_id="t1", data_uri="s3://b/i.jpg", overlap=overlap)
    pipeline = resolve_pipeline("p1", settings)
    policy = M.REVIEW_POLICY_FULL if pipeline.stages else M.REVIEW_POLICY_NONE
    return run(None, ImportTask("p1", "b1", spec, policy, 600, pipeline))[1]


def submit(
    state: TaskState,
    person: str,
    content: Sequence[A.Shape],
    consensus: Consensus | None = POLICY,
    round_: int = 1,
) -> tuple[list[Message], TaskState]:
    state = run(state, LeaseTask("t1", f"L-{person}", person, frozenset(), T0))[1]
    return run(
        state,
        SubmitAnnotation(
            "t1",
            f"L-{person}",
            person,
            f"A-{person}" if round_ == 1 else f"A-{person}-{round_}",
            A.Annotation(shapes=list(content)),
            1,
            1,
            10,
            T0,
            consensus=consensus,
        ),
    )


def kinds(events: Sequence[Message]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_the_nth_submission_computes_consensus_and_high_agreement_follows_the_pipeline() -> None:
    state = task()
    for person in ("ann", "bob"):
        events, state = submit(state, person, [cls("cat")])
        assert "ConsensusComputed" not in kinds(events)
    events, state = submit(state, "cid", [cls("cat")])
    # the peer stage samples nothing: the work passes it unseen and is accepted, as without consensus
    assert kinds(events) == [
        "AnnotationSubmitted",
        "ConsensusComputed",
        "ReviewRouted",
        "AnnotationAccepted",
        "TaskCompleted",
    ]
    computed = events[1]
    assert isinstance(computed, CP.ConsensusComputed)
    assert (computed.round, computed.agreement, computed.escalated) == (1, 1.0, False)
    assert list(computed.annotation_ids) == ["A-ann", "A-bob", "A-cid"]
    assert computed.annotation.shapes[0].label == "cat"
    routed = events[2]
    assert isinstance(routed, events_pb2.ReviewRouted) and not routed.sampled and not routed.escalated
    assert state.consensus[1].agreement == 1.0


def test_low_agreement_escalates_to_the_first_review_stage_whatever_its_rate() -> None:
    state = task()
    state = submit(state, "ann", [cls("cat")])[1]
    state = submit(state, "bob", [cls("dog")])[1]
    events, state = submit(state, "cid", [cls("eel")])
    assert kinds(events) == ["AnnotationSubmitted", "ConsensusComputed", "ReviewRouted"]
    computed, routed = events[1], events[2]
    assert isinstance(computed, CP.ConsensusComputed) and isinstance(routed, events_pb2.ReviewRouted)
    assert computed.escalated and computed.escalation_stage == "peer_review"
    assert computed.agreement == pytest.approx(1 / 3)
    assert (routed.stage, routed.sampled, routed.rate, routed.escalated) == ("peer_review", True, 1.0, True)
    assert state.annotations["A-cid"].stage == 0 and state.annotations["A-cid"].status == "submitted"
    assert not state.completed


def test_the_threshold_is_strict_and_zero_never_escalates() -> None:
    def third(consensus: Consensus) -> CP.ConsensusComputed:
        state = task()
        state = submit(state, "ann", [cls("cat")], consensus)[1]
        state = submit(state, "bob", [cls("cat")], consensus)[1]
        events = submit(state, "cid", [cls("dog")], consensus)[0]
        out = events[1]
        assert isinstance(out, CP.ConsensusComputed)
        return out

    assert not third(Consensus(min_agreement=2 / 3)).escalated  # agreement 2/3 is not below 2/3
    assert third(Consensus(min_agreement=0.7)).escalated
    assert not third(Consensus(min_agreement=0.0)).escalated


def test_without_review_stages_escalation_is_recorded_only() -> None:
    state = task(overlap=2, settings=M.ProjectSettings(review_policy=M.REVIEW_POLICY_NONE))
    state = submit(state, "ann", [cls("cat")])[1]
    events, state = submit(state, "bob", [cls("dog")])
    computed = events[1]
    assert isinstance(computed, CP.ConsensusComputed)
    assert computed.escalated and computed.escalation_stage == ""
    assert kinds(events) == [
        "AnnotationSubmitted",
        "ConsensusComputed",
        "AnnotationAccepted",
        "TaskCompleted",
    ]


def test_no_consensus_without_a_policy_with_overlap_one_and_once_per_round() -> None:
    state = task(overlap=2)
    state = submit(state, "ann", [cls("cat")], None)[1]
    assert "ConsensusComputed" not in kinds(submit(state, "bob", [cls("cat")], None)[0])
    single = task(overlap=1)
    assert "ConsensusComputed" not in kinds(submit(single, "ann", [cls("cat")])[0])
    # a reopened task computes again in its new round
    state = task(overlap=2, settings=M.ProjectSettings(review_policy=M.REVIEW_POLICY_NONE))
    state = submit(state, "ann", [cls("cat")])[1]
    state = submit(state, "bob", [cls("cat")])[1]
    state = run(state, ReopenTask("t1", "again"))[1]
    state = submit(state, "ann", [cls("cat")], round_=2)[1]
    events, state = submit(state, "bob", [cls("dog")], round_=2)
    assert "ConsensusComputed" in kinds(events)
    assert sorted(state.consensus) == [1, 2] and state.consensus[2].round == 2
