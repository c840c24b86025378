"""Live inter-annotator agreement: sufficient statistics, updated as annotations are submitted.

An *item* is one round of a task; its *ratings* are the annotations submitted in that round, one
per person (a person's later submission in the same round, after abandoning, is ignored). A
rating's *category* is the label of its classification shape (several: their sorted labels joined
by "+"; none: no categorical rating). Gold and training tasks are left out. Edits do not change
a rating: agreement is about independent first judgements (a rework follows a reviewer's
rejection and a correction is a reviewer's own answer, so neither is independent; consensus, by
contrast, fuses the live versions, docs/consensus-and-agreement.md).

Shapes of a pair match when their IoU (OKS for keypoints) reaches the threshold recorded on the
ratings' `AnnotationSubmitted` (`match_iou_threshold` / `match_oks_threshold`: the project's
consensus policy at submission; the stricter of the two ratings' values); with none recorded
(0: no consensus policy, or logs written before) any overlap matches.

Collections
- "agreement_task"  pk=task_id, sk="" → {project_id, round, gold}
- "agreement_items" pk=project_id, sk=f"{task_id}#{round:06d}" →
      {task_id, round, ratings: [{person_id, annotation_id, category, shapes: [{label, kind, shape}],
                                  iou?, oks?}]}
      (`shape`: the protobuf Shape, base64; `iou` / `oks`: the matching thresholds, when
      recorded). Written only by its task's events.
- "agreement_stats" pk=project_id, sk=f"{key}|{shard}", sharded by log partition
  (`projections.base.shard_of`; queries sum the shards):
    key "project" → {fleiss: {m: {items, sq: {cat: Σ n_ic²}, tot: {cat: Σ n_ic}}},
                     coincidence: {"c\\x1fk": o_ck}, pa_sum, pa_items}
        Fleiss' groups by the item's number of ratings m; Krippendorff's coincidence matrix
        o_ck = Σ_u (n_uc n_uk - [c = k] n_uc) / (m_u - 1); per-item percent agreement summed.
    key f"pair~{a}~{b}" (a < b) → {a, b, table: {"ca\\x1fcb": count},
                     shapes: {"label\\x1fkind": {matched, unmatched, sum_sim}}}
        The pair's contingency table (a's category first) and, per class and geometry kind, their
        shapes matched greedily (most similar first, similarity > 0: IoU, or OKS for keypoints).

When an item gains a rating, its old contribution to the per-item statistics (Fleiss, the
coincidence matrix, percent agreement) is subtracted and the new one added; pair statistics only
grow. Every row is written by the events of one task (one partition) or is a per-partition
shard, so partitions may be applied in any order (the single-writer rule, docs/architecture.md).
Queries (`projections.agreement_queries`) compute the statistics from these tables.
"""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any, Final

from coordinator._pb.labelweave.events.v1 import annotation_pb2
from coordinator.domain.gold import OKS_KINDS, SCOREABLE, Scoring, greedy_pairs, symmetric_similarity
from coordinator.eventlog.base import RecordedEvent
from projections.base import SHARD_SEP, Doc, ViewTx, shard_of
from projections.views.taskstate import imported_of, payload_kind

SEP: Final = "\x1f"
PROJECT_KEY: Final = "project"
SHAPE_KINDS: Final = SCOREABLE - {"classification"}
"""Geometry kinds matched shape by shape; a classification is the item's category instead."""
_SCORING: Final = Scoring()


def item_sk(task_id: str, round_: int) -> str:
    return f"{task_id}#{round_:06d}"


def pair_key(a: str, b: str) -> str:
    return f"pair~{a}~{b}"


def category_of(annotation: annotation_pb2.Annotation) -> str | None:
    labels = sorted({s.label for s in annotation.shapes if s.WhichOneof("geometry") == "classification"})
    return "+".join(labels) if labels else None


def similarity(kind: str, a: annotation_pb2.Shape, b: annotation_pb2.Shape) -> float:
    """IoU (OKS for keypoints, averaged over both directions; exact for texts) of two shapes."""
    return symmetric_similarity(kind, a, b, _SCORING)


def match(
    kind: str, xs: list[annotation_pb2.Shape], ys: list[annotation_pb2.Shape], threshold: float = 0.0
) -> list[float]:
    """Similarities of the greedily matched pairs (most similar first; ties: earlier shapes); a
    pair is a candidate when its similarity is > 0 and >= `threshold`."""
    return greedy_pairs(
        [
            (-s, i, j)
            for i, x in enumerate(xs)
            for j, y in enumerate(ys)
            if (s := similarity(kind, x, y)) > 0 and s >= threshold
        ]
    )


def _shape(raw: Doc) -> annotation_pb2.Shape:
    return annotation_pb2.Shape.FromString(base64.b64decode(raw["shape"]))


def _bump(d: dict[str, Any], key: str, by: float) -> None:
    value = d.get(key, 0) + by
    if value == 0:
        d.pop(key, None)  # an emptied cell leaves no trace, so every order gives the same row
    else:
        d[key] = value


def _item_stats(counts: Counter[str]) -> tuple[int, dict[str, float], float]:
    """(m, coincidences, percent agreement) of one item's category counts."""
    m = sum(counts.values())
    o: dict[str, float] = {}
    if m < 2:
        return m, o, 0.0
    for c, nc in counts.items():
        for k, nk in counts.items():
            value = (nc * nk - (nc if c == k else 0)) / (m - 1.0)
            if value:
                o[f"{c}{SEP}{k}"] = value
    pa = sum(n * (n - 1) for n in counts.values()) / (m * (m - 1.0))
    return m, o, pa


