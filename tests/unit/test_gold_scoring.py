"""Scoring a submission against a known answer, per geometry kind (exact kinds, IoU with the
threshold, OKS), the matching rules, the quality policy's checks, and the hash points of the
gold mix."""

from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf import struct_pb2

from consumers.quality import iou_boxes, mask_iou_rle, oks, rle_encode
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.domain.gold import (
    Scoring,
    check_quality,
    check_scoreable,
    choose_items,
    gold_order,
    gold_turn,
    qualification_of,
    resolve_policy,
    score_answer,
)
from coordinator.errors import InvalidArgument
from coordinator.testing import sample_schema


def shape(label: str = "car", **geometry: object) -> A.Shape:
    return A.Shape(label=label, **geometry)  # type: ignore[arg-type]


def bx(x: float, y: float = 0, w: float = 10, h: float = 10, label: str = "car") -> A.Shape:
    return shape(label, box=A.BoundingBox(x=x, y=y, width=w, height=h))


def ring(*pts: tuple[float, float]) -> A.Ring:
    return A.Ring(points=[A.Point2(x=x, y=y) for x, y in pts])


def square(x: float, y: float, size: float) -> A.Ring:
    return ring((x, y), (x + size, y), (x + size, y + size), (x, y + size))


def ann(*shapes: A.Shape) -> A.Annotation:
    return A.Annotation(shapes=list(shapes))


def score(
    known: A.Annotation, given: A.Annotation, **kw: object
) -> tuple[float, bool, dict[str, tuple[int, int, int, float]]]:
    scoring = Scoring(**{"schema": sample_schema(), **kw})  # type: ignore[arg-type]
    out = score_answer(known, given, scoring)
    return out.score, out.passed, {c.label: (c.matched, c.missed, c.extra, c.similarity) for c in out.classes}


# ------------------------------------------------------------------ boxes and IoU thresholds


def test_boxes_match_at_the_iou_threshold_using_the_quality_module() -> None:
    known, given = ann(bx(0)), ann(bx(5))  # half overlapping: IoU 50 / 150
    expected = float(iou_boxes([[0, 0, 10, 10]], [[5, 0, 10, 10]])[0, 0])
    assert expected == pytest.approx(1 / 3)
    assert score(known, given, iou_threshold=0.5)[:2] == (0.0, False)  # one missed, one extra
    assert score(known, given, iou_threshold=0.5)[2]["car"][:3] == (0, 1, 1)
    value, passed, classes = score(known, given, iou_threshold=expected)  # exactly at the threshold
    assert (value, passed) == (1.0, True)
    assert classes["car"] == (1, 0, 0, expected)


def test_score_is_matched_over_matched_missed_and_extra_and_passes_at_pass_score() -> None:
    known = ann(bx(0), bx(100), bx(0, label="pedestrian"))
    given = ann(bx(1), bx(300), bx(500), bx(0, label="pedestrian"))
    value, passed, classes = score(known, given)
    assert classes["car"][:3] == (1, 1, 2) and classes["pedestrian"][:3] == (1, 0, 0)
    assert value == pytest.approx(2 / (2 + 1 + 2))
    assert not passed
    assert score(known, given, pass_score=0.4)[1]
    assert score(ann(), ann()) == (1.0, True, {})  # "nothing here", answered "nothing here"
    assert score(ann(bx(0)), ann())[:2] == (0.0, False)
    assert score(ann(), ann(bx(0)))[:2] == (0.0, False)


def test_matching_is_greedy_by_similarity_and_deterministic() -> None:
    # known a at x=0 and b at x=6; given p at x=5 overlaps both, q at x=0 is exactly a.
    known, given = ann(bx(0), bx(6)), ann(bx(5), bx(0))
    first = score_answer(known, given, Scoring(iou_threshold=0.5))
    assert [(c.matched, c.missed, c.extra) for c in first.classes] == [(2, 0, 0)]
    # the exact pair (a, q) is taken first, leaving (b, p) at IoU 9/11
    assert first.classes[0].similarity == pytest.approx((1.0 + 9 / 11) / 2)
    assert score_answer(known, given, Scoring(iou_threshold=0.5)) == first
    assert score_answer(known, ann(bx(0), bx(5)), Scoring(iou_threshold=0.5)).score == first.score


def test_labels_and_geometry_kinds_must_agree() -> None:
    assert score(ann(bx(0)), ann(bx(0, label="pedestrian")))[2] == {
        "car": (0, 1, 0, 0.0),
        "pedestrian": (0, 0, 1, 0.0),
    }
    as_polygon = shape(polygon=A.Polygon(exterior=square(0, 0, 10)))
    assert score(ann(bx(0)), ann(as_polygon))[0] == 0.0


