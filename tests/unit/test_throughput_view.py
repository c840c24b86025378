"""The throughput view (`projections.views.throughput`) and its reads (`projections.planning_queries`):
hourly buckets per person, stage flows, open tasks with deadlines, schedules, retention, and the
single-writer rule (any interleaving of partitions gives the same rows)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
from coordinator.eventlog import codec
from coordinator.eventlog.base import RecordedEvent
from projections import planning_queries as Q
from projections.memory import MemoryStore
from projections.views.throughput import RETENTION_HOURS, ThroughputView
from tests.unit.viewkit import Recorder, apply_event_by_event, by_partition

E = events_pb2
M = model_pb2
T0 = datetime(2026, 1, 5, 9, 10, tzinfo=UTC)
H = timedelta(hours=1)
PROJECT = "p1"
PEER_QA = M.ReviewPipeline(
    stages=[
        M.ReviewStage(name="peer", kind=M.REVIEW_STAGE_KIND_PEER_REVIEW),
        M.ReviewStage(name="qa", kind=M.REVIEW_STAGE_KIND_QA_SPOT_CHECK),
        M.ReviewStage(name="expert", kind=M.REVIEW_STAGE_KIND_EXPERT_RESOLUTION),
    ]
)


class Log(Recorder):
    """Events at increasing offsets, optionally on several partitions, applied to one view."""

    def __init__(self) -> None:
        super().__init__(T0)

    def emit(self, stream: str, payload: Message, partition: int = 0) -> None:
        self.append(payload, stream=stream, command_id=uuid.uuid4().hex, actor="someone", partition=partition)

    def apply(self, events: list[RecordedEvent] | None = None) -> MemoryStore:
        return apply_event_by_event(self.events if events is None else events, lambda: [ThroughputView()])


def imported(
    log: Log, task_id: str, *, overlap: int = 1, deadline: datetime | None = None, part: int = 0
) -> None:
    spec = M.TaskSpec(task_id=task_id, overlap=overlap, expected_seconds=600, required_skills=["lidar"])
    if deadline is not None:
        spec.deadline.CopyFrom(codec.timestamp(deadline))
    log.emit(
        f"task:{task_id}",
        E.TaskImported(project_id=PROJECT, task=spec, pipeline=PEER_QA, review_policy=M.REVIEW_POLICY_FULL),
        part,
    )


def submitted(log: Log, task_id: str, ann: str, person: str, part: int = 0) -> None:
    log.emit(f"task:{task_id}", E.TaskLeased(task_id=task_id, lease_id=f"l-{ann}", person_id=person), part)
    log.emit(
        f"task:{task_id}",
        E.AnnotationSubmitted(
            task_id=task_id,
            annotation_id=ann,
            version=1,
            lease_id=f"l-{ann}",
            person_id=person,
            time_on_task_ms=90_000,
            project_id=PROJECT,
        ),
        part,
    )


def reviewed(
    log: Log,
    task_id: str,
    ann: str,
    verdict: int,
    stage: str,
    index: int,
    reasons: tuple[str, ...] = (),
    part: int = 0,
) -> None:
    log.emit(
        f"task:{task_id}",
        E.ReviewRecorded(
            task_id=task_id,
            annotation_id=ann,
            version=1,
            reviewer_id="rev",
            verdict=verdict,  # type: ignore[arg-type]
            reason_codes=list(reasons),
            author_id="ola",
            project_id=PROJECT,
            stage=stage,
            stage_index=index,
        ),
        part,
    )


def test_buckets_flows_deadlines_and_waiting_follow_the_work() -> None:
    log = Log()
    imported(log, "t1", overlap=2, deadline=T0 + 5 * H)
    imported(log, "t2")
    log.now = T0 + H  # 10:10
    submitted(log, "t1", "a1", "ola")
    submitted(log, "t2", "a2", "ola")
    reviewed(log, "t2", "a2", M.VERDICT_REJECT, "peer", 0, ("blurry", "wrong-class"))
    reviewed(log, "t1", "a1", M.VERDICT_ACCEPT, "peer", 0)
    store = log.apply()

    (b,) = Q.buckets(store, PROJECT, "ola", T0, T0 + 3 * H)
    assert b.hour_start == datetime(2026, 1, 5, 10, tzinfo=UTC)
    assert (b.submitted, b.verdicts, b.rejected, b.time_on_task_ms) == (2, 2, 1, 180_000)
    assert dict(b.reasons) == {"blurry": 1, "wrong-class": 1}
    (r,) = Q.buckets(store, PROJECT, "rev", T0, T0 + 3 * H)
    assert r.reviewed == 2
    assert Q.buckets(store, PROJECT, "ola", T0 + 2 * H, T0 + 3 * H) == []

    flows = Q.stage_flows(store, PROJECT, T0, T0 + 3 * H)
    # annotate: 3 slots opened; 2 submitted; the rejection reopened one
    assert flows["annotate"] == (4, 2)
    assert flows["peer"] == (2, 2)  # both reviewed at peer: one rejected, one moved on to qa
    assert flows["qa"] == (1, 0)
    assert Q.remaining_slots(store, PROJECT) == 2  # t1's second slot, t2's rework
    (t1,) = Q.open_deadline_tasks(store, PROJECT)
    assert (t1.task_id, t1.remaining, t1.expected_seconds, t1.skills) == ("t1", 1, 600, frozenset({"lidar"}))
    assert t1.deadline == T0 + 5 * H
    assert Q.annotate_oldest(store, PROJECT) == T0  # t1 still has a free slot since its import


def test_completion_and_disputes_update_the_rows() -> None:
    log = Log()
    imported(log, "t1", deadline=T0 + 5 * H)
    submitted(log, "t1", "a1", "ola")
    reviewed(log, "t1", "a1", M.VERDICT_REJECT, "peer", 0, ("blurry",))
    log.emit(
        "task:t1",
        E.DisputeOpened(
            task_id="t1", dispute_id="d1", annotation_id="a1", author_id="ola", project_id=PROJECT
        ),
    )
    log.emit(
        "task:t1",
        E.DisputeResolved(
            task_id="t1",
            dispute_id="d1",
            annotation_id="a1",
            author_id="ola",
            project_id=PROJECT,
            stage="peer",
            stage_index=0,
            decision=M.DISPUTE_DECISION_OVERTURN,
        ),
    )
    store = log.apply()
    flows = Q.stage_flows(store, PROJECT, T0, T0 + H)
    assert flows["expert"] == (1, 1)
    assert flows["qa"] == (1, 0)  # the overturned work moved on to the next stage
    (b,) = Q.buckets(store, PROJECT, "ola", T0, T0 + H)
    assert (b.rejected, b.overturned) == (1, 1)
    log.emit(
        "task:t1", E.AnnotationAccepted(task_id="t1", annotation_id="a1", author_id="ola", project_id=PROJECT)
    )
    log.emit("task:t1", E.TaskCompleted(task_id="t1", project_id=PROJECT, annotation_ids=["a1"]))
    store = log.apply()
    assert Q.open_deadline_tasks(store, PROJECT) == []
    assert Q.remaining_slots(store, PROJECT) == 0
    assert Q.annotate_oldest(store, PROJECT) is None
    assert Q.stage_flows(store, PROJECT, T0, T0 + H)["qa"] == (1, 1)


def test_person_schedules_skills_and_suspensions() -> None:
    log = Log()
    spec = M.PersonSpec(
        person_id="ola",
        roles=[M.ROLE_ANNOTATOR],
        time_zone="Europe/Warsaw",
        skills=[M.Skill(name="text", level=1)],
        schedule=M.WorkScheduleSpec(
            shifts=[M.ShiftSpec(weekday=0, start="09:00", end="17:00")], capacity_per_hour=3
        ),
        teams=["night"],
    )
    log.emit("person:ola", E.PersonRegistered(person=spec))
    log.emit("person:ola", E.SkillGranted(person_id="ola", skill=M.Skill(name="lidar"), project_id=PROJECT))
    log.emit("person:ola", E.PersonSuspended(person_id="ola", project_id=PROJECT))
    store = log.apply()
    doc = Q.person(store, "ola")
    assert doc is not None and doc["suspended"] == [PROJECT] and doc["teams"] == ["night"]
    w = Q.worker_of(doc)
    assert w.skills == {"lidar", "text"} and w.capacity_per_hour == 3.0 and w.teams == ("night",)
    assert w.schedule is not None and w.schedule.time_zone == "Europe/Warsaw"
    log.emit("person:ola", E.PersonReinstated(person_id="ola", project_id=PROJECT))
    log.emit("person:ola", E.PersonUpdated(person=spec))  # an update keeps the suspensions
    store = log.apply()
    doc = Q.person(store, "ola")
    assert doc is not None and doc["suspended"] == [] and doc["skills"] == ["text"]


def test_buckets_older_than_the_retention_are_deleted() -> None:
    log = Log()
    imported(log, "t1", overlap=3)
    submitted(log, "t1", "a1", "ola")
    log.now = T0 + (RETENTION_HOURS - 1) * H
    submitted(log, "t1", "a2", "ola")
    store = log.apply()
    assert len(Q.buckets(store, PROJECT, "ola", T0, log.now + H)) == 2
    log.now = T0 + (RETENTION_HOURS + 1) * H
    submitted(log, "t1", "a3", "ola")
    store = log.apply()
    hours = [b.hour_start for b in Q.buckets(store, PROJECT, "ola", T0 - H, log.now + H)]
    assert hours == [
        datetime(2026, 1, 5, 9, tzinfo=UTC) + (RETENTION_HOURS - 1) * H,
        datetime(2026, 1, 5, 9, tzinfo=UTC) + (RETENTION_HOURS + 1) * H,
    ]
    flow_hours = {sk.split("|")[0] for sk, _ in store.scan("stage_flow", PROJECT)}
    assert min(flow_hours) > f"{int(T0.timestamp() * 1000):013d}"


def test_partitions_applied_in_any_interleaving_give_the_same_rows() -> None:
    log = Log()
    for i, part in enumerate((0, 1, 2, 1, 0)):
        imported(log, f"t{i}", deadline=T0 + 4 * H, part=part)
        submitted(log, f"t{i}", f"a{i}", "ola" if i % 2 else "ken", part)
        reviewed(
            log,
            f"t{i}",
            f"a{i}",
            M.VERDICT_REJECT if i % 2 else M.VERDICT_ACCEPT,
            "peer",
            0,
            ("blurry",),
            part,
        )
        log.now += 20 * timedelta(minutes=1)
    by_part = by_partition(log.events)
    orders = [
        log.events,
        by_part[2] + by_part[0] + by_part[1],
        by_part[1] + by_part[2] + by_part[0],
    ]
    sums = {log.apply(order).checksum() for order in orders}
    assert len(sums) == 1
    store = log.apply()
    assert sum(b.submitted for b in Q.buckets(store, PROJECT, "ola", T0, T0 + 3 * H)) == 2
    assert Q.remaining_slots(store, PROJECT) == 2
