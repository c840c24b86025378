"""The live agreement view (projections/views/agreement.py) and its queries: the incrementally
maintained statistics equal consumers.quality and the reference packages (scikit-learn,
statsmodels, krippendorff) computed on the full data to 1e-9, and the view obeys the
single-writer rule under any interleaving of log partitions."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

from consumers import quality
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.domain.commands import (
    ImportGoldTask,
    ImportTask,
    LeaseTask,
    ReopenTask,
    SubmitAnnotation,
    TaskCommand,
)
from coordinator.domain.review import resolve_pipeline
from coordinator.domain.task import TaskState, decide_task, evolve_task
from coordinator.eventlog.base import RecordedEvent
from projections import agreement_queries as aq
from projections.memory import MemoryStore
from projections.views.agreement import AgreementView
from tests.unit.viewkit import Recorder, apply_as_one_batch, apply_interleavings, repartition

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PROJECT = "proj"
PEOPLE = ["ann", "bob", "cid", "dan", "eve"]
CATS = ["1", "2", "3", "4"]


class History(Recorder):
    """Decides commands on per-task states and keeps the events as one partition's log."""

    def __init__(self) -> None:
        super().__init__(T0)
        self.tasks: dict[str, TaskState] = {}

    def do(self, cmd: TaskCommand) -> None:
        task_id = cmd.spec.task_id if isinstance(cmd, ImportTask | ImportGoldTask) else cmd.task_id
        state = self.tasks.get(task_id)
        self.now += timedelta(seconds=1)
        for payload in decide_task(state, cmd):
            state = evolve_task(state, payload)
            self.append(payload, stream=f"task:{task_id}", command_id=uuid.uuid4().hex, recorded_at=False)
        assert state is not None
        self.tasks[task_id] = state

    def imported(self, task_id: str, overlap: int) -> None:
        spec = M.TaskSpec(task_id=task_id, data_uri="s3://x", overlap=overlap)
        pipeline = resolve_pipeline(PROJECT, M.ProjectSettings(review_policy=M.REVIEW_POLICY_NONE))
        self.do(ImportTask(PROJECT, "b", spec, M.REVIEW_POLICY_NONE, 600, pipeline))

    def submit(self, task_id: str, person: str, shapes: list[A.Shape]) -> None:
        n = len(self.tasks[task_id].annotations)
        ann_id = f"A-{task_id}-{person}-{n}"
        self.do(LeaseTask(task_id, f"L-{ann_id}", person, frozenset(), self.now))
        self.do(
            SubmitAnnotation(
                task_id, f"L-{ann_id}", person, ann_id, A.Annotation(shapes=shapes), 1, 1, 10, self.now
            )
        )


def cls(label: str) -> A.Shape:
    return A.Shape(label=label, classification=A.Classification())


def box(x: float, y: float, w: float, h: float) -> A.Shape:
    return A.Shape(label="car", box=A.BoundingBox(x=x, y=y, width=w, height=h))


def project(events: list[RecordedEvent]) -> MemoryStore:
    return apply_as_one_batch(events, lambda: [AgreementView()])


def simulate(
    seed: int = 7, items: int = 80
) -> tuple[History, np.ndarray, dict[tuple[str, str], list[float]]]:
    """Tasks of overlap 3 rated by 3 of 5 people (ordinal categories with rater noise; some give no
    class), each also drawing one car box. Returns the history, the (items x raters) rating
    matrix with nan for missing, and the IoUs of every pair's boxes."""
    rng = random.Random(seed)
    h = History()
    ratings = np.full((items, len(PEOPLE)), np.nan)
    ious: dict[tuple[str, str], list[float]] = {}
    for i in range(items):
        t = f"t{i:03d}"
        h.imported(t, 3)
        truth = rng.randrange(4)
        raters = rng.sample(PEOPLE, 3)
        boxes: dict[str, list[float]] = {}
        for person in raters:
            shapes = []
            if rng.random() > 0.1:
                value = min(3, max(0, truth + rng.choice([0, 0, 0, 1, -1])))
                ratings[i, PEOPLE.index(person)] = value + 1
                shapes.append(cls(CATS[value]))
            b = [100 + rng.uniform(-5, 5), 50 + rng.uniform(-5, 5), 40 + rng.uniform(-4, 4), 30]
            boxes[person] = b
            shapes.append(box(*b))
            h.submit(t, person, shapes)
        for a, b2 in itertools.combinations(sorted(raters), 2):
            iou = float(quality.iou_boxes([boxes[a]], [boxes[b2]])[0, 0])
            ious.setdefault((a, b2), []).append(iou)
    return h, ratings, ious


