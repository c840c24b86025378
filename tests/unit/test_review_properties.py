"""Review pipeline invariants under random command sequences, and the review view in agreement
with the aggregate at every step.

Commands are drawn as small integer tuples interpreted against the current state (so most are
plausible and some deliberately wrong: the wrong person, role, version or dispute). Refusals are
fine; what must never happen: work accepted without passing every review stage, a reviewer at
two stages of one pass, a rejection disputed twice, a replay that disagrees with the state, or a
projection that disagrees with the aggregate.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator._pb.labelweave.events.v1 import annotation_pb2, events_pb2, model_pb2
from coordinator.domain import aggregates
from coordinator.domain.commands import (
    AbandonAnnotation,
    EditAnnotation,
    ImportTask,
    LeaseTask,
    OpenDispute,
    ReopenTask,
    ResolveDispute,
    ReviewAnnotation,
    SubmitAnnotation,
    TaskCommand,
)
from coordinator.domain.review import AuthorRecord, next_stage, resolve_pipeline
from coordinator.domain.task import OPEN, TaskState
from coordinator.errors import LabelweaveError
from coordinator.eventlog import codec
from coordinator.eventlog.base import Position, RecordedEvent
from projections import review_queries as rq
from projections.base import StagedTx
from projections.memory import MemoryStore
from projections.views.review import ReviewView

M = model_pb2
T0 = datetime(2026, 3, 2, tzinfo=UTC)
ANNOTATORS = ("a0", "a1", "a2")
PEOPLE = (
    ("r0", frozenset({M.ROLE_REVIEWER})),
    ("r1", frozenset({M.ROLE_REVIEWER})),
    ("q0", frozenset({M.ROLE_QA})),
    ("q1", frozenset({M.ROLE_QA})),
    ("x", frozenset({M.ROLE_REVIEWER, M.ROLE_QA})),
    ("e0", frozenset({M.ROLE_EXPERT})),
    ("e1", frozenset({M.ROLE_EXPERT, M.ROLE_QA})),
)
VERDICTS = (M.VERDICT_ACCEPT, M.VERDICT_ACCEPT, M.VERDICT_REJECT, M.VERDICT_CORRECT)
RECORDS = (AuthorRecord(), AuthorRecord(0.5, 10), AuthorRecord(0.95, 30), AuthorRecord(0.0, 3))
OPS = (
    *("submit",) * 3,
    *("review",) * 8,
    *("dispute", "resolve") * 3,
    *("edit",) * 2,
    "abandon",
)


def _stage(
    kind: int, rate: float | None = None, strata: tuple[tuple[float, float], ...] = (), name: str = ""
) -> M.ReviewStage:
    out = M.ReviewStage(kind=kind, name=name)  # type: ignore[arg-type]
    if rate is not None:
        out.sample_rate = rate
    out.strata.extend(M.SamplingStratum(below_acceptance=b, sample_rate=r) for b, r in strata)
    return out


PEER, QA, EXPERT = (
    M.REVIEW_STAGE_KIND_PEER_REVIEW,
    M.REVIEW_STAGE_KIND_QA_SPOT_CHECK,
    M.REVIEW_STAGE_KIND_EXPERT_RESOLUTION,
)
PIPELINES = (
    M.ProjectSettings(review_policy=M.REVIEW_POLICY_FULL),
    M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[_stage(PEER), _stage(QA, 0.5), _stage(EXPERT)])),
    M.ProjectSettings(
        pipeline=M.ReviewPipeline(stages=[_stage(PEER, 0.5), _stage(QA, 0.2, ((0.8, 1.0),)), _stage(EXPERT)])
    ),
    M.ProjectSettings(
        pipeline=M.ReviewPipeline(
            stages=[_stage(PEER), _stage(QA), _stage(QA, 0.0, name="qa2"), _stage(EXPERT)]
        )
    ),
    M.ProjectSettings(pipeline=M.ReviewPipeline(stages=[_stage(PEER, 0.0), _stage(QA, 0.5)])),
)


def content(tag: str) -> annotation_pb2.Annotation:
    return annotation_pb2.Annotation(
        shapes=[annotation_pb2.Shape(label=tag, box=annotation_pb2.BoundingBox(width=1, height=1))]
    )


class Harness:
    def __init__(self, pipeline_index: int, overlap: int) -> None:
        self.log: list[Message] = []
        self.recorded: list[RecordedEvent] = []
        self.state: TaskState | None = None
        self.view = ReviewView()
        self.store = MemoryStore()
        self.n = 0
        spec = M.TaskSpec(task_id="t", data_uri="mem://t", overlap=overlap)
        pipeline = resolve_pipeline("p", PIPELINES[pipeline_index])
        assert self.apply(ImportTask("p", "b", spec, M.REVIEW_POLICY_FULL, 600, pipeline))

    @property
    def task(self) -> TaskState:
        assert self.state is not None
        return self.state

    def command(self, op: str, i: int, j: int, k: int) -> TaskCommand | None:
        s = self.task
        self.n += 1
        anns = sorted(s.annotations.values(), key=lambda a: a.annotation_id)
        author = RECORDS[k % len(RECORDS)]
        if op == "submit":
            person = ANNOTATORS[i % len(ANNOTATORS)]
            if not self.apply(LeaseTask("t", f"L{self.n}", person, frozenset(), T0)):
                return None
            return SubmitAnnotation(
                "t", f"L{self.n}", person, f"A{self.n}", content(f"s{self.n}"), 1, 1, 1, T0, author
            )
        if op == "reopen" or (op == "abandon" and k == 0):
            return ReopenTask("t", "again")
        if op == "resolve":
            disputes = sorted(s.disputes.values(), key=lambda d: d.dispute_id)
            open_ = [d for d in disputes if d.status == OPEN]
            pool = open_ if open_ and i != 7 else disputes
            if not pool:
                return None
            dispute = pool[i % len(pool)]
            person, roles = PEOPLE[j % len(PEOPLE)] if j >= 4 else PEOPLE[-1 - j % 2]  # mostly experts
            decision = (M.DISPUTE_DECISION_UPHOLD, M.DISPUTE_DECISION_OVERTURN)[k % 2]
            return ResolveDispute("t", dispute.dispute_id, person, decision, "", roles, author)
        if not anns:
            return None
        # mostly aim at annotations the op can apply to; sometimes at any, to exercise refusals
        wanted = {"review": ("submitted",), "edit": ("submitted", "rejected"), "dispute": ("rejected",)}
        targets = [a for a in anns if a.status in wanted.get(op, ("rejected",))]
        if not targets or j == 7:
            targets = anns
        ann = targets[j % len(targets)]
        if op == "review":
            person, roles = PEOPLE[i % len(PEOPLE)]
            verdict = VERDICTS[k % len(VERDICTS)]
            reasons = ("r",) if verdict == M.VERDICT_REJECT else ()
            correction = content(f"c{self.n}") if verdict == M.VERDICT_CORRECT else None
            version = ann.version + (1 if k == 5 else 0)
            return ReviewAnnotation(
                "t", ann.annotation_id, version, person, verdict, reasons, "", correction, frozenset(), 1, 1,
                reviewer_roles=roles, author=author,
            )  # fmt: skip
        person = ann.author_id if i % 4 else ANNOTATORS[i % len(ANNOTATORS)]
        if op == "edit":
            return EditAnnotation(
                "t", ann.annotation_id, ann.version, person, content(f"e{self.n}"), 1, 1, author
            )
        if op == "dispute":
            return OpenDispute("t", ann.annotation_id, f"D{self.n}", person, "no" if k else "")
        return AbandonAnnotation("t", ann.annotation_id, person, "")

    def apply(self, cmd: TaskCommand) -> bool:
        try:
            events = aggregates.decide(self.state, cmd)
        except LabelweaveError:
            return False
        state: aggregates.State | None = self.state
        for e in events:
            state = aggregates.evolve(state, e)
        assert isinstance(state, TaskState)
        self.state = state
        self.log.extend(events)
        tx = StagedTx(self.store)
        for e in events:
            env = codec.make_envelope(
                e,
                stream_id="task:t",
                actor_id="x",
                actor_role=M.ROLE_ADMIN,
                command_id=f"c{self.n}",
                occurred_at=T0,
            )
            env.recorded_at.CopyFrom(codec.timestamp(T0))
            ev = RecordedEvent(Position(0, len(self.recorded) + 1), env, b"")
            self.recorded.append(ev)
            self.view.apply(ev, tx)
        self.store.commit("test", tx.changes(), {0: len(self.recorded)})
        self.check()
        return True

    def check(self) -> None:
        s = self.task
        assert aggregates.fold(self.log) == s
        pipeline = s.pipeline
        routable = {i for i, st_ in enumerate(pipeline.stages) if st_.kind != EXPERT}
        # acceptance only after every review stage passed in the current pass; one stage per reviewer
        passed: dict[str, set[int]] = {}
        judges: dict[str, dict[str, int]] = {}
        disputed: set[tuple[str, int, int]] = set()
        for e in self.log:
            if isinstance(e, events_pb2.AnnotationSubmitted) or (
                isinstance(e, events_pb2.AnnotationEdited)
                and e.person_id == s.annotations[e.annotation_id].author_id
            ):
                passed[e.annotation_id], judges[e.annotation_id] = set(), {}
            elif isinstance(e, events_pb2.ReviewRecorded):
                who = judges[e.annotation_id]
                assert who.get(e.reviewer_id, e.stage_index) == e.stage_index, "one person, two stages"
                who[e.reviewer_id] = e.stage_index
                if e.verdict != M.VERDICT_REJECT:
                    passed[e.annotation_id].add(e.stage_index)
            elif isinstance(e, events_pb2.ReviewRouted) and not e.sampled:
                passed[e.annotation_id].add(e.stage_index)
            elif isinstance(e, events_pb2.DisputeOpened):
                key = (e.annotation_id, e.version, e.stage_index)
                assert key not in disputed, "a rejection disputed twice"
                disputed.add(key)
            elif isinstance(e, events_pb2.DisputeResolved):
                assert e.expert_id not in (e.author_id, e.reviewer_id)
                if e.decision == M.DISPUTE_DECISION_OVERTURN:
                    passed[e.annotation_id].add(e.stage_index)
            elif isinstance(e, events_pb2.AnnotationAccepted):
                assert routable <= passed[e.annotation_id], "accepted without passing every stage"
        # the projection agrees with the aggregate
        doc = rq.review_state(self.store, "t")
        assert doc is not None
        expected_depth = dict.fromkeys((st_.name for st_ in pipeline.stages), 0)
        for a in s.annotations.values():
            row = doc["annotations"][a.annotation_id]
            assert row["status"] == a.status and row["version"] == a.version
            pending = s.stage_name(a.stage) if a.status == "submitted" else ""
            assert row["pending"] == pending
            if a.status == "submitted":
                assert a.stage == next_stage(pipeline, a.stage) >= 0  # waits at a review stage
            if pending:
                expected_depth[pending] += 1
        expert = [st_.name for st_ in pipeline.stages if st_.kind == EXPERT]
        if expert:
            expected_depth[expert[0]] = sum(1 for d in s.disputes.values() if d.status == OPEN)
        assert rq.stage_depths(self.store, "p") == expected_depth
        for d in s.disputes.values():
            assert (rq.dispute(self.store, "t", d.dispute_id) or {}).get("status") == d.status


op_strategy = st.tuples(st.sampled_from(OPS), st.integers(0, 7), st.integers(0, 7), st.integers(0, 5))


def run(pipeline: int, overlap: int, ops: list[tuple[str, int, int, int]]) -> None:
    h = Harness(pipeline, overlap)
    for op in ops:
        cmd = h.command(*op)
        if cmd is not None:
            h.apply(cmd)


@settings(max_examples=250, deadline=None)
@given(
    pipeline=st.integers(0, len(PIPELINES) - 1),
    overlap=st.integers(1, 3),
    ops=st.lists(op_strategy, max_size=50),
)
def test_random_review_histories_keep_the_pipeline_rules(
    pipeline: int, overlap: int, ops: list[tuple[str, int, int, int]]
) -> None:
    run(pipeline, overlap, ops)


@settings(max_examples=120, deadline=None)
@given(
    pipeline=st.integers(1, len(PIPELINES) - 1),
    overlap=st.integers(1, 2),
    ops=st.lists(op_strategy, min_size=60, max_size=90),
)
def test_long_review_histories_keep_the_pipeline_rules(
    pipeline: int, overlap: int, ops: list[tuple[str, int, int, int]]
) -> None:
    run(pipeline, overlap, ops)
