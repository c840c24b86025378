"""The gold view and its queries, fed with events the domain decided: gold task lists, results,
rolling accuracy per person and class, suspensions, the quality feed and its merge with the
review feed; and the single-writer rule under any interleaving of log partitions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.domain import aggregates
from coordinator.domain.commands import (
    ImportGoldTask,
    LeaseTask,
    RecordGoldResult,
    RegisterPerson,
    ReinstatePerson,
    StartQualification,
    SubmitAnnotation,
)
from coordinator.domain.gold import Scoring, qualification_of
from coordinator.eventlog.base import RecordedEvent
from projections import gold_queries as gq
from tests.unit.viewkit import Recorder, apply_event_by_event, apply_interleavings, repartition

T0 = datetime(2026, 4, 6, 9, 0, tzinfo=UTC)
P = "proj"
POLICY = M.QualityPolicy(
    min_accuracy=0.5,
    min_results=2,
    accuracy_window=3,
    retraining_skill="lidar",
    qualifications=[M.Qualification(skill="lidar", min_score=1.0)],
)
ANSWER = A.Annotation(
    shapes=[
        A.Shape(label="car", box=A.BoundingBox(x=0, y=0, width=10, height=10)),
        A.Shape(label="pedestrian", box=A.BoundingBox(x=50, y=0, width=10, height=10)),
    ]
)
HALF = A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=1, y=0, width=10, height=10))])


class Log(Recorder):
    """Decides commands on per-stream states and keeps the events as one partition's log; every
    gold answer is followed by its RecordGoldResult, as the service does."""

    def __init__(self) -> None:
        super().__init__(T0)
        self.states: dict[str, aggregates.State] = {}

    def do(self, cmd: aggregates.Command, command_id: str = "") -> list[RecordedEvent]:
        stream = aggregates.stream_of(cmd)
        state = self.states.get(stream)
        payloads = aggregates.decide(state, cmd)
        command_id = command_id or uuid.uuid4().hex
        out = []
        for payload in payloads:
            self.now += timedelta(seconds=1)
            state = aggregates.evolve(state, payload)
            out.append(self.append(payload, stream=stream, command_id=command_id))
        assert state is not None
        self.states[stream] = state
        return out

    def person(self, person_id: str) -> None:
        self.do(RegisterPerson(M.PersonSpec(person_id=person_id, roles=[M.ROLE_ANNOTATOR], time_zone="UTC")))

    def gold(self, task_id: str, training: str = "") -> None:
        spec = M.TaskSpec(task_id=task_id, data_uri=f"s3://b/{task_id}", overlap=1, expected_seconds=30)
        self.do(
            ImportGoldTask(
                P, "b", spec, M.GoldSpec(answer=ANSWER, training=bool(training), skill=training), 600
            )
        )

    def answer(self, person: str, task_id: str, answer: A.Annotation, attempt: int = 0) -> None:
        lease_id = f"L-{person}-{task_id}-{attempt}"
        self.do(
            LeaseTask(
                task_id, lease_id, person, frozenset(), self.now, serve_gold=not attempt, attempt=attempt
            )
        )
        events = self.do(
            SubmitAnnotation(
                task_id, lease_id, person, f"A-{lease_id}", answer, 1, 1, 5, self.now, scoring=Scoring()
            )
        )
        scored = events[-1]
        assert scored.envelope.type == "gold_scored"
        self.do(
            RecordGoldResult(person, scored.envelope.gold_scored, scored.envelope.event_id, POLICY, self.now),
            command_id=f"gold/{scored.envelope.event_id}",
        )


def history() -> Log:
    log = Log()
    for person in ("ann", "bob", "cid"):
        log.person(person)
    for i in range(6):
        log.gold(f"g{i}")
    log.gold("t1", training="lidar")
    log.gold("t2", training="lidar")
    log.answer("ann", "g0", ANSWER)
    log.answer("bob", "g0", HALF)
    log.answer("ann", "g1", HALF)
    log.answer("bob", "g1", HALF)  # bob: 0 of 2 → suspended
    log.answer("cid", "g2", ANSWER)
    log.answer("ann", "g2", ANSWER)
    log.answer("ann", "g3", HALF)  # ann: 1 of the last 3 → suspended
    log.do(ReinstatePerson("bob", P, "mgr", "coached"))
    log.answer("bob", "g4", ANSWER)
    lidar = qualification_of(POLICY, "lidar")
    log.do(StartQualification("ann", P, "lidar", lidar, ("t1", "t2"), log.now))
    log.answer("ann", "t1", ANSWER, attempt=1)
    log.answer("ann", "t2", ANSWER, attempt=1)  # passes: the retraining reinstates ann
    log.do(StartQualification("cid", P, "lidar", lidar, ("t1", "t2"), log.now))
    log.answer("cid", "t1", HALF, attempt=1)
    log.answer("cid", "t2", ANSWER, attempt=1)  # fails
    return log


def test_rows_and_queries() -> None:
    log = history()
    store = apply_event_by_event(log.events)
    assert [d["task_id"] for d in gq.gold_tasks(store, P)] == [f"g{i}" for i in range(6)]
    assert [d["task_id"] for d in gq.training_tasks(store, P, "lidar")] == ["t1", "t2"]
    assert gq.gold_tasks(store, P)[0] == {"task_id": "g0", "required_skills": [], "expected_seconds": 30}
    # ann: reinstated by passing the retraining, so a fresh window
    ann = gq.accuracy(store, P, "ann")
    assert ann is not None and (ann["results"], ann["suspended"], ann["total"]) == (0, False, 4)
    bob = gq.accuracy(store, P, "bob")
    assert bob is not None and (bob["results"], bob["passed"], bob["accuracy"], bob["window"]) == (
        1,
        1,
        1.0,
        3,
    )
    cid = gq.accuracy(store, P, "cid")
    assert cid is not None and (cid["results"], cid["passed"]) == (1, 1)
    figures = {f.label: f for f in gq.class_figures(cid)}
    assert (figures["car"].matched, figures["pedestrian"].matched) == (1, 1)
    assert gq.suspensions(store, P) == []
    results = gq.recent_results(store, P, "ann", 10)
    assert [r["task_id"] for r in results] == ["t2", "t1", "g3", "g2", "g1", "g0"]
    half = next(r for r in results if r["task_id"] == "g1")
    assert half["classes"] == {"car": [1, 0, 0], "pedestrian": [0, 1, 0]} and not half["passed"]
    rows, token = gq.quality_feed(store, "ann", limit=10)
    assert [r["kind"] for _, r in rows] == ["reinstated", "qualification", "suspended"] and token == ""
    suspended = rows[2][1]
    assert suspended["event"]["threshold"] == 0.5 and suspended["retraining"]["skill"] == "lidar"
    assert rows[1][1]["event"]["passed"] is True
    rows, _ = gq.quality_feed(store, "cid", limit=10)
    failed = rows[0][1]["event"]
    assert [(i["task_id"], i.get("passed", False)) for i in failed["items"]] == [("t1", False), ("t2", True)]
    assert gq.quality_feed(store, "bob", limit=10, project_ids=frozenset({"other"})) == ([], "")


def test_suspension_rows_come_and_go() -> None:
    log = Log()
    log.person("bob")
    log.gold("g0")
    log.gold("g1")
    log.answer("bob", "g0", HALF)
    log.answer("bob", "g1", HALF)
    store = apply_event_by_event(log.events)
    ((person_id, row),) = gq.suspensions(store, P)
    assert (person_id, row["results"], row["retraining_skill"]) == ("bob", 2, "lidar")
    doc = gq.accuracy(store, P, "bob")
    assert doc is not None and doc["suspended"] and doc["suspension"]["accuracy"] == 0.0
    log.do(ReinstatePerson("bob", P, "mgr", ""))
    assert gq.suspensions(apply_event_by_event(log.events), P) == []


def test_partitions_applied_in_any_interleaving_give_the_same_rows() -> None:
    """The single-writer rule: "gold_accuracy" is written only from a person's stream, the rest
    are inserts and deletes under keys of one stream, so any interleaving gives the same rows."""
    log = history()
    by_partition = repartition(log.events)
    assert len(by_partition) > 1
    sequential, backwards, interleaved = apply_interleavings(by_partition, seed=7)
    assert sequential.checksum() == backwards.checksum() == interleaved.checksum()
    one = apply_event_by_event(log.events)
    for person in ("ann", "bob", "cid"):
        mine, theirs = gq.accuracy(interleaved, P, person), gq.accuracy(one, P, person)
        assert mine is not None and theirs is not None
        for key in ("results", "passed", "accuracy", "entries", "suspended", "total"):
            assert mine[key] == theirs[key]


def _page(*sks: str, token: str = "") -> tuple[list[tuple[str, dict[str, str]]], str]:
    return [(sk, {"sk": sk}) for sk in sks], token


def test_merging_feed_pages() -> None:
    # both feeds exhausted: everything, newest first
    rows, token = gq.merge_pages([_page("05", "03"), _page("04", "01")], 10)
    assert [sk for sk, _ in rows] == ["05", "04", "03", "01"] and token == ""
    # more rows than the page: cut, continue after the last one returned
    rows, token = gq.merge_pages([_page("05", "03"), _page("04", "01")], 3)
    assert [sk for sk, _ in rows] == ["05", "04", "03"] and token == "03"
    # a feed with more below its token: only rows at or above it are known everywhere
    rows, token = gq.merge_pages([_page("09", "06", token="06"), _page("08", "05", "02")], 2)
    assert [sk for sk, _ in rows] == ["09", "08"] and token == "08"
    rows, token = gq.merge_pages([_page("09", "06", token="06"), _page("08", "05", "02")], 5)
    assert [sk for sk, _ in rows] == ["09", "08", "06"] and token == "06"
    rows, token = gq.merge_pages([_page(token="07"), _page("08", "05")], 5)
    assert [sk for sk, _ in rows] == ["08"] and token == "07"


def test_paging_the_merged_feed_sees_every_row_once() -> None:
    store = apply_event_by_event(history().events)
    everything = [sk for sk, _ in gq.quality_feed(store, "ann", limit=100)[0]]
    for size in (1, 2):
        seen: list[str] = []
        token = ""
        while True:
            rows, token = gq.merge_pages(
                [gq.quality_feed(store, "ann", limit=size, page_token=token), ([], "")], size
            )
            seen.extend(sk for sk, _ in rows)
            if not token:
                break
        assert seen == everything
