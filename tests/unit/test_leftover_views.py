"""Views over histories decided by the real aggregates: gold and training leases in the expiry
index, the scored and recorded gold answers the reconcile sweep compares, granted skills in the
directory, disputes in the task documents, the open-task priority index, and agreement matching
with the recorded consensus threshold; and every one of them gives the same rows however the log
partitions interleave (the single-writer rule, docs/architecture.md)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from consumers import quality
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import consensus_pb2
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.domain import aggregates
from coordinator.domain import commands as C
from coordinator.domain.consensus import resolve_consensus
from coordinator.domain.gold import Scoring
from coordinator.domain.review import resolve_pipeline
from coordinator.eventlog.base import RecordedEvent
from projections import agreement_queries, gold_queries, manager_queries, queries
from projections.memory import MemoryStore
from projections.views import default_views
from projections.views.agreement import match
from tests.unit.viewkit import Recorder, apply_interleavings, commit_live, repartition

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
P = "proj"
ANSWER = A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=10, y=10, width=40, height=30))])
POLICY = M.QualityPolicy(qualifications=[M.Qualification(skill="lidar", min_score=1.0, max_attempts=2)])
PIPELINE = resolve_pipeline(
    P,
    M.ProjectSettings(
        pipeline=M.ReviewPipeline(
            stages=[
                M.ReviewStage(kind=M.REVIEW_STAGE_KIND_PEER_REVIEW),
                M.ReviewStage(kind=M.REVIEW_STAGE_KIND_EXPERT_RESOLUTION),
            ]
        )
    ),
)


def box(x: float, w: float = 40) -> A.Annotation:
    return A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=x, y=10, width=w, height=30))])


class History(Recorder):
    """Decides commands on the real aggregates and keeps the events as one partition's log; each
    command's events are applied to the views as one committed batch."""

    def __init__(self) -> None:
        super().__init__(T0)
        self.states: dict[str, aggregates.State | None] = {}
        self.store = MemoryStore()
        self.views = default_views()

    def do(self, cmd: aggregates.Command, command_id: str = "", actor: str = "x") -> list[RecordedEvent]:
        stream = aggregates.stream_of(cmd)
        state = self.states.get(stream)
        self.now += timedelta(seconds=1)
        batch: list[RecordedEvent] = []
        cid = command_id or uuid.uuid4().hex
        for payload in aggregates.decide(state, cmd):
            state = aggregates.evolve(state, payload)
            batch.append(
                self.append(
                    payload, stream=stream, command_id=cid, actor=actor, correlation_id=cid.split("/")[0]
                )
            )
        self.states[stream] = state
        commit_live(self.store, self.views, batch)
        return batch

    # ---- conveniences

    def person(self, person_id: str, *skills: str) -> None:
        spec = M.PersonSpec(
            person_id=person_id,
            roles=[M.ROLE_ANNOTATOR],
            time_zone="UTC",
            skills=[M.Skill(name=s, level=1) for s in skills],
        )
        self.do(C.RegisterPerson(spec))

    def task(self, task_id: str, priority: int = 0, overlap: int = 1) -> None:
        spec = M.TaskSpec(task_id=task_id, data_uri=f"s3://b/{task_id}", overlap=overlap, priority=priority)
        self.do(C.ImportTask(P, "b1", spec, M.REVIEW_POLICY_FULL, 600, PIPELINE))

    def gold(self, task_id: str, training: str = "") -> None:
        spec = M.TaskSpec(task_id=task_id, data_uri=f"s3://b/{task_id}")
        gold = M.GoldSpec(answer=ANSWER, training=bool(training), skill=training)
        self.do(C.ImportGoldTask(P, "g", spec, gold, 600))

    def lease(self, task_id: str, person: str, *, gold: bool = False, attempt: int = 0) -> str:
        lease_id = f"L-{task_id}-{person}-{len(self.events)}"
        self.do(
            C.LeaseTask(task_id, lease_id, person, frozenset(), self.now, serve_gold=gold, attempt=attempt)
        )
        return lease_id

    def submit(
        self, task_id: str, lease_id: str, person: str, ann_id: str, answer: A.Annotation = ANSWER
    ) -> list[RecordedEvent]:
        scoring = Scoring() if task_id.startswith(("g", "tr")) else None
        return self.do(
            C.SubmitAnnotation(task_id, lease_id, person, ann_id, answer, 1, 1, 5, self.now, scoring=scoring)
        )

    def record(self, scored: RecordedEvent) -> None:
        s = scored.envelope.gold_scored
        self.do(
            C.RecordGoldResult(s.person_id, s, scored.envelope.event_id, POLICY, self.now),
            command_id=f"gold/{s.task_id}/{s.annotation_id}",
        )

    def review(self, task_id: str, ann_id: str, verdict: M.Verdict.ValueType, version: int = 1) -> None:
        reasons = ("loose",) if verdict == M.VERDICT_REJECT else ()
        self.do(
            C.ReviewAnnotation(
                task_id,
                ann_id,
                version,
                "rita",
                verdict,
                reasons,
                "",
                None,
                frozenset(),
                1,
                1,
            )
        )


