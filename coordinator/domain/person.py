"""The person aggregate: profile (roles, skills, time zone), API tokens, and the person's quality
record per project (gold results, suspension, qualifications; docs/quality.md).

Tokens live in the person's stream so issuing and revoking are ordered with role changes: a
revocation can never be overtaken by the issue it revokes. The quality record lives here for
the same reason: every gold result of a person is decided against the results before it, in
stream order, so the suspension rule fires exactly once however many answers arrive at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import events_pb2, guidance_pb2, model_pb2
from coordinator.domain.commands import (
    AcknowledgeGuideline,
    IssueToken,
    PersonCommand,
    RecordGoldResult,
    RegisterPerson,
    ReinstatePerson,
    RevokeToken,
    StartQualification,
    UpdatePerson,
)
from coordinator.domain.controls import check_teams
from coordinator.domain.gold import check_skill_name, resolve_policy
from coordinator.domain.guidance import acknowledged, decide_acknowledge
from coordinator.domain.ids import check_id, require_aware, to_datetime, to_timestamp
from coordinator.domain.schedule import schedule_from_spec
from coordinator.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

PERSON_EVENTS: Final[tuple[type[Message], ...]] = (
    events_pb2.PersonRegistered,
    events_pb2.PersonUpdated,
    events_pb2.TokenIssued,
    events_pb2.TokenRevoked,
    events_pb2.GoldResultRecorded,
    events_pb2.PersonSuspended,
    events_pb2.RetrainingAssigned,
    events_pb2.PersonReinstated,
    events_pb2.QualificationStarted,
    events_pb2.QualificationCompleted,
    events_pb2.SkillGranted,
    guidance_pb2.GuidelineAcknowledged,
)
MAX_REASON_LENGTH: Final = 2000

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_KNOWN_ROLES: Final = frozenset(model_pb2.Role.values()) - {model_pb2.ROLE_UNSPECIFIED}


@dataclass(frozen=True)
class TokenState:
    token_id: str
    token_sha256: str
    description: str
    expires_at: datetime | None
    revoked: bool = False


def _no_tokens() -> Mapping[str, TokenState]:
    return MappingProxyType({})


@dataclass(frozen=True)
class GoldEntry:
    task_id: str
    score: float
    passed: bool


@dataclass(frozen=True)
class SuspensionState:
    reason: str
    accuracy: float
    threshold: float
    results: int
    gold_event_id: str
    retraining_skill: str = ""


@dataclass(frozen=True)
class ItemResult:
    score: float
    passed: bool
    classes: tuple[model_pb2.ClassScore, ...]


def _no_results() -> Mapping[str, ItemResult]:
    return MappingProxyType({})


@dataclass(frozen=True)
class AttemptState:
    number: int
    items: tuple[str, ...]
    started_at: datetime
    min_score: float
    cooldown_seconds: int
    level: int
    max_attempts: int
    results: Mapping[str, ItemResult] = field(default_factory=_no_results)

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(t for t in self.items if t not in self.results)


@dataclass(frozen=True)
class QualState:
    attempts: int = 0  # attempts started in the current cycle (a retraining starts a new cycle)
    last_attempt: int = 0  # the latest attempt's number; numbers are never reused
    max_attempts: int = 0  # as of the latest attempt
    open: AttemptState | None = None
    retry_after: datetime | None = None
    last: events_pb2.QualificationCompleted | None = None


def _no_quals() -> Mapping[str, QualState]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Standing:
    """A person's quality record in one project."""

    window: tuple[GoldEntry, ...] = ()  # the latest gold results since the last reinstatement
    suspension: SuspensionState | None = None
    answered: frozenset[str] = frozenset()  # gold tasks answered (each is answered once)
    recorded: frozenset[str] = frozenset()  # GoldScored event ids recorded (gold and training)
    qualifications: Mapping[str, QualState] = field(default_factory=_no_quals)
    total: int = 0  # gold results ever

    @property
    def accuracy(self) -> float:
        return sum(e.passed for e in self.window) / len(self.window) if self.window else 0.0

    def qualification(self, skill: str) -> QualState:
        return self.qualifications.get(skill) or QualState()

    def open_attempt(self) -> tuple[str, AttemptState] | None:
        """The qualification the person is taking in this project, if any (the first by skill)."""
        for skill in sorted(self.qualifications):
            attempt = self.qualifications[skill].open
            if attempt is not None:
                return skill, attempt
        return None


