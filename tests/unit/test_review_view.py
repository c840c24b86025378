"""The review view and its queries, fed with events the domain decided: stage queues and depths,
per-task stage records, verdict rows behind recent acceptance, disputes, feedback feeds; logs
from before pipelines; and the single-writer rule under any interleaving of log partitions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import annotation_pb2, model_pb2
from coordinator.domain.commands import (
    ImportGoldTask,
    ImportTask,
    LeaseTask,
    OpenDispute,
    ReopenTask,
    ResolveDispute,
    ReviewAnnotation,
    SubmitAnnotation,
    TaskCommand,
)
from coordinator.domain.review import resolve_pipeline, sample_point
from coordinator.domain.task import TaskState, decide_task, evolve_task
from coordinator.eventlog.base import RecordedEvent
from projections import review_queries as rq
from projections.memory import MemoryStore
from projections.views.review import ReviewView
from tests.unit.viewkit import Recorder, apply_as_one_batch, apply_interleavings, repartition

M = model_pb2
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PROJECT = "proj"
SEED = "s"
STAGES = ["peer_review", "qa_spot_check", "expert_resolution"]


def settings(qa_rate: float = 0.5) -> M.ProjectSettings:
    qa = M.ReviewStage(kind=M.REVIEW_STAGE_KIND_QA_SPOT_CHECK, sample_rate=qa_rate)
    return M.ProjectSettings(
        pipeline=M.ReviewPipeline(
            stages=[
                M.ReviewStage(kind=M.REVIEW_STAGE_KIND_PEER_REVIEW),
                qa,
                M.ReviewStage(kind=M.REVIEW_STAGE_KIND_EXPERT_RESOLUTION),
            ],
            sampling_seed=SEED,
        )
    )


def box() -> annotation_pb2.Annotation:
    return annotation_pb2.Annotation(
        shapes=[annotation_pb2.Shape(label="car", box=annotation_pb2.BoundingBox(width=2, height=3))]
    )


def qa_sampled(task_id: str, ann_id: str) -> bool:
    return sample_point(SEED, task_id, ann_id, "qa_spot_check") < 0.5


class History(Recorder):
    """Decides commands on per-task states and keeps the events as one partition's log."""

    def __init__(self) -> None:
        super().__init__(T0)
        self.tasks: dict[str, TaskState] = {}

    def do(self, cmd: TaskCommand) -> list[Message]:
        task_id = cmd.spec.task_id if isinstance(cmd, ImportTask | ImportGoldTask) else cmd.task_id
        payloads = decide_task(self.tasks.get(task_id), cmd)
        state = self.tasks.get(task_id)
        command_id = uuid.uuid4().hex
        self.now += timedelta(seconds=1)
        for payload in payloads:
            state = evolve_task(state, payload)
            self.append(payload, stream=f"task:{task_id}", command_id=command_id)
        assert state is not None
        self.tasks[task_id] = state
        return payloads

    def imported(self, task_id: str, s: M.ProjectSettings | None = None) -> None:
        spec = M.TaskSpec(task_id=task_id, data_uri="s3://x", overlap=1)
        pipeline = resolve_pipeline(PROJECT, s if s is not None else settings())
        self.do(ImportTask(PROJECT, "b", spec, M.REVIEW_POLICY_FULL, 600, pipeline))

    def submitted(self, task_id: str, ann_id: str, person: str = "ann") -> None:
        self.do(LeaseTask(task_id, f"L-{ann_id}", person, frozenset(), self.now))
        self.do(SubmitAnnotation(task_id, f"L-{ann_id}", person, ann_id, box(), 1, 1, 10, self.now))

    def review(
        self,
        task_id: str,
        ann_id: str,
        verdict: M.Verdict.ValueType,
        reviewer: str = "rev",
        reasons: tuple[str, ...] = (),
    ) -> None:
        version = self.tasks[task_id].annotations[ann_id].version
        self.do(
            ReviewAnnotation(
                task_id,
                ann_id,
                version,
                reviewer,
                verdict,
                reasons,
                f"by {reviewer}",
                None,
                frozenset(),
                1,
                1,
            )
        )


def project(events: list[RecordedEvent]) -> MemoryStore:
    return apply_as_one_batch(events, lambda: [ReviewView()])


def ids_for(task_ids: list[str], sampled: bool) -> list[tuple[str, str]]:
    return [(t, f"A-{t}") for t in task_ids if qa_sampled(t, f"A-{t}") == sampled]


