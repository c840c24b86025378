"""Agreement statistics from the agreement view's tables (`projections.views.agreement`).

The view keeps sufficient statistics; these functions sum their shards and compute Cohen's kappa
and percent agreement (per pair, pooled per annotator and per class), Fleiss' kappa, Krippendorff's
alpha (nominal, and ordinal / interval when every category is a number) and the mean IoU / OKS of
matched shapes, with the same conventions as `consumers.quality` (undefined → None). Pure reads.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coordinator.domain.gold import OKS_KINDS
from projections.base import Doc, ProjectionStore, unshard
from projections.views.agreement import PROJECT_KEY, SEP

Table = dict[tuple[str, str], float]


@dataclass
class Stats:
    """A project's statistics with the shards summed."""

    fleiss: dict[int, tuple[int, dict[str, float], dict[str, float]]] = field(default_factory=dict)
    coincidence: Table = field(default_factory=dict)
    pa_sum: float = 0.0
    pa_items: int = 0
    pairs: dict[tuple[str, str], Table] = field(default_factory=dict)
    shapes: dict[tuple[str, str], dict[tuple[str, str], list[float]]] = field(default_factory=dict)


def _split(key: str) -> tuple[str, str]:
    a, _, b = key.partition(SEP)
    return a, b


def load(store: ProjectionStore, project_id: str) -> Stats:
    out = Stats()
    for sk, doc in store.scan("agreement_stats", project_id):
        key = unshard(sk)
        if key == PROJECT_KEY:
            for m, group in doc["fleiss"].items():
                items, sq, tot = out.fleiss.get(int(m), (0, {}, {}))
                sq, tot = dict(sq), dict(tot)
                for c, v in group["sq"].items():
                    sq[c] = sq.get(c, 0) + v
                for c, v in group["tot"].items():
                    tot[c] = tot.get(c, 0) + v
                out.fleiss[int(m)] = (items + int(group["items"]), sq, tot)
            for k, v in doc["coincidence"].items():
                out.coincidence[_split(k)] = out.coincidence.get(_split(k), 0.0) + float(v)
            out.pa_sum += float(doc["pa_sum"])
            out.pa_items += int(doc["pa_items"])
        else:
            pair = (str(doc["a"]), str(doc["b"]))
            table = out.pairs.setdefault(pair, {})
            for k, v in doc["table"].items():
                table[_split(k)] = table.get(_split(k), 0.0) + float(v)
            shapes = out.shapes.setdefault(pair, {})
            for k, cell in doc["shapes"].items():
                acc = shapes.setdefault(_split(k), [0.0, 0.0, 0.0])
                acc[0] += cell["matched"]
                acc[1] += cell["unmatched"]
                acc[2] += cell["sum_sim"]
    return out


# ------------------------------------------------------------------ statistics


def _div(num: float, den: float) -> float | None:
    return num / den if den != 0 else None


def cohen_from_table(table: Mapping[tuple[str, str], float]) -> float | None:
    """Cohen's kappa of a contingency table (rows: the first rater), as sklearn's
    `cohen_kappa_score` over the categories seen."""
    cats = sorted({c for pair in table for c in pair})
    if not cats:
        return None
    index = {c: i for i, c in enumerate(cats)}
    conf = np.zeros((len(cats), len(cats)))
    for (a, b), n in table.items():
        conf[index[a], index[b]] += n
    n = conf.sum()
    if n == 0:
        return None
    expected = np.outer(conf.sum(axis=1), conf.sum(axis=0)) / n
    w = 1.0 - np.eye(len(cats))
    den = float((w * expected).sum())
    if den == 0:
        return None
    return 1.0 - float((w * conf).sum()) / den


def percent_from_table(table: Mapping[tuple[str, str], float]) -> float | None:
    n = sum(table.values())
    return _div(sum(v for (a, b), v in table.items() if a == b), n)


