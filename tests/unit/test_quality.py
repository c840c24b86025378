"""consumers.quality against reference implementations (sklearn, statsmodels, krippendorff, pycocotools)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

# The reference implementations (krippendorff, pycocotools, sklearn, statsmodels) are declared
# in the `test` extra and imported plainly: a missing one must fail the run, never skip it.
import krippendorff
import numpy as np
import pycocotools.cocoeval as cocoeval
import pycocotools.mask as coco_mask
import pytest
import sklearn.metrics as sk_metrics
import statsmodels.stats.inter_rater as inter_rater

from consumers import quality as q

TOL = 1e-9
Level = Literal["nominal", "ordinal", "interval"]

# pycocotools' Cython decode trips a numpy 2 DeprecationWarning that is not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"
)


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- percent agreement


def test_percent_agreement_hand_computed() -> None:
    r = np.array([[1, 1, 1], [1, 1, 2], [1, 2, np.nan], [3, np.nan, np.nan]])
    # item 0: 3/3 pairs, item 1: 1/3, item 2: 0/1, item 3 skipped.
    assert q.percent_agreement(r) == pytest.approx((1 + 1 / 3 + 0) / 3, abs=TOL)


def test_percent_agreement_sentinel_and_fleiss_pbar() -> None:
    rng = np.random.default_rng(0)
    r = rng.integers(0, 4, size=(50, 6)).astype(float)
    with_sentinel = r.copy()
    with_sentinel[0, :4] = -9
    with_nan = r.copy()
    with_nan[0, :4] = np.nan
    assert q.percent_agreement(with_sentinel, missing=-9) == pytest.approx(q.percent_agreement(with_nan))
    # Without missing values it equals Fleiss' P-bar.
    table = q.counts_from_ratings(r, [0, 1, 2, 3])
    p_bar = ((table * (table - 1)).sum(axis=1) / (6 * 5)).mean()
    assert q.percent_agreement(r) == pytest.approx(p_bar, abs=TOL)


def test_percent_agreement_errors() -> None:
    with pytest.raises(ValueError, match="ratings"):
        q.percent_agreement(np.empty((0, 3)))
    with pytest.raises(ValueError, match="ratings"):
        q.percent_agreement([[1, np.nan], [np.nan, 2]])


# --------------------------------------------------------------------------- Cohen's kappa


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
@pytest.mark.parametrize(("n", "k", "seed"), [(10, 2, 1), (57, 3, 2), (400, 5, 3), (1000, 9, 4)])
def test_cohen_kappa_matches_sklearn(weights: Any, n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, k, size=n)
    b = np.where(rng.random(n) < 0.6, a, rng.integers(0, k, size=n))
    assert q.cohen_kappa(a, b, weights=weights) == pytest.approx(
        sk_metrics.cohen_kappa_score(a, b, weights=weights), abs=TOL
    )


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_kappa_labels_order_and_subset(weights: Any) -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(0, 5, size=200)
    b = np.where(rng.random(200) < 0.5, a, rng.integers(0, 5, size=200))
    for labels in ([4, 2, 0, 1, 3], [0, 1, 2], [0, 1, 2, 3, 4, 5]):
        ref = sk_metrics.cohen_kappa_score(a, b, labels=labels, weights=weights)
        assert q.cohen_kappa(a, b, labels=labels, weights=weights) == pytest.approx(ref, abs=TOL)


def test_cohen_kappa_strings() -> None:
    a = ["cat", "dog", "cat", "bird", "dog", "cat"]
    b = ["cat", "dog", "dog", "bird", "dog", "bird"]
    assert q.cohen_kappa(a, b) == pytest.approx(sk_metrics.cohen_kappa_score(a, b), abs=TOL)


def test_cohen_kappa_edge_cases_match_sklearn() -> None:
    # Perfect agreement over two categories: 1. Single category: undefined -> nan in both.
    assert q.cohen_kappa([0, 1, 1], [0, 1, 1]) == 1.0
    for w in (None, "linear", "quadratic"):
        ref = _quiet(sk_metrics.cohen_kappa_score, [2, 2, 2], [2, 2, 2], weights=w)
        assert np.isnan(ref)
        assert np.isnan(q.cohen_kappa([2, 2, 2], [2, 2, 2], weights=w))
    with pytest.raises(ValueError, match="a is empty"):
        q.cohen_kappa([], [])
    with pytest.raises(ValueError, match="b is empty"):
        q.cohen_kappa([1], [])
    with pytest.raises(ValueError, match="weights"):
        q.cohen_kappa([1], [1], weights="cubic")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Fleiss' kappa


@pytest.mark.parametrize(("items", "raters", "k", "seed"), [(5, 2, 2, 0), (40, 3, 4, 1), (300, 7, 6, 2)])
def test_fleiss_kappa_matches_statsmodels(items: int, raters: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, size=(items, 1))
    ratings = np.where(rng.random((items, raters)) < 0.7, truth, rng.integers(0, k, size=(items, raters)))
    table = q.counts_from_ratings(ratings.astype(float), np.arange(k))
    assert table.shape == (items, k)
    assert (table.sum(axis=1) == raters).all()
    ref = inter_rater.fleiss_kappa(table, method="fleiss")
    assert q.fleiss_kappa(table) == pytest.approx(ref, abs=TOL)
    # statsmodels' own aggregation agrees with ours
    agg, _ = inter_rater.aggregate_raters(ratings, n_cat=k)
    np.testing.assert_array_equal(agg, table)


def test_fleiss_kappa_edge_cases() -> None:
    assert q.fleiss_kappa([[3, 0], [0, 3]]) == pytest.approx(
        _quiet(inter_rater.fleiss_kappa, [[3, 0], [0, 3]])
    )
    assert q.fleiss_kappa([[3, 0], [0, 3]]) == 1.0
    # single category: undefined, nan like statsmodels
    assert np.isnan(_quiet(inter_rater.fleiss_kappa, np.array([[3], [3]])))
    assert np.isnan(q.fleiss_kappa([[3], [3]]))
    with pytest.raises(ValueError, match="counts"):
        q.fleiss_kappa(np.empty((0, 2)))
    with pytest.raises(ValueError, match="same number of ratings"):
        q.fleiss_kappa([[2, 1], [1, 1]])
    with pytest.raises(ValueError, match="categories"):
        q.counts_from_ratings([[1, 2]], [])
    with pytest.raises(ValueError, match="not in categories"):
        q.counts_from_ratings([[1, 5]], [1, 2])


# --------------------------------------------------------------------------- Krippendorff's alpha


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
@pytest.mark.parametrize(
    ("raters", "units", "k", "p_missing", "seed"),
    [(2, 10, 3, 0.0, 0), (3, 30, 5, 0.2, 1), (6, 100, 4, 0.4, 2), (10, 250, 7, 0.6, 3)],
)
def test_krippendorff_matches_package(
    level: Level, raters: int, units: int, k: int, p_missing: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, k + 1, size=(1, units))
    noise = rng.integers(-1, 2, size=(raters, units))
    data = np.clip(truth + np.where(rng.random((raters, units)) < 0.5, noise, 0), 1, k).astype(float)
    data[rng.random(data.shape) < p_missing] = np.nan
    ref = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
    assert q.krippendorff_alpha(data, level) == pytest.approx(ref, abs=TOL)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_krippendorff_value_domain_and_non_integer_values(level: Level) -> None:
    rng = np.random.default_rng(11)
    domain = [0.5, 1.0, 2.5, 4.0, 10.0]
    data = rng.choice(domain, size=(4, 60))
    data[rng.random(data.shape) < 0.3] = np.nan
    ref = krippendorff.alpha(reliability_data=data, level_of_measurement=level, value_domain=domain)
    assert q.krippendorff_alpha(data, level, value_domain=domain) == pytest.approx(ref, abs=TOL)


def test_krippendorff_wikipedia_example_and_errors() -> None:
    # Krippendorff (2011) example, documented in the krippendorff package doctests.
    nan = np.nan
    data = np.array(
        [
            [nan, nan, nan, nan, nan, 3, 4, 1, 2, 1, 1, 3, 3, nan, 3],
            [1, nan, 2, 1, 3, 3, 4, 3, nan, nan, nan, nan, nan, nan, nan],
            [nan, nan, 2, 1, 3, 4, 4, nan, 2, 1, 1, 3, 3, nan, 4],
        ]
    )
    assert round(q.krippendorff_alpha(data, "nominal"), 3) == 0.691
    assert round(q.krippendorff_alpha(data, "interval"), 3) == 0.811
    assert q.krippendorff_alpha([[1, 2, 3], [1, 2, 3]]) == 1.0
    with pytest.raises(ValueError, match="reliability_data"):
        q.krippendorff_alpha(np.empty((0, 0)))
    with pytest.raises(ValueError, match="more than one value"):
        q.krippendorff_alpha([[1, 1], [1, 1]])
    with pytest.raises(ValueError, match="at least two raters"):
        q.krippendorff_alpha([[1, nan], [nan, 2]])


# --------------------------------------------------------------------------- IoU: boxes, masks, RLE


@pytest.mark.parametrize(("n", "m", "seed"), [(1, 1, 0), (7, 13, 1), (50, 40, 2)])
def test_iou_boxes_matches_pycocotools(n: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = np.column_stack([rng.uniform(0, 50, (n, 2)), rng.uniform(1, 40, (n, 2))])
    b = np.column_stack([rng.uniform(0, 50, (m, 2)), rng.uniform(1, 40, (m, 2))])
    ref = coco_mask.iou(a, b, [0] * m)
    np.testing.assert_allclose(q.iou_boxes(a, b), ref, atol=TOL, rtol=0)
    assert q.iou_boxes(a[:1], a[:1])[0, 0] == pytest.approx(1.0)


def test_iou_boxes_errors() -> None:
    with pytest.raises(ValueError, match="a is empty"):
        q.iou_boxes(np.empty((0, 4)), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="b is empty"):
        q.iou_boxes([[0, 0, 1, 1]], [])


def _random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        masks[i, y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
        masks[i] ^= rng.random((h, w)) < 0.05
    return masks


@pytest.mark.parametrize(("h", "w", "seed"), [(1, 1, 0), (5, 7, 1), (32, 17, 2), (64, 64, 3)])
def test_rle_round_trip_and_iou_match_pycocotools(h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = _random_masks(rng, 6, h, w)
    masks[0] = False  # empty mask
    masks[1] = True  # full mask, starts with a foreground pixel -> leading 0 count
    rles = []
    for m in masks:
        counts = q.rle_encode(m)
        np.testing.assert_array_equal(q.rle_decode(counts, h, w), m)
        ref = coco_mask.frPyObjects({"counts": counts, "size": [h, w]}, h, w)
        np.testing.assert_array_equal(coco_mask.decode(ref).astype(bool), m)
        # Same RLE as pycocotools' own encoder (compare through its compressed form).
        assert coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] == ref["counts"]
        rles.append(({"counts": counts, "size": [h, w]}, ref))
    assert q.rle_encode(masks[1])[0] == 0
    for ra, ca in rles:
        for rb, cb in rles:
            want = coco_mask.iou([ca], [cb], [0])[0, 0]
            assert q.mask_iou_rle(ra, rb) == pytest.approx(want, abs=TOL)
            ma = q.rle_decode(ra["counts"], h, w)
            mb = q.rle_decode(rb["counts"], h, w)
            assert q.iou_masks(ma, mb) == pytest.approx(want, abs=TOL)


def test_mask_errors() -> None:
    with pytest.raises(ValueError, match="mask is empty"):
        q.rle_encode(np.zeros((0, 3), dtype=bool))
    with pytest.raises(ValueError, match="counts is empty"):
        q.rle_decode([], 2, 2)
    with pytest.raises(ValueError, match="height"):
        q.rle_decode([1, 2], 2, 2)
    with pytest.raises(ValueError, match="a is empty"):
        q.iou_masks(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="rle_b"):
        q.mask_iou_rle({"counts": [4], "size": [2, 2]}, {"size": [2, 2]})


# --------------------------------------------------------------------------- IoU: polygons


def _rect(x: float, y: float, w: float, h: float) -> np.ndarray:
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])


def test_polygon_iou_equals_box_iou_for_rectangles() -> None:
    rng = np.random.default_rng(5)
    a = np.column_stack([rng.uniform(0, 20, (8, 2)), rng.uniform(1, 15, (8, 2))])
    b = np.column_stack([rng.uniform(0, 20, (9, 2)), rng.uniform(1, 15, (9, 2))])
    pa = [_rect(*r) for r in a]
    pb = [_rect(*r)[::-1] for r in b]  # clockwise on one side
    np.testing.assert_allclose(q.iou_polygons(pa, pb), coco_mask.iou(a, b, [0] * 9), atol=TOL, rtol=0)


def test_polygon_intersection_non_convex_exact() -> None:
    # L-shape: [0,2]x[0,2] minus [1,2]x[1,2] -> area 3.
    ell = np.array([[0, 0], [2, 0], [2, 1], [1, 1], [1, 2], [0, 2]], dtype=float)
    assert q.polygon_area(ell) == pytest.approx(3.0)
    # The square [0.5,2]x[0.5,2] overlaps the L in [0.5,2]x[0.5,1] + [0.5,1]x[1,2] = 0.75 + 0.5.
    sq = _rect(0.5, 0.5, 1.5, 1.5)
    assert q.polygon_intersection_area(ell, sq) == pytest.approx(1.25, abs=TOL)
    assert q.polygon_intersection_area(ell, ell) == pytest.approx(3.0, abs=TOL)
    # Square in the notch only: no overlap.
    assert q.polygon_intersection_area(ell, _rect(1.2, 1.2, 0.5, 0.5)) == pytest.approx(0.0, abs=TOL)
    iou = q.iou_polygons([ell], [sq, ell[::-1], np.vstack([ell, ell[:1]])])
    np.testing.assert_allclose(iou, [[1.25 / (3 + 2.25 - 1.25), 1.0, 1.0]], atol=TOL)


def _star(rng: np.random.Generator, n: int, cx: float, cy: float) -> np.ndarray:
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(2, 10, n)
    return np.column_stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)])


def _point_in_polygon(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    inside = np.zeros(px.shape, dtype=bool)
    x, y = poly[:, 0], poly[:, 1]
    for i in range(len(poly)):
        x0, y0, x1, y1 = x[i - 1], y[i - 1], x[i], y[i]
        crosses = (y0 > py) != (y1 > py)
        xint = x0 + (py - y0) * (x1 - x0) / np.where(y1 == y0, 1, y1 - y0)
        inside ^= crosses & (px < xint)
    return inside


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_polygon_iou_non_convex_against_fine_sampling(seed: int) -> None:
    # Star-shaped random polygons are simple but generally non-convex; compare with a
    # dense point-sampling estimate (independent of the clipping code).
    rng = np.random.default_rng(seed)
    p = _star(rng, 12, 0, 0)
    r = _star(rng, 9, 2, 1)
    g = np.linspace(-15, 15, 1500)
    px, py = np.meshgrid(g, g)
    cell = (g[1] - g[0]) ** 2
    ip, ir = _point_in_polygon(px, py, p), _point_in_polygon(px, py, r)
    inter_est = (ip & ir).sum() * cell
    assert q.polygon_intersection_area(p, r) == pytest.approx(inter_est, rel=5e-3, abs=0.05)
    assert q.polygon_area(p) == pytest.approx(ip.sum() * cell, rel=5e-3)
    assert q.iou_polygons([p], [r])[0, 0] == pytest.approx((ip & ir).sum() / (ip | ir).sum(), abs=5e-3)
    # symmetry and invariance under translation/orientation
    assert q.polygon_intersection_area(r, p) == pytest.approx(q.polygon_intersection_area(p, r), abs=TOL)
    shifted = q.polygon_intersection_area(p + 100, r[::-1] + 100)
    assert shifted == pytest.approx(q.polygon_intersection_area(p, r), abs=1e-8)


def test_polygon_errors() -> None:
    with pytest.raises(ValueError, match="a is empty"):
        q.iou_polygons([], [_rect(0, 0, 1, 1)])
    with pytest.raises(ValueError, match="b is empty"):
        q.iou_polygons([_rect(0, 0, 1, 1)], [])
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        q.polygon_area(np.zeros((3, 3)))


# --------------------------------------------------------------------------- OKS


COCO_SIGMAS = (
    np.array(
        [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
    )
    / 10.0
)


def _coco_oks(
    gts: np.ndarray,
    vis: np.ndarray,
    areas: np.ndarray,
    bboxes: np.ndarray,
    dts: np.ndarray,
    sigmas: np.ndarray,
) -> np.ndarray:
    """Run pycocotools' real COCOeval.computeOks on in-memory annotations; returns (D, G)."""
    ev = cocoeval.COCOeval(iouType="keypoints")
    ev.params.kpt_oks_sigmas = sigmas
    for j in range(gts.shape[0]):
        kp = np.column_stack([gts[j], vis[j]]).ravel().tolist()
        ev._gts[1, 1].append({"keypoints": kp, "area": float(areas[j]), "bbox": bboxes[j].tolist()})
    for i in range(dts.shape[0]):
        kp = np.column_stack([dts[i], np.ones(len(sigmas))]).ravel().tolist()
        ev._dts[1, 1].append({"keypoints": kp, "score": 1.0 - i * 1e-3})  # keep input order
    return np.asarray(ev.computeOks(1, 1))


