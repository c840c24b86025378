"""Gold standard and qualification rules: the quality policy, scoring against a known answer,
and the hash points that mix gold into normal work. Pure (numpy through `consumers.quality`).

Scoring (`score_answer`) compares a submission with a known answer shape by shape, per class:

- two shapes can match only if they have the same label and geometry kind and the submitted
  shape carries every attribute the known shape sets, with the same value (exact);
- their similarity is IoU for boxes, rotated boxes, polygons (holes subtracted), multipolygons,
  RLE instance masks and point sets, OKS for keypoints and skeletons, and exactness (1 or 0)
  for classifications, texts and text spans;
- pairs are matched greedily, most similar first (ties: the earlier known shape, then the earlier
  submitted one), and a pair counts when its similarity reaches the threshold of its kind (the
  project's IoU or OKS threshold; 1 for the exact kinds);
- per class: `matched`, `missed` (known shapes left over) and `extra` (submitted shapes left
  over); the score is matched / (matched + missed + extra), 1 when both are empty, and the answer
  passes at score >= `pass_score`.

The task aggregate scores a submission when it is decided and records the result in `GoldScored`
(thresholds included), so replaying the log never scores again. Kinds the scorer cannot compare
meaningfully (cuboids, polylines, bitmaps, custom payloads, tracks, semantic segmentation) are
refused in a known answer at import, naming the field.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from coordinator._pb.labelweave.events.v1 import annotation_pb2, model_pb2
from coordinator.errors import InvalidArgument

DEFAULT_IOU: Final = 0.5
DEFAULT_OKS: Final = 0.5
DEFAULT_PASS_SCORE: Final = 1.0
DEFAULT_WINDOW: Final = 20
DEFAULT_MIN_RESULTS: Final = 5
DEFAULT_MIN_SCORE: Final = 0.8
DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_SIGMA: Final = 0.05
"""OKS sigma of a keypoint whose skeleton definition gives none (COCO's range is 0.025-0.107)."""
MAX_WINDOW: Final = 1000
MAX_ITEMS: Final = 1000
MAX_ATTEMPTS: Final = 100
MAX_COOLDOWN_SECONDS: Final = 90 * 24 * 3600
MAX_QUALIFICATIONS: Final = 50

SCOREABLE: Final = frozenset(
    {
        "box",
        "rotated_box",
        "polygon",
        "multipolygon",
        "instance_mask",
        "point_labels",
        "keypoints",
        "skeleton",
        "classification",
        "text",
        "text_span",
    }
)
EXACT_KINDS: Final = frozenset({"classification", "text", "text_span"})
OKS_KINDS: Final = frozenset({"keypoints", "skeleton"})


# ------------------------------------------------------------------ policy


@dataclass(frozen=True)
class Policy:
    """A project's quality policy with defaults filled in."""

    gold_rate: float = 0.0
    iou_threshold: float = DEFAULT_IOU
    oks_threshold: float = DEFAULT_OKS
    pass_score: float = DEFAULT_PASS_SCORE
    window: int = DEFAULT_WINDOW
    min_accuracy: float = 0.0
    min_results: int = DEFAULT_MIN_RESULTS
    retraining_skill: str = ""
    seed: str = ""


def resolve_policy(project_id: str, policy: model_pb2.QualityPolicy) -> Policy:
    return Policy(
        gold_rate=policy.gold_rate,
        iou_threshold=policy.iou_threshold or DEFAULT_IOU,
        oks_threshold=policy.oks_threshold or DEFAULT_OKS,
        pass_score=policy.pass_score or DEFAULT_PASS_SCORE,
        window=policy.accuracy_window or DEFAULT_WINDOW,
        min_accuracy=policy.min_accuracy,
        min_results=policy.min_results or DEFAULT_MIN_RESULTS,
        retraining_skill=policy.retraining_skill,
        seed=policy.seed or project_id,
    )


def qualification_of(policy: model_pb2.QualityPolicy, skill: str) -> model_pb2.Qualification | None:
    """The project's qualification for `skill` with defaults filled in, or None."""
    for q in policy.qualifications:
        if q.skill == skill:
            out = model_pb2.Qualification()
            out.CopyFrom(q)
            out.min_score = out.min_score or DEFAULT_MIN_SCORE
            out.max_attempts = out.max_attempts or DEFAULT_MAX_ATTEMPTS
            out.level = out.level or 1
            return out
    return None


def _unit(value: float, field: str, *, zero_ok: bool = True) -> None:
    if not (math.isfinite(value) and (value >= 0.0 if zero_ok else value > 0.0) and value <= 1.0):
        bounds = "[0, 1]" if zero_ok else "(0, 1]"
        raise InvalidArgument(f"a value in {bounds}, got {value}", field=field)


def check_quality(policy: model_pb2.QualityPolicy, field: str = "settings.quality") -> None:
    """Refuse a quality policy that cannot work, naming the field."""
    _unit(policy.gold_rate, f"{field}.gold_rate")
    _unit(policy.iou_threshold, f"{field}.iou_threshold")
    _unit(policy.oks_threshold, f"{field}.oks_threshold")
    _unit(policy.pass_score, f"{field}.pass_score")
    _unit(policy.min_accuracy, f"{field}.min_accuracy")
    if policy.accuracy_window > MAX_WINDOW:
        raise InvalidArgument(f"at most {MAX_WINDOW}", field=f"{field}.accuracy_window")
    window = policy.accuracy_window or DEFAULT_WINDOW
    if policy.min_results > window:
        raise InvalidArgument(
            f"{policy.min_results} results can never fit in a window of {window}",
            field=f"{field}.min_results",
        )
    if len(policy.seed) > 128:
        raise InvalidArgument("at most 128 characters", field=f"{field}.seed")
    if len(policy.qualifications) > MAX_QUALIFICATIONS:
        raise InvalidArgument(f"at most {MAX_QUALIFICATIONS}", field=f"{field}.qualifications")
    seen: dict[str, int] = {}
    for i, q in enumerate(policy.qualifications):
        where = f"{field}.qualifications[{i}]"
        check_skill_name(q.skill, f"{where}.skill")
        if q.skill in seen:
            raise InvalidArgument(
                f"skill {q.skill!r} has a qualification already (qualifications[{seen[q.skill]}])",
                field=f"{where}.skill",
            )
        seen[q.skill] = i
        _unit(q.min_score, f"{where}.min_score")
        if q.items > MAX_ITEMS:
            raise InvalidArgument(f"at most {MAX_ITEMS}", field=f"{where}.items")
        if q.max_attempts > MAX_ATTEMPTS:
            raise InvalidArgument(f"at most {MAX_ATTEMPTS}", field=f"{where}.max_attempts")
        if q.cooldown_seconds > MAX_COOLDOWN_SECONDS:
            raise InvalidArgument(
                f"at most {MAX_COOLDOWN_SECONDS} s (90 days)", field=f"{where}.cooldown_seconds"
            )
    if policy.retraining_skill and policy.retraining_skill not in seen:
        known = ", ".join(sorted(seen)) or "none"
        raise InvalidArgument(
            f"no qualification for {policy.retraining_skill!r} (qualifications: {known})",
            field=f"{field}.retraining_skill",
        )


def check_skill_name(skill: str, field: str) -> None:
    if not skill.strip():
        raise InvalidArgument("required", field=field)
    if len(skill) > 128 or "," in skill or "|" in skill:
        raise InvalidArgument(f"{skill!r}: at most 128 characters, without ',' or '|'", field=field)


# ------------------------------------------------------------------ hash points


def point(*parts: str) -> float:
    """A uniform point in [0, 1) from SHA-256 of the parts (53 bits, exact as a double)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def gold_turn(seed: str, project_id: str, person_id: str, n: int, rate: float) -> bool:
    """Whether a person's lease number `n` (0-based, in the project) is a gold one."""
    return rate > 0 and point("gold-mix", seed, project_id, person_id, str(n)) < rate


def gold_order(seed: str, person_id: str, task_id: str) -> float:
    """Per-person order in which gold tasks are served (a different shuffle for every person)."""
    return point("gold-order", seed, person_id, task_id)


def choose_items(seed: str, person_id: str, attempt: int, task_ids: Sequence[str], items: int) -> list[str]:
    """The training items of an attempt: all of them, or `items` of them chosen by hash."""
    if items <= 0 or items >= len(task_ids):
        return list(task_ids)
    ranked = sorted(task_ids, key=lambda t: (point("qualification", seed, person_id, str(attempt), t), t))
    chosen = set(ranked[:items])
    return [t for t in task_ids if t in chosen]


# ------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Scoring:
    """What a gold submission is scored with (the project's, when it is submitted)."""

    iou_threshold: float = DEFAULT_IOU
    oks_threshold: float = DEFAULT_OKS
    pass_score: float = DEFAULT_PASS_SCORE
    schema: model_pb2.LabelSchema | None = None


@dataclass(frozen=True)
class Score:
    score: float
    passed: bool
    classes: tuple[model_pb2.ClassScore, ...]


def check_scoreable(answer: annotation_pb2.Annotation, field: str) -> None:
    """Refuse a known answer the scorer cannot compare (validated against the schema before)."""
    if answer.tracks:
        raise InvalidArgument("video tracks cannot be scored as a known answer", field=f"{field}.tracks")
    if answer.segmentation.classes:
        raise InvalidArgument(
            "semantic segmentation cannot be scored as a known answer", field=f"{field}.segmentation"
        )
    for i, shape in enumerate(answer.shapes):
        kind = shape.WhichOneof("geometry")
        if kind not in SCOREABLE:
            raise InvalidArgument(
                f"{kind or 'a shape without geometry'} cannot be scored; known answers may use:"
                f" {', '.join(sorted(SCOREABLE))}",
                field=f"{field}.shapes[{i}]",
            )
        if kind in OKS_KINDS:
            points = shape.keypoints.points if kind == "keypoints" else shape.skeleton.points
            if not any(p.visibility != annotation_pb2.VISIBILITY_NOT_LABELED for p in points):
                raise InvalidArgument(
                    "a known keypoint answer needs at least one labelled keypoint",
                    field=f"{field}.shapes[{i}].{kind}",
                )


def score_answer(
    answer: annotation_pb2.Annotation, submitted: annotation_pb2.Annotation, scoring: Scoring
) -> Score:
    known = list(answer.shapes)
    given = list(submitted.shapes)
    labels = sorted({s.label for s in known} | {s.label for s in given})
    classes: list[model_pb2.ClassScore] = []
    matched = missed = extra = 0
    for label in labels:
        ks = [s for s in known if s.label == label]
        gs = [s for s in given if s.label == label]
        pairs = _match(ks, gs, scoring)
        m = len(pairs)
        cls = model_pb2.ClassScore(
            label=label,
            matched=m,
            missed=len(ks) - m,
            extra=len(gs) - m,
            similarity=sum(pairs) / m if m else 0.0,
        )
        classes.append(cls)
        matched += cls.matched
        missed += cls.missed
        extra += cls.extra
    total = matched + missed + extra
    value = matched / total if total else 1.0
    return Score(value, value >= scoring.pass_score, tuple(classes))


def _match(
    known: Sequence[annotation_pb2.Shape], given: Sequence[annotation_pb2.Shape], scoring: Scoring
) -> list[float]:
    """Similarities of the matched pairs (greedy, most similar first, deterministic ties)."""
    candidates: list[tuple[float, int, int]] = []
    for i, k in enumerate(known):
        kind = k.WhichOneof("geometry")
        threshold = _threshold(kind, scoring)
        for j, g in enumerate(given):
            if g.WhichOneof("geometry") != kind or not _attributes_match(k, g):
                continue
            sim = similarity(kind or "", k, g, scoring)
            if sim >= threshold:
                candidates.append((-sim, i, j))
    return greedy_pairs(candidates)


def greedy_pairs(candidates: list[tuple[float, int, int]]) -> list[float]:
    """Similarities of a greedy one-to-one matching of candidate pairs `(-similarity, i, j)`:
    most similar first, ties to the earlier `i`, then `j`; each `i` and `j` is used once."""
    used_i: set[int] = set()
    used_j: set[int] = set()
    out: list[float] = []
    for neg, i, j in sorted(candidates):
        if i in used_i or j in used_j:
            continue
        used_i.add(i)
        used_j.add(j)
        out.append(-neg)
    return out


def _threshold(kind: str | None, scoring: Scoring) -> float:
    if kind in EXACT_KINDS:
        return 1.0
    if kind in OKS_KINDS:
        return scoring.oks_threshold
    return scoring.iou_threshold


def _attributes_match(known: annotation_pb2.Shape, given: annotation_pb2.Shape) -> bool:
    for key, value in known.attributes.items():
        if key not in given.attributes or given.attributes[key] != value:
            return False
    return True


def symmetric_similarity(
    kind: str, a: annotation_pb2.Shape, b: annotation_pb2.Shape, scoring: Scoring
) -> float:
    """`similarity` of two peers' shapes (neither is the answer): OKS, asymmetric because its
    area and sigmas follow the first shape, is averaged over both directions."""
    value = similarity(kind, a, b, scoring)
    if kind in OKS_KINDS:
        value = (value + similarity(kind, b, a, scoring)) / 2.0
    return value


def similarity(kind: str, k: annotation_pb2.Shape, g: annotation_pb2.Shape, scoring: Scoring) -> float:
    """IoU of a shape `k` with the answer `g` (OKS for keypoints, exact for texts); 0 when the
    geometry cannot be compared."""
    fn = _SIMILARITY.get(kind)
    if fn is None:
        return 0.0  # never in a known answer (refused at import)
    try:
        return float(fn(k, g, scoring))
    except ValueError:
        return 0.0  # degenerate geometry (e.g. mismatched mask sizes): no match


def _box(k: annotation_pb2.Shape, g: annotation_pb2.Shape, _: Scoring) -> float:
    from consumers.quality import iou_boxes

    a, b = k.box, g.box
    return float(iou_boxes([[a.x, a.y, a.width, a.height]], [[b.x, b.y, b.width, b.height]])[0, 0])


def _corners(box: annotation_pb2.RotatedBox) -> list[tuple[float, float]]:
    c, s = math.cos(box.angle), math.sin(box.angle)
    hw, hh = box.width / 2, box.height / 2
    return [
        (box.cx + dx * c - dy * s, box.cy + dx * s + dy * c)
        for dx, dy in ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))
    ]


