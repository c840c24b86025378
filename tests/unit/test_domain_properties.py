"""Task invariants under random interleavings of commands from many annotators and reviewers.

Commands are drawn as small integer tuples and interpreted against the current state, so most
of them are plausible (a real lease, a real annotation) while some deliberately target the wrong
person, version or lease. Refusals are fine; what must never happen is a state that breaks an
invariant or a log whose replay disagrees with the state built step by step.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from coordinator._pb.labelweave.events.v1 import annotation_pb2, events_pb2, model_pb2
from coordinator.domain import aggregates
from coordinator.domain.commands import (
    AbandonAnnotation,
    EditAnnotation,
    ExpireLease,
    ImportTask,
    LeaseTask,
    ReleaseLease,
    ReopenTask,
    ReviewAnnotation,
    SubmitAnnotation,
    TaskCommand,
)
from coordinator.domain.task import TaskState
from coordinator.errors import LabelweaveError

T0 = datetime(2024, 5, 1, tzinfo=UTC)
LEASE_SECONDS = 100
ANNOTATORS = tuple(f"a{i}" for i in range(8))
REVIEWERS = ("r0", "r1")
SKILLED = frozenset({"lidar"})
# Weighted towards the happy path so that sequences reach review, completion and reopening often.
OPS = (
    *("lease", "submit", "review") * 3,
    *("edit", "release", "expire", "tick", "abandon", "reopen"),
)
VERDICTS = (model_pb2.VERDICT_ACCEPT, model_pb2.VERDICT_REJECT, model_pb2.VERDICT_CORRECT)
ALLOWED = frozenset({"blurry", "wrong_class"})

op_strategy = st.tuples(st.sampled_from(OPS), st.integers(0, 7), st.integers(0, 7), st.integers(0, 5))
policy_strategy = st.sampled_from(
    (model_pb2.REVIEW_POLICY_FULL, model_pb2.REVIEW_POLICY_FULL, model_pb2.REVIEW_POLICY_NONE)
)


def content(tag: str) -> annotation_pb2.Annotation:
    return annotation_pb2.Annotation(
        shapes=[annotation_pb2.Shape(id="s", label=tag, classification=annotation_pb2.Classification())],
        source=annotation_pb2.ANNOTATION_SOURCE_HUMAN,
    )


class Harness:
    def __init__(self, overlap: int, policy: model_pb2.ReviewPolicy.ValueType, needs_skill: bool) -> None:
        self.log: list[Message] = []
        self.state: TaskState | None = None
        self.now = T0
        self.steps = 0
        spec = model_pb2.TaskSpec(
            task_id="t", data_uri="mem://t", overlap=overlap, required_skills=["lidar"] if needs_skill else []
        )
        assert self.apply(ImportTask("p", "b", spec, policy, LEASE_SECONDS))

    @property
    def task(self) -> TaskState:
        assert self.state is not None
        return self.state

    # ------------------------------------------------------------------ interpreting ops

    def command(self, op: str, i: int, j: int, k: int) -> TaskCommand | None:
        s = self.task
        leases = sorted(s.leases.values(), key=lambda lease: lease.lease_id)
        anns = list(s.annotations.values())
        n = self.steps
        if op == "lease":
            person = ANNOTATORS[i]
            skills = frozenset() if i == 7 else SKILLED  # a7 lacks the skill some tasks need
            return LeaseTask("t", f"L{n}", person, skills, self.now)
        if op == "tick":
            self.now += timedelta(seconds=(i + 1) * 15)
            return None
        if op == "reopen":
            return ReopenTask("t", "again")
        if op in ("release", "submit", "expire"):
            if op == "expire":
                self.now += timedelta(seconds=i * 20)
            if not leases:
                return ExpireLease("t", "L-none", self.now) if op == "expire" else None
            lease = leases[j % len(leases)]
            holder = lease.person_id if k else ANNOTATORS[i]
            if op == "release":
                return ReleaseLease("t", lease.lease_id, holder, "")
            if op == "expire":
                return ExpireLease("t", lease.lease_id, self.now)
            return SubmitAnnotation(
                "t", lease.lease_id, holder, f"A{n}", content(f"v{n}"), 1, 1, 10, self.now
            )
        if not anns:
            return None
        # Mostly aim at annotations the op can apply to; sometimes at any, to exercise refusals.
        wanted = {"edit": ("submitted", "rejected"), "abandon": ("rejected",), "review": ("submitted",)}[op]
        pool = [a for a in anns if a.status in wanted]
        if not pool or j == 7:
            pool = anns
        ann = pool[j % len(pool)]
        if op == "edit":
            person = ann.author_id if k else ANNOTATORS[i]
            expected = ann.version + (1 if k == 5 else 0)
            return EditAnnotation("t", ann.annotation_id, expected, person, content(f"e{n}"), 2, 1)
        if op == "abandon":
            return AbandonAnnotation("t", ann.annotation_id, ann.author_id if k else ANNOTATORS[i], "")
        assert op == "review"
        reviewer = ann.author_id if k == 5 else REVIEWERS[k % 2]
        verdict = VERDICTS[i % 3]
        reasons: tuple[str, ...] = ()
        if verdict == model_pb2.VERDICT_REJECT:
            reasons = ("blurry",) if k != 4 else ("nonsense",)
        correction = content(f"c{n}") if verdict == model_pb2.VERDICT_CORRECT else None
        return ReviewAnnotation(
            "t", ann.annotation_id, ann.version, reviewer, verdict, reasons, "", correction, ALLOWED, 3, 1
        )

    def do(self, op: str, i: int, j: int, k: int) -> None:
        self.steps += 1
        cmd = self.command(op, i, j, k)
        if cmd is not None:
            self.apply(cmd)

    def apply(self, cmd: TaskCommand) -> bool:
        before = self.state
        try:
            events = aggregates.decide(self.state, cmd)
        except LabelweaveError:
            assert self.state is before
            return False
        assert events
        self.check_events(events)
        state: aggregates.State | None = self.state
        for e in events:
            state = aggregates.evolve(state, e)
        assert isinstance(state, TaskState)
        self.state = state
        self.log.extend(events)
        self.check()
        return True

    # ------------------------------------------------------------------ invariants

    def check_events(self, events: list[Message]) -> None:
        s = self.state
        for e in events:
            if isinstance(e, events_pb2.TaskLeased):
                assert e.expires_at.ToDatetime(tzinfo=UTC) > self.now
            if isinstance(e, events_pb2.LeaseExpired):
                assert s is not None
                assert s.leases[e.lease_id].expires_at <= self.now

    def check(self) -> None:
        s = self.task
        live = s.live_annotations
        # never leased to (or worked on by) more people than the overlap
        assert len(s.leases) + len(live) <= s.overlap
        assert s.free_slots >= 0
        # one slot per person per round
        holders = [lease.person_id for lease in s.leases.values()]
        authors = [a.author_id for a in live]
        assert len(holders) == len(set(holders))
        assert len(authors) == len(set(authors))
        assert not set(holders) & set(authors)
        # replay agrees with the incrementally built state
        assert aggregates.fold(self.log) == s
        # versions: unique, gap-free, and the state shows the latest one
        versions: dict[str, list[int]] = {}
        latest: dict[str, annotation_pb2.Annotation] = {}
        for e in self.log:
            if isinstance(e, events_pb2.AnnotationSubmitted | events_pb2.AnnotationEdited):
                versions.setdefault(e.annotation_id, []).append(e.version)
                latest[e.annotation_id] = e.annotation
        pairs = Counter((a, v) for a, vs in versions.items() for v in vs)
        assert all(c == 1 for c in pairs.values())
        for ann_id, vs in versions.items():
            assert vs == list(range(1, len(vs) + 1))
            assert s.annotations[ann_id].version == len(vs)
            assert s.annotations[ann_id].annotation == latest[ann_id]
        assert set(versions) == set(s.annotations)
        # completion follows acceptance exactly
        assert s.completed == (s.accepted_count >= s.overlap)
        if s.completed:
            assert not s.leases and s.status == "done"
        for a in s.annotations.values():
            assert a.round <= s.round
            if a.round < s.round:
                assert a.status in ("superseded", "abandoned")


@settings(max_examples=300, deadline=None)
@given(
    overlap=st.integers(1, 4),
    policy=policy_strategy,
    needs_skill=st.booleans(),
    ops=st.lists(op_strategy, max_size=40),
)
def test_random_interleavings_keep_invariants(
    overlap: int,
    policy: model_pb2.ReviewPolicy.ValueType,
    needs_skill: bool,
    ops: list[tuple[str, int, int, int]],
) -> None:
    h = Harness(overlap, policy, needs_skill)
    for op in ops:
        h.do(*op)


@settings(max_examples=60, deadline=None)
@given(overlap=st.integers(1, 4), policy=policy_strategy, ops=st.lists(op_strategy, min_size=40, max_size=60))
def test_long_sequences_keep_invariants(
    overlap: int, policy: model_pb2.ReviewPolicy.ValueType, ops: list[tuple[str, int, int, int]]
) -> None:
    h = Harness(overlap, policy, needs_skill=False)
    for op in ops:
        h.do(*op)


class TaskMachine(RuleBasedStateMachine):
    """Stateful variant: hypothesis chooses each next step, shrinking to a minimal failing story."""

    def __init__(self) -> None:
        super().__init__()
        self.h: Harness | None = None

    @initialize(overlap=st.integers(1, 4), policy=policy_strategy, needs_skill=st.booleans())
    def start(self, overlap: int, policy: model_pb2.ReviewPolicy.ValueType, needs_skill: bool) -> None:
        self.h = Harness(overlap, policy, needs_skill)

    @rule(op=op_strategy)
    def step(self, op: tuple[str, int, int, int]) -> None:
        assert self.h is not None
        self.h.do(*op)

    @invariant()
    def fold_matches(self) -> None:
        if self.h is not None:
            assert aggregates.fold(self.h.log) == self.h.state


TaskMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=60, deadline=None)
test_task_machine = TaskMachine.TestCase