@pytest.mark.parametrize(("g", "d", "seed"), [(1, 1, 0), (4, 6, 1), (10, 20, 2)])
def test_oks_matches_cocoeval(g: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = len(COCO_SIGMAS)
    gts = rng.uniform(0, 200, (g, k, 2))
    vis = rng.integers(0, 3, (g, k))
    vis[0] = 0  # one ground truth without visible keypoints: COCO's bbox fallback
    bboxes = np.column_stack([rng.uniform(0, 100, (g, 2)), rng.uniform(20, 100, (g, 2))])
    areas = rng.uniform(100, 5000, g)
    base = gts[rng.integers(0, g, d)]
    dts = base + rng.normal(0, 8, base.shape)
    ref = _coco_oks(gts, vis, areas, bboxes, dts, COCO_SIGMAS)
    got = q.oks_matrix(gts, dts, sigmas=COCO_SIGMAS, areas=areas, visibility=vis, gt_bboxes=bboxes)
    np.testing.assert_allclose(got, ref.T, atol=TOL, rtol=0)
    for j in range(g):
        for i in range(d):
            one = q.oks(
                gts[j], dts[i], sigmas=COCO_SIGMAS, area=areas[j], visibility=vis[j], gt_bbox=bboxes[j]
            )
            assert one == pytest.approx(ref[i, j], abs=TOL)


def test_oks_perfect_and_errors() -> None:
    gt = np.arange(6.0).reshape(3, 2)
    sig = np.array([0.05, 0.05, 0.05])
    assert q.oks(gt, gt, sigmas=sig, area=100.0, visibility=[2, 1, 0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="gt_bbox"):
        q.oks(gt, gt, sigmas=sig, area=100.0, visibility=[0, 0, 0])
    with pytest.raises(ValueError, match="sigmas is empty"):
        q.oks(gt, gt, sigmas=[], area=1.0, visibility=[])
    with pytest.raises(ValueError, match="gt is empty"):
        q.oks_matrix(np.empty((0, 3, 2)), gt[None], sigmas=sig, areas=[], visibility=np.empty((0, 3)))


# --------------------------------------------------------------------------- aggregation


def test_majority_vote() -> None:
    labels = np.array([[0, 0, 1], [2, 1, -1], [-1, -1, -1], [3, 3, 1], [1, 2, 2]])
    np.testing.assert_array_equal(q.majority_vote(labels), [0, 1, -1, 3, 2])
    np.testing.assert_array_equal(q.majority_vote(labels, tie_break="none"), [0, -1, -1, 3, 2])
    np.testing.assert_array_equal(q.majority_vote([[-1, -1]]), [-1])
    with pytest.raises(ValueError, match="labels is empty"):
        q.majority_vote(np.empty((0, 3), dtype=int))
    with pytest.raises(ValueError, match="tie_break"):
        q.majority_vote(labels, tie_break="random")  # type: ignore[arg-type]


def _simulate(
    seed: int, n_items: int = 300, k: int = 5, n_ann: int = 8, per_item: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    acc = np.linspace(0.55, 0.95, n_ann)
    conf = np.empty((n_ann, k, k))
    for j in range(n_ann):
        off = rng.dirichlet(np.ones(k - 1), size=k) * (1 - acc[j])
        for c in range(k):
            conf[j, c] = np.insert(off[c], c, acc[j])
    truth = rng.integers(0, k, n_items)
    responses = np.full((n_items, n_ann), -1)
    for i in range(n_items):
        for j in rng.choice(n_ann, per_item, replace=False):
            responses[i, j] = rng.choice(k, p=conf[j, truth[i]])
    return responses, truth, conf


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dawid_skene_recovers_annotator_accuracy(seed: int) -> None:
    responses, truth, conf = _simulate(seed)
    res = q.dawid_skene(responses, 5)
    assert res.posteriors.shape == (300, 5)
    assert res.confusion.shape == (8, 5, 5)
    assert res.priors.shape == (5,)
    np.testing.assert_allclose(res.posteriors.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(res.confusion.sum(axis=2), 1.0, atol=1e-12)
    assert res.priors.sum() == pytest.approx(1.0)
    assert res.converged
    # "Truth" is each annotator's realised accuracy in this sample: with ~190 labels per
    # annotator the nominal accuracy itself is only known to about +-0.035 (1 sd), so no
    # estimator can be held to 0.05 of it. Accuracy = prior-weighted confusion diagonal.
    given = responses >= 0
    realised = np.array([(responses[given[:, j], j] == truth[given[:, j]]).mean() for j in range(8)])
    est_acc = (res.confusion.diagonal(axis1=1, axis2=2) * res.priors).sum(axis=1)
    np.testing.assert_allclose(est_acc, realised, atol=0.05)
    np.testing.assert_allclose(est_acc, conf.diagonal(axis1=1, axis2=2).mean(axis=1), atol=0.1)
    # Per-class diagonals (~37 items per annotator and class) within 0.1 of the realised ones.
    per_class = np.array(
        [[(responses[given[:, j] & (truth == c), j] == c).mean() for c in range(5)] for j in range(8)]
    )
    np.testing.assert_allclose(res.confusion.diagonal(axis1=1, axis2=2), per_class, atol=0.1)
    ds_acc = (res.posteriors.argmax(axis=1) == truth).mean()
    mv_acc = (q.majority_vote(responses) == truth).mean()
    assert ds_acc > mv_acc


def test_dawid_skene_options_and_errors() -> None:
    responses, _, _ = _simulate(4, n_items=60)
    init = np.full((60, 5), 0.2)
    init[np.arange(60), q.majority_vote(responses)] = 1.0
    init /= init.sum(axis=1, keepdims=True)
    res = q.dawid_skene(responses, 5, init=init, smoothing=0.0, max_iter=3)
    assert res.n_iter <= 3
    assert np.isfinite(res.posteriors).all()
    # An item nobody labelled gets the prior as posterior.
    with_empty = np.vstack([responses, np.full((1, 8), -1)])
    r2 = q.dawid_skene(with_empty, 5)
    np.testing.assert_allclose(r2.posteriors[-1], r2.priors, atol=1e-12)
    with pytest.raises(ValueError, match="responses is empty"):
        q.dawid_skene(np.empty((0, 3), dtype=int), 2)
    with pytest.raises(ValueError, match="n_classes"):
        q.dawid_skene([[0, 5]], 3)
    with pytest.raises(ValueError, match="init"):
        q.dawid_skene([[0, 1]], 2, init="random")