def pending(store: MemoryStore) -> list[str]:
    """Scored answers not recorded, as the reconcile sweep would find them (event ids)."""
    out = []
    for _, bucket in gold_queries.scored_buckets(store):
        for _, row in gold_queries.scored_after(store, bucket, "", 1000):
            if not gold_queries.is_recorded(store, row["event_id"]):
                out.append(str(row["annotation_id"]))
    return out


def scored_of(batch: list[RecordedEvent]) -> RecordedEvent:
    return next(ev for ev in batch if ev.envelope.type == "gold_scored")


# ------------------------------------------------------------------ gold leases and reconcile


def test_gold_and_training_leases_are_in_the_expiry_index_until_they_end() -> None:
    h = History()
    h.person("ann")
    h.gold("g1")
    h.gold("tr1", training="lidar")
    first = h.lease("g1", "ann", gold=True)
    later = T0 + timedelta(hours=1)
    assert queries.expired_leases(h.store, later) == [("g1", first)]
    h.do(C.ExpireLease("g1", first, later))
    assert queries.expired_leases(h.store, later) == []
    assert h.store.get("gold_lease", "g1", first) is None
    # leased again (never answered), then answered: the submission ends the lease
    second = h.lease("g1", "ann", gold=True)
    assert [lid for _, lid in queries.expired_leases(h.store, later + timedelta(hours=1))] == [second]
    h.record(scored_of(h.submit("g1", second, "ann", "a1")))
    assert queries.expired_leases(h.store, later + timedelta(hours=1)) == []
    # a training item's lease, released
    h.do(C.StartQualification("ann", P, "lidar", POLICY.qualifications[0], ("tr1",), h.now))
    third = h.lease("tr1", "ann", attempt=1)
    assert [t for t, _ in queries.expired_leases(h.store, later + timedelta(hours=1))] == ["tr1"]
    h.do(C.ReleaseLease("tr1", third, "ann", "later"))
    assert queries.expired_leases(h.store, later + timedelta(hours=1)) == []
    # counted as expired in the gold task's project
    (metrics,) = queries.annotator_metrics(h.store, P, "ann")
    assert (metrics["leased"], metrics["expired"]) == (3, 1)


def test_scored_minus_recorded_is_what_the_reconcile_sweep_records() -> None:
    h = History()
    h.person("ann")
    h.person("bob")
    h.gold("g1")
    h.gold("g2")
    recorded = scored_of(h.submit("g1", h.lease("g1", "ann", gold=True), "ann", "a-ann-1"))
    h.record(recorded)
    lost = scored_of(h.submit("g1", h.lease("g1", "bob", gold=True), "bob", "a-bob-1"))
    assert pending(h.store) == ["a-bob-1"]
    rows = [
        row
        for _, b in gold_queries.scored_buckets(h.store)
        for _, row in gold_queries.scored_after(h.store, b, "", 9)
    ]
    assert [r["annotation_id"] for r in rows] == ["a-ann-1", "a-bob-1"]  # log order
    # walking on from a row skips it
    ((_, bucket),) = gold_queries.scored_buckets(h.store)
    first_sk = gold_queries.scored_after(h.store, bucket, "", 1)[0][0]
    assert [r["annotation_id"] for _, r in gold_queries.scored_after(h.store, bucket, first_sk, 9)] == [
        "a-bob-1"
    ]
    h.record(lost)
    assert pending(h.store) == []


