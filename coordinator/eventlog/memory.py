"""In-memory event log (`memory://`): for tests and throwaway runs, same semantics as SQLite.

Also holds `prepare_append`, the request validation and envelope stamping every embedded backend
shares: the caller's envelopes are copied, given `stream_version` and `recorded_at`, and encoded
outside any lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator.errors import InvalidArgument, Unavailable
from coordinator.eventlog import codec
from coordinator.eventlog.base import (
    AppendRequest,
    AppendResult,
    Checkpoint,
    CommandReused,
    EventLog,
    Position,
    RecordedEvent,
    WrongExpectedVersion,
)
from coordinator.metrics import Metrics

PARTITION = 0
"""The embedded backends have a single partition."""


@dataclass(frozen=True)
class PreparedEvent:
    envelope: events_pb2.EventEnvelope
    data: bytes


def prepare_append(request: AppendRequest) -> list[PreparedEvent]:
    """Validate `request` and return stamped copies of its envelopes with their encoded bytes.

    Versions are `expected_version + 1, + 2, …`; `recorded_at` is now (UTC). The caller's
    envelopes are not modified.
    """
    if not request.stream_id:
        raise InvalidArgument("append needs a stream id", field="stream_id")
    if request.expected_version < 0:
        raise InvalidArgument(
            f"expected version must be >= 0, got {request.expected_version}", field="expected_version"
        )
    if not request.envelopes:
        raise InvalidArgument("append needs at least one event", field="envelopes")
    recorded_at = codec.timestamp(datetime.now(UTC))
    seen: set[str] = set()
    out: list[PreparedEvent] = []
    for i, original in enumerate(request.envelopes):
        where = f"envelopes[{i}]"
        if original.stream_id != request.stream_id:
            raise InvalidArgument(
                f"event is for stream {original.stream_id!r}, the append for {request.stream_id!r}",
                field=f"{where}.stream_id",
            )
        kind = original.WhichOneof("payload")
        if kind is None:
            raise InvalidArgument("event has no payload", field=f"{where}.payload")
        if original.type != kind:
            raise InvalidArgument(f"type {original.type!r} but payload {kind!r}", field=f"{where}.type")
        if not original.event_id:
            raise InvalidArgument("event has no id", field=f"{where}.event_id")
        if original.event_id in seen:
            raise InvalidArgument(f"event id {original.event_id} repeated", field=f"{where}.event_id")
        seen.add(original.event_id)
        env = events_pb2.EventEnvelope()
        env.CopyFrom(original)
        env.stream_version = request.expected_version + 1 + i
        env.recorded_at.CopyFrom(recorded_at)
        out.append(PreparedEvent(env, codec.encode(env)))
    return out


def recorded(prepared: Sequence[PreparedEvent], first_offset: int) -> tuple[RecordedEvent, ...]:
    return tuple(
        RecordedEvent(Position(PARTITION, first_offset + i), p.envelope, p.data)
        for i, p in enumerate(prepared)
    )


def record_metrics(
    metrics: Metrics | None, prepared: Sequence[PreparedEvent], started: float, *, batch: int | None
) -> None:
    if metrics is None:
        return
    for p in prepared:
        metrics.events_appended.labels(p.envelope.type).inc()
    metrics.append_latency.observe(time.perf_counter() - started)
    if batch is not None:
        metrics.append_batch_size.observe(batch)


@dataclass(frozen=True)
class _Command:
    fingerprint: str
    first_offset: int
    last_offset: int


class MemoryEventLog(EventLog):
    """Thread-safe; every append is its own "commit" (batch size 1)."""

    def __init__(self, *, url: str = "memory://", metrics: Metrics | None = None) -> None:
        self.url = url
        self._metrics = metrics
        self._cond = threading.Condition(threading.Lock())
        self._events: list[bytes] = []  # offset n is index n - 1
        self._streams: dict[str, list[int]] = {}  # stream id → offsets; version v is index v - 1
        self._commands: dict[str, _Command] = {}
        self._event_ids: set[str] = set()
        self._closed = False

    # ------------------------------------------------------------------ writes

    def append(self, request: AppendRequest) -> AppendResult:
        started = time.perf_counter()
        prepared = prepare_append(request)
        with self._cond:
            self._check_open()
            if request.command_id:
                prior = self._commands.get(request.command_id)
                if prior is not None:
                    if request.fingerprint and prior.fingerprint and request.fingerprint != prior.fingerprint:
                        raise CommandReused(
                            f"command id {request.command_id} was used before for a different command",
                            field="command_id",
                        )
                    stored = self._events[prior.first_offset - 1 : prior.last_offset]
                    return AppendResult(self._decode(stored, prior.first_offset), duplicate=True)
            offsets = self._streams.get(request.stream_id, [])
            if len(offsets) != request.expected_version:
                raise WrongExpectedVersion(request.stream_id, request.expected_version, len(offsets))
            for i, p in enumerate(prepared):
                if p.envelope.event_id in self._event_ids:
                    raise InvalidArgument(
                        f"event id {p.envelope.event_id} is in the log already",
                        field=f"envelopes[{i}].event_id",
                    )
            first = len(self._events) + 1
            for p in prepared:
                self._events.append(p.data)
                self._event_ids.add(p.envelope.event_id)
            self._streams.setdefault(request.stream_id, []).extend(range(first, first + len(prepared)))
            if request.command_id:
                self._commands[request.command_id] = _Command(
                    request.fingerprint, first, first + len(prepared) - 1
                )
            self._cond.notify_all()
        record_metrics(self._metrics, prepared, started, batch=1)
        return AppendResult(recorded(prepared, first))

    # ------------------------------------------------------------------ reads

    def outcome(self, command_id: str, fingerprint: str = "") -> AppendResult | None:
        if not command_id:
            return None
        with self._cond:
            self._check_open()
            prior = self._commands.get(command_id)
            if prior is None:
                return None
            if fingerprint and prior.fingerprint and fingerprint != prior.fingerprint:
                raise CommandReused(
                    f"command_id {command_id!r} was used before for a different command", field="command_id"
                )
            stored = self._events[prior.first_offset - 1 : prior.last_offset]
        return AppendResult(self._decode(stored, prior.first_offset), duplicate=True)

    def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        with self._cond:
            self._check_open()
            offsets = self._streams.get(stream_id, [])[max(after_version, 0) :]
            picked = [(off, self._events[off - 1]) for off in offsets]
        return [RecordedEvent(Position(PARTITION, off), codec.decode(data), data) for off, data in picked]

    def stream_version(self, stream_id: str) -> int:
        with self._cond:
            self._check_open()
            return len(self._streams.get(stream_id, ()))

    def read(self, after: Checkpoint, limit: int = 1000) -> list[RecordedEvent]:
        if limit < 1:
            raise InvalidArgument(f"limit must be >= 1, got {limit}", field="limit")
        start = max(after.get(PARTITION, 0), 0)
        with self._cond:
            self._check_open()
            stored = self._events[start : start + limit]
        return list(self._decode(stored, start + 1))

    def head(self) -> dict[int, int]:
        with self._cond:
            self._check_open()
            return {PARTITION: len(self._events)}

    def wait(self, after: Checkpoint, timeout: float) -> bool:
        target = after.get(PARTITION, 0)
        with self._cond:
            self._check_open()
            self._cond.wait_for(lambda: self._closed or len(self._events) > target, max(timeout, 0.0))
            return len(self._events) > target

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the event log is closed")

    @staticmethod
    def _decode(stored: Sequence[bytes], first_offset: int) -> tuple[RecordedEvent, ...]:
        return tuple(
            RecordedEvent(Position(PARTITION, first_offset + i), codec.decode(data), data)
            for i, data in enumerate(stored)
        )
