"""Consensus of the independent annotations of a task (overlap N >= 2). Pure: no I/O.

When the N-th live annotation of a round is submitted, the task aggregate aggregates the round's
N annotations (`aggregate`) and records the result in `ConsensusComputed` in the same command:
the fused label content, an agreement score per object or categorical field, the task's
agreement (their mean) and whether it escalated. Replaying the log never aggregates again.

Aggregation per kind (method AUTO, docs/consensus-and-agreement.md):

- **classifications**: majority vote of the annotators' class (an annotation with several
  classification shapes votes for their sorted labels joined by "+"; one without abstains), then
  per attribute among those who voted for the winner. Ties go to the smallest value in sort
  order of the label (attributes: of their canonical JSON), so the outcome never depends on
  submission order. Agreement of a field = winner's votes / votes.
- **shapes** (boxes, rotated boxes, polygons, multipolygons, instance masks, point sets,
  keypoints, skeletons, texts, text spans) are clustered per (label, kind) greedily, most similar
  pair first (ties: earlier shapes first): two clusters merge when they hold no shape of the same
  annotation and *every* cross pair reaches the threshold (complete linkage; IoU >=
  `iou_threshold`, OKS >= `oks_threshold`, texts exactly equal). A cluster's agreement is
  support x tightness = (members / N) x mean pairwise similarity of its members (1 for one
  member). Clusters with fewer than `quorum` members are dropped from the fused annotation (but
  reported). Fusion: boxes by coordinate mean weighted by shape score (equal weights when no
  member has a score), rotated boxes by mean (circular mean of the angle), keypoints and
  skeletons per keypoint by the mean weighted by visibility (visible 2, occluded 1, not
  labelled 0) with the members' most common visibility, everything else by the medoid (the member
  with the highest mean similarity to the others; ties: the earliest). Attributes by majority.
- **semantic segmentation**: per class, the medoid mask by mask IoU among the annotations that
  have the class (quorum as for shapes).
- cuboids, image cuboids, polylines, bitmaps, custom payloads and video tracks: no automatic
  fusion; their kinds are listed in `unfused_kinds` and they do not count in the agreement.

The task's agreement is the mean over fields and objects (1 when nobody labelled anything).
Below `min_agreement` it escalates: the round's N-th annotation is sent to the task's first
review stage whatever that stage's sample rate (`ReviewRouted.escalated`), since review stages
are where work is reviewed and the expert stage only takes disputes (`review.routable`). A task
without review stages records the escalation only (`escalation_stage` ""); see the docs.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from google.protobuf import json_format
from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import annotation_pb2, consensus_pb2, events_pb2, model_pb2
from coordinator.domain.gold import EXACT_KINDS, OKS_KINDS, Scoring, symmetric_similarity
from coordinator.domain.review import next_stage, sample_point, stage_name
from coordinator.errors import InvalidArgument

if TYPE_CHECKING:  # the task aggregate imports this module
    from coordinator.domain.task import TaskState

DEFAULT_IOU: Final = 0.5
DEFAULT_OKS: Final = 0.5
DEFAULT_MIN_AGREEMENT: Final = 0.6
MAX_QUORUM: Final = 100
AUTO: Final = consensus_pb2.CONSENSUS_METHOD_AUTO

MEAN_KINDS: Final = frozenset({"box", "rotated_box"})
MEDOID_KINDS: Final = frozenset(
    {"polygon", "multipolygon", "instance_mask", "point_labels", "text", "text_span"}
)
CLUSTER_KINDS: Final = MEAN_KINDS | MEDOID_KINDS | OKS_KINDS
_WEIGHT: Final[dict[int, float]] = {
    annotation_pb2.VISIBILITY_NOT_LABELED: 0.0,
    annotation_pb2.VISIBILITY_OCCLUDED: 1.0,
    annotation_pb2.VISIBILITY_VISIBLE: 2.0,
}


# ------------------------------------------------------------------ policy


@dataclass(frozen=True)
class Consensus:
    """A project's consensus policy with defaults resolved, and the label schema (OKS sigmas)."""

    iou_threshold: float = DEFAULT_IOU
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    quorum: int = 0  # 0: majority of the task's overlap
    oks_threshold: float = DEFAULT_OKS
    method: consensus_pb2.ConsensusMethod.ValueType = AUTO
    schema: model_pb2.LabelSchema | None = None

    def quorum_for(self, n: int) -> int:
        return min(self.quorum or n // 2 + 1, n)


def resolve_consensus(
    policy: consensus_pb2.ConsensusPolicy, schema: model_pb2.LabelSchema | None = None
) -> Consensus:
    return Consensus(
        iou_threshold=policy.iou_threshold or DEFAULT_IOU,
        min_agreement=policy.min_agreement if policy.HasField("min_agreement") else DEFAULT_MIN_AGREEMENT,
        quorum=policy.quorum,
        oks_threshold=policy.oks_threshold or DEFAULT_OKS,
        method=AUTO,
        schema=schema,
    )


def check_consensus(policy: consensus_pb2.ConsensusPolicy, field: str = "settings.consensus") -> None:
    """Refuse a consensus policy that cannot work, naming the field."""
    if policy.method not in (consensus_pb2.CONSENSUS_METHOD_UNSPECIFIED, AUTO):
        raise InvalidArgument("choose CONSENSUS_METHOD_AUTO (or leave it unset)", field=f"{field}.method")
    for name in ("iou_threshold", "oks_threshold"):
        value = getattr(policy, name)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise InvalidArgument(f"a value in (0, 1] (0: the default), got {value}", field=f"{field}.{name}")
    if policy.HasField("min_agreement"):
        m = policy.min_agreement
        if not (math.isfinite(m) and 0.0 <= m <= 1.0):
            raise InvalidArgument(f"a value in [0, 1], got {m}", field=f"{field}.min_agreement")
    if policy.quorum > MAX_QUORUM:
        raise InvalidArgument(f"at most {MAX_QUORUM} (the maximum overlap)", field=f"{field}.quorum")


# ------------------------------------------------------------------ aggregation


@dataclass(frozen=True)
class Contribution:
    """One independent annotation of the round, in submission order."""

    annotation_id: str
    author_id: str
    annotation: annotation_pb2.Annotation


@dataclass(frozen=True)
class _Item:
    contributor: int
    shape: annotation_pb2.Shape


def _canon(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _vote(values: Sequence[str]) -> tuple[str, int]:
    """Majority value and its votes; ties go to the smallest value (sort order)."""
    counts = Counter(values)
    best = max(counts.values())
    return min(v for v, c in counts.items() if c == best), best


def _attributes(shapes: Sequence[annotation_pb2.Shape]) -> dict[str, str]:
    """Per attribute key: the majority canonical JSON value among the shapes that set it."""
    keys = sorted({k for s in shapes for k in s.attributes})
    out: dict[str, str] = {}
    for key in keys:
        values = [_canon(json_format.MessageToDict(s.attributes[key])) for s in shapes if key in s.attributes]
        out[key] = _vote(values)[0]
    return out


def _set_attributes(shape: annotation_pb2.Shape, voted: dict[str, str]) -> None:
    shape.ClearField("attributes")
    for key, raw in voted.items():
        json_format.ParseDict(json.loads(raw), shape.attributes[key])


def aggregate(
    contributions: Sequence[Contribution], consensus: Consensus
) -> tuple[annotation_pb2.Annotation, list[consensus_pb2.ObjectAgreement], float, list[str]]:
    """(fused annotation, objects, task agreement, unfused kinds) of a round's annotations."""
    n = len(contributions)
    fused = annotation_pb2.Annotation()
    objects: list[consensus_pb2.ObjectAgreement] = []
    scores: list[float] = []
    unfused: set[str] = set()
    _classifications(contributions, fused, objects, scores)
    groups: dict[tuple[str, str], list[_Item]] = {}
    for ci, c in enumerate(contributions):
        for shape in c.annotation.shapes:
            kind: str = shape.WhichOneof("geometry") or ""
            if kind == "classification":
                continue
            if kind not in CLUSTER_KINDS:
                unfused.add(kind or "shape without geometry")
                continue
            groups.setdefault((shape.label, kind), []).append(_Item(ci, shape))
        if c.annotation.tracks:
            unfused.add("tracks")
    scoring = Scoring(schema=consensus.schema)
    quorum = consensus.quorum_for(n)
    for (label, kind), items in sorted(groups.items()):
        threshold = (
            1.0
            if kind in EXACT_KINDS
            else consensus.oks_threshold
            if kind in OKS_KINDS
            else consensus.iou_threshold
        )
        sim = _similarities(kind, items, scoring)
        for members in _clusters(items, sim, threshold):
            agreement = len(members) / n * _tightness(members, sim)
            scores.append(agreement)
            keep = len(members) >= quorum
            shape, method = _fuse(kind, [items[i] for i in members], members, sim)
            obj = consensus_pb2.ObjectAgreement(
                label=label,
                kind=kind,
                agreement=agreement,
                annotation_ids=[contributions[items[i].contributor].annotation_id for i in members],
                shape_ids=[items[i].shape.id for i in members],
                fused=keep,
                method=method,
                note="" if keep else f"below quorum {quorum}",
            )
            objects.append(obj)
            if keep:
                shape.id = f"consensus-{len(fused.shapes)}"
                shape.score = agreement
                fused.shapes.append(shape)
    _segmentation(contributions, quorum, fused, objects, scores)
    agreement = sum(scores) / len(scores) if scores else 1.0
    return fused, objects, agreement, sorted(unfused)


def _classifications(
    contributions: Sequence[Contribution],
    fused: annotation_pb2.Annotation,
    objects: list[consensus_pb2.ObjectAgreement],
    scores: list[float],
) -> None:
    votes: list[tuple[int, str, list[annotation_pb2.Shape]]] = []
    for ci, c in enumerate(contributions):
        shapes = [s for s in c.annotation.shapes if s.WhichOneof("geometry") == "classification"]
        if shapes:
            votes.append((ci, "+".join(sorted({s.label for s in shapes})), shapes))
    if not votes:
        return
    winner, count = _vote([v for _, v, _ in votes])
    agreement = count / len(votes)
    scores.append(agreement)
    objects.append(
        consensus_pb2.ObjectAgreement(
            label=winner,
            kind="classification",
            field="label",
            agreement=agreement,
            annotation_ids=[contributions[ci].annotation_id for ci, _, _ in votes],
            fused=True,
            method="majority_vote",
            value=winner,
        )
    )
    backing = [shapes[0] for _, v, shapes in votes if v == winner and len(shapes) == 1]
    keys = sorted({k for s in backing for k in s.attributes})
    voted: dict[str, str] = {}
    for key in keys:
        values = [
            (ci, _canon(json_format.MessageToDict(shapes[0].attributes[key])))
            for ci, v, shapes in votes
            if v == winner and len(shapes) == 1 and key in shapes[0].attributes
        ]
        value, n = _vote([x for _, x in values])
        voted[key] = value
        share = n / len(values)
        scores.append(share)
        objects.append(
            consensus_pb2.ObjectAgreement(
                label=winner,
                kind="classification",
                field=f"attributes.{key}",
                agreement=share,
                annotation_ids=[contributions[ci].annotation_id for ci, _ in values],
                fused=True,
                method="majority_vote",
                value=value,
            )
        )
    for label in winner.split("+"):
        shape = fused.shapes.add(id=f"consensus-{len(fused.shapes)}", label=label)
        shape.classification.SetInParent()
        if "+" not in winner:
            _set_attributes(shape, voted)


def _similarities(kind: str, items: Sequence[_Item], scoring: Scoring) -> list[list[float]]:
    """Symmetric similarity matrix; OKS (asymmetric: its area and sigmas follow the first shape)
    is averaged over both directions; shapes of one annotation are never compared."""
    n = len(items)
    sim = [[0.0] * n for _ in range(n)]
    for i in range(n):
        sim[i][i] = 1.0
        for j in range(i + 1, n):
            if items[i].contributor == items[j].contributor:
                continue
            sim[i][j] = sim[j][i] = symmetric_similarity(kind, items[i].shape, items[j].shape, scoring)
    return sim


def _clusters(items: Sequence[_Item], sim: list[list[float]], threshold: float) -> list[list[int]]:
    """Greedy complete-linkage clusters, most similar pair first; each holds at most one shape of
    an annotation. Ordered by their first member."""
    n = len(items)
    pairs = sorted(
        (-sim[i][j], i, j)
        for i in range(n)
        for j in range(i + 1, n)
        if items[i].contributor != items[j].contributor and sim[i][j] >= threshold
    )
    owner = list(range(n))
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    for _, i, j in pairs:
        a, b = owner[i], owner[j]
        if a == b:
            continue
        if {items[x].contributor for x in members[a]} & {items[y].contributor for y in members[b]}:
            continue
        if any(sim[x][y] < threshold for x in members[a] for y in members[b]):
            continue
        keep, gone = min(a, b), max(a, b)
        members[keep] = sorted(members[keep] + members.pop(gone))
        for x in members[keep]:
            owner[x] = keep
    return [members[k] for k in sorted(members)]


def _tightness(members: Sequence[int], sim: list[list[float]]) -> float:
    if len(members) < 2:
        return 1.0
    values = [sim[x][y] for i, x in enumerate(members) for y in members[i + 1 :]]
    return sum(values) / len(values)


def _medoid(members: Sequence[int], sim: list[list[float]]) -> int:
    """Position (in `members`) of the member with the highest mean similarity to the others."""
    if len(members) < 2:
        return 0
    best, best_score = 0, -1.0
    for pos, x in enumerate(members):
        score = sum(sim[x][y] for y in members if y != x) / (len(members) - 1)
        if score > best_score:
            best, best_score = pos, score
    return best


def _fuse(
    kind: str, items: Sequence[_Item], members: Sequence[int], sim: list[list[float]]
) -> tuple[annotation_pb2.Shape, str]:
    shapes = [it.shape for it in items]
    out = annotation_pb2.Shape(label=shapes[0].label)
    if kind == "box":
        weights = [max(s.score, 0.0) for s in shapes]
        method = "weighted_mean" if sum(weights) > 0 else "mean"
        if sum(weights) <= 0:
            weights = [1.0] * len(shapes)
        total = sum(weights)
        out.box.x = sum(w * s.box.x for w, s in zip(weights, shapes, strict=True)) / total
        out.box.y = sum(w * s.box.y for w, s in zip(weights, shapes, strict=True)) / total
        out.box.width = sum(w * s.box.width for w, s in zip(weights, shapes, strict=True)) / total
        out.box.height = sum(w * s.box.height for w, s in zip(weights, shapes, strict=True)) / total
    elif kind == "rotated_box":
        method = "mean"
        k = len(shapes)
        r = out.rotated_box
        r.cx = sum(s.rotated_box.cx for s in shapes) / k
        r.cy = sum(s.rotated_box.cy for s in shapes) / k
        r.width = sum(s.rotated_box.width for s in shapes) / k
        r.height = sum(s.rotated_box.height for s in shapes) / k
        r.angle = math.atan2(
            sum(math.sin(s.rotated_box.angle) for s in shapes),
            sum(math.cos(s.rotated_box.angle) for s in shapes),
        )
    elif kind in OKS_KINDS:
        method = "weighted_mean"
        lists = [s.keypoints.points if kind == "keypoints" else s.skeleton.points for s in shapes]
        target = out.keypoints.points if kind == "keypoints" else out.skeleton.points
        if kind == "skeleton":
            out.skeleton.definition = shapes[0].skeleton.definition
        names: list[str] = []
        for points in lists:
            names.extend(p.name for p in points if p.name not in names)
        for name in names:
            found = [p for points in lists for p in points if p.name == name]
            weights = [_WEIGHT.get(p.visibility, 0.0) for p in found]
            total = sum(weights)
            point = target.add(name=name)
            if total <= 0:
                continue  # nobody labelled it: not labelled
            point.x = sum(w * p.x for w, p in zip(weights, found, strict=True)) / total
            point.y = sum(w * p.y for w, p in zip(weights, found, strict=True)) / total
            labelled = [p.visibility for p in found if p.visibility != annotation_pb2.VISIBILITY_NOT_LABELED]
            counts = Counter(labelled)
            best = max(counts.values())
            point.visibility = max(v for v, c in counts.items() if c == best)  # ties: visible
    else:
        method = "medoid"
        out.CopyFrom(shapes[_medoid(members, sim)])
    _set_attributes(out, _attributes(shapes))
    return out, method


def _segmentation(
    contributions: Sequence[Contribution],
    quorum: int,
    fused: annotation_pb2.Annotation,
    objects: list[consensus_pb2.ObjectAgreement],
    scores: list[float],
) -> None:
    from consumers.quality import mask_iou_rle

    by_class: dict[str, list[tuple[int, annotation_pb2.RleMask]]] = {}
    for ci, c in enumerate(contributions):
        for cls in c.annotation.segmentation.classes:
            by_class.setdefault(cls.label, []).append((ci, cls.mask))
    n = len(contributions)
    for label in sorted(by_class):
        masks = by_class[label]
        k = len(masks)
        sim = [[1.0] * k for _ in range(k)]
        for i in range(k):
            for j in range(i + 1, k):
                a, b = masks[i][1], masks[j][1]
                try:
                    value = mask_iou_rle(
                        {"counts": list(a.counts), "size": [a.height, a.width]},
                        {"counts": list(b.counts), "size": [b.height, b.width]},
                    )
                except ValueError:
                    value = 0.0
                sim[i][j] = sim[j][i] = value
        members = list(range(k))
        agreement = k / n * _tightness(members, sim)
        scores.append(agreement)
        keep = k >= quorum
        objects.append(
            consensus_pb2.ObjectAgreement(
                label=label,
                kind="segmentation",
                agreement=agreement,
                annotation_ids=[contributions[ci].annotation_id for ci, _ in masks],
                fused=keep,
                method="medoid",
                note="" if keep else f"below quorum {quorum}",
            )
        )
        if keep:
            fused.segmentation.classes.add(label=label).mask.CopyFrom(masks[_medoid(members, sim)][1])


# ------------------------------------------------------------------ the task's decision


def consensus_events(state: TaskState, annotation_id: str, consensus: Consensus | None) -> list[Message]:
    """Called by the task aggregate after applying the submission of `annotation_id`: when it
    completes the round's N independent annotations (N >= 2, once per round, a project with a
    consensus policy), `ConsensusComputed`, followed on low agreement by the `ReviewRouted` that
    escalates the submitted work to the first review stage (the caller then skips its normal
    routing). Otherwise nothing."""
    if consensus is None or state.gold is not None or state.overlap < 2 or state.round in state.consensus:
        return []
    live = state.live_annotations
    if len(live) != state.overlap or all(a.annotation_id != annotation_id for a in live):
        return []
    contributions = [Contribution(a.annotation_id, a.author_id, a.annotation) for a in live]
    fused, objects, agreement, unfused = aggregate(contributions, consensus)
    escalated = agreement < consensus.min_agreement
    computed = consensus_pb2.ConsensusComputed(
        task_id=state.task_id,
        project_id=state.project_id,
        round=state.round,
        method=consensus.method,
        annotation=fused,
        agreement=agreement,
        objects=objects,
        annotation_ids=[c.annotation_id for c in contributions],
        escalated=escalated,
        iou_threshold=consensus.iou_threshold,
        min_agreement=consensus.min_agreement,
        quorum=consensus.quorum_for(len(contributions)),
        oks_threshold=consensus.oks_threshold,
        unfused_kinds=unfused,
    )
    index = next_stage(state.pipeline, 0)
    if not escalated or index < 0:
        return [computed]
    stage = state.pipeline.stages[index]
    name = stage_name(stage)
    computed.escalation_stage = name
    ann = state.annotations[annotation_id]
    routed = events_pb2.ReviewRouted(
        task_id=state.task_id,
        annotation_id=annotation_id,
        version=ann.version,
        author_id=ann.author_id,
        project_id=state.project_id,
        stage=name,
        stage_index=index,
        kind=stage.kind,
        sampled=True,
        rate=1.0,
        sample_point=sample_point(state.pipeline.sampling_seed, state.task_id, annotation_id, name),
        escalated=True,
    )
    return [computed, routed]
