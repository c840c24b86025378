"""The task aggregate: leases, annotations, reviews and rounds of one media item.

A task is its own consistency boundary. Everything it needs to decide (overlap, review policy,
lease length) is copied into `TaskImported`, so a decision never has to read the project stream
and two tasks never contend for the same lock.

Slots: a task with overlap N accepts work from at most N people per round. A slot is taken by a
lease or by a live annotation (submitted, accepted or rejected in the current round); abandoning
rejected work or reopening the task frees slots.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final, TypeVar

from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import annotation_pb2, events_pb2, model_pb2
from coordinator.domain.commands import (
    AbandonAnnotation,
    EditAnnotation,
    ExpireLease,
    ImportTask,
    IngestPrelabel,
    LeaseTask,
    ReleaseLease,
    ReopenTask,
    ReviewAnnotation,
    SubmitAnnotation,
    TaskCommand,
)
from coordinator.domain.ids import require_aware, to_datetime, to_timestamp
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
LIVE_STATUSES: Final = frozenset({SUBMITTED, ACCEPTED, REJECTED})

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


@dataclass(frozen=True)
class LeaseState:
    lease_id: str
    person_id: str
    expires_at: datetime


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
        return self.review_policy != model_pb2.REVIEW_POLICY_NONE


# ---------------------------------------------------------------------------------------- decide


def decide_task(state: TaskState | None, cmd: TaskCommand) -> list[Message]:
    if isinstance(cmd, ImportTask):
        return _import(state, cmd)
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
    return [
        events_pb2.TaskImported(
            project_id=cmd.project_id,
            batch_id=cmd.batch_id,
            task=cmd.spec,
            review_policy=cmd.review_policy,
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
    missing = sorted(set(current.spec.required_skills) - cmd.person_skills)
    if missing:
        raise FailedPrecondition(f"missing skills: {', '.join(missing)}")
    if current.free_slots <= 0:
        raise FailedPrecondition(f"no free slot: overlap {current.overlap} reached")
    events.append(
        events_pb2.TaskLeased(
            task_id=state.task_id,
            lease_id=cmd.lease_id,
            person_id=cmd.person_id,
            expires_at=to_timestamp(cmd.now + timedelta(seconds=state.lease_seconds)),
            project_id=state.project_id,
        )
    )
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
    if not state.needs_review:
        events.append(
            _accepted(
                state,
                cmd.annotation_id,
                1,
                cmd.person_id,
                "",
                cmd.annotation,
                cmd.label_schema_version,
                cmd.guideline_version,
            )
        )
    return _with_completion(state, events)


def _edit(state: TaskState, cmd: EditAnnotation) -> list[Message]:
    ann = _annotation(state, cmd.annotation_id)
    if ann.author_id != cmd.person_id:
        raise PermissionDenied("only the author may edit an annotation", field="annotation_id")
    if ann.status == ACCEPTED:
        raise FailedPrecondition("accepted work is final; a reviewer corrects it with VERDICT_CORRECT")
    if ann.status not in (SUBMITTED, REJECTED):
        raise FailedPrecondition(f"annotation is {ann.status} and cannot be edited")
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
    if not state.needs_review:
        events.append(
            _accepted(
                state,
                ann.annotation_id,
                version,
                ann.author_id,
                "",
                cmd.annotation,
                cmd.label_schema_version,
                cmd.guideline_version,
            )
        )
    return _with_completion(state, events)


def _review(state: TaskState, cmd: ReviewAnnotation) -> list[Message]:
    ann = _annotation(state, cmd.annotation_id)
    if ann.status != SUBMITTED:
        raise FailedPrecondition(f"annotation is {ann.status}, not awaiting review")
    if cmd.version != ann.version:
        raise Conflict(
            f"annotation {ann.annotation_id} is at version {ann.version}, not {cmd.version}", field="version"
        )
    if cmd.reviewer_id == ann.author_id:
        raise PermissionDenied("reviewers cannot review their own work")
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
        )

    if cmd.verdict == model_pb2.VERDICT_REJECT:
        return [recorded(ann.version)]
    if cmd.verdict == model_pb2.VERDICT_ACCEPT:
        return _with_completion(
            state,
            [
                recorded(ann.version),
                _accepted(
                    state,
                    ann.annotation_id,
                    ann.version,
                    ann.author_id,
                    cmd.reviewer_id,
                    ann.annotation,
                    ann.label_schema_version,
                    ann.guideline_version,
                ),
            ],
        )
    # CORRECT: the reviewer's fix becomes a new version of the author's annotation, then is accepted.
    if cmd.correction is None:
        raise InvalidArgument("a correction is required for VERDICT_CORRECT", field="correction")
    version = ann.version + 1
    return _with_completion(
        state,
        [
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
            _accepted(
                state,
                ann.annotation_id,
                version,
                ann.author_id,
                cmd.reviewer_id,
                cmd.correction,
                cmd.label_schema_version,
                cmd.guideline_version,
            ),
        ],
    )


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
        )
    if state is None:
        raise ValueError(f"{type(event).__name__} before TaskImported")
    if isinstance(event, events_pb2.PrelabelIngested):
        return replace(state, prelabel=_copy(event.annotation), prelabel_id=event.prelabel_id)
    if isinstance(event, events_pb2.TaskLeased):
        leases = dict(state.leases)
        leases[event.lease_id] = LeaseState(event.lease_id, event.person_id, to_datetime(event.expires_at))
        return replace(state, leases=_frozen(leases))
    if isinstance(event, events_pb2.LeaseReleased | events_pb2.LeaseExpired):
        return _without_lease(state, event.lease_id)
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
            ),
        )
    if isinstance(event, events_pb2.AnnotationEdited):
        ann = _known(state, event.annotation_id)
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
            ),
        )
    if isinstance(event, events_pb2.ReviewRecorded):
        if event.verdict != model_pb2.VERDICT_REJECT:
            return state  # acceptance is carried by AnnotationAccepted
        ann = _known(state, event.annotation_id)
        return _put(state, replace(ann, status=REJECTED, reason_codes=tuple(event.reason_codes)))
    if isinstance(event, events_pb2.AnnotationAccepted):
        ann = _known(state, event.annotation_id)
        return _put(state, replace(ann, status=ACCEPTED))
    if isinstance(event, events_pb2.TaskCompleted):
        return replace(state, completed=True)
    if isinstance(event, events_pb2.TaskReopened):
        annotations = {
            k: replace(a, status=SUPERSEDED) if a.round == state.round and a.live else a
            for k, a in state.annotations.items()
        }
        return replace(state, round=event.round, annotations=_frozen(annotations), completed=False)
    if isinstance(event, events_pb2.AnnotationAbandoned):
        ann = _known(state, event.annotation_id)
        return _put(state, replace(ann, status=ABANDONED))
    raise TypeError(f"not a task event: {type(event).__name__}")


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
