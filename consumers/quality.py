"""Agreement and accuracy metrics for annotation quality (pure numpy, no I/O).

Why this module exists: consumers of the event log compute inter-annotator
agreement (to decide when a task needs more judgements), accuracy against gold
data (IoU, OKS) and label aggregation (majority vote, Dawid-Skene) without
pulling scikit-learn, statsmodels, krippendorff or pycocotools into the service.
Each function follows the convention of one reference implementation, named in
its docstring, and the unit tests check agreement with that reference to 1e-9.

Conventions shared by all functions:

* Missing categorical ratings are ``np.nan`` in float arrays (or the ``missing``
  sentinel where a function offers one); missing labels in integer label matrices
  (``majority_vote``, ``dawid_skene``) are ``-1``.
* Empty input raises ``ValueError`` whose message names the offending argument.
* Where a statistic is undefined (0/0, e.g. kappa when everybody uses a single
  category) the result is ``nan``, as in the references; no warning is emitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "DawidSkeneResult",
    "cohen_kappa",
    "counts_from_ratings",
    "dawid_skene",
    "fleiss_kappa",
    "iou_boxes",
    "iou_masks",
    "iou_polygons",
    "krippendorff_alpha",
    "majority_vote",
    "mask_iou_rle",
    "oks",
    "oks_matrix",
    "percent_agreement",
    "polygon_area",
    "polygon_intersection_area",
    "rle_decode",
    "rle_encode",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def _as_float_2d(x: npt.ArrayLike, name: str, missing: float | None = None) -> FloatArray:
    arr = np.array(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if missing is not None and not np.isnan(missing):
        arr[arr == missing] = np.nan
    return arr


def _safe_div(num: float, den: float) -> float:
    """num/den, or nan when den == 0 (the references' value for undefined statistics)."""
    return float(num / den) if den != 0 else float("nan")


# --------------------------------------------------------------------------- agreement


def percent_agreement(ratings: npt.ArrayLike, *, missing: float | None = None) -> float:
    """Observed pairwise agreement of an (items x raters) rating matrix.

    For every item with at least two ratings, the share of agreeing rater pairs
    among its ``m*(m-1)/2`` pairs is computed; the result is the unweighted mean
    over those items (the ``P-bar`` of Fleiss' kappa, generalised to a varying
    number of raters). Items with fewer than two ratings are skipped. Missing
    ratings are ``np.nan`` or equal to ``missing``.
    """
    arr = _as_float_2d(ratings, "ratings", missing)
    per_item: list[float] = []
    for row in arr:
        vals = row[~np.isnan(row)]
        m = vals.size
        if m < 2:
            continue
        _, counts = np.unique(vals, return_counts=True)
        per_item.append(float((counts * (counts - 1)).sum()) / (m * (m - 1)))
    if not per_item:
        raise ValueError("ratings has no item with at least two ratings")
    return float(np.mean(per_item))


def cohen_kappa(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    *,
    labels: Sequence[Any] | npt.ArrayLike | None = None,
    weights: Literal["linear", "quadratic"] | None = None,
) -> float:
    """Cohen's kappa of two raters, matching ``sklearn.metrics.cohen_kappa_score``.

    ``labels`` fixes the category order (relevant for weighted kappa, where the
    disagreement weight of categories ``i`` and ``j`` is ``|i-j|`` or ``(i-j)**2``
    of their positions); pairs in which either label is not in ``labels`` are
    ignored, as in scikit-learn. Without ``labels`` the sorted union of observed
    labels is used. Undefined cases (e.g. both raters always use the same single
    category) give ``nan``, scikit-learn's default ``replace_undefined_by``.
    """
    x = np.asarray(a)
    y = np.asarray(b)
    if x.size == 0:
        raise ValueError("a is empty")
    if y.size == 0:
        raise ValueError("b is empty")
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be 1-D of equal length, got {x.shape} and {y.shape}")
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    cats = np.unique(np.concatenate([x, y])) if labels is None else np.asarray(labels)
    if cats.size == 0:
        raise ValueError("labels is empty")
    k = cats.size
    index = {v.item() if hasattr(v, "item") else v: i for i, v in enumerate(cats)}
    confusion = np.zeros((k, k), dtype=np.float64)
    for u, v in zip(x.tolist(), y.tolist(), strict=True):
        i = index.get(u)
        j = index.get(v)
        if i is not None and j is not None:
            confusion[i, j] += 1.0
    n = confusion.sum()
    if n == 0:
        return float("nan")
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / n
    pos = np.arange(k, dtype=np.float64)
    if weights is None:
        w = 1.0 - np.eye(k)
    elif weights == "linear":
        w = np.abs(pos[:, None] - pos[None, :])
    else:
        w = (pos[:, None] - pos[None, :]) ** 2
    den = float((w * expected).sum())
    if den == 0:
        return float("nan")
    return 1.0 - float((w * confusion).sum()) / den


def counts_from_ratings(ratings: npt.ArrayLike, categories: Sequence[float] | npt.ArrayLike) -> IntArray:
    """Turn an (items x raters) rating matrix into an (items x categories) count table.

    Missing ratings (``np.nan``) are not counted. A rating that is not one of
    ``categories`` raises ``ValueError`` rather than being dropped silently,
    because a silently shrunken table would bias Fleiss' kappa.
    """
    arr = _as_float_2d(ratings, "ratings")
    cats = np.asarray(categories, dtype=np.float64).ravel()
    if cats.size == 0:
        raise ValueError("categories is empty")
    present = ~np.isnan(arr)
    unknown = present & ~np.isin(arr, cats)
    if unknown.any():
        bad = np.unique(arr[unknown])
        raise ValueError(f"ratings contains values not in categories: {bad.tolist()}")
    table: IntArray = (arr[:, :, None] == cats[None, None, :]).sum(axis=1).astype(np.int64)
    return table


def fleiss_kappa(counts: npt.ArrayLike) -> float:
    """Fleiss' kappa of an (items x categories) count table.

    Matches ``statsmodels.stats.inter_rater.fleiss_kappa(table, method="fleiss")``.
    Every item must have the same number ``n >= 2`` of ratings (Fleiss' design);
    otherwise ``ValueError`` (use ``krippendorff_alpha`` for missing ratings).
    A table where all ratings fall in one category gives ``nan`` (0/0).
    """
    table = _as_float_2d(counts, "counts")
    if np.isnan(table).any() or (table < 0).any():
        raise ValueError("counts must be non-negative and free of nan")
    per_item = table.sum(axis=1)
    n = per_item[0]
    if not np.all(per_item == n):
        raise ValueError("counts must have the same number of ratings in every item (row)")
    if n < 2:
        raise ValueError("counts must have at least two ratings per item")
    p_cat = table.sum(axis=0) / table.sum()
    p_item = ((table * table).sum(axis=1) - n) / (n * (n - 1.0))
    p_mean = float(p_item.mean())
    p_exp = float((p_cat * p_cat).sum())
    return _safe_div(p_mean - p_exp, 1.0 - p_exp)


def krippendorff_alpha(
    reliability_data: npt.ArrayLike,
    level: Literal["nominal", "ordinal", "interval"] = "nominal",
    value_domain: Sequence[float] | npt.ArrayLike | None = None,
) -> float:
    """Krippendorff's alpha from a (raters x units) matrix with ``np.nan`` for missing.

    Same layout and conventions as ``krippendorff.alpha``: the coincidence matrix
    ``o[c, k] = sum_u (n_uc * n_uk - [c == k] * n_uc) / (m_u - 1)`` over units with
    ``m_u >= 2`` values, expected coincidences ``e = (n_c n_k - [c == k] n_c)/(n - 1)``
    and ``alpha = 1 - sum(o * d) / sum(e * d)``, where ``d`` is the squared
    difference metric: nominal ``[c != k]``, interval ``(v_c - v_k)**2`` and
    ordinal ``(sum_{g between c and k} n_g - (n_c + n_k) / 2)**2``.
    ``value_domain`` (ordered values) defaults to the sorted distinct observed
    values; for ordinal data unobserved domain values do not change the result.
    """
    data = _as_float_2d(reliability_data, "reliability_data")
    if level not in ("nominal", "ordinal", "interval"):
        raise ValueError(f"level must be 'nominal', 'ordinal' or 'interval', got {level!r}")
    observed = np.unique(data[~np.isnan(data)])
    if value_domain is None:
        domain = observed
    else:
        domain = np.asarray(value_domain, dtype=np.float64).ravel()
        if not np.isin(observed, domain).all():
            raise ValueError("reliability_data contains values outside value_domain")
    if domain.size <= 1:
        raise ValueError("value_domain must contain more than one value")
    # value_counts[u, c]: how many raters gave unit u the value c.
    value_counts = (data.T[:, :, None] == domain[None, None, :]).sum(axis=1).astype(np.float64)
    m_u = value_counts.sum(axis=1)
    pairable = m_u >= 2
    if not pairable.any():
        raise ValueError("reliability_data has no unit with values from at least two raters")
    vc = value_counts[pairable]
    outer = vc[:, :, None] * vc[:, None, :]
    idx = np.arange(domain.size)
    outer[:, idx, idx] -= vc
    o = (outer / (m_u[pairable] - 1.0)[:, None, None]).sum(axis=0)
    n_v = o.sum(axis=0)
    n = n_v.sum()
    e = (np.outer(n_v, n_v) - np.diag(n_v)) / (n - 1.0)
    if level == "nominal":
        d = 1.0 - np.eye(domain.size)
    elif level == "interval":
        d = (domain[:, None] - domain[None, :]) ** 2
    else:
        cum = np.concatenate([[0.0], np.cumsum(n_v)])
        lo = np.minimum(idx[:, None], idx[None, :])
        hi = np.maximum(idx[:, None], idx[None, :])
        between = cum[hi + 1] - cum[lo]
        d = (between - (n_v[:, None] + n_v[None, :]) / 2.0) ** 2
    return 1.0 - _safe_div(float((o * d).sum()), float((e * d).sum()))


# --------------------------------------------------------------------------- geometry


def iou_boxes(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes in COCO ``[x, y, width, height]`` form.

    Returns an (N, M) matrix equal to ``pycocotools.mask.iou(a, b, iscrowd=[0]*M)``.
    Boxes are continuous (no +1 pixel convention). A pair whose union is empty
    (two zero-area boxes) has IoU 0.
    """
    ba = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    bb = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if ba.shape[0] == 0:
        raise ValueError("a is empty")
    if bb.shape[0] == 0:
        raise ValueError("b is empty")
    ax0, ay0, aw, ah = ba.T[:, :, None]
    bx0, by0, bw, bh = bb.T[:, None, :]
    iw = np.minimum(ax0 + aw, bx0 + bw) - np.maximum(ax0, bx0)
    ih = np.minimum(ay0 + ah, by0 + bh) - np.maximum(ay0, by0)
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = aw * ah + bw * bh - inter
    out: FloatArray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return out


def _signed_area(p: FloatArray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _clip_convex(subject: list[tuple[float, float]], clip: FloatArray) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: clip ``subject`` by the convex counter-clockwise polygon ``clip``."""
    out = subject
    n = clip.shape[0]
    for i in range(n):
        if not out:
            break
        cx0, cy0 = float(clip[i, 0]), float(clip[i, 1])
        cx1, cy1 = float(clip[(i + 1) % n, 0]), float(clip[(i + 1) % n, 1])
        ex, ey = cx1 - cx0, cy1 - cy0
        inp = out
        out = []
        prev = inp[-1]
        s_prev = ex * (prev[1] - cy0) - ey * (prev[0] - cx0)
        for cur in inp:
            s_cur = ex * (cur[1] - cy0) - ey * (cur[0] - cx0)
            if s_cur >= 0:
                if s_prev < 0:
                    t = s_prev / (s_prev - s_cur)
                    out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
                out.append(cur)
            elif s_prev >= 0:
                t = s_prev / (s_prev - s_cur)
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            prev, s_prev = cur, s_cur
    return out


def _fan(p: FloatArray) -> list[tuple[float, FloatArray]]:
    """Fan triangles (p0, p_i, p_i+1) as (sign, counter-clockwise triangle), degenerate ones dropped."""
    tris: list[tuple[float, FloatArray]] = []
    for i in range(1, p.shape[0] - 1):
        t = p[[0, i, i + 1]]
        s = _signed_area(t)
        if s > 0:
            tris.append((1.0, t))
        elif s < 0:
            tris.append((-1.0, t[::-1].copy()))
    return tris


def _as_polygon(p: npt.ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be an (n, 2) array of vertices, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if arr.shape[0] > 1 and np.array_equal(arr[0], arr[-1]):
        arr = arr[:-1]
    return arr


def polygon_area(p: npt.ArrayLike) -> float:
    """Area of a simple polygon given as an (n, 2) vertex array, either orientation (shoelace)."""
    return abs(_signed_area(_as_polygon(p, "p")))


def polygon_intersection_area(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Exact intersection area of two simple (possibly non-convex) polygons.

    Method (no rasterisation, no shapely): fanning a polygon from its first
    vertex writes its winding-number function as a signed sum of triangle
    indicators, ``w_P = sum_i s_i 1[T_i]`` almost everywhere. Hence
    ``area(P & Q) = |sum_ij s_i t_j area(T_i & U_j)|``, and each triangle-triangle
    intersection is convex, computed exactly with Sutherland-Hodgman clipping.
    Cost is O(n*m) triangle clips. Vertex order may be clockwise or counter-
    clockwise; a repeated closing vertex is allowed. For self-intersecting input
    the result is the winding-number-weighted overlap, not a set area.
    """
    pp = _as_polygon(p, "p")
    qq = _as_polygon(q, "q")
    total = 0.0
    fan_q = _fan(qq)
    for s, tri in _fan(pp):
        subject = [(float(x), float(y)) for x, y in tri]
        for t, clip in fan_q:
            poly = _clip_convex(subject, clip)
            if len(poly) >= 3:
                total += s * t * abs(_signed_area(np.asarray(poly)))
    return abs(total)


def iou_polygons(a: Sequence[npt.ArrayLike], b: Sequence[npt.ArrayLike]) -> FloatArray:
    """Pairwise IoU of two lists of simple polygons ((n, 2) vertex arrays) -> (len(a), len(b)).

    Exact for general simple polygons, convex or not (see
    ``polygon_intersection_area``); no rasterisation, so it differs slightly from
    ``pycocotools``, which rasterises polygons to pixel masks first. A pair whose
    union has zero area has IoU 0.
    """
    if len(a) == 0:
        raise ValueError("a is empty")
    if len(b) == 0:
        raise ValueError("b is empty")
    pa = [_as_polygon(p, "a[i]") for p in a]
    pb = [_as_polygon(q, "b[j]") for q in b]
    area_a = [abs(_signed_area(p)) for p in pa]
    area_b = [abs(_signed_area(q)) for q in pb]
    out = np.zeros((len(pa), len(pb)), dtype=np.float64)
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            inter = polygon_intersection_area(p, q)
            union = area_a[i] + area_b[j] - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def iou_masks(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """IoU of two boolean masks of equal shape; two empty masks give 0 (as pycocotools)."""
    ma = np.asarray(a, dtype=bool)
    mb = np.asarray(b, dtype=bool)
    if ma.size == 0:
        raise ValueError("a is empty")
    if mb.size == 0:
        raise ValueError("b is empty")
    if ma.shape != mb.shape:
        raise ValueError(f"a and b must have the same shape, got {ma.shape} and {mb.shape}")
    union = int(np.count_nonzero(ma | mb))
    return int(np.count_nonzero(ma & mb)) / union if union else 0.0


def rle_encode(mask: npt.ArrayLike) -> list[int]:
    """COCO uncompressed RLE counts of a 2-D mask: column-major runs, first run counts zeros.

    The first count is 0 when the mask starts with a foreground pixel, as in
    pycocotools. Use ``{"counts": rle_encode(m), "size": [h, w]}`` for the COCO
    dict form.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    if m.size == 0:
        raise ValueError("mask is empty")
    flat = m.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return [int(r) for r in runs]


def rle_decode(counts: Sequence[int] | npt.ArrayLike, height: int, width: int) -> BoolArray:
    """Decode COCO uncompressed RLE counts (column-major, zeros first) into an (h, w) bool mask."""
    c = np.asarray(counts, dtype=np.int64).ravel()
    if c.size == 0:
        raise ValueError("counts is empty")
    if (c < 0).any():
        raise ValueError("counts must be non-negative")
    if int(c.sum()) != height * width:
        raise ValueError(f"counts sum to {int(c.sum())}, expected height*width = {height * width}")
    values = (np.arange(c.size) % 2).astype(bool)
    flat = np.repeat(values, c)
    return flat.reshape((height, width), order="F")


def _rle_parts(rle: Mapping[str, Any], name: str) -> tuple[IntArray, int]:
    try:
        counts = np.asarray(rle["counts"], dtype=np.int64).ravel()
        h, w = (int(v) for v in rle["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a COCO uncompressed RLE dict with 'counts' and 'size'") from exc
    if counts.size == 0:
        raise ValueError(f"{name} has empty counts")
    if int(counts.sum()) != h * w:
        raise ValueError(f"{name} counts do not sum to height*width")
    return counts, h * w


def mask_iou_rle(rle_a: Mapping[str, Any], rle_b: Mapping[str, Any]) -> float:
    """IoU of two COCO uncompressed RLEs ``{"counts": [...], "size": [h, w]}`` without decoding.

    Works on run boundaries only (O(runs)), so it is cheap for large masks; two
    empty masks give 0, as ``pycocotools.mask.iou`` with ``iscrowd=0``.
    """
    ca, na = _rle_parts(rle_a, "rle_a")
    cb, _ = _rle_parts(rle_b, "rle_b")
    if tuple(rle_a["size"]) != tuple(rle_b["size"]):
        raise ValueError("rle_a and rle_b must have the same size")
    ea = np.cumsum(ca)
    eb = np.cumsum(cb)
    starts = np.unique(np.concatenate([[0], ea[:-1], eb[:-1]]))
    ends = np.append(starts[1:], na)
    # A position p lies in run k = #(run ends <= p); odd runs are foreground.
    in_a = np.searchsorted(ea, starts, side="right") % 2 == 1
    in_b = np.searchsorted(eb, starts, side="right") % 2 == 1
    length = ends - starts
    union = int(length[in_a | in_b].sum())
    return int(length[in_a & in_b].sum()) / union if union else 0.0


# --------------------------------------------------------------------------- keypoints


def _oks_one(
    gt: FloatArray,
    dt: FloatArray,
    vars_: FloatArray,
    area: float,
    vis: FloatArray,
    bbox: FloatArray | None,
) -> float:
    visible = vis > 0
    if visible.any():
        dx = dt[:, 0] - gt[:, 0]
        dy = dt[:, 1] - gt[:, 1]
    else:
        if bbox is None:
            raise ValueError("gt has no visible keypoint (visibility > 0); pass gt_bbox for COCO's fallback")
        x0, x1 = bbox[0] - bbox[2], bbox[0] + 2 * bbox[2]
        y0, y1 = bbox[1] - bbox[3], bbox[1] + 2 * bbox[3]
        dx = np.maximum(0.0, x0 - dt[:, 0]) + np.maximum(0.0, dt[:, 0] - x1)
        dy = np.maximum(0.0, y0 - dt[:, 1]) + np.maximum(0.0, dt[:, 1] - y1)
    e = (dx**2 + dy**2) / vars_ / (area + np.spacing(1)) / 2
    if visible.any():
        e = e[visible]
    return float(np.sum(np.exp(-e)) / e.shape[0])


def _kp(x: npt.ArrayLike, name: str, k: int | None, batch: bool) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    nd = 3 if batch else 2
    if arr.ndim != nd or arr.shape[-1] not in (2, 3) or (k is not None and arr.shape[-2] != k):
        raise ValueError(f"{name} must have shape ({'N, ' if batch else ''}K, 2), got {arr.shape}")
    return arr[..., :2]


def oks(
    gt: npt.ArrayLike,
    dt: npt.ArrayLike,
    *,
    sigmas: npt.ArrayLike,
    area: float,
    visibility: npt.ArrayLike,
    gt_bbox: npt.ArrayLike | None = None,
) -> float:
    """COCO object keypoint similarity of one ground truth and one detection.

    ``gt`` and ``dt`` are (K, 2) keypoint coordinates (a third column is ignored),
    ``sigmas`` the per-keypoint constants exactly as in COCOeval's
    ``kpt_oks_sigmas`` (already divided by 10, e.g. 0.026 for the nose), ``area``
    the ground-truth segment area and ``visibility`` the (K,) COCO flags. Same
    formula as ``COCOeval.computeOks``: ``mean over v>0 of exp(-d^2 / (2 * area *
    (2*sigma)^2))``. If no keypoint is visible, COCO's fallback measures the
    distance to the box ``gt_bbox`` (xywh) enlarged by its size on every side;
    without ``gt_bbox`` that case raises ``ValueError``.
    """
    s = np.asarray(sigmas, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("sigmas is empty")
    g = _kp(gt, "gt", s.size, False)
    d = _kp(dt, "dt", s.size, False)
    v = np.asarray(visibility, dtype=np.float64).ravel()
    if v.size != s.size:
        raise ValueError(f"visibility must have {s.size} entries, got {v.size}")
    bb = None if gt_bbox is None else np.asarray(gt_bbox, dtype=np.float64).ravel()
    return _oks_one(g, d, (s * 2) ** 2, float(area), v, bb)


def oks_matrix(
    gt: npt.ArrayLike,
    dt: npt.ArrayLike,
    *,
    sigmas: npt.ArrayLike,
    areas: npt.ArrayLike,
    visibility: npt.ArrayLike,
    gt_bboxes: npt.ArrayLike | None = None,
) -> FloatArray:
    """OKS of every ground truth (G, K, 2) against every detection (D, K, 2) -> (G, D).

    ``areas`` is (G,), ``visibility`` (G, K) and ``gt_bboxes`` optional (G, 4); see
    ``oks``. Note the orientation: COCOeval's ``ious`` is the transpose, (D, G).
    """
    s = np.asarray(sigmas, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("sigmas is empty")
    g = _kp(gt, "gt", s.size, True)
    d = _kp(dt, "dt", s.size, True)
    ar = np.asarray(areas, dtype=np.float64).ravel()
    v = np.asarray(visibility, dtype=np.float64).reshape(g.shape[0], s.size)
    if ar.size != g.shape[0]:
        raise ValueError(f"areas must have {g.shape[0]} entries, got {ar.size}")
    bbs = None if gt_bboxes is None else np.asarray(gt_bboxes, dtype=np.float64).reshape(-1, 4)
    vars_ = (s * 2) ** 2
    out = np.empty((g.shape[0], d.shape[0]), dtype=np.float64)
    for i in range(g.shape[0]):
        for j in range(d.shape[0]):
            out[i, j] = _oks_one(g[i], d[j], vars_, float(ar[i]), v[i], None if bbs is None else bbs[i])
    return out


# --------------------------------------------------------------------------- aggregation


def _as_label_matrix(x: npt.ArrayLike, name: str) -> IntArray:
    arr = np.asarray(x)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (items x annotators) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{name} must contain integer class ids (-1 for missing)")
    out: IntArray = arr.astype(np.int64)
    if (out < -1).any():
        raise ValueError(f"{name} must contain class ids >= 0, or -1 for missing")
    return out


def majority_vote(
    labels: npt.ArrayLike,
    *,
    tie_break: Literal["lowest", "none"] = "lowest",
    n_classes: int | None = None,
) -> IntArray:
    """Most frequent label per item of an (items x annotators) int matrix (-1 = missing).

    Ties go to the lowest class id with ``tie_break="lowest"`` (deterministic, not
    random, so replays of the event log agree) or yield -1 with ``"none"``. Items
    without any label yield -1.
    """
    lab = _as_label_matrix(labels, "labels")
    if tie_break not in ("lowest", "none"):
        raise ValueError(f"tie_break must be 'lowest' or 'none', got {tie_break!r}")
    k = int(lab.max()) + 1 if n_classes is None else n_classes
    if k <= 0:
        return np.full(lab.shape[0], -1, dtype=np.int64)
    if lab.max() >= k:
        raise ValueError("labels contains a class id >= n_classes")
    votes = _vote_counts(lab, k)
    best = votes.max(axis=1)
    winner: IntArray = votes.argmax(axis=1).astype(np.int64)  # argmax returns the lowest tied index
    winner[best == 0] = -1
    if tie_break == "none":
        tied = (votes == best[:, None]).sum(axis=1) > 1
        winner[tied & (best > 0)] = -1
    return winner


def _vote_counts(lab: IntArray, k: int) -> FloatArray:
    votes = np.zeros((lab.shape[0], k), dtype=np.float64)
    rows, cols = np.nonzero(lab >= 0)
    np.add.at(votes, (rows, lab[rows, cols]), 1.0)
    return votes


@dataclass(frozen=True)
class DawidSkeneResult:
    """Output of ``dawid_skene``.

    ``posteriors`` (items x K): P(true class | labels); ``confusion``
    (annotators x K x K): row = true class, column = given label, rows sum to 1;
    ``priors`` (K,); ``log_likelihood`` of the observed labels at the final
    parameters (before the last E-step's posterior update); ``n_iter`` EM
    iterations run; ``converged`` whether the tolerance was met.
    """

    posteriors: FloatArray
    confusion: FloatArray
    priors: FloatArray
    log_likelihood: float
    n_iter: int
    converged: bool


def dawid_skene(
    responses: npt.ArrayLike,
    n_classes: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    init: Literal["majority"] | npt.ArrayLike = "majority",
    smoothing: float = 0.01,
) -> DawidSkeneResult:
    """Dawid-Skene EM estimate of true classes and per-annotator confusion matrices.

    ``responses`` is (items x annotators) with class ids in ``[0, n_classes)`` and
    -1 for "did not label". ``init="majority"`` starts from soft majority-vote
    posteriors (vote shares; unlabelled items uniform); an (items x K) array of
    initial posteriors may be given instead.

    Numerical stability: the E-step works in log space with a log-sum-exp
    normaliser, and the M-step adds ``smoothing`` pseudo-counts to every
    confusion cell and prior (a symmetric Dirichlet MAP estimate), so no
    probability is ever exactly 0 and ``log`` never sees 0. EM stops when the
    log-likelihood improves by less than ``tol * |log-likelihood|`` or after
    ``max_iter`` iterations.
    """
    lab = _as_label_matrix(responses, "responses")
    if n_classes < 1:
        raise ValueError("n_classes must be >= 1")
    if lab.max() >= n_classes:
        raise ValueError("responses contains a class id >= n_classes")
    if smoothing < 0:
        raise ValueError("smoothing must be >= 0")
    n_items, n_ann = lab.shape
    k = n_classes
    # onehot[i, j, l] = 1 if annotator j gave item i label l.
    onehot = np.zeros((n_items, n_ann, k), dtype=np.float64)
    ii, jj = np.nonzero(lab >= 0)
    onehot[ii, jj, lab[ii, jj]] = 1.0
    if isinstance(init, str):
        if init != "majority":
            raise ValueError(f"init must be 'majority' or an (items x K) array, got {init!r}")
        votes = onehot.sum(axis=1)
        tot = votes.sum(axis=1, keepdims=True)
        post = np.where(tot > 0, votes / np.where(tot > 0, tot, 1.0), 1.0 / k)
    else:
        post = np.asarray(init, dtype=np.float64)
        if post.shape != (n_items, k):
            raise ValueError(f"init must have shape {(n_items, k)}, got {post.shape}")
    prev_ll = -np.inf
    ll = -np.inf
    converged = False
    n_iter = 0
    priors = np.full(k, 1.0 / k)
    confusion = np.full((n_ann, k, k), 1.0 / k)
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported after the loop
        # M-step.
        priors = post.sum(axis=0) + smoothing
        priors /= priors.sum()
        confusion = np.einsum("ik,ijl->jkl", post, onehot) + smoothing
        row = confusion.sum(axis=2, keepdims=True)
        confusion = np.divide(confusion, row, out=np.full_like(confusion, 1.0 / k), where=row > 0)
        # E-step in log space (clipping keeps log finite even with smoothing=0).
        tiny = np.finfo(np.float64).tiny
        log_conf = np.log(np.maximum(confusion, tiny))
        log_prior = np.log(np.maximum(priors, tiny))
        # log_joint[i, c] = log pi_c + sum_j sum_l onehot[i, j, l] * log theta_j[c, l]
        log_joint = log_prior[None, :] + np.einsum("ijl,jcl->ic", onehot, log_conf)
        mx = log_joint.max(axis=1, keepdims=True)
        lse = mx + np.log(np.exp(log_joint - mx).sum(axis=1, keepdims=True))
        post = np.exp(log_joint - lse)
        ll = float(lse.sum())
        if np.isfinite(prev_ll) and abs(ll - prev_ll) <= tol * max(1.0, abs(ll)):
            converged = True
            break
        prev_ll = ll
    return DawidSkeneResult(
        posteriors=post,
        confusion=confusion,
        priors=priors,
        log_likelihood=ll,
        n_iter=n_iter,
        converged=converged,
    )