def test_work_moves_through_the_stage_queues_and_depths_follow() -> None:
    h = History()
    tasks = [f"t{i:02d}" for i in range(12)]
    for t in tasks:
        h.imported(t)
        h.submitted(t, f"A-{t}")
    store = project(h.events)
    assert rq.stage_depths(store, PROJECT) == {"peer_review": 12, "qa_spot_check": 0, "expert_resolution": 0}
    queue, token = rq.review_queue(store, PROJECT, "peer_review", limit=5)
    assert [d["task_id"] for d in queue] == tasks[:5] and token  # oldest first, paged
    rest, token = rq.review_queue(store, PROJECT, "peer_review", limit=50, page_token=token)
    assert [d["task_id"] for d in rest] == tasks[5:] and token == ""

    for t in tasks:
        h.review(t, f"A-{t}", M.VERDICT_ACCEPT)
    store = project(h.events)
    to_qa = [t for t, a in ids_for(tasks, True)]
    assert 0 < len(to_qa) < len(tasks)
    depths = rq.stage_depths(store, PROJECT)
    assert depths == {"peer_review": 0, "qa_spot_check": len(to_qa), "expert_resolution": 0}
    qa_queue, _ = rq.review_queue(store, PROJECT, "qa_spot_check", limit=50)
    assert [d["task_id"] for d in qa_queue] == to_qa
    assert all(d["rate"] == 0.5 for d in qa_queue)
    state = rq.review_state(store, to_qa[0])
    assert state is not None
    ann = state["annotations"][f"A-{to_qa[0]}"]
    assert ann["pending"] == "qa_spot_check"
    assert ann["stages"]["peer_review"]["state"] == "accepted"
    assert ann["stages"]["qa_spot_check"]["state"] == "pending"
    skipped = next(t for t in tasks if t not in to_qa)
    state = rq.review_state(store, skipped)
    assert state is not None
    ann = state["annotations"][f"A-{skipped}"]
    assert ann["status"] == "accepted" and ann["pending"] == ""
    assert ann["stages"]["qa_spot_check"]["state"] == "skipped"
    assert ann["stages"]["qa_spot_check"]["sample_point"] >= 0.5
    backlog = {b.stage: b for b in rq.stage_backlog(store, PROJECT)}
    assert backlog["qa_spot_check"].depth == len(to_qa) and backlog["qa_spot_check"].oldest_ms is not None
    assert backlog["peer_review"].oldest_ms is None
    assert rq.all_stage_depths(store)[(PROJECT, "qa_spot_check")] == len(to_qa)


def test_verdicts_disputes_and_feedback() -> None:
    h = History()
    h.imported("t1")
    h.submitted("t1", "A1")
    h.review("t1", "A1", M.VERDICT_REJECT, reasons=("loose_box",))
    h.do(OpenDispute("t1", "A1", "D1", "ann", "it is tight"))
    store = project(h.events)
    assert rq.recent_acceptance(store, PROJECT, "ann", 50) == (0.0, 1)
    assert rq.stage_depths(store, PROJECT)["expert_resolution"] == 1
    (opened,), _ = rq.disputes(store, PROJECT, open_=True, limit=10)
    assert (opened["dispute_id"], opened["status"], opened["reviewer_id"], opened["reason_codes"]) == (
        "D1",
        "open",
        "rev",
        ["loose_box"],
    )
    assert opened["rejection_comment"] == "by rev" and opened["comment"] == "it is tight"
    (to_reviewer,), _ = rq.feedback(store, "rev", limit=10)
    assert to_reviewer[1]["kind"] == "dispute_opened" and to_reviewer[1]["from_person_id"] == "ann"

    h.do(ResolveDispute("t1", "D1", "exp", M.DISPUTE_DECISION_OVERTURN, "fine by me"))
    store = project(h.events)
    assert rq.recent_acceptance(store, PROJECT, "ann", 50) == (1.0, 1)  # the overturned rejection
    assert rq.disputes(store, PROJECT, open_=True, limit=10) == ([], "")
    (resolved,), _ = rq.disputes(store, PROJECT, open_=False, limit=10)
    assert (resolved["status"], resolved["expert_id"], resolved["resolution_comment"]) == (
        "overturned",
        "exp",
        "fine by me",
    )
    assert rq.stage_depths(store, PROJECT)["expert_resolution"] == 0
    state = rq.review_state(store, "t1")
    assert state is not None
    assert state["annotations"]["A1"]["stages"]["peer_review"]["state"] == "overturned"
    feed = [row for _, row in rq.feedback(store, "ann", limit=10)[0]]
    kinds = [row["kind"] for row in feed]
    assert kinds[-1] == "review" and feed[-1]["reason_codes"] == ["loose_box"]  # oldest last
    assert "dispute_resolved" in kinds
    if qa_sampled("t1", "A1"):
        assert state["annotations"]["A1"]["pending"] == "qa_spot_check"
    else:
        assert kinds[0] == "accepted" and feed[0]["from_person_id"] == "exp"
    assert [row["kind"] for _, row in rq.feedback(store, "rev", limit=10)[0]] == [
        "dispute_resolved",
        "dispute_opened",
    ]
    # paging a feed: newest first, the cursor continues after the last row
    page, token = rq.feedback(store, "ann", limit=1)
    rest, _ = rq.feedback(store, "ann", limit=10, page_token=token)
    assert [c for c, _ in page + rest] == [c for c, _ in rq.feedback(store, "ann", limit=10)[0]]
    assert rq.feedback(store, "ann", limit=10, project_ids=frozenset({"other"})) == ([], "")