def alpha_from_coincidence(o_table: Mapping[tuple[str, str], float], level: str = "nominal") -> float | None:
    """Krippendorff's alpha from a coincidence matrix (as `consumers.quality.krippendorff_alpha`);
    ordinal and interval need numeric categories (else None)."""
    cats = sorted({c for pair in o_table for c in pair})
    if level != "nominal":
        try:
            values = {c: float(c) for c in cats}
        except ValueError:
            return None
        cats = sorted(cats, key=lambda c: values[c])
    if len(cats) <= 1:
        return None
    index = {c: i for i, c in enumerate(cats)}
    o = np.zeros((len(cats), len(cats)))
    for (a, b), count in o_table.items():
        o[index[a], index[b]] += count
    n_v = o.sum(axis=0)
    n = n_v.sum()
    if n <= 1:
        return None
    e = (np.outer(n_v, n_v) - np.diag(n_v)) / (n - 1.0)
    idx = np.arange(len(cats))
    if level == "nominal":
        d = 1.0 - np.eye(len(cats))
    elif level == "interval":
        v = np.array([float(c) for c in cats])
        d = (v[:, None] - v[None, :]) ** 2
    else:
        cum = np.concatenate([[0.0], np.cumsum(n_v)])
        lo = np.minimum(idx[:, None], idx[None, :])
        hi = np.maximum(idx[:, None], idx[None, :])
        d = (cum[hi + 1] - cum[lo] - (n_v[:, None] + n_v[None, :]) / 2.0) ** 2
    den = float((e * d).sum())
    if den == 0:
        return None
    return 1.0 - float((o * d).sum()) / den


def fleiss_from_group(items: int, m: int, sq: Mapping[str, float], tot: Mapping[str, float]) -> float | None:
    """Fleiss' kappa of `items` items with `m` ratings each (as statsmodels' `fleiss_kappa`)."""
    if items <= 0 or m < 2:
        return None
    total = items * m
    p_mean = (sum(sq.values()) - total) / (total * (m - 1.0))
    p_exp = sum((v / total) ** 2 for v in tot.values())
    return _div(p_mean - p_exp, 1.0 - p_exp)


def _binary(table: Mapping[tuple[str, str], float], label: str) -> Table:
    out: Table = {}
    for (a, b), n in table.items():
        key = (str(a == label), str(b == label))
        out[key] = out.get(key, 0.0) + n
    return out


def _symmetric(tables: Iterable[Mapping[tuple[str, str], float]]) -> Table:
    out: Table = {}
    for table in tables:
        for (a, b), n in table.items():
            out[(a, b)] = out.get((a, b), 0.0) + n
            out[(b, a)] = out.get((b, a), 0.0) + n
    return out


def _oriented(stats: Stats, person: str) -> Table:
    """The pooled table of every pair with `person`, `person`'s categories first."""
    out: Table = {}
    for (a, b), table in stats.pairs.items():
        if person not in (a, b):
            continue
        for (x, y), n in table.items():
            key = (x, y) if a == person else (y, x)
            out[key] = out.get(key, 0.0) + n
    return out


def _categorical(table: Mapping[tuple[str, str], float], pairs: int) -> Doc:
    n = sum(table.values())
    return {
        "items": int(n),
        "pairs": pairs,
        "percent_agreement": percent_from_table(table),
        "cohen_kappa": cohen_from_table(table),
    }


def _shape_rows(cells: Iterable[dict[tuple[str, str], list[float]]], label: str = "") -> list[Doc]:
    acc: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for shapes in cells:
        for key, (m, u, s) in shapes.items():
            if label and key[0] != label:
                continue
            a = acc[key]
            a[0] += m
            a[1] += u
            a[2] += s
    rows: list[Doc] = []
    for (lab, kind), (m, u, s) in sorted(acc.items()):
        rows.append(
            {
                "label": lab,
                "kind": kind,
                "metric": "oks" if kind in OKS_KINDS else "iou",
                "matched": int(m),
                "unmatched": int(u),
                "mean_similarity": _div(s, m),
                "match_rate": _div(2 * m, 2 * m + u),
            }
        )
    return rows


