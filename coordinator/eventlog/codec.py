"""Envelope building, encoding and decoding, shared by every backend and consumer.

The payload's `type` is the name of its field in `EventEnvelope.payload`, e.g. `task_leased`.
Decoding runs the upcasters so old history replays under today's meaning.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
from coordinator.errors import InvalidArgument

SCHEMA_VERSION = 1
"""Schema version written on new events; bump per payload type in `PAYLOAD_SCHEMA_VERSIONS`."""

_ONEOF = events_pb2.EventEnvelope.DESCRIPTOR.oneofs_by_name["payload"]
TYPE_BY_MESSAGE: dict[str, str] = {f.message_type.full_name: f.name for f in _ONEOF.fields if f.message_type}
"""Full protobuf message name → envelope field name (the event type)."""
EVENT_TYPES: frozenset[str] = frozenset(TYPE_BY_MESSAGE.values())
PAYLOAD_SCHEMA_VERSIONS: dict[str, int] = {t: SCHEMA_VERSION for t in EVENT_TYPES}

_uuid_lock = threading.Lock()
_last_ms = 0
_seq = 0


def uuid7() -> str:
    """RFC 9562 UUIDv7: 48-bit Unix ms timestamp, then a 12-bit counter, then random bits.

    Monotonic within a process, so event ids sort by creation time.
    """
    global _last_ms, _seq
    with _uuid_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _seq += 1
            if _seq > 0xFFF:
                _last_ms += 1
                _seq = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _seq = 0
        seq = _seq
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    # str(uuid.UUID(int=value)) without the UUID object (called several times per command)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(dt: datetime) -> Timestamp:
    """`Timestamp.FromDatetime(dt.astimezone(UTC))` by integer arithmetic (several per command)."""
    delta = dt.astimezone(UTC) - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def from_timestamp(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def event_type(payload: Message) -> str:
    try:
        return TYPE_BY_MESSAGE[payload.DESCRIPTOR.full_name]
    except KeyError:
        raise TypeError(f"{payload.DESCRIPTOR.full_name} is not an event payload") from None


def payload_of(envelope: events_pb2.EventEnvelope) -> Message:
    kind = envelope.WhichOneof("payload")
    if kind is None:
        raise InvalidArgument("event has no payload", field="payload")
    msg: Message = getattr(envelope, kind)
    return msg


def make_envelope(
    payload: Message,
    *,
    stream_id: str,
    actor_id: str,
    actor_role: model_pb2.Role.ValueType,
    command_id: str,
    correlation_id: str = "",
    causation_id: str = "",
    occurred_at: datetime,
) -> events_pb2.EventEnvelope:
    kind = event_type(payload)
    env = events_pb2.EventEnvelope(
        event_id=uuid7(),
        stream_id=stream_id,
        type=kind,
        schema_version=PAYLOAD_SCHEMA_VERSIONS[kind],
        occurred_at=timestamp(occurred_at),
        actor=events_pb2.Actor(user_id=actor_id, role=actor_role),
        command_id=command_id,
        correlation_id=correlation_id or command_id,
        causation_id=causation_id or command_id,
    )
    getattr(env, kind).CopyFrom(payload)
    return env


def encode(envelope: events_pb2.EventEnvelope) -> bytes:
    # Deterministic so identical events have identical bytes (checksums, dedupe).
    return envelope.SerializeToString(deterministic=True)


def decode(data: bytes) -> events_pb2.EventEnvelope:
    env = _Envelope()
    try:
        env.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"undecodable event: {exc}", field="event") from exc
    if env.WhichOneof("payload") is None:
        raise InvalidArgument("event has no payload (unknown type from a newer writer?)", field="payload")
    if env.schema_version < _VERSION_OF(env.type, 0):  # written by an older schema: rare
        from coordinator.eventlog.upcasters import upcast

        return upcast(env)
    return env


_Envelope = events_pb2.EventEnvelope
_VERSION_OF = PAYLOAD_SCHEMA_VERSIONS.get  # decode() runs per event: no import, no lookups