def test_attributes_set_by_the_known_shape_must_match_exactly() -> None:
    def with_attrs(**attrs: object) -> A.Shape:
        s = bx(0)
        for k, v in attrs.items():
            s.attributes[k].CopyFrom(
                struct_pb2.Value(bool_value=v)
                if isinstance(v, bool)
                else struct_pb2.Value(string_value=str(v))
            )
        return s

    known = ann(with_attrs(occluded=True, colour="red"))
    assert score(known, ann(with_attrs(occluded=True, colour="red")))[0] == 1.0
    assert score(known, ann(with_attrs(occluded=True, colour="red", extra="x")))[0] == 1.0
    assert score(known, ann(with_attrs(occluded=False, colour="red")))[0] == 0.0
    assert score(known, ann(with_attrs(colour="red")))[0] == 0.0


# ------------------------------------------------------------------ exact kinds


def test_classifications_texts_and_spans_are_exact() -> None:
    cls = shape("scene", classification=A.Classification())
    assert score(ann(cls), ann(cls))[0] == 1.0
    assert score(ann(cls), ann(shape("car", classification=A.Classification())))[0] == 0.0
    text = shape("caption", text=A.TextValue(text="a red car"))
    assert score(ann(text), ann(shape("caption", text=A.TextValue(text="a red car"))))[0] == 1.0
    assert score(ann(text), ann(shape("caption", text=A.TextValue(text="a red car."))))[0] == 0.0
    span = shape("entity", text_span=A.TextSpan(start=3, end=9))
    assert score(ann(span), ann(shape("entity", text_span=A.TextSpan(start=3, end=9))))[0] == 1.0
    assert (
        score(ann(span), ann(shape("entity", text_span=A.TextSpan(start=3, end=8))), iou_threshold=0.1)[0]
        == 0.0
    )


# ------------------------------------------------------------------ polygons, masks, point sets


def test_polygons_with_holes_rotated_boxes_and_multipolygons_use_iou() -> None:
    plain = shape(polygon=A.Polygon(exterior=square(0, 0, 10)))
    holed = shape(polygon=A.Polygon(exterior=square(0, 0, 10), holes=[square(3, 3, 4)]))
    # known with a 4x4 hole vs. the same square without: 84 / 100
    assert score(ann(holed), ann(plain), iou_threshold=0.8)[2]["car"][3] == pytest.approx(0.84)
    assert score(ann(holed), ann(plain), iou_threshold=0.85)[0] == 0.0
    assert score(ann(holed), ann(holed))[2]["car"][3] == pytest.approx(1.0)
    shifted = shape(polygon=A.Polygon(exterior=square(5, 0, 10)))
    assert score(ann(plain), ann(shifted), iou_threshold=0.3)[2]["car"][3] == pytest.approx(1 / 3)
    # a rotated box turned a quarter with width and height swapped is the same rectangle
    a = shape(rotated_box=A.RotatedBox(cx=50, cy=50, width=20, height=10, angle=0))
    b = shape(rotated_box=A.RotatedBox(cx=50, cy=50, width=10, height=20, angle=math.pi / 2))
    assert score(ann(a), ann(b))[2]["car"][3] == pytest.approx(1.0)
    two = shape(
        multipolygon=A.MultiPolygon(
            polygons=[A.Polygon(exterior=square(0, 0, 10)), A.Polygon(exterior=square(20, 0, 10))]
        )
    )
    one = shape(multipolygon=A.MultiPolygon(polygons=[A.Polygon(exterior=square(0, 0, 10))]))
    assert score(ann(two), ann(one), iou_threshold=0.5)[2]["car"][3] == pytest.approx(0.5)


def test_instance_masks_use_rle_iou() -> None:
    m1 = np.zeros((6, 8), dtype=bool)
    m1[1:4, 1:5] = True
    m2 = np.zeros((6, 8), dtype=bool)
    m2[2:5, 2:6] = True

    def mask(m: np.ndarray) -> A.Shape:
        return shape(instance_mask=A.InstanceMask(mask=A.RleMask(height=6, width=8, counts=rle_encode(m))))

    expected = mask_iou_rle(
        {"counts": rle_encode(m1), "size": [6, 8]}, {"counts": rle_encode(m2), "size": [6, 8]}
    )
    assert expected == pytest.approx(6 / 18)
    assert score(ann(mask(m1)), ann(mask(m2)), iou_threshold=0.3)[2]["car"][3] == pytest.approx(expected)
    assert score(ann(mask(m1)), ann(mask(m2)), iou_threshold=0.5)[0] == 0.0
    wrong_size = shape(instance_mask=A.InstanceMask(mask=A.RleMask(height=2, width=2, counts=[4])))
    assert score(ann(mask(m1)), ann(wrong_size), iou_threshold=0.0001)[0] == 0.0  # no match, no crash


