"""The person aggregate: profile (roles, skills, time zone) and API tokens.

Tokens live in the person's stream so issuing and revoking are ordered with role changes: a
revocation can never be overtaken by the issue it revokes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
from coordinator.domain.commands import IssueToken, PersonCommand, RegisterPerson, RevokeToken, UpdatePerson
from coordinator.domain.ids import check_id, require_aware, to_datetime, to_timestamp
from coordinator.domain.schedule import schedule_from_spec
from coordinator.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

PERSON_EVENTS: Final[tuple[type[Message], ...]] = (
    events_pb2.PersonRegistered,
    events_pb2.PersonUpdated,
    events_pb2.TokenIssued,
    events_pb2.TokenRevoked,
)

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
class PersonState:
    spec: model_pb2.PersonSpec
    tokens: Mapping[str, TokenState] = field(default_factory=_no_tokens)

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
    raise TypeError(f"not a person command: {type(cmd).__name__}")


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
    raise TypeError(f"not a person event: {type(event).__name__}")


def _spec(spec: model_pb2.PersonSpec) -> model_pb2.PersonSpec:
    out = model_pb2.PersonSpec()
    out.CopyFrom(spec)
    return out