NO_STANDING: Final = Standing()


def _no_standings() -> Mapping[str, Standing]:
    return MappingProxyType({})


def _no_acknowledgements() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True)
class PersonState:
    spec: model_pb2.PersonSpec
    tokens: Mapping[str, TokenState] = field(default_factory=_no_tokens)
    quality: Mapping[str, Standing] = field(default_factory=_no_standings)  # by project id
    # guideline version acknowledged, by project id (domain/guidance.py; NextTask's gate)
    acknowledged: Mapping[str, int] = field(default_factory=_no_acknowledgements)

    def standing(self, project_id: str) -> Standing:
        return self.quality.get(project_id) or NO_STANDING

    def suspended_from(self, project_id: str) -> SuspensionState | None:
        return self.standing(project_id).suspension

    @property
    def person_id(self) -> str:
        return self.spec.person_id

    @property
    def roles(self) -> frozenset[int]:
        return frozenset(self.spec.roles)

    @property
    def skills(self) -> frozenset[str]:
        return frozenset(s.name for s in self.spec.skills)


def validate_person_spec(spec: model_pb2.PersonSpec) -> None:
    check_id(spec.person_id, "person.person_id")
    if not spec.roles:
        raise InvalidArgument("at least one role is required", field="person.roles")
    for i, role in enumerate(spec.roles):
        if role not in _KNOWN_ROLES:
            raise InvalidArgument(f"unknown or unspecified role {role}", field=f"person.roles[{i}]")
    if not spec.time_zone:
        raise InvalidArgument("required (an IANA time zone such as Europe/Warsaw)", field="person.time_zone")
    if not _is_time_zone(spec.time_zone):
        raise InvalidArgument(f"{spec.time_zone!r} is not an IANA time zone", field="person.time_zone")
    seen: set[str] = set()
    for i, skill in enumerate(spec.skills):
        if not skill.name.strip():
            raise InvalidArgument("required", field=f"person.skills[{i}].name")
        if skill.name in seen:
            raise InvalidArgument(f"duplicate skill {skill.name!r}", field=f"person.skills[{i}].name")
        seen.add(skill.name)
    schedule_from_spec(spec.time_zone, spec.schedule)
    check_teams(spec)


def _is_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: some Python versions raise IsADirectoryError for region names like "America".
        return False
    return True