def test_reopen_withdraws_open_disputes_and_empties_the_queues() -> None:
    h = History()
    h.imported("t1")
    h.submitted("t1", "A1")
    h.review("t1", "A1", M.VERDICT_REJECT, reasons=("loose_box",))
    h.do(OpenDispute("t1", "A1", "D1", "ann", "no"))
    h.do(ReopenTask("t1", "guideline v2"))
    store = project(h.events)
    assert rq.stage_depths(store, PROJECT)["expert_resolution"] == 0
    (withdrawn,), _ = rq.disputes(store, PROJECT, open_=False, limit=10)
    assert withdrawn["status"] == "withdrawn"
    assert rq.dispute(store, "t1", "D1") == withdrawn


def test_a_log_from_before_pipelines_queues_its_work_at_the_one_stage() -> None:
    h = History()
    spec = M.TaskSpec(task_id="t1", data_uri="s3://x", overlap=1)
    h.do(ImportTask(PROJECT, "b", spec, M.REVIEW_POLICY_FULL, 600))  # no pipeline in the event
    h.submitted("t1", "A1")
    store = project(h.events)
    assert rq.stage_depths(store, PROJECT) == {"peer_review": 1}
    h.review("t1", "A1", M.VERDICT_ACCEPT)
    store = project(h.events)
    assert rq.stage_depths(store, PROJECT) == {"peer_review": 0}
    (row,) = [row for _, row in rq.feedback(store, "ann", limit=5)[0] if row["kind"] == "accepted"]
    assert row["from_person_id"] == "rev"


def test_partitions_applied_in_any_interleaving_give_the_same_rows() -> None:
    """The single-writer rule: every read-modify-written document is written from one partition,
    so workers applying partitions independently end with the same rows in any order."""
    h = History()
    tasks = [f"t{i:02d}" for i in range(16)]
    for i, t in enumerate(tasks):
        h.imported(t)
        h.submitted(t, f"A-{t}", person=("ann", "bob")[i % 2])
    for i, t in enumerate(tasks):
        if i % 3 == 0:
            h.review(t, f"A-{t}", M.VERDICT_REJECT, reasons=("loose_box",))
            h.do(OpenDispute(t, f"A-{t}", f"D-{t}", ("ann", "bob")[i % 2], "no"))
            if i % 2 == 0:
                h.do(ResolveDispute(t, f"D-{t}", "exp", M.DISPUTE_DECISION_OVERTURN, ""))
        else:
            h.review(t, f"A-{t}", M.VERDICT_ACCEPT)
    one = apply_as_one_batch(h.events)

    by_partition = repartition(h.events)
    assert len(by_partition) > 1
    sequential, backwards, interleaved = apply_interleavings(by_partition, seed=11)
    assert sequential.checksum() == backwards.checksum() == interleaved.checksum()

    def unplaced(rows: list[Any]) -> list[Any]:  # log positions differ from the one-partition log
        return [
            {k: v for k, v in (row[1] if isinstance(row, tuple) else row).items() if k != "position"}
            for row in rows
        ]

    for store in (sequential, interleaved):
        assert rq.stage_depths(store, PROJECT) == rq.stage_depths(one, PROJECT)
        for stage in STAGES[:2]:
            assert rq.review_queue(store, PROJECT, stage, 100) == rq.review_queue(one, PROJECT, stage, 100)
        for person in ("ann", "bob", "rev", "exp"):
            assert rq.recent_acceptance(store, PROJECT, person, 50) == rq.recent_acceptance(
                one, PROJECT, person, 50
            )
            mine, theirs = rq.feedback(store, person, limit=100)[0], rq.feedback(one, person, limit=100)[0]
            assert unplaced(mine) == unplaced(theirs)
        for open_ in (True, False):
            mine_d, _ = rq.disputes(store, PROJECT, open_=open_, limit=100)
            assert unplaced(mine_d) == unplaced(rq.disputes(one, PROJECT, open_=open_, limit=100)[0])
    assert rq.stage_depths(one, PROJECT)["expert_resolution"] == sum(1 for i in range(16) if i % 6 == 3)