def project_categorical(stats: Stats, label: str = "") -> Doc:
    """Project-level (or one class, one-vs-rest) categorical agreement."""
    pooled: Table = {}
    for table in stats.pairs.values():
        for key, n in table.items() if not label else _binary(table, label).items():
            pooled[key] = pooled.get(key, 0.0) + n
    out = _categorical(pooled, sum(1 for t in stats.pairs.values() if t))
    out["items"] = stats.pa_items
    coincidence = stats.coincidence
    if label:
        coincidence = {}
        for (a, b), v in stats.coincidence.items():
            key = (str(a == label), str(b == label))
            coincidence[key] = coincidence.get(key, 0.0) + v
    else:
        out["percent_agreement"] = _div(stats.pa_sum, stats.pa_items)
    # Fleiss over the items with the most common number of ratings (ties: more ratings)
    fleiss: float | None = None
    raters = 0
    if stats.fleiss:
        raters = max(stats.fleiss, key=lambda m: (stats.fleiss[m][0], m))
        items, sq, tot = stats.fleiss[raters]
        if label:
            # one-vs-rest: sum over items of n_ic² + (m - n_ic)²
            sq_c, tot_c = sq.get(label, 0.0), tot.get(label, 0.0)
            sq = {"yes": sq_c, "no": sq_c + items * raters * raters - 2 * raters * tot_c}
            tot = {"yes": tot_c, "no": items * raters - tot_c}
        fleiss = fleiss_from_group(items, raters, sq, tot)
    out["fleiss_kappa"] = fleiss
    out["fleiss_raters"] = raters
    out["alpha_nominal"] = alpha_from_coincidence(coincidence, "nominal")
    out["alpha_ordinal"] = None if label else alpha_from_coincidence(coincidence, "ordinal")
    out["alpha_interval"] = None if label else alpha_from_coincidence(coincidence, "interval")
    return out


def agreement(
    store: ProjectionStore,
    project_id: str,
    *,
    label: str = "",
    person_id: str = "",
    other_person_id: str = "",
) -> Doc:
    """The agreement report as a dict (the API maps it onto `AgreementReport`): `categorical`
    and `shapes` for the scope asked for (project, class, person or pair), plus `classes`,
    `annotators` and `pairs` rows within it. Undefined numbers are None."""
    stats = load(store, project_id)
    if person_id and other_person_id:
        a, b = sorted((person_id, other_person_id))
        table = stats.pairs.get((a, b), {})
        if person_id != a:
            table = {(y, x): n for (x, y), n in table.items()}
        if label:
            table = _binary(table, label)
        cat = _categorical(table, 1 if table else 0)
        cat["alpha_nominal"] = alpha_from_coincidence(_symmetric([table]), "nominal")
        return {
            "categorical": cat,
            "shapes": _shape_rows([stats.shapes.get((a, b), {})], label),
            "classes": [],
            "annotators": [],
            "pairs": [],
        }
    if person_id:
        table = _oriented(stats, person_id)
        if label:
            table = _binary(table, label)
        mine = [(a, b) for (a, b) in stats.pairs if person_id in (a, b)]
        pairs = []
        for a, b in sorted(mine):
            other = b if a == person_id else a
            sub = agreement_from(stats, person_id, other, label)
            pairs.append({"person_id": person_id, "other_person_id": other, **sub})
        return {
            "categorical": _categorical(table, len(mine)),
            "shapes": _shape_rows([stats.shapes.get(p, {}) for p in mine], label),
            "classes": _class_rows(stats, label, {p: stats.pairs[p] for p in mine}),
            "annotators": [],
            "pairs": pairs,
        }
    people = sorted({p for pair in stats.pairs for p in pair})
    annotators = []
    for person in people:
        table = _oriented(stats, person)
        if label:
            table = _binary(table, label)
        mine = [p for p in stats.pairs if person in p]
        annotators.append(
            {
                "person_id": person,
                "categorical": _categorical(table, len(mine)),
                "shapes": _shape_rows([stats.shapes.get(p, {}) for p in mine], label),
            }
        )
    pairs = [
        {"person_id": a, "other_person_id": b, **agreement_from(stats, a, b, label)}
        for (a, b) in sorted(stats.pairs)
    ]
    return {
        "categorical": project_categorical(stats, label),
        "shapes": _shape_rows(stats.shapes.values(), label),
        "classes": _class_rows(stats, label, stats.pairs),
        "annotators": annotators,
        "pairs": pairs,
    }