def decide_person(state: PersonState | None, cmd: PersonCommand) -> list[Message]:
    if isinstance(cmd, RegisterPerson):
        if state is not None:
            raise AlreadyExists(f"person {cmd.spec.person_id!r} exists already", field="person.person_id")
        validate_person_spec(cmd.spec)
        return [events_pb2.PersonRegistered(person=cmd.spec)]
    if isinstance(cmd, UpdatePerson):
        if state is None:
            raise NotFound(f"no person {cmd.spec.person_id!r}", field="person.person_id")
        if cmd.spec.person_id != state.person_id:
            raise InvalidArgument("a person's id cannot change", field="person.person_id")
        validate_person_spec(cmd.spec)
        return [events_pb2.PersonUpdated(person=cmd.spec)]
    if state is None:
        raise NotFound(f"no person {cmd.person_id!r}", field="person_id")
    if isinstance(cmd, IssueToken):
        check_id(cmd.token_id, "token_id")
        if cmd.token_id in state.tokens:
            raise AlreadyExists(f"token {cmd.token_id} exists already", field="token_id")
        if _SHA256_HEX.fullmatch(cmd.token_sha256) is None:
            raise InvalidArgument("must be a SHA-256 digest as 64 lowercase hex digits", field="token_sha256")
        issued = events_pb2.TokenIssued(
            person_id=state.person_id,
            token_id=cmd.token_id,
            token_sha256=cmd.token_sha256,
            description=cmd.description,
        )
        if cmd.expires_at is not None:
            require_aware(cmd.expires_at, "expires_at")
            issued.expires_at.CopyFrom(to_timestamp(cmd.expires_at))
        return [issued]
    if isinstance(cmd, RevokeToken):
        token = state.tokens.get(cmd.token_id)
        if token is None:
            raise NotFound(f"no token {cmd.token_id} for {state.person_id}", field="token_id")
        if token.revoked:
            raise FailedPrecondition(f"token {cmd.token_id} is already revoked")
        return [events_pb2.TokenRevoked(person_id=state.person_id, token_id=cmd.token_id)]
    if isinstance(cmd, RecordGoldResult):
        return _record_gold(state, cmd)
    if isinstance(cmd, StartQualification):
        return _start_qualification(state, cmd)
    if isinstance(cmd, ReinstatePerson):
        return _reinstate(state, cmd)
    if isinstance(cmd, AcknowledgeGuideline):
        return decide_acknowledge(state, cmd)
    raise TypeError(f"not a person command: {type(cmd).__name__}")


# ------------------------------------------------------------------ quality: decide


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _record_gold(state: PersonState, cmd: RecordGoldResult) -> list[Message]:
    """A scored gold answer enters the record. Gold: the rolling window moves on and, if the
    person's accuracy is now below the project's threshold (with enough results), they are
    suspended and assigned retraining. Training: the attempt's item is scored and, once every
    item is, the attempt passes (the skill is granted) or fails (with a retry time)."""
    r = cmd.result
    if r.person_id != state.person_id:
        raise InvalidArgument(f"result of {r.person_id}, not {state.person_id}", field="result.person_id")
    if not cmd.gold_event_id:
        raise InvalidArgument("required", field="gold_event_id")
    require_aware(cmd.now)
    standing = state.standing(r.project_id)
    if cmd.gold_event_id in standing.recorded:
        raise AlreadyExists(f"gold result {cmd.gold_event_id} is recorded already", field="gold_event_id")
    recorded = events_pb2.GoldResultRecorded(
        person_id=state.person_id,
        project_id=r.project_id,
        task_id=r.task_id,
        annotation_id=r.annotation_id,
        gold_event_id=cmd.gold_event_id,
        purpose=r.purpose,
        skill=r.skill,
        attempt=r.attempt,
        score=r.score,
        passed=r.passed,
        classes=r.classes,
    )
    if r.purpose == model_pb2.GOLD_PURPOSE_TRAINING:
        return _record_training(state, standing, recorded, cmd)
    if r.purpose != model_pb2.GOLD_PURPOSE_GOLD:
        raise InvalidArgument("choose GOLD_PURPOSE_GOLD or GOLD_PURPOSE_TRAINING", field="result.purpose")
    if r.task_id in standing.answered:
        raise AlreadyExists(
            f"{state.person_id} has a result for gold task {r.task_id} already", field="task_id"
        )
    policy = resolve_policy(r.project_id, cmd.policy)
    window = (*standing.window, GoldEntry(r.task_id, r.score, r.passed))[-policy.window :]
    passed = sum(e.passed for e in window)
    accuracy = passed / len(window)
    recorded.window = policy.window
    recorded.results = len(window)
    recorded.passed_results = passed
    recorded.accuracy = accuracy
    events: list[Message] = [recorded]
    if (
        standing.suspension is None
        and policy.min_accuracy > 0
        and len(window) >= policy.min_results
        and accuracy < policy.min_accuracy
    ):
        events.append(
            events_pb2.PersonSuspended(
                person_id=state.person_id,
                project_id=r.project_id,
                reason=(
                    f"gold accuracy {_pct(accuracy)} over the last {len(window)} gold tasks is below"
                    f" the project's {_pct(policy.min_accuracy)}"
                ),
                accuracy=accuracy,
                threshold=policy.min_accuracy,
                results=len(window),
                gold_event_id=cmd.gold_event_id,
            )
        )
        skill = policy.retraining_skill
        events.append(
            events_pb2.RetrainingAssigned(
                person_id=state.person_id,
                project_id=r.project_id,
                skill=skill,
                note=(
                    f"pass the {skill!r} qualification again (StartQualification) or ask a manager"
                    " to reinstate you"
                    if skill
                    else "ask a manager of the project to reinstate you after retraining"
                ),
            )
        )
    return events