# ------------------------------------------------------------------ directory


def test_the_directory_shows_skills_granted_by_a_qualification() -> None:
    h = History()
    h.person("ann", "radar")
    h.gold("tr1", training="lidar")
    h.do(C.StartQualification("ann", P, "lidar", POLICY.qualifications[0], ("tr1",), h.now))
    h.record(scored_of(h.submit("tr1", h.lease("tr1", "ann", attempt=1), "ann", "a1")))
    assert h.events[-1].envelope.type == "skill_granted"
    person = h.store.get("person", "ann")
    assert person is not None
    assert person["skills"] == [{"name": "radar", "level": 1}, {"name": "lidar", "level": 1}]


# ------------------------------------------------------------------ disputes and priorities


def test_task_documents_follow_disputes_and_keep_the_slot() -> None:
    h = History()
    h.person("ann")
    h.task("t1")
    h.submit("t1", h.lease("t1", "ann"), "ann", "a1", box(1))
    h.review("t1", "a1", M.VERDICT_REJECT)
    h.do(C.OpenDispute("t1", "a1", "d1", "ann", "it is tight"))
    doc = queries.get_task_doc(h.store, "t1")
    assert doc is not None
    a = doc["annotations"]["a1"]
    assert (a["status"], a["dispute_id"], a["dispute_status"], doc["status"]) == (
        "rejected",
        "d1",
        "open",
        "in_review",
    )
    assert queries.queue_candidates(h.store, P, ()) == []  # the disputed work keeps its slot
    h.do(C.ResolveDispute("t1", "d1", "erin", M.DISPUTE_DECISION_OVERTURN, "ok"))
    doc = queries.get_task_doc(h.store, "t1")
    assert doc is not None
    a = doc["annotations"]["a1"]
    assert (a["status"], a["dispute_status"], a["reason_codes"], doc["status"]) == (
        "accepted",
        "overturned",
        [],
        "done",
    )


def test_the_priority_index_holds_open_tasks_by_current_priority() -> None:
    h = History()
    h.person("ann")
    for i, priority in enumerate((5, -2, 5, 9)):
        h.task(f"t{i}", priority=priority)

    def in_range(low: int, high: int) -> list[str]:
        return manager_queries.open_tasks_by_priority(h.store, P, low, high, 100)

    assert in_range(-(2**31), 2**31 - 1) == ["t1", "t0", "t2", "t3"]
    assert in_range(5, 5) == ["t0", "t2"] and in_range(6, 8) == []
    h.do(C.ReprioritiseTask("t0", 7, "mgr", ""), command_id="req/t0")
    assert in_range(5, 5) == ["t2"] and in_range(7, 7) == ["t0"]
    assert manager_queries.reprioritised_by(h.store, P, "req", 10) == ["t0"]
    # done tasks leave the index; reopened ones come back
    h.submit("t2", h.lease("t2", "ann"), "ann", "a2", box(1))
    h.review("t2", "a2", M.VERDICT_ACCEPT)
    assert in_range(5, 5) == []
    h.do(C.ReopenTask("t2", "again"))
    assert in_range(5, 5) == ["t2"]


# ------------------------------------------------------------------ agreement threshold