def test_point_labels_use_set_iou() -> None:
    a = shape("ground", point_labels=A.PointLabels(indices=[1, 2, 3, 4]))
    b = shape("ground", point_labels=A.PointLabels(indices=[3, 4, 5, 6]))
    assert score(ann(a), ann(b), iou_threshold=0.3)[2]["ground"][3] == pytest.approx(2 / 6)
    assert score(ann(a), ann(b), iou_threshold=0.5)[0] == 0.0


# ------------------------------------------------------------------ keypoints: OKS


def kp(name: str, x: float, y: float, v: int = A.VISIBILITY_VISIBLE) -> A.Keypoint:
    return A.Keypoint(name=name, x=x, y=y, visibility=v)  # type: ignore[arg-type]


def test_keypoints_use_oks_with_the_skeleton_sigmas() -> None:
    schema = sample_schema()
    skel = schema.skeletons[0]
    del skel.sigmas[:]
    skel.sigmas.extend([0.026, 0.025, 0.025, 0.079, 0.079])
    known_pts = [
        kp("nose", 50, 40),
        kp("left_eye", 45, 35),
        kp("right_eye", 55, 35),
        kp("left_shoulder", 30, 80),
        kp("right_shoulder", 70, 80),
    ]
    given_pts = [kp(p.name, p.x + 2, p.y - 1) for p in known_pts]
    known = ann(shape("person", keypoints=A.Keypoints(points=known_pts)))
    given = ann(shape("person", keypoints=A.Keypoints(points=given_pts)))
    area = (70 - 30) * (80 - 35)
    expected = oks(
        [[p.x, p.y] for p in known_pts],
        [[p.x, p.y] for p in given_pts],
        sigmas=list(skel.sigmas),
        area=area,
        visibility=[2] * 5,
    )
    out = score_answer(known, given, Scoring(oks_threshold=0.1, schema=schema))
    assert out.classes[0].similarity == pytest.approx(expected, abs=1e-12)
    assert score_answer(known, given, Scoring(oks_threshold=expected + 1e-9, schema=schema)).score == 0.0
    # a labelled known keypoint the submission leaves out contributes 0: 4 of 5 present
    partial = ann(shape("person", keypoints=A.Keypoints(points=given_pts[:4])))
    four = oks(
        [[p.x, p.y] for p in known_pts[:4]],
        [[p.x, p.y] for p in given_pts[:4]],
        sigmas=list(skel.sigmas)[:4],
        area=area,
        visibility=[2] * 4,
    )
    assert score_answer(known, partial, Scoring(oks_threshold=0.1, schema=schema)).classes[0].similarity == (
        pytest.approx(four * 4 / 5, abs=1e-12)
    )
    # known keypoints that are not labelled are ignored (as COCO does), also for the area
    unlabelled = [*known_pts[:4], kp("right_shoulder", 0, 0, A.VISIBILITY_NOT_LABELED)]
    known4 = ann(shape("person", keypoints=A.Keypoints(points=unlabelled)))
    four_alone = oks(
        [[p.x, p.y] for p in known_pts[:4]],
        [[p.x, p.y] for p in given_pts[:4]],
        sigmas=list(skel.sigmas)[:4],
        area=(55 - 30) * (80 - 35),
        visibility=[2] * 4,
    )
    assert score_answer(known4, partial, Scoring(oks_threshold=0.1, schema=schema)).classes[0].similarity == (
        pytest.approx(four_alone, abs=1e-12)
    )
    # skeletons too
    sk = ann(shape("person", skeleton=A.Skeleton(definition="person", points=known_pts)))
    sg = ann(shape("person", skeleton=A.Skeleton(definition="person", points=given_pts)))
    assert score_answer(sk, sg, Scoring(oks_threshold=0.1, schema=schema)).classes[
        0
    ].similarity == pytest.approx(expected)


# ------------------------------------------------------------------ what a known answer may hold


def test_only_scoreable_known_answers_are_accepted() -> None:
    check_scoreable(ann(bx(0), shape("scene", classification=A.Classification())), "gold.answer")
    lane = shape("lane", polyline=A.Polyline(points=[A.Point2(x=0, y=0), A.Point2(x=1, y=1)]))
    with pytest.raises(InvalidArgument) as err:
        check_scoreable(ann(bx(0), lane), "gold.answer")
    assert err.value.field == "gold.answer.shapes[1]" and "polyline cannot be scored" in str(err.value)
    with pytest.raises(InvalidArgument) as err:
        check_scoreable(A.Annotation(tracks=[A.Track(track_id="t", label="car")]), "g")
    assert err.value.field == "g.tracks"
    seg = A.Annotation(segmentation=A.SemanticSegmentation(classes=[A.SegmentClassMask(label="road")]))
    with pytest.raises(InvalidArgument) as err:
        check_scoreable(seg, "g")
    assert err.value.field == "g.segmentation"
    hidden = ann(shape("person", keypoints=A.Keypoints(points=[kp("nose", 1, 1, A.VISIBILITY_NOT_LABELED)])))
    with pytest.raises(InvalidArgument) as err:
        check_scoreable(hidden, "g")
    assert err.value.field == "g.shapes[0].keypoints"