def _record_training(
    state: PersonState, standing: Standing, recorded: events_pb2.GoldResultRecorded, cmd: RecordGoldResult
) -> list[Message]:
    r = cmd.result
    attempt = standing.qualification(r.skill).open
    if attempt is None or attempt.number != r.attempt:
        raise FailedPrecondition(
            f"attempt {r.attempt} of the {r.skill!r} qualification is not in progress for {state.person_id}"
        )
    if r.task_id not in attempt.items:
        raise FailedPrecondition(f"task {r.task_id} is not an item of attempt {attempt.number}")
    if r.task_id in attempt.results:
        raise AlreadyExists(
            f"item {r.task_id} of attempt {attempt.number} is scored already", field="task_id"
        )
    events: list[Message] = [recorded]
    results = dict(attempt.results)
    results[r.task_id] = ItemResult(r.score, r.passed, tuple(r.classes))
    if len(results) < len(attempt.items):
        return events
    passed_items = sum(results[t].passed for t in attempt.items)
    score = passed_items / len(attempt.items)
    passed = score >= attempt.min_score
    completed = events_pb2.QualificationCompleted(
        person_id=state.person_id,
        project_id=r.project_id,
        skill=r.skill,
        attempt=attempt.number,
        passed=passed,
        score=score,
        min_score=attempt.min_score,
        items=[
            events_pb2.QualificationItem(
                task_id=t, score=results[t].score, passed=results[t].passed, classes=results[t].classes
            )
            for t in attempt.items
        ],
    )
    events.append(completed)
    if not passed:
        completed.retry_after.CopyFrom(to_timestamp(cmd.now + timedelta(seconds=attempt.cooldown_seconds)))
        used = standing.qualification(r.skill).attempts
        completed.attempts_left = max(attempt.max_attempts - used, 0)
        return events
    held = {s.name: s.level for s in state.spec.skills}
    if held.get(r.skill, -1) < attempt.level:
        events.append(
            events_pb2.SkillGranted(
                person_id=state.person_id,
                skill=model_pb2.Skill(name=r.skill, level=attempt.level),
                project_id=r.project_id,
                attempt=attempt.number,
            )
        )
    suspension = standing.suspension
    if suspension is not None and suspension.retraining_skill == r.skill:
        events.append(
            events_pb2.PersonReinstated(
                person_id=state.person_id,
                project_id=r.project_id,
                reason=f"passed the {r.skill!r} qualification (attempt {attempt.number})",
                skill=r.skill,
            )
        )
    return events