def test_agreement_matches_shapes_at_the_recorded_consensus_threshold() -> None:
    x_far, x_near = 26.0, 2.0  # IoU with box(0): about 0.21 and 0.90
    iou_far = float(quality.iou_boxes([[0, 10, 40, 30]], [[x_far, 10, 40, 30]])[0, 0])
    iou_near = float(quality.iou_boxes([[0, 10, 40, 30]], [[x_near, 10, 40, 30]])[0, 0])
    assert iou_far < 0.5 < iou_near
    results = {}
    policy = resolve_consensus(consensus_pb2.ConsensusPolicy(iou_threshold=0.5))
    for label, consensus in (("none", None), ("policy", policy)):
        h = History()
        for i, x in enumerate((x_far, x_near)):
            h.task(f"t{i}", overlap=2)
            for person, xx in (("ann", 0.0), ("bob", x)):
                lease = h.lease(f"t{i}", person)
                h.do(
                    C.SubmitAnnotation(
                        f"t{i}", lease, person, f"a{i}{person}", box(xx), 1, 1, 5, h.now, consensus=consensus
                    )
                )
        submitted = [
            ev.envelope.annotation_submitted for ev in h.events if ev.envelope.type == "annotation_submitted"
        ]
        assert {s.match_iou_threshold for s in submitted} == ({0.0} if consensus is None else {0.5})
        stats = agreement_queries.load(h.store, P)
        (cell,) = stats.shapes[("ann", "bob")].values()
        results[label] = cell
    matched, unmatched, sum_sim = results["none"]
    assert (matched, unmatched) == (2, 0)  # any overlap matches
    assert sum_sim == pytest.approx(iou_far + iou_near, abs=1e-9)
    matched, unmatched, sum_sim = results["policy"]
    assert (matched, unmatched) == (1, 2)  # the far pair is below 0.5: two unmatched boxes
    assert sum_sim == pytest.approx(iou_near, abs=1e-9)
    # the matcher itself: a candidate needs similarity > 0 and >= the threshold
    a, b = box(0).shapes[0], box(x_far).shapes[0]
    assert match("box", [a], [b]) == pytest.approx([iou_far], abs=1e-12)
    assert match("box", [a], [b], 0.5) == []


# ------------------------------------------------------------------ the single-writer rule


def test_partitions_applied_in_any_interleaving_give_the_same_rows() -> None:
    h = History()
    for p in ("ann", "bob", "cid"):
        h.person(p)
    for i in range(4):
        h.gold(f"g{i}")
    h.gold("tr1", training="lidar")
    for i in range(6):
        h.task(f"t{i}", priority=i % 3)
    for i, p in enumerate(("ann", "bob", "cid")):
        batch = h.submit(f"g{i}", h.lease(f"g{i}", p, gold=True), p, f"ga{i}")
        if i != 1:
            h.record(scored_of(batch))  # bob's is lost
    h.do(C.ExpireLease("g3", h.lease("g3", "ann", gold=True), T0 + timedelta(days=1)))
    h.lease("g3", "bob", gold=True)  # still open
    h.do(C.StartQualification("cid", P, "lidar", POLICY.qualifications[0], ("tr1",), h.now))
    h.record(scored_of(h.submit("tr1", h.lease("tr1", "cid", attempt=1), "cid", "tra")))
    for i in range(4):
        person = ("ann", "bob")[i % 2]
        h.submit(f"t{i}", h.lease(f"t{i}", person), person, f"a{i}", box(float(i)))
        h.review(f"t{i}", f"a{i}", M.VERDICT_REJECT if i < 3 else M.VERDICT_ACCEPT)
    h.do(C.OpenDispute("t0", "a0", "d0", "ann", "no"))
    h.do(C.OpenDispute("t1", "a1", "d1", "bob", "no"))
    h.do(C.ResolveDispute("t1", "d1", "erin", M.DISPUTE_DECISION_UPHOLD, "no"))
    h.do(C.OpenDispute("t2", "a2", "d2", "ann", "no"))
    h.do(C.ReopenTask("t2", "again"))
    for i in (4, 5):
        h.do(C.ReprioritiseTask(f"t{i}", 8, "mgr", ""), command_id=f"req/t{i}")

    by_partition = repartition(h.events)
    assert len(by_partition) > 1
    sequential, backwards, interleaved = apply_interleavings(by_partition, seed=11)
    assert sequential.checksum() == backwards.checksum() == interleaved.checksum()
    for store in (sequential, interleaved, h.store):
        assert pending(store) == ["ga1"]
        assert [t for t, _ in queries.expired_leases(store, T0 + timedelta(days=9))] == ["g3"]
        assert manager_queries.open_tasks_by_priority(store, P, 8, 8, 10) == ["t4", "t5"]