def test_incremental_statistics_equal_the_batch_references() -> None:
    h, ratings, ious = simulate()
    store = project(h.events)
    report = aq.agreement(store, PROJECT)
    cat = report["categorical"]

    # percent agreement: consumers.quality on the full matrix
    assert cat["percent_agreement"] == pytest.approx(quality.percent_agreement(ratings), abs=1e-9)
    # Krippendorff's alpha: the krippendorff package (raters x units, nan missing)
    for level in ("nominal", "ordinal", "interval"):
        ref = krippendorff.alpha(reliability_data=ratings.T, level_of_measurement=level)
        assert cat[f"alpha_{level}"] == pytest.approx(ref, abs=1e-9)
        assert cat[f"alpha_{level}"] == pytest.approx(quality.krippendorff_alpha(ratings.T, level), abs=1e-9)
    # Fleiss' kappa: statsmodels over the items with the most common number of ratings
    counts = (~np.isnan(ratings)).sum(axis=1)
    m = cat["fleiss_raters"]
    assert m == 3
    table = quality.counts_from_ratings(ratings[counts == m], [1.0, 2.0, 3.0, 4.0])
    assert cat["fleiss_kappa"] == pytest.approx(sm_fleiss(table, method="fleiss"), abs=1e-9)
    assert cat["fleiss_kappa"] == pytest.approx(quality.fleiss_kappa(table), abs=1e-9)
    assert cat["items"] == int((counts >= 2).sum())

    # Cohen's kappa per pair: scikit-learn on the items both rated
    pairs = {(p["person_id"], p["other_person_id"]): p for p in report["pairs"]}
    for (a, b), row in pairs.items():
        ia, ib = PEOPLE.index(a), PEOPLE.index(b)
        both = ~np.isnan(ratings[:, ia]) & ~np.isnan(ratings[:, ib])
        x, y = ratings[both, ia], ratings[both, ib]
        assert row["categorical"]["items"] == int(both.sum())
        assert row["categorical"]["cohen_kappa"] == pytest.approx(cohen_kappa_score(x, y), abs=1e-9)
        assert row["categorical"]["cohen_kappa"] == pytest.approx(quality.cohen_kappa(x, y), abs=1e-9)
        assert row["categorical"]["percent_agreement"] == pytest.approx(float(np.mean(x == y)), abs=1e-9)
        # alpha of the pair: the krippendorff package on the two raters' rows
        ref = krippendorff.alpha(reliability_data=np.vstack([x, y]), level_of_measurement="nominal")
        assert row["categorical"]["alpha_nominal"] == pytest.approx(ref, abs=1e-9)
        # boxes: mean IoU of the pair's matched boxes = mean of quality.iou_boxes
        (shape,) = row["shapes"]
        assert (shape["label"], shape["kind"], shape["metric"]) == ("car", "box", "iou")
        assert shape["matched"] == len(ious[(a, b)]) and shape["unmatched"] == 0
        assert shape["mean_similarity"] == pytest.approx(float(np.mean(ious[(a, b)])), abs=1e-9)

    # per annotator: the pooled table of their pairs (their labels first) = sklearn on the pooled data
    for person in PEOPLE:
        xs: list[float] = []
        ys: list[float] = []
        i = PEOPLE.index(person)
        for j, other in enumerate(PEOPLE):
            if other == person:
                continue
            both = ~np.isnan(ratings[:, i]) & ~np.isnan(ratings[:, j])
            xs.extend(ratings[both, i])
            ys.extend(ratings[both, j])
        row = next(r for r in report["annotators"] if r["person_id"] == person)
        assert row["categorical"]["cohen_kappa"] == pytest.approx(cohen_kappa_score(xs, ys), abs=1e-9)
        mine = aq.agreement(store, PROJECT, person_id=person)
        assert mine["categorical"]["cohen_kappa"] == pytest.approx(cohen_kappa_score(xs, ys), abs=1e-9)
        summary = aq.agreement_summary(store, PROJECT)["annotators"][person]
        assert summary["cohen_kappa"] == pytest.approx(cohen_kappa_score(xs, ys), abs=1e-9)
        assert summary["percent_agreement"] == pytest.approx(float(np.mean(np.array(xs) == np.array(ys))))

    # per class (one-vs-rest): Fleiss and alpha of the binarised data
    for value, label in enumerate(CATS, start=1):
        one = aq.agreement(store, PROJECT, label=label)["categorical"]
        binary = np.where(np.isnan(ratings), np.nan, (ratings == value).astype(float))
        ref = krippendorff.alpha(reliability_data=binary.T, level_of_measurement="nominal")
        assert one["alpha_nominal"] == pytest.approx(ref, abs=1e-9)
        table2 = quality.counts_from_ratings(binary[counts == 3], [0.0, 1.0])
        assert one["fleiss_kappa"] == pytest.approx(sm_fleiss(table2, method="fleiss"), abs=1e-9)