def _apply_item(stats: Doc, counts: Counter[str], sign: int) -> None:
    m, o, pa = _item_stats(counts)
    if m < 2:
        return
    group = stats["fleiss"].setdefault(str(m), {"items": 0, "sq": {}, "tot": {}})
    group["items"] += sign
    for c, n in counts.items():
        _bump(group["sq"], c, sign * n * n)
        _bump(group["tot"], c, sign * n)
    if group["items"] == 0:
        del stats["fleiss"][str(m)]
    for key, value in o.items():
        _bump(stats["coincidence"], key, sign * value)
    stats["pa_sum"] += sign * pa
    stats["pa_items"] += sign


class AgreementView:
    name: str = "agreement"
    collections: tuple[str, ...] = ("agreement_task", "agreement_items", "agreement_stats")

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = payload_kind(event)
        if kind == "task_imported":
            imp = imported_of(event)
            tx.put(
                "agreement_task", imp.task_id, "", {"project_id": imp.project_id, "round": 1, "gold": False}
            )
        elif kind == "gold_task_imported":
            g = env.gold_task_imported
            tx.put(
                "agreement_task", g.task.task_id, "", {"project_id": g.project_id, "round": 1, "gold": True}
            )
        elif kind == "task_reopened":
            r = env.task_reopened
            doc = tx.get("agreement_task", r.task_id)
            if doc is not None:
                tx.put("agreement_task", r.task_id, "", {**doc, "round": int(r.round)})
        elif kind == "annotation_submitted":
            self._submitted(event, env.annotation_submitted, tx)

    def _submitted(self, event: RecordedEvent, p: Any, tx: ViewTx) -> None:
        task = tx.get("agreement_task", p.task_id)
        if task is None or task.get("gold"):
            return
        project_id = str(task["project_id"])
        sk = item_sk(p.task_id, int(task["round"]))
        item = tx.get("agreement_items", project_id, sk) or {
            "task_id": p.task_id,
            "round": int(task["round"]),
            "ratings": [],
        }
        ratings: list[Doc] = item["ratings"]
        if any(r["person_id"] == p.person_id for r in ratings):
            return
        annotation: annotation_pb2.Annotation = p.annotation
        category = category_of(annotation)
        shapes = [
            {
                "label": s.label,
                "kind": s.WhichOneof("geometry"),
                "shape": base64.b64encode(s.SerializeToString(deterministic=True)).decode(),
            }
            for s in annotation.shapes
            if s.WhichOneof("geometry") in SHAPE_KINDS
        ]
        rating: Doc = {
            "person_id": p.person_id,
            "annotation_id": p.annotation_id,
            "category": category,
            "shapes": shapes,
        }
        if p.match_iou_threshold > 0:
            rating["iou"] = float(p.match_iou_threshold)
        if p.match_oks_threshold > 0:
            rating["oks"] = float(p.match_oks_threshold)
        shard = shard_of(event)
        if category is not None:
            before = Counter(str(r["category"]) for r in ratings if r["category"] is not None)
            after = before + Counter({category: 1})
            key = f"{PROJECT_KEY}{SHARD_SEP}{shard}"
            stats = tx.get("agreement_stats", project_id, key) or {
                "fleiss": {},
                "coincidence": {},
                "pa_sum": 0.0,
                "pa_items": 0,
            }
            _apply_item(stats, before, -1)
            _apply_item(stats, after, +1)
            tx.put("agreement_stats", project_id, key, stats)
        for other in ratings:
            self._pair(tx, project_id, shard, rating, other)
        tx.put("agreement_items", project_id, sk, {**item, "ratings": [*ratings, rating]})

    @staticmethod
    def _pair(tx: ViewTx, project_id: str, shard: str, new: Doc, other: Doc) -> None:
        a, b = sorted((new, other), key=lambda r: str(r["person_id"]))
        touched = False
        key = f"{pair_key(a['person_id'], b['person_id'])}{SHARD_SEP}{shard}"
        doc = tx.get("agreement_stats", project_id, key) or {
            "a": a["person_id"],
            "b": b["person_id"],
            "table": {},
            "shapes": {},
        }
        if a["category"] is not None and b["category"] is not None:
            _bump(doc["table"], f"{a['category']}{SEP}{b['category']}", 1)
            touched = True
        groups: dict[tuple[str, str], tuple[list[annotation_pb2.Shape], list[annotation_pb2.Shape]]] = {}
        for side, rating in ((0, a), (1, b)):
            for raw in rating["shapes"]:
                groups.setdefault((raw["label"], raw["kind"]), ([], []))[side].append(_shape(raw))
        for (label, kind), (xs, ys) in sorted(groups.items()):
            field = "oks" if kind in OKS_KINDS else "iou"
            threshold = max(float(a.get(field, 0.0)), float(b.get(field, 0.0)))
            sims = match(kind, xs, ys, threshold)
            cell = doc["shapes"].setdefault(
                f"{label}{SEP}{kind}", {"matched": 0, "unmatched": 0, "sum_sim": 0.0}
            )
            cell["matched"] += len(sims)
            cell["unmatched"] += len(xs) + len(ys) - 2 * len(sims)
            cell["sum_sim"] += sum(sims)
            touched = True
        if touched:
            tx.put("agreement_stats", project_id, key, doc)