# ------------------------------------------------------------------ the policy


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (M.QualityPolicy(gold_rate=-0.1), "q.gold_rate"),
        (M.QualityPolicy(gold_rate=float("nan")), "q.gold_rate"),
        (M.QualityPolicy(iou_threshold=1.5), "q.iou_threshold"),
        (M.QualityPolicy(oks_threshold=2), "q.oks_threshold"),
        (M.QualityPolicy(pass_score=-1), "q.pass_score"),
        (M.QualityPolicy(min_accuracy=1.1), "q.min_accuracy"),
        (M.QualityPolicy(accuracy_window=5000), "q.accuracy_window"),
        (M.QualityPolicy(min_results=21), "q.min_results"),  # the default window is 20
        (M.QualityPolicy(seed="x" * 200), "q.seed"),
        (M.QualityPolicy(retraining_skill="x"), "q.retraining_skill"),
        (M.QualityPolicy(qualifications=[M.Qualification(skill="")]), "q.qualifications[0].skill"),
        (M.QualityPolicy(qualifications=[M.Qualification(skill="a|b")]), "q.qualifications[0].skill"),
        (
            M.QualityPolicy(qualifications=[M.Qualification(skill="a"), M.Qualification(skill="a")]),
            "q.qualifications[1].skill",
        ),
        (
            M.QualityPolicy(qualifications=[M.Qualification(skill="a", min_score=3)]),
            "q.qualifications[0].min_score",
        ),
        (
            M.QualityPolicy(qualifications=[M.Qualification(skill="a", items=5000)]),
            "q.qualifications[0].items",
        ),
        (
            M.QualityPolicy(qualifications=[M.Qualification(skill="a", max_attempts=500)]),
            "q.qualifications[0].max_attempts",
        ),
        (
            M.QualityPolicy(qualifications=[M.Qualification(skill="a", cooldown_seconds=10**9)]),
            "q.qualifications[0].cooldown_seconds",
        ),
    ],
)
def test_bad_policies_are_refused_naming_the_field(policy: M.QualityPolicy, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_quality(policy, "q")
    assert err.value.field == field


def test_policy_defaults() -> None:
    check_quality(M.QualityPolicy())
    p = resolve_policy("p1", M.QualityPolicy())
    assert (p.gold_rate, p.iou_threshold, p.oks_threshold, p.pass_score) == (0.0, 0.5, 0.5, 1.0)
    assert (p.window, p.min_accuracy, p.min_results, p.seed) == (20, 0.0, 5, "p1")
    q = qualification_of(M.QualityPolicy(qualifications=[M.Qualification(skill="a")]), "a")
    assert q is not None and (q.min_score, q.max_attempts, q.level, q.cooldown_seconds) == (0.8, 3, 1, 0)
    assert qualification_of(M.QualityPolicy(), "a") is None


# ------------------------------------------------------------------ hash points


def test_gold_turns_are_deterministic_and_follow_the_rate() -> None:
    turns = [gold_turn("s", "p", "ann", n, 0.2) for n in range(5000)]
    assert turns == [gold_turn("s", "p", "ann", n, 0.2) for n in range(5000)]
    assert 0.18 < sum(turns) / len(turns) < 0.22
    assert turns != [gold_turn("s", "p", "bob", n, 0.2) for n in range(5000)]  # per person
    assert not any(gold_turn("s", "p", "ann", n, 0.0) for n in range(100))
    assert all(gold_turn("s", "p", "ann", n, 1.0) for n in range(100))
    tasks = [f"g{i}" for i in range(20)]
    ann_order = sorted(tasks, key=lambda t: gold_order("s", "ann", t))
    assert ann_order != sorted(tasks, key=lambda t: gold_order("s", "bob", t))


def test_qualification_items_are_chosen_by_hash_in_import_order() -> None:
    items = [f"t{i}" for i in range(10)]
    assert choose_items("s", "ann", 1, items, 0) == items
    assert choose_items("s", "ann", 1, items, 20) == items
    chosen = choose_items("s", "ann", 1, items, 3)
    assert len(chosen) == 3 and chosen == [t for t in items if t in chosen]
    assert chosen == choose_items("s", "ann", 1, items, 3)
    others = {tuple(choose_items("s", "ann", attempt, items, 3)) for attempt in range(2, 8)}
    assert len(others | {tuple(chosen)}) > 1  # a new attempt may draw other items
