"""The task aggregate: leases, annotations, reviews and rounds of one media item.

A task is its own consistency boundary. Everything it needs to decide (overlap, review pipeline,
lease length) is copied into `TaskImported`, so a decision never has to read the project stream
and two tasks never contend for the same lock.

Review: submitted work waits at a stage of the task's pipeline (`coordinator.domain.review`);
an accept or a correction sends it on to the next stage that samples it, and past the last stage
it is accepted (`AnnotationAccepted`). A rejection returns it to its author, who reworks it (the
pipeline starts again), abandons it, or disputes the rejection once; an expert upholds the
rejection or overturns it, which counts as an accept at that stage.

Slots: a task with overlap N accepts work from at most N people per round. A slot is taken by a
lease or by a live annotation (submitted, accepted or rejected in the current round); abandoning
rejected work or reopening the task frees slots.

Gold and training tasks (`GoldTaskImported`, docs/quality.md) carry a known answer and have no
slots: anyone may answer once (gold) or once per qualification attempt (training), each answer
is scored against the known answer in the command that submits it (`GoldScored`), and nothing is
reviewed, accepted or completed. They are leased only through the gold mix (`serve_gold`) or a
qualification attempt (`attempt`), never from the normal queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final, TypeVar

from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import annotation_pb2, consensus_pb2, events_pb2, model_pb2
from coordinator.domain import controls
from coordinator.domain.commands import (
    AbandonAnnotation,
    AssignTask,
    EditAnnotation,
    ExpireLease,
    ImportGoldTask,
    ImportTask,
    IngestPrelabel,
    LeaseTask,
    OpenDispute,
    ReleaseLease,
    ReopenTask,
    ReprioritiseTask,
    ResolveDispute,
    ReviewAnnotation,
    SubmitAnnotation,
    TaskCommand,
    UnassignTask,
)
from coordinator.domain.consensus import consensus_events
from coordinator.domain.gold import Scoring, check_skill_name, score_answer
from coordinator.domain.ids import require_aware, to_datetime, to_timestamp
from coordinator.domain.review import (
    AuthorRecord,
    check_comment,
    expert_stage,
    may_review,
    next_stage,
    pipeline_of_import,
    reviews_everything,
    role_list,
    sample_point,
    stage_name,
    stage_rate,
)
from coordinator.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)

SUBMITTED: Final = "submitted"
ACCEPTED: Final = "accepted"
REJECTED: Final = "rejected"
ABANDONED: Final = "abandoned"
SUPERSEDED: Final = "superseded"
SCORED: Final = "scored"  # an answer on a gold task: scored, never reviewed nor accepted
LIVE_STATUSES: Final = frozenset({SUBMITTED, ACCEPTED, REJECTED})

OPEN: Final = "open"
UPHELD: Final = "upheld"
OVERTURNED: Final = "overturned"
WITHDRAWN: Final = "withdrawn"

TASK_EVENTS: Final[tuple[type[Message], ...]] = (
    events_pb2.TaskImported,
    events_pb2.PrelabelIngested,
    events_pb2.TaskLeased,
    events_pb2.LeaseReleased,
    events_pb2.LeaseExpired,
    events_pb2.AnnotationSubmitted,
    events_pb2.AnnotationEdited,
    events_pb2.ReviewRecorded,
    events_pb2.AnnotationAccepted,
    events_pb2.TaskCompleted,
    events_pb2.TaskReopened,
    events_pb2.AnnotationAbandoned,
    events_pb2.ReviewRouted,
    events_pb2.DisputeOpened,
    events_pb2.DisputeResolved,
    events_pb2.GoldTaskImported,
    events_pb2.GoldScored,
    consensus_pb2.ConsensusComputed,
    *controls.TASK_CONTROL_EVENTS,
)

_M = TypeVar("_M", bound=Message)
_K = TypeVar("_K")
_V = TypeVar("_V")


def _copy(msg: _M) -> _M:
    """States must not alias messages owned by events or commands: protobuf messages are mutable."""
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _frozen(d: dict[_K, _V]) -> Mapping[_K, _V]:
    return MappingProxyType(d)


def _empty() -> Mapping[str, LeaseState]:
    return MappingProxyType({})


def _empty_annotations() -> Mapping[str, AnnotationState]:
    return MappingProxyType({})


def _empty_disputes() -> Mapping[str, DisputeState]:
    return MappingProxyType({})


def _empty_consensus() -> Mapping[int, consensus_pb2.ConsensusComputed]:
    return MappingProxyType({})


@dataclass(frozen=True)
class LeaseState:
    lease_id: str
    person_id: str
    expires_at: datetime
    attempt: int = 0  # training items: the qualification attempt


@dataclass(frozen=True)
class GoldState:
    """The known answer of a gold or training task, and who answered it (gold: once each)."""

    answer: annotation_pb2.Annotation
    training: bool
    skill: str
    answered: frozenset[str] = frozenset()

    @property
    def purpose(self) -> model_pb2.GoldPurpose.ValueType:
        return model_pb2.GOLD_PURPOSE_TRAINING if self.training else model_pb2.GOLD_PURPOSE_GOLD

    def spec(self) -> model_pb2.GoldSpec:
        return model_pb2.GoldSpec(answer=self.answer, training=self.training, skill=self.skill)


@dataclass(frozen=True)
class Rejection:
    """The rejection an annotation is currently returned with."""

    stage_index: int
    version: int
    reviewer_id: str
    reason_codes: tuple[str, ...]
    comment: str
    dispute_id: str = ""  # set once disputed: a rejection is disputed at most once


@dataclass(frozen=True)
class DisputeState:
    dispute_id: str
    annotation_id: str
    version: int
    stage_index: int
    author_id: str
    reviewer_id: str
    reason_codes: tuple[str, ...]
    status: str  # open | upheld | overturned | withdrawn
    expert_id: str = ""


@dataclass(frozen=True)
class AnnotationState:
    annotation_id: str
    author_id: str
    version: int
    status: str  # submitted | accepted | rejected | abandoned | superseded
    round: int
    reason_codes: tuple[str, ...]
    annotation: annotation_pb2.Annotation  # content of the latest version
    label_schema_version: int
    guideline_version: int
    stage: int = -1  # submitted work: index of the pipeline stage it waits at; -1 otherwise
    reviewers: tuple[str, ...] = ()  # who gave a verdict since the author last (re)submitted
    rejection: Rejection | None = None

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES


@dataclass(frozen=True)
class TaskState:
    task_id: str
    project_id: str
    batch_id: str
    spec: model_pb2.TaskSpec
    review_policy: model_pb2.ReviewPolicy.ValueType
    lease_seconds: int
    round: int = 1
    leases: Mapping[str, LeaseState] = field(default_factory=_empty)
    annotations: Mapping[str, AnnotationState] = field(default_factory=_empty_annotations)
    prelabel: annotation_pb2.Annotation | None = None
    prelabel_id: str = ""
    completed: bool = False
    pipeline: model_pb2.ReviewPipeline = field(default_factory=model_pb2.ReviewPipeline)
    disputes: Mapping[str, DisputeState] = field(default_factory=_empty_disputes)
    gold: GoldState | None = None
    consensus: Mapping[int, consensus_pb2.ConsensusComputed] = field(default_factory=_empty_consensus)
    assignment: controls.Assignment | None = None  # manager controls: who alone may lease it

    @property
    def overlap(self) -> int:
        return self.spec.overlap

    @property
    def live_annotations(self) -> tuple[AnnotationState, ...]:
        return tuple(a for a in self.annotations.values() if a.round == self.round and a.live)

    @property
    def accepted_annotations(self) -> tuple[AnnotationState, ...]:
        return tuple(a for a in self.live_annotations if a.status == ACCEPTED)

    @property
    def accepted_count(self) -> int:
        return len(self.accepted_annotations)

    @property
    def free_slots(self) -> int:
        return self.overlap - len(self.leases) - len(self.live_annotations)

    @property
    def status(self) -> str:
        if self.gold is not None:
            return "queued"  # always open: anyone may answer a gold task (once)
        if self.completed:
            return "done"
        if self.free_slots > 0:
            return "queued"
        if self.leases:
            return "in_progress"
        return "in_review"

    @property
    def needs_review(self) -> bool:
        # UNSPECIFIED means FULL: forgetting to choose a policy must not skip review.
        return next_stage(self.pipeline, 0) >= 0

    def stage_name(self, index: int) -> str:
        return stage_name(self.pipeline.stages[index]) if 0 <= index < len(self.pipeline.stages) else ""


# ---------------------------------------------------------------------------------------- decide


def decide_task(state: TaskState | None, cmd: TaskCommand) -> list[Message]:
    if isinstance(cmd, ImportTask):
        return _import(state, cmd)
    if isinstance(cmd, ImportGoldTask):
        return _import_gold(state, cmd)
    if state is None:
        raise NotFound(f"no task {cmd.task_id!r}", field="task_id")
    if isinstance(cmd, IngestPrelabel):
        return _ingest_prelabel(state, cmd)
    if isinstance(cmd, LeaseTask):
        return _lease(state, cmd)
    if isinstance(cmd, ReleaseLease):
        return _release(state, cmd)
    if isinstance(cmd, ExpireLease):
        return _expire(state, cmd)
    if isinstance(cmd, SubmitAnnotation):
        return _submit(state, cmd)
    if isinstance(cmd, EditAnnotation):
        return _edit(state, cmd)
    if isinstance(cmd, ReviewAnnotation):
        return _review(state, cmd)
    if isinstance(cmd, ReopenTask):
        return _reopen(state, cmd)
    if isinstance(cmd, AbandonAnnotation):
        return _abandon(state, cmd)
    if isinstance(cmd, OpenDispute):
        return _open_dispute(state, cmd)
    if isinstance(cmd, ResolveDispute):
        return _resolve_dispute(state, cmd)
    if isinstance(cmd, AssignTask):
        return controls.decide_assign(state, cmd)
    if isinstance(cmd, UnassignTask):
        return controls.decide_unassign(state, cmd)
    if isinstance(cmd, ReprioritiseTask):
        return controls.decide_reprioritise(state, cmd)
    raise TypeError(f"not a task command: {type(cmd).__name__}")


def _import(state: TaskState | None, cmd: ImportTask) -> list[Message]:
    if state is not None:
        raise AlreadyExists(f"task {cmd.spec.task_id!r} exists already", field="task.task_id")
    if not cmd.spec.task_id:
        raise InvalidArgument("required", field="task.task_id")
    if cmd.spec.overlap < 1:
        raise InvalidArgument(
            "overlap must be at least 1 (resolve the project default first)", field="task.overlap"
        )
    if cmd.lease_seconds < 1:
        raise InvalidArgument("lease length must be at least one second", field="lease_seconds")
    imported = events_pb2.TaskImported(
        project_id=cmd.project_id,
        batch_id=cmd.batch_id,
        task=cmd.spec,
        review_policy=cmd.review_policy,
        lease_seconds=cmd.lease_seconds,
    )
    if cmd.pipeline is not None:
        imported.pipeline.CopyFrom(cmd.pipeline)
    return [imported]


def _import_gold(state: TaskState | None, cmd: ImportGoldTask) -> list[Message]:
    if state is not None:
        raise AlreadyExists(f"task {cmd.spec.task_id!r} exists already", field="task.task_id")
    if not cmd.spec.task_id:
        raise InvalidArgument("required", field="task.task_id")
    if cmd.spec.HasField("gold"):
        raise InvalidArgument("the known answer goes in `gold`, not in the spec", field="task.gold")
    if cmd.lease_seconds < 1:
        raise InvalidArgument("lease length must be at least one second", field="lease_seconds")
    if cmd.gold.training:
        check_skill_name(cmd.gold.skill, "task.gold.skill")
    elif cmd.gold.skill:
        raise InvalidArgument("only training items name a qualification skill", field="task.gold.skill")
    return [
        events_pb2.GoldTaskImported(
            project_id=cmd.project_id,
            batch_id=cmd.batch_id,
            task=cmd.spec,
            gold=cmd.gold,
            lease_seconds=cmd.lease_seconds,
        )
    ]


def _ingest_prelabel(state: TaskState, cmd: IngestPrelabel) -> list[Message]:
    if state.completed:
        raise FailedPrecondition("task is complete; a pre-label can no longer help")
    if not cmd.prelabel_id:
        raise InvalidArgument("required", field="prelabel_id")
    ann = cmd.annotation
    if ann.source != annotation_pb2.ANNOTATION_SOURCE_MODEL:
        raise InvalidArgument(
            "pre-labels must have source ANNOTATION_SOURCE_MODEL", field="annotation.source"
        )
    if not ann.model.name:
        raise InvalidArgument(
            "pre-labels must name the model that produced them", field="annotation.model.name"
        )
    if not ann.model.version:
        raise InvalidArgument("pre-labels must name the model version", field="annotation.model.version")
    return [events_pb2.PrelabelIngested(task_id=state.task_id, prelabel_id=cmd.prelabel_id, annotation=ann)]


def expired_leases(state: TaskState, now: datetime) -> list[events_pb2.LeaseExpired]:
    """Leases past their deadline, ordered by id so replays and retries emit identical events."""
    return [
        events_pb2.LeaseExpired(task_id=state.task_id, lease_id=lease.lease_id, person_id=lease.person_id)
        for lease in sorted(state.leases.values(), key=lambda lease: lease.lease_id)
        if lease.expires_at <= now
    ]


def _lease(state: TaskState, cmd: LeaseTask) -> list[Message]:
    require_aware(cmd.now)
    if not cmd.lease_id:
        raise InvalidArgument("required", field="lease_id")
    # Expired leases no longer hold a slot; retire them first so the decision sees real capacity.
    events: list[Message] = list(expired_leases(state, cmd.now))
    current = _apply(state, events)
    if current.completed:
        raise FailedPrecondition("task is complete")
    if cmd.lease_id in current.leases:
        raise AlreadyExists(f"lease {cmd.lease_id!r} exists already", field="lease_id")
    if any(lease.person_id == cmd.person_id for lease in current.leases.values()):
        raise FailedPrecondition(f"{cmd.person_id} already holds a lease on this task")
    if any(a.author_id == cmd.person_id for a in current.live_annotations):
        raise FailedPrecondition("already annotated by you in this round")
    waived = controls.check_lease(current, cmd)  # an assigned task: its assignee only
    missing = sorted(set(current.spec.required_skills) - cmd.person_skills)
    if missing and not waived:
        raise FailedPrecondition(f"missing skills: {', '.join(missing)}")
    gold = current.gold
    if gold is not None:
        if gold.training and cmd.attempt <= 0:
            raise FailedPrecondition("training items are served only to people taking the qualification")
        if not gold.training and not cmd.serve_gold:
            raise FailedPrecondition("gold tasks are served only by the gold mix")
        if not gold.training and cmd.person_id in gold.answered:
            raise FailedPrecondition(f"{cmd.person_id} has answered this gold task already")
    elif current.free_slots <= 0:
        raise FailedPrecondition(f"no free slot: overlap {current.overlap} reached")
    leased = events_pb2.TaskLeased(
        task_id=state.task_id,
        lease_id=cmd.lease_id,
        person_id=cmd.person_id,
        expires_at=to_timestamp(cmd.now + timedelta(seconds=state.lease_seconds)),
        project_id=state.project_id,
    )
    if gold is not None and gold.training:
        leased.attempt = cmd.attempt
    events.append(leased)
    return events


def _release(state: TaskState, cmd: ReleaseLease) -> list[Message]:
    lease = state.leases.get(cmd.lease_id)
    if lease is None:
        raise NotFound(f"no lease {cmd.lease_id} on task {state.task_id}", field="lease_id")
    if lease.person_id != cmd.person_id:
        raise PermissionDenied(f"lease {cmd.lease_id} belongs to someone else", field="lease_id")
    return [
        events_pb2.LeaseReleased(
            task_id=state.task_id, lease_id=lease.lease_id, person_id=lease.person_id, reason=cmd.reason
        )
    ]


def _expire(state: TaskState, cmd: ExpireLease) -> list[Message]:
    require_aware(cmd.now)
    lease = state.leases.get(cmd.lease_id)
    if lease is None:
        raise NotFound(f"no lease {cmd.lease_id} on task {state.task_id}", field="lease_id")
    if lease.expires_at > cmd.now:
        raise FailedPrecondition(f"lease has not expired (it runs until {lease.expires_at.isoformat()})")
    return [
        events_pb2.LeaseExpired(task_id=state.task_id, lease_id=lease.lease_id, person_id=lease.person_id)
    ]


def _submit(state: TaskState, cmd: SubmitAnnotation) -> list[Message]:
    require_aware(cmd.now)
    lease = state.leases.get(cmd.lease_id)
    if lease is None:
        raise FailedPrecondition(f"lease {cmd.lease_id} is not active (expired or released)")
    if lease.person_id != cmd.person_id:
        raise PermissionDenied(f"lease {cmd.lease_id} belongs to someone else", field="lease_id")
    if lease.expires_at <= cmd.now:
        raise FailedPrecondition(f"lease expired at {lease.expires_at.isoformat()}")
    if not cmd.annotation_id:
        raise InvalidArgument("required", field="annotation_id")
    if cmd.annotation_id in state.annotations:
        raise AlreadyExists(f"annotation {cmd.annotation_id} exists already", field="annotation_id")
    if state.gold is not None:
        return _submit_gold(state, state.gold, lease, cmd)
    events: list[Message] = [
        events_pb2.AnnotationSubmitted(
            task_id=state.task_id,
            annotation_id=cmd.annotation_id,
            version=1,
            lease_id=cmd.lease_id,
            person_id=cmd.person_id,
            annotation=cmd.annotation,
            label_schema_version=cmd.label_schema_version,
            guideline_version=cmd.guideline_version,
            time_on_task_ms=cmd.time_on_task_ms,
            project_id=state.project_id,
        )
    ]
    if cmd.consensus is not None:  # the thresholds agreement statistics match shapes with
        submitted = events[0]
        assert isinstance(submitted, events_pb2.AnnotationSubmitted)
        submitted.match_iou_threshold = cmd.consensus.iou_threshold
        submitted.match_oks_threshold = cmd.consensus.oks_threshold
    after = _apply(state, events)
    agreed = consensus_events(after, cmd.annotation_id, cmd.consensus)  # escalation routes it itself
    events.extend(agreed)
    if not any(isinstance(e, events_pb2.ReviewRouted) for e in agreed):
        events.extend(_route(after, after.annotations[cmd.annotation_id], 0, "", cmd.author))
    return _with_completion(state, events)


def _submit_gold(
    state: TaskState, gold: GoldState, lease: LeaseState, cmd: SubmitAnnotation
) -> list[Message]:
    """An answer on a gold task: recorded like any submission, scored against the known answer
    in the same command, and never routed to review."""
    if not gold.training and cmd.person_id in gold.answered:
        raise FailedPrecondition(f"{cmd.person_id} has answered this gold task already")
    scoring = cmd.scoring or Scoring()
    result = score_answer(gold.answer, cmd.annotation, scoring)
    scored = events_pb2.GoldScored(
        task_id=state.task_id,
        project_id=state.project_id,
        annotation_id=cmd.annotation_id,
        person_id=cmd.person_id,
        purpose=gold.purpose,
        score=result.score,
        passed=result.passed,
        classes=result.classes,
        iou_threshold=scoring.iou_threshold,
        oks_threshold=scoring.oks_threshold,
        pass_score=scoring.pass_score,
    )
    if gold.training:
        scored.skill = gold.skill
        scored.attempt = lease.attempt
    return [
        events_pb2.AnnotationSubmitted(
            task_id=state.task_id,
            annotation_id=cmd.annotation_id,
            version=1,
            lease_id=cmd.lease_id,
            person_id=cmd.person_id,
            annotation=cmd.annotation,
            label_schema_version=cmd.label_schema_version,
            guideline_version=cmd.guideline_version,
            time_on_task_ms=cmd.time_on_task_ms,
            project_id=state.project_id,
        ),
        scored,
    ]


def _edit(state: TaskState, cmd: EditAnnotation) -> list[Message]:
    ann = _annotation(state, cmd.annotation_id)
    if ann.author_id != cmd.person_id:
        raise PermissionDenied("only the author may edit an annotation", field="annotation_id")
    if ann.status == ACCEPTED:
        raise FailedPrecondition("accepted work is final; a reviewer corrects it with VERDICT_CORRECT")
    if ann.status not in (SUBMITTED, REJECTED):
        raise FailedPrecondition(f"annotation is {ann.status} and cannot be edited")
    _refuse_while_disputed(state, ann)
    if cmd.expected_version != ann.version:
        raise Conflict(
            f"annotation {ann.annotation_id} is at version {ann.version}, not {cmd.expected_version}",
            field="expected_version",
        )
    version = ann.version + 1
    events: list[Message] = [
        events_pb2.AnnotationEdited(
            task_id=state.task_id,
            annotation_id=ann.annotation_id,
            version=version,
            previous_version=ann.version,
            person_id=cmd.person_id,
            annotation=cmd.annotation,
            label_schema_version=cmd.label_schema_version,
            guideline_version=cmd.guideline_version,
            project_id=state.project_id,
        )
    ]
    after = _apply(state, events)
    events.extend(_route(after, after.annotations[ann.annotation_id], 0, "", cmd.author))
    return _with_completion(state, events)


def _review(state: TaskState, cmd: ReviewAnnotation) -> list[Message]:
    ann = _annotation(state, cmd.annotation_id)
    if ann.status != SUBMITTED:
        raise FailedPrecondition(f"annotation is {ann.status}, not awaiting review")
    if cmd.version != ann.version:
        raise Conflict(
            f"annotation {ann.annotation_id} is at version {ann.version}, not {cmd.version}", field="version"
        )
    if ann.stage < 0:
        raise FailedPrecondition(f"annotation {ann.annotation_id} is not waiting at a review stage")
    stage = state.pipeline.stages[ann.stage]
    name = stage_name(stage)
    if cmd.stage and cmd.stage != name:
        raise FailedPrecondition(
            f"annotation {ann.annotation_id} waits at stage {name!r}, not {cmd.stage!r}", field="stage"
        )
    if cmd.reviewer_id == ann.author_id:
        raise PermissionDenied("reviewers cannot review their own work")
    if cmd.reviewer_roles is not None and not may_review(stage, cmd.reviewer_roles):
        raise PermissionDenied(
            f"stage {name!r} is reviewed by the roles: {role_list(stage)}; {cmd.reviewer_id} has none of them"
        )
    if cmd.reviewer_id in ann.reviewers:
        raise FailedPrecondition(
            f"{cmd.reviewer_id} has already given a verdict on this work at an earlier stage;"
            f" stage {name!r} needs another person"
        )
    if cmd.verdict not in (model_pb2.VERDICT_ACCEPT, model_pb2.VERDICT_REJECT, model_pb2.VERDICT_CORRECT):
        raise InvalidArgument("choose VERDICT_ACCEPT, VERDICT_REJECT or VERDICT_CORRECT", field="verdict")
    if cmd.verdict == model_pb2.VERDICT_REJECT and not cmd.reason_codes:
        raise InvalidArgument("a rejection needs at least one reason code", field="reason_codes")
    if cmd.allowed_reasons:
        for i, code in enumerate(cmd.reason_codes):
            if code not in cmd.allowed_reasons:
                raise InvalidArgument(
                    f"unknown reason code {code!r}; allowed: {', '.join(sorted(cmd.allowed_reasons))}",
                    field=f"reason_codes[{i}]",
                )
    check_comment(cmd.comment)

    def recorded(version: int) -> events_pb2.ReviewRecorded:
        return events_pb2.ReviewRecorded(
            task_id=state.task_id,
            annotation_id=ann.annotation_id,
            version=version,
            reviewer_id=cmd.reviewer_id,
            verdict=cmd.verdict,
            reason_codes=cmd.reason_codes,
            comment=cmd.comment,
            author_id=ann.author_id,
            project_id=state.project_id,
            stage=name,
            stage_index=ann.stage,
        )

    if cmd.verdict == model_pb2.VERDICT_REJECT:
        return [recorded(ann.version)]
    events: list[Message]
    if cmd.verdict == model_pb2.VERDICT_ACCEPT:
        events = [recorded(ann.version)]
    else:
        # CORRECT: the reviewer's fix becomes a new version of the author's annotation, accepted at
        # this stage; it goes on through the rest of the pipeline like any accepted work.
        if cmd.correction is None:
            raise InvalidArgument("a correction is required for VERDICT_CORRECT", field="correction")
        version = ann.version + 1
        events = [
            events_pb2.AnnotationEdited(
                task_id=state.task_id,
                annotation_id=ann.annotation_id,
                version=version,
                previous_version=ann.version,
                person_id=cmd.reviewer_id,
                annotation=cmd.correction,
                label_schema_version=cmd.label_schema_version,
                guideline_version=cmd.guideline_version,
                project_id=state.project_id,
            ),
            recorded(version),
        ]
    after = _apply(state, events)
    events.extend(
        _route(after, after.annotations[ann.annotation_id], ann.stage + 1, cmd.reviewer_id, cmd.author)
    )
    return _with_completion(state, events)


def _route(
    state: TaskState, ann: AnnotationState, start: int, accepted_by: str, author: AuthorRecord
) -> list[Message]:
    """Send work on from stage `start`: the first review stage that samples it gets it, and past
    the last stage it is accepted. A stage that reviews everything needs no decision (the work
    waits there, `evolve` knows); a sampling decision is recorded in `ReviewRouted`."""
    pipeline = state.pipeline
    events: list[Message] = []
    index = next_stage(pipeline, start)
    while index >= 0:
        stage = pipeline.stages[index]
        if reviews_everything(stage):
            return events
        name = stage_name(stage)
        rate = stage_rate(stage, author)
        point = sample_point(pipeline.sampling_seed, state.task_id, ann.annotation_id, name)
        sampled = point < rate
        events.append(
            events_pb2.ReviewRouted(
                task_id=state.task_id,
                annotation_id=ann.annotation_id,
                version=ann.version,
                author_id=ann.author_id,
                project_id=state.project_id,
                stage=name,
                stage_index=index,
                kind=stage.kind,
                sampled=sampled,
                rate=rate,
                sample_point=point,
                author_acceptance=author.acceptance if author.verdicts else 0.0,
                author_verdicts=max(author.verdicts, 0),
            )
        )
        if sampled:
            return events
        index = next_stage(pipeline, index + 1)
    events.append(
        _accepted(
            state,
            ann.annotation_id,
            ann.version,
            ann.author_id,
            accepted_by,
            ann.annotation,
            ann.label_schema_version,
            ann.guideline_version,
        )
    )
    return events


def _refuse_while_disputed(state: TaskState, ann: AnnotationState) -> None:
    rejection = ann.rejection
    if rejection is not None and rejection.dispute_id:
        dispute = state.disputes.get(rejection.dispute_id)
        if dispute is not None and dispute.status == OPEN:
            raise FailedPrecondition(
                f"the rejection of annotation {ann.annotation_id} is disputed (dispute"
                f" {dispute.dispute_id}); wait for the expert's decision"
            )


def _open_dispute(state: TaskState, cmd: OpenDispute) -> list[Message]:
    ann = _annotation(state, cmd.annotation_id)
    if cmd.person_id != ann.author_id:
        raise PermissionDenied(
            f"only the author of annotation {ann.annotation_id} may dispute its rejection",
            field="annotation_id",
        )
    if ann.status == ACCEPTED:
        raise FailedPrecondition(
            f"annotation {ann.annotation_id} is accepted: there is no rejection to dispute"
        )
    rejection = ann.rejection
    if ann.status != REJECTED or rejection is None:
        raise FailedPrecondition(
            f"annotation {ann.annotation_id} is {ann.status}: only a rejection can be disputed"
        )
    if rejection.dispute_id:
        prior = state.disputes.get(rejection.dispute_id)
        status = prior.status if prior is not None else OPEN
        then = "wait for the expert's decision" if status == OPEN else "the expert's decision is final"
        raise FailedPrecondition(
            f"this rejection was disputed already (dispute {rejection.dispute_id}, {status}); {then}"
        )
    expert = expert_stage(state.pipeline)
    if expert < 0:
        raise FailedPrecondition(
            "this task's review pipeline has no expert resolution stage, so rejections cannot be disputed"
        )
    if not cmd.dispute_id:
        raise InvalidArgument("required", field="dispute_id")
    if cmd.dispute_id in state.disputes:
        raise AlreadyExists(f"dispute {cmd.dispute_id} exists already", field="dispute_id")
    if not cmd.comment.strip():
        raise InvalidArgument("say why the rejection is wrong", field="comment")
    check_comment(cmd.comment)
    return [
        events_pb2.DisputeOpened(
            task_id=state.task_id,
            dispute_id=cmd.dispute_id,
            annotation_id=ann.annotation_id,
            version=rejection.version,
            author_id=ann.author_id,
            project_id=state.project_id,
            stage=state.stage_name(rejection.stage_index),
            stage_index=rejection.stage_index,
            reviewer_id=rejection.reviewer_id,
            reason_codes=rejection.reason_codes,
            comment=cmd.comment,
            rejection_comment=rejection.comment,
        )
    ]


def _resolve_dispute(state: TaskState, cmd: ResolveDispute) -> list[Message]:
    dispute = state.disputes.get(cmd.dispute_id)
    if dispute is None:
        raise NotFound(f"no dispute {cmd.dispute_id!r} on task {state.task_id}", field="dispute_id")
    if dispute.status != OPEN:
        raise FailedPrecondition(
            f"dispute {dispute.dispute_id} is {dispute.status} already; the expert's decision is final"
        )
    stage = state.pipeline.stages[expert_stage(state.pipeline)]
    if cmd.expert_roles is not None and not may_review(stage, cmd.expert_roles):
        raise PermissionDenied(
            f"disputes are resolved by the roles: {role_list(stage)}; {cmd.expert_id} has none of them"
        )
    if cmd.expert_id in (dispute.author_id, dispute.reviewer_id):
        raise PermissionDenied(
            "the expert resolving a dispute must be neither its author nor the reviewer who rejected"
        )
    if cmd.decision not in (model_pb2.DISPUTE_DECISION_UPHOLD, model_pb2.DISPUTE_DECISION_OVERTURN):
        raise InvalidArgument("choose DISPUTE_DECISION_UPHOLD or DISPUTE_DECISION_OVERTURN", field="decision")
    check_comment(cmd.comment)
    events: list[Message] = [
        events_pb2.DisputeResolved(
            task_id=state.task_id,
            dispute_id=dispute.dispute_id,
            annotation_id=dispute.annotation_id,
            version=dispute.version,
            author_id=dispute.author_id,
            project_id=state.project_id,
            stage=state.stage_name(dispute.stage_index),
            stage_index=dispute.stage_index,
            reviewer_id=dispute.reviewer_id,
            expert_id=cmd.expert_id,
            decision=cmd.decision,
            comment=cmd.comment,
        )
    ]
    if cmd.decision == model_pb2.DISPUTE_DECISION_UPHOLD:
        return events
    # OVERTURN: the rejection is void; the work counts as accepted at that stage and goes on.
    after = _apply(state, events)
    ann = after.annotations[dispute.annotation_id]
    events.extend(_route(after, ann, dispute.stage_index + 1, cmd.expert_id, cmd.author))
    return _with_completion(state, events)


def _reopen(state: TaskState, cmd: ReopenTask) -> list[Message]:
    if not state.live_annotations:
        raise FailedPrecondition("nothing to reopen: no live annotation in the current round")
    return [
        events_pb2.TaskReopened(
            task_id=state.task_id, project_id=state.project_id, reason=cmd.reason, round=state.round + 1
        )
    ]


def _abandon(state: TaskState, cmd: AbandonAnnotation) -> list[Message]:
    ann = _annotation(state, cmd.annotation_id)
    if ann.author_id != cmd.person_id:
        raise PermissionDenied("only the author may abandon an annotation", field="annotation_id")
    if ann.status != REJECTED:
        raise FailedPrecondition(f"only rejected annotations can be abandoned; this one is {ann.status}")
    _refuse_while_disputed(state, ann)
    return [
        events_pb2.AnnotationAbandoned(
            task_id=state.task_id, annotation_id=ann.annotation_id, person_id=cmd.person_id, reason=cmd.reason
        )
    ]


def _annotation(state: TaskState, annotation_id: str) -> AnnotationState:
    ann = state.annotations.get(annotation_id)
    if ann is None:
        raise NotFound(f"no annotation {annotation_id} on task {state.task_id}", field="annotation_id")
    return ann


def _accepted(
    state: TaskState,
    annotation_id: str,
    version: int,
    author_id: str,
    accepted_by: str,
    content: annotation_pb2.Annotation,
    label_schema_version: int,
    guideline_version: int,
) -> events_pb2.AnnotationAccepted:
    return events_pb2.AnnotationAccepted(
        task_id=state.task_id,
        annotation_id=annotation_id,
        version=version,
        author_id=author_id,
        accepted_by=accepted_by,
        annotation=content,
        project_id=state.project_id,
        label_schema_version=label_schema_version,
        guideline_version=guideline_version,
        data_uri=state.spec.data_uri,
    )


def _apply(state: TaskState, events: Iterable[Message]) -> TaskState:
    for event in events:
        state = evolve_task(state, event)
    return state


def _with_completion(state: TaskState, events: list[Message]) -> list[Message]:
    """Completion is derived from the outcome, so every path that accepts work shares this check."""
    after = _apply(state, events)
    if not after.completed and after.accepted_count >= after.overlap:
        events.append(
            events_pb2.TaskCompleted(
                task_id=state.task_id,
                project_id=state.project_id,
                annotation_ids=[a.annotation_id for a in after.accepted_annotations],
            )
        )
    return events


# ---------------------------------------------------------------------------------------- evolve


def evolve_task(state: TaskState | None, event: Message) -> TaskState:
    if isinstance(event, events_pb2.TaskImported):
        if state is not None:
            raise ValueError(f"task {state.task_id} imported twice")
        spec = _copy(event.task)
        return TaskState(
            task_id=spec.task_id,
            project_id=event.project_id,
            batch_id=event.batch_id,
            spec=spec,
            review_policy=event.review_policy,
            lease_seconds=event.lease_seconds,
            prelabel=_copy(spec.prelabel) if spec.HasField("prelabel") else None,
            pipeline=pipeline_of_import(event),
        )
    if isinstance(event, events_pb2.GoldTaskImported):
        if state is not None:
            raise ValueError(f"task {state.task_id} imported twice")
        spec = _copy(event.task)
        return TaskState(
            task_id=spec.task_id,
            project_id=event.project_id,
            batch_id=event.batch_id,
            spec=spec,
            review_policy=model_pb2.REVIEW_POLICY_NONE,
            lease_seconds=event.lease_seconds,
            prelabel=_copy(spec.prelabel) if spec.HasField("prelabel") else None,
            pipeline=model_pb2.ReviewPipeline(),
            gold=GoldState(
                answer=_copy(event.gold.answer), training=event.gold.training, skill=event.gold.skill
            ),
        )
    if state is None:
        raise ValueError(f"{type(event).__name__} before TaskImported")
    if isinstance(event, events_pb2.PrelabelIngested):
        return replace(state, prelabel=_copy(event.annotation), prelabel_id=event.prelabel_id)
    if isinstance(event, events_pb2.TaskLeased):
        leases = dict(state.leases)
        leases[event.lease_id] = LeaseState(
            event.lease_id, event.person_id, to_datetime(event.expires_at), event.attempt
        )
        return replace(state, leases=_frozen(leases))
    if isinstance(event, events_pb2.LeaseReleased | events_pb2.LeaseExpired):
        return _without_lease(state, event.lease_id)
    # Where submitted work waits: a stage that reviews everything records no routing event, so
    # every event that sends work on puts it at the next review stage; a `ReviewRouted` that
    # follows (a sampling stage) moves it on, and `AnnotationAccepted` takes it out.
    if isinstance(event, events_pb2.AnnotationSubmitted):
        state = _without_lease(state, event.lease_id)
        return _put(
            state,
            AnnotationState(
                annotation_id=event.annotation_id,
                author_id=event.person_id,
                version=event.version,
                status=SUBMITTED,
                round=state.round,
                reason_codes=(),
                annotation=_copy(event.annotation),
                label_schema_version=event.label_schema_version,
                guideline_version=event.guideline_version,
                stage=next_stage(state.pipeline, 0),
            ),
        )
    if isinstance(event, events_pb2.AnnotationEdited):
        ann = _known(state, event.annotation_id)
        by_author = event.person_id == ann.author_id  # else a reviewer's correction, same pass
        return _put(
            state,
            replace(
                ann,
                version=event.version,
                status=SUBMITTED,
                reason_codes=(),
                annotation=_copy(event.annotation),
                label_schema_version=event.label_schema_version,
                guideline_version=event.guideline_version,
                stage=next_stage(state.pipeline, 0),
                reviewers=() if by_author else ann.reviewers,
                rejection=None,
            ),
        )
    if isinstance(event, events_pb2.ReviewRecorded):
        ann = _known(state, event.annotation_id)
        reviewers = (
            ann.reviewers if event.reviewer_id in ann.reviewers else (*ann.reviewers, event.reviewer_id)
        )
        if event.verdict != model_pb2.VERDICT_REJECT:
            # sent on; acceptance past the last stage is carried by AnnotationAccepted
            stage = next_stage(state.pipeline, event.stage_index + 1)
            return _put(state, replace(ann, stage=stage, reviewers=reviewers))
        rejection = Rejection(
            stage_index=event.stage_index,
            version=event.version,
            reviewer_id=event.reviewer_id,
            reason_codes=tuple(event.reason_codes),
            comment=event.comment,
        )
        return _put(
            state,
            replace(
                ann,
                status=REJECTED,
                reason_codes=tuple(event.reason_codes),
                stage=-1,
                reviewers=reviewers,
                rejection=rejection,
            ),
        )
    if isinstance(event, events_pb2.ReviewRouted):
        ann = _known(state, event.annotation_id)
        stage = event.stage_index if event.sampled else next_stage(state.pipeline, event.stage_index + 1)
        return _put(state, replace(ann, stage=stage))
    if isinstance(event, events_pb2.AnnotationAccepted):
        ann = _known(state, event.annotation_id)
        return _put(state, replace(ann, status=ACCEPTED, stage=-1))
    if isinstance(event, events_pb2.TaskCompleted):
        return replace(state, completed=True)
    if isinstance(event, events_pb2.TaskReopened):
        current = {k for k, a in state.annotations.items() if a.round == state.round and a.live}
        annotations = {
            k: replace(a, status=SUPERSEDED, stage=-1) if k in current else a
            for k, a in state.annotations.items()
        }
        disputes = {
            k: replace(d, status=WITHDRAWN) if d.status == OPEN and d.annotation_id in current else d
            for k, d in state.disputes.items()
        }
        return replace(
            state,
            round=event.round,
            annotations=_frozen(annotations),
            disputes=_frozen(disputes),
            completed=False,
        )
    if isinstance(event, events_pb2.AnnotationAbandoned):
        ann = _known(state, event.annotation_id)
        return _put(state, replace(ann, status=ABANDONED, stage=-1))
    if isinstance(event, events_pb2.DisputeOpened):
        ann = _known(state, event.annotation_id)
        dispute = DisputeState(
            dispute_id=event.dispute_id,
            annotation_id=event.annotation_id,
            version=event.version,
            stage_index=event.stage_index,
            author_id=event.author_id,
            reviewer_id=event.reviewer_id,
            reason_codes=tuple(event.reason_codes),
            status=OPEN,
        )
        if ann.rejection is not None:
            ann = replace(ann, rejection=replace(ann.rejection, dispute_id=event.dispute_id))
        return _put_dispute(_put(state, ann), dispute)
    if isinstance(event, events_pb2.DisputeResolved):
        known = state.disputes.get(event.dispute_id)
        if known is None:
            raise ValueError(f"event refers to unknown dispute {event.dispute_id} on task {state.task_id}")
        overturned = event.decision == model_pb2.DISPUTE_DECISION_OVERTURN
        state = _put_dispute(
            state, replace(known, status=OVERTURNED if overturned else UPHELD, expert_id=event.expert_id)
        )
        if not overturned:
            return state
        ann = _known(state, event.annotation_id)
        reviewers = ann.reviewers if event.expert_id in ann.reviewers else (*ann.reviewers, event.expert_id)
        return _put(
            state,
            replace(
                ann,
                status=SUBMITTED,
                reason_codes=(),
                rejection=None,
                stage=next_stage(state.pipeline, event.stage_index + 1),
                reviewers=reviewers,
            ),
        )
    if isinstance(event, consensus_pb2.ConsensusComputed):  # by round
        return replace(state, consensus=_frozen({**state.consensus, int(event.round): _copy(event)}))
    if isinstance(event, events_pb2.GoldScored):
        ann = _known(state, event.annotation_id)
        state = _put(state, replace(ann, status=SCORED, stage=-1))
        if state.gold is not None and event.purpose == model_pb2.GOLD_PURPOSE_GOLD:
            state = replace(state, gold=replace(state.gold, answered=state.gold.answered | {event.person_id}))
        return state
    if isinstance(event, controls.TASK_CONTROL_EVENTS):
        return controls.evolve_task_control(state, event)
    raise TypeError(f"not a task event: {type(event).__name__}")


def _put_dispute(state: TaskState, dispute: DisputeState) -> TaskState:
    disputes = dict(state.disputes)
    disputes[dispute.dispute_id] = dispute
    return replace(state, disputes=_frozen(disputes))


def _without_lease(state: TaskState, lease_id: str) -> TaskState:
    if lease_id not in state.leases:
        return state
    leases = dict(state.leases)
    del leases[lease_id]
    return replace(state, leases=_frozen(leases))


def _known(state: TaskState, annotation_id: str) -> AnnotationState:
    ann = state.annotations.get(annotation_id)
    if ann is None:
        raise ValueError(f"event refers to unknown annotation {annotation_id} on task {state.task_id}")
    return ann


def _put(state: TaskState, ann: AnnotationState) -> TaskState:
    annotations = dict(state.annotations)
    annotations[ann.annotation_id] = ann
    return replace(state, annotations=_frozen(annotations))