def _start_qualification(state: PersonState, cmd: StartQualification) -> list[Message]:
    check_skill_name(cmd.skill, "skill")
    require_aware(cmd.now)
    q = cmd.qualification
    if q is None:
        raise InvalidArgument(
            f"project {cmd.project_id} has no qualification for {cmd.skill!r}", field="skill"
        )
    standing = state.standing(cmd.project_id)
    qs = standing.qualification(cmd.skill)
    if qs.open is not None:
        done = len(qs.open.results)
        raise FailedPrecondition(
            f"attempt {qs.open.number} of the {cmd.skill!r} qualification is in progress"
            f" ({done} of {len(qs.open.items)} items answered): NextTask serves its items"
        )
    suspension = standing.suspension
    retraining = suspension is not None and suspension.retraining_skill == cmd.skill
    if cmd.skill in state.skills and not retraining:
        raise FailedPrecondition(f"{state.person_id} has the skill {cmd.skill!r} already")
    max_attempts = q.max_attempts or 1
    if qs.attempts >= max_attempts:
        raise FailedPrecondition(
            f"no attempts left at the {cmd.skill!r} qualification ({qs.attempts} of {max_attempts} used)"
        )
    if qs.retry_after is not None and cmd.now < qs.retry_after:
        raise FailedPrecondition(
            f"the next attempt at the {cmd.skill!r} qualification is possible from"
            f" {qs.retry_after.isoformat()} (cool-down after a failed attempt)"
        )
    if not cmd.task_ids:
        raise FailedPrecondition(f"project {cmd.project_id} has no training items for {cmd.skill!r} yet")
    if len(set(cmd.task_ids)) != len(cmd.task_ids):
        raise InvalidArgument("duplicate training items", field="task_ids")
    return [
        events_pb2.QualificationStarted(
            person_id=state.person_id,
            project_id=cmd.project_id,
            skill=cmd.skill,
            attempt=qs.last_attempt + 1,
            task_ids=cmd.task_ids,
            started_at=to_timestamp(cmd.now),
            max_attempts=max_attempts,
            cycle_attempt=qs.attempts + 1,
            min_score=q.min_score,
            cooldown_seconds=q.cooldown_seconds,
            level=q.level or 1,
        )
    ]


def _reinstate(state: PersonState, cmd: ReinstatePerson) -> list[Message]:
    if state.suspended_from(cmd.project_id) is None:
        raise FailedPrecondition(f"{state.person_id} is not suspended from project {cmd.project_id}")
    if len(cmd.reason) > MAX_REASON_LENGTH:
        raise InvalidArgument(f"at most {MAX_REASON_LENGTH} characters", field="reason")
    return [
        events_pb2.PersonReinstated(
            person_id=state.person_id,
            project_id=cmd.project_id,
            reinstated_by=cmd.reinstated_by,
            reason=cmd.reason,
        )
    ]


def evolve_person(state: PersonState | None, event: Message) -> PersonState:
    if isinstance(event, events_pb2.PersonRegistered):
        if state is not None:
            raise ValueError(f"person {state.person_id} registered twice")
        return PersonState(spec=_spec(event.person))
    if state is None:
        raise ValueError(f"{type(event).__name__} before PersonRegistered")
    if isinstance(event, events_pb2.PersonUpdated):
        return replace(state, spec=_spec(event.person))
    if isinstance(event, events_pb2.TokenIssued):
        tokens = dict(state.tokens)
        tokens[event.token_id] = TokenState(
            token_id=event.token_id,
            token_sha256=event.token_sha256,
            description=event.description,
            expires_at=to_datetime(event.expires_at) if event.HasField("expires_at") else None,
        )
        return replace(state, tokens=MappingProxyType(tokens))
    if isinstance(event, events_pb2.TokenRevoked):
        token = state.tokens.get(event.token_id)
        if token is None:
            raise ValueError(f"event revokes unknown token {event.token_id} of {state.person_id}")
        tokens = dict(state.tokens)
        tokens[event.token_id] = replace(token, revoked=True)
        return replace(state, tokens=MappingProxyType(tokens))
    if isinstance(event, events_pb2.SkillGranted):
        spec = _spec(state.spec)
        for skill in spec.skills:
            if skill.name == event.skill.name:
                skill.level = max(skill.level, event.skill.level)
                break
        else:
            spec.skills.append(event.skill)
        return replace(state, spec=spec)
    if isinstance(event, guidance_pb2.GuidelineAcknowledged):
        return acknowledged(state, event)
    if isinstance(event, _QUALITY_EVENTS):
        project_id: str = event.project_id
        standing = _evolve_standing(state.standing(project_id), event)
        quality = dict(state.quality)
        quality[project_id] = standing
        return replace(state, quality=MappingProxyType(quality))
    raise TypeError(f"not a person event: {type(event).__name__}")