def _rotated_box(k: annotation_pb2.Shape, g: annotation_pb2.Shape, _: Scoring) -> float:
    from consumers.quality import iou_polygons

    return float(iou_polygons([_corners(k.rotated_box)], [_corners(g.rotated_box)])[0, 0])


_Parts = tuple[list[tuple[float, float]], list[list[tuple[float, float]]]]


def _parts(polygon: annotation_pb2.Polygon) -> _Parts:
    return (
        [(p.x, p.y) for p in polygon.exterior.points],
        [[(p.x, p.y) for p in hole.points] for hole in polygon.holes],
    )


def _area(parts: _Parts) -> float:
    from consumers.quality import polygon_area

    exterior, holes = parts
    return polygon_area(exterior) - sum(polygon_area(h) for h in holes)


def _intersection(a: _Parts, b: _Parts) -> float:
    """|A ∩ B| for polygons with holes (holes inside their exterior, disjoint):
    |Ea∩Eb| - Σ|Ha∩Eb| - Σ|Hb∩Ea| + Σ|Ha∩Hb|."""
    from consumers.quality import polygon_intersection_area as inter

    (ea, ha), (eb, hb) = a, b
    total = inter(ea, eb)
    total -= sum(inter(h, eb) for h in ha)
    total -= sum(inter(h, ea) for h in hb)
    total += sum(inter(x, y) for x in ha for y in hb)
    return max(total, 0.0)