def agreement_from(stats: Stats, a: str, b: str, label: str = "") -> Doc:
    key = (min(a, b), max(a, b))
    table = stats.pairs.get(key, {})
    if a != key[0]:
        table = {(y, x): n for (x, y), n in table.items()}
    if label:
        table = _binary(table, label)
    cat = _categorical(table, 1 if table else 0)
    cat["alpha_nominal"] = alpha_from_coincidence(_symmetric([table]), "nominal")
    return {"categorical": cat, "shapes": _shape_rows([stats.shapes.get(key, {})], label)}


def _class_rows(stats: Stats, label: str, pairs: Mapping[tuple[str, str], Table]) -> list[Doc]:
    pooled = _symmetric(pairs.values())
    labels = sorted(
        {c for pair in pooled for c in pair} | {k[0] for p in pairs for k in stats.shapes.get(p, {})}
    )
    rows: list[Doc] = []
    for c in labels:
        if label and c != label:
            continue
        row_c = sum(n for (a, _), n in pooled.items() if a == c)
        col_c = sum(n for (_, b), n in pooled.items() if b == c)
        rows.append(
            {
                "label": c,
                "specific_agreement": _div(2 * pooled.get((c, c), 0.0), row_c + col_c),
                "cohen_kappa": cohen_from_table(_binary(pooled, c)) if pooled else None,
                "shapes": _shape_rows([stats.shapes.get(p, {}) for p in pairs], c),
            }
        )
    return rows


# ------------------------------------------------------------------ for dashboards and Dawid-Skene


def agreement_summary(store: ProjectionStore, project_id: str) -> dict[str, Any]:
    """Per-annotator agreement of a project, for dashboards. Cheap: one partition scan.

    Returns::

        {
          "project_id": str,
          "items": int,                     # task rounds with at least two categorical ratings
          "percent_agreement": float|None,  # mean over those items of the agreeing rater pairs
          "fleiss_kappa": float|None,       # over the items with the most common rater count
          "alpha_nominal": float|None,      # Krippendorff's alpha, nominal
          "annotators": {
            person_id: {
              "pairs": int,                   # other annotators they share items with
              "items": int,                   # categorical items shared with someone (pair-counted)
              "percent_agreement": float|None,  # vs the others, pooled over their pairs
              "cohen_kappa": float|None,        # of that pooled table (the person's labels first)
              "matched_shapes": int,            # shapes matched with someone else's
              "mean_iou": float|None,           # mean IoU (OKS for keypoints) of those matches
            },
            ...
          },
        }

    None means undefined (no data, or 0/0). Numbers follow `consumers.quality`'s conventions.
    """
    stats = load(store, project_id)
    project = project_categorical(stats)
    people = sorted({p for pair in stats.pairs for p in pair})
    annotators: dict[str, Any] = {}
    for person in people:
        table = _oriented(stats, person)
        mine = [p for p in stats.pairs if person in p]
        matched = sum(cell[0] for p in mine for cell in stats.shapes.get(p, {}).values())
        sim = sum(cell[2] for p in mine for cell in stats.shapes.get(p, {}).values())
        annotators[person] = {
            "pairs": len(mine),
            "items": int(sum(table.values())),
            "percent_agreement": percent_from_table(table),
            "cohen_kappa": cohen_from_table(table),
            "matched_shapes": int(matched),
            "mean_iou": _div(sim, matched),
        }
    return {
        "project_id": project_id,
        "items": project["items"],
        "percent_agreement": project["percent_agreement"],
        "fleiss_kappa": project["fleiss_kappa"],
        "alpha_nominal": project["alpha_nominal"],
        "annotators": annotators,
    }


def categorical_items(store: ProjectionStore, project_id: str) -> list[tuple[str, int, dict[str, str]]]:
    """(task id, round, {person: category}) of every item with a categorical rating."""
    out: list[tuple[str, int, dict[str, str]]] = []
    for _, doc in store.scan("agreement_items", project_id):
        ratings = {
            str(r["person_id"]): str(r["category"]) for r in doc["ratings"] if r["category"] is not None
        }
        if ratings:
            out.append((str(doc["task_id"]), int(doc["round"]), ratings))
    return out


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