_QUALITY_EVENTS: Final = (
    events_pb2.GoldResultRecorded,
    events_pb2.PersonSuspended,
    events_pb2.RetrainingAssigned,
    events_pb2.PersonReinstated,
    events_pb2.QualificationStarted,
    events_pb2.QualificationCompleted,
)


def _with_qual(standing: Standing, skill: str, qs: QualState) -> Standing:
    quals = dict(standing.qualifications)
    quals[skill] = qs
    return replace(standing, qualifications=MappingProxyType(quals))


def _evolve_standing(standing: Standing, event: Message) -> Standing:
    if isinstance(event, events_pb2.GoldResultRecorded):
        standing = replace(standing, recorded=standing.recorded | {event.gold_event_id})
        if event.purpose == model_pb2.GOLD_PURPOSE_TRAINING:
            qs = standing.qualification(event.skill)
            attempt = qs.open
            if attempt is None or attempt.number != event.attempt:
                return standing
            results = dict(attempt.results)
            results[event.task_id] = ItemResult(event.score, event.passed, tuple(_copies(event.classes)))
            attempt = replace(attempt, results=MappingProxyType(results))
            return _with_qual(standing, event.skill, replace(qs, open=attempt))
        entry = GoldEntry(event.task_id, event.score, event.passed)
        window = (*standing.window, entry)[-max(int(event.window), 1) :]
        return replace(
            standing, window=window, answered=standing.answered | {event.task_id}, total=standing.total + 1
        )
    if isinstance(event, events_pb2.PersonSuspended):
        return replace(
            standing,
            suspension=SuspensionState(
                reason=event.reason,
                accuracy=event.accuracy,
                threshold=event.threshold,
                results=event.results,
                gold_event_id=event.gold_event_id,
            ),
        )
    if isinstance(event, events_pb2.RetrainingAssigned):
        if standing.suspension is not None:
            standing = replace(
                standing, suspension=replace(standing.suspension, retraining_skill=event.skill)
            )
        if event.skill:  # a new cycle: attempts and cool-down start afresh
            qs = standing.qualification(event.skill)
            standing = _with_qual(standing, event.skill, replace(qs, attempts=0, retry_after=None))
        return standing
    if isinstance(event, events_pb2.PersonReinstated):
        return replace(standing, suspension=None, window=())
    if isinstance(event, events_pb2.QualificationStarted):
        qs = standing.qualification(event.skill)
        attempt = AttemptState(
            number=event.attempt,
            items=tuple(event.task_ids),
            started_at=to_datetime(event.started_at),
            min_score=event.min_score,
            cooldown_seconds=event.cooldown_seconds,
            level=event.level or 1,
            max_attempts=event.max_attempts,
        )
        return _with_qual(
            standing,
            event.skill,
            replace(
                qs,
                attempts=event.cycle_attempt,
                last_attempt=event.attempt,
                max_attempts=event.max_attempts,
                open=attempt,
                retry_after=None,
            ),
        )
    if isinstance(event, events_pb2.QualificationCompleted):
        qs = standing.qualification(event.skill)
        last = events_pb2.QualificationCompleted()
        last.CopyFrom(event)
        retry = to_datetime(event.retry_after) if not event.passed and event.HasField("retry_after") else None
        return _with_qual(standing, event.skill, replace(qs, open=None, retry_after=retry, last=last))
    raise TypeError(f"not a quality event: {type(event).__name__}")


def _copies(classes: Iterable[model_pb2.ClassScore]) -> list[model_pb2.ClassScore]:
    out = []
    for c in classes:
        copy = model_pb2.ClassScore()
        copy.CopyFrom(c)
        out.append(copy)
    return out


def _spec(spec: model_pb2.PersonSpec) -> model_pb2.PersonSpec:
    out = model_pb2.PersonSpec()
    out.CopyFrom(spec)
    return out