def test_a_second_submission_of_a_person_in_a_round_is_ignored_and_rounds_are_items() -> None:
    h = History()
    h.imported("t1", 2)
    h.submit("t1", "ann", [cls("1")])
    h.submit("t1", "bob", [cls("2")])
    h.do(ReopenTask("t1", "again"))
    h.submit("t1", "ann", [cls("2")])
    h.submit("t1", "bob", [cls("2")])
    store = project(h.events)
    items = aq.categorical_items(store, PROJECT)
    assert [(t, r, sorted(x.values())) for t, r, x in items] == [("t1", 1, ["1", "2"]), ("t1", 2, ["2", "2"])]
    cat = aq.agreement(store, PROJECT)["categorical"]
    assert cat["items"] == 2 and cat["percent_agreement"] == 0.5


def test_partitions_applied_in_any_interleaving_give_the_same_rows() -> None:
    h, _, _ = simulate(seed=3, items=40)
    one = project(h.events)
    by_partition = repartition(h.events)
    assert len(by_partition) > 1
    sequential, backwards, interleaved = apply_interleavings(
        by_partition, seed=5, views=lambda: [AgreementView()]
    )
    assert sequential.checksum() == backwards.checksum() == interleaved.checksum()
    # the shards sum to the one-partition numbers
    want = aq.agreement(one, PROJECT)
    for store in (sequential, interleaved):
        got = aq.agreement(store, PROJECT)
        for key, value in want["categorical"].items():
            assert got["categorical"][key] == pytest.approx(value, abs=1e-9), key
        assert len(got["pairs"]) == len(want["pairs"])
        for a, b in zip(got["pairs"], want["pairs"], strict=True):
            assert a["categorical"]["cohen_kappa"] == pytest.approx(
                b["categorical"]["cohen_kappa"], abs=1e-12
            )
            assert a["shapes"][0]["mean_similarity"] == pytest.approx(
                b["shapes"][0]["mean_similarity"], abs=1e-12
            )


def test_dawid_skene_over_the_view_recovers_known_annotator_error_rates() -> None:
    """5 annotators with known confusion matrices label 300 items (3 classes); EM over the view's
    categorical items recovers each annotator's accuracy and the true labels."""
    from coordinator.consensus import estimate

    rng = np.random.default_rng(2026)
    classes = ["a", "b", "c"]
    accuracy = {"ann": 0.9, "bob": 0.8, "cid": 0.7, "dan": 0.6, "eve": 0.85}
    h = History()
    truth: dict[str, str] = {}
    for i in range(300):
        t = f"t{i:03d}"
        h.imported(t, 5)
        true = int(rng.integers(3))
        truth[t] = classes[true]
        for person, acc in accuracy.items():
            given = true if rng.random() < acc else int(rng.choice([k for k in range(3) if k != true]))
            h.submit(t, person, [cls(classes[given])])
    store = project(h.events)
    report = estimate(PROJECT, aq.categorical_items(store, PROJECT))
    assert list(report.classes) == classes and len(report.tasks) == 300
    for row in report.annotators:
        diagonal = [row.rows[k].probabilities[k] for k in range(3)]
        assert np.mean(diagonal) == pytest.approx(accuracy[row.person_id], abs=0.06), row.person_id
        assert row.accuracy == pytest.approx(accuracy[row.person_id], abs=0.06)
        assert row.labels == 300
    right = sum(est.label == truth[est.task_id] for est in report.tasks)
    assert right / 300 > 0.93