def _iou_parts(a: Sequence[_Parts], b: Sequence[_Parts]) -> float:
    """IoU of two regions made of polygons with holes (the parts of each assumed disjoint)."""
    inter = sum(_intersection(p, q) for p in a for q in b)
    union = sum(_area(p) for p in a) + sum(_area(q) for q in b) - inter
    return inter / union if union > 0 else 0.0


def _polygon(k: annotation_pb2.Shape, g: annotation_pb2.Shape, _: Scoring) -> float:
    return _iou_parts([_parts(k.polygon)], [_parts(g.polygon)])


def _multipolygon(k: annotation_pb2.Shape, g: annotation_pb2.Shape, _: Scoring) -> float:
    return _iou_parts(
        [_parts(p) for p in k.multipolygon.polygons], [_parts(p) for p in g.multipolygon.polygons]
    )


def _mask(k: annotation_pb2.Shape, g: annotation_pb2.Shape, _: Scoring) -> float:
    from consumers.quality import mask_iou_rle

    a, b = k.instance_mask.mask, g.instance_mask.mask
    return mask_iou_rle(
        {"counts": list(a.counts), "size": [a.height, a.width]},
        {"counts": list(b.counts), "size": [b.height, b.width]},
    )


def _point_set(k: annotation_pb2.Shape, g: annotation_pb2.Shape, _: Scoring) -> float:
    a, b = set(k.point_labels.indices), set(g.point_labels.indices)
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def _keypoints(k: annotation_pb2.Shape, g: annotation_pb2.Shape, scoring: Scoring) -> float:
    """OKS: mean over the known keypoints that are labelled of exp(-d² / (2 area (2 sigma)²)); a
    known keypoint the submission does not label contributes 0. `area` is the bounding box of the
    known labelled keypoints (at least 1 px²); sigma from the skeleton definition."""
    from consumers.quality import oks

    if k.HasField("skeleton"):
        known_points, given_points, definition = k.skeleton.points, g.skeleton.points, k.skeleton.definition
    else:
        known_points, given_points, definition = k.keypoints.points, g.keypoints.points, ""
    sigmas = _sigmas(scoring.schema, k.label, definition)
    labelled = [p for p in known_points if p.visibility != annotation_pb2.VISIBILITY_NOT_LABELED]
    if not labelled:
        return 0.0
    given_by_name = {p.name: p for p in given_points if p.visibility != annotation_pb2.VISIBILITY_NOT_LABELED}
    both = [(p, given_by_name[p.name]) for p in labelled if p.name in given_by_name]
    if not both:
        return 0.0
    xs = [p.x for p in labelled]
    ys = [p.y for p in labelled]
    area = max((max(xs) - min(xs)) * (max(ys) - min(ys)), 1.0)
    value = oks(
        [[p.x, p.y] for p, _ in both],
        [[q.x, q.y] for _, q in both],
        sigmas=[sigmas.get(p.name, DEFAULT_SIGMA) for p, _ in both],
        area=area,
        visibility=[2.0] * len(both),
    )
    return value * len(both) / len(labelled)


def _sigmas(schema: model_pb2.LabelSchema | None, label: str, definition: str) -> dict[str, float]:
    if schema is None:
        return {}
    name = definition
    if not name:
        for cls in schema.classes:
            if cls.name == label:
                name = cls.skeleton
                break
    for skel in schema.skeletons:
        if skel.name == name and len(skel.sigmas) == len(skel.keypoints):
            return dict(zip(skel.keypoints, skel.sigmas, strict=True))
    return {}


def _exact(k: annotation_pb2.Shape, g: annotation_pb2.Shape, _: Scoring) -> float:
    kind = k.WhichOneof("geometry") or ""
    same: bool = getattr(k, kind) == getattr(g, kind)
    return 1.0 if same else 0.0


_SIMILARITY: dict[str, Callable[[annotation_pb2.Shape, annotation_pb2.Shape, Scoring], Any]] = {
    "box": _box,
    "rotated_box": _rotated_box,
    "polygon": _polygon,
    "multipolygon": _multipolygon,
    "instance_mask": _mask,
    "point_labels": _point_set,
    "keypoints": _keypoints,
    "skeleton": _keypoints,
    "classification": _exact,
    "text": _exact,
    "text_span": _exact,
}
