"""Decide-and-append: the one place where commands become events.

The bus loads a stream's state (a cache of folded states, caught up from the log on every
use so other writers are seen), runs the pure `decide`, and appends with the version it
decided on. A concurrent writer makes the append fail with `WrongExpectedVersion`; the bus
then reloads and decides again, so every event was decided against the state it follows.
That is the "one decider per key" rule without a lock: SQLite serialises appends, and the
version check turns a race into a retry. Kafka gets the same guarantee from one decider
per partition.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from coordinator.domain import aggregates
from coordinator.domain.commands import Actor
from coordinator.errors import Conflict, LabelweaveError
from coordinator.eventlog import codec
from coordinator.eventlog.base import (
    AppendRequest,
    AppendResult,
    EventLog,
    RecordedEvent,
    WrongExpectedVersion,
)
from coordinator.metrics import Metrics

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def fingerprint(*parts: bytes | str) -> str:
    """Stable digest of a command's content, so a reused command id with other content is caught."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x00")
    return h.hexdigest()


@dataclass(frozen=True)
class Outcome:
    events: tuple[RecordedEvent, ...]
    duplicate: bool
    version: int

    @property
    def position(self) -> str:
        return str(self.events[-1].position) if self.events else ""

    def payloads(self) -> list[Message]:
        return [codec.payload_of(ev.envelope) for ev in self.events]

    def first(self, kind: type[Message]) -> Message | None:
        for payload in self.payloads():
            if isinstance(payload, kind):
                return payload
        return None


class CommandBus:
    def __init__(
        self,
        log: EventLog,
        *,
        metrics: Metrics | None = None,
        cache_size: int = 50_000,
        max_attempts: int = 32,
        clock: Clock = utc_now,
    ) -> None:
        self._log = log
        self._clock = clock  # stamps occurred_at: the domain clock, the one the service decides with
        self._metrics = metrics
        self._cache: OrderedDict[str, tuple[int, aggregates.State | None]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._max_attempts = max_attempts
        self._counters: dict[str, Any] = {}  # outcome -> its labelled counter (labels() per call is slow)

    # ------------------------------------------------------------------ state

    def peek(self, stream_id: str) -> aggregates.State | None:
        """Cached state without I/O (may be stale); used to skip hopeless candidates quickly."""
        with self._lock:
            hit = self._cache.get(stream_id)
        return hit[1] if hit else None

    def load(self, stream_id: str, *, fresh: bool = True) -> tuple[int, aggregates.State | None]:
        """Current (version, state) of a stream: the cached fold, caught up from the log.

        With `fresh=False` a cached state is returned without asking the log. The bus does
        that when deciding: a stale state (another process appended) makes the append fail
        its version check, and the bus then reloads fresh, so nothing is decided twice on it.
        """
        with self._lock:
            hit = self._cache.get(stream_id)
            if hit is not None:
                self._cache.move_to_end(stream_id)
        if hit is not None and not fresh:
            return hit
        version, state = hit if hit is not None else (0, None)
        newer = self._log.read_stream(stream_id, after_version=version)
        if newer:
            for ev in newer:
                state = aggregates.evolve(state, codec.payload_of(ev.envelope))
            version = newer[-1].envelope.stream_version
            self._remember(stream_id, version, state)
        elif hit is None:
            return 0, None
        return version, state

    def _remember(self, stream_id: str, version: int, state: aggregates.State | None) -> None:
        with self._lock:
            current = self._cache.get(stream_id)
            if current is not None and current[0] >= version:
                return
            self._cache[stream_id] = (version, state)
            self._cache.move_to_end(stream_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    # ------------------------------------------------------------------ commands

    def prior(self, command_id: str, fingerprint: str = "") -> Outcome | None:
        """The first outcome of an already-appended command id, if any (CommandReused if the
        same id came with other content)."""
        if not command_id:
            return None
        result = self._log.outcome(command_id, fingerprint)
        return self._outcome(result, duplicate=True) if result is not None else None

    def execute(
        self,
        command: aggregates.Command,
        *,
        actor: Actor,
        command_id: str,
        correlation_id: str = "",
        causation_id: str = "",
        fingerprint: str = "",
        occurred_at: datetime | None = None,
        prior_checked: bool = False,
    ) -> Outcome:
        """Decide and append; a retried `command_id` returns its first outcome unchanged.

        `prior_checked`: the caller already looked the command id up (the append still
        dedupes, so a race between two retries of one id stays safe).
        """
        stream_id = aggregates.stream_of(command)
        if command_id and not prior_checked:
            prior = self.prior(command_id, fingerprint)
            if prior is not None:
                self._count("duplicate")
                return prior
        when = occurred_at or self._clock()
        fresh = False
        for _ in range(self._max_attempts):
            version, state = self.load(stream_id, fresh=fresh)
            try:
                payloads = aggregates.decide(state, command)
            except LabelweaveError:
                if not fresh:  # refuse only on the log's latest state, never on a cached one
                    fresh = True
                    continue
                self._count("refused")
                raise
            envelopes = [
                codec.make_envelope(
                    p,
                    stream_id=stream_id,
                    actor_id=actor.user_id,
                    actor_role=actor.role,
                    command_id=command_id,
                    correlation_id=correlation_id,
                    causation_id=causation_id,
                    occurred_at=when,
                )
                for p in payloads
            ]
            try:
                result = self._log.append(
                    AppendRequest(stream_id, version, envelopes, command_id, fingerprint)
                )
            except WrongExpectedVersion:
                self._count("conflict")
                fresh = True
                continue
            if result.duplicate:
                self._count("duplicate")
                return self._outcome(result, duplicate=True)
            new_state = state
            for p in payloads:
                new_state = aggregates.evolve(new_state, p)
            new_version = version + len(payloads)
            self._remember(stream_id, new_version, new_state)
            self._count("appended")
            return Outcome(result.events, False, new_version)
        raise Conflict(f"gave up after {self._max_attempts} concurrent updates of {stream_id}; retry")

    def execute_many(
        self, commands: Sequence[tuple[aggregates.Command, str]], *, actor: Actor, correlation_id: str = ""
    ) -> list[Outcome | LabelweaveError]:
        """Execute commands for distinct streams as one ordered group append.

        Each command is decided on its stream's state and the appends go to the log together
        (`EventLog.append_many`: in order, one durable commit on SQLite, one transaction on
        Kafka), so an import batch keeps its order in the log. A command whose cached state
        was stale, or that the cached state refused, is retried alone through `execute`.
        Returns the outcome or the error per command, in order.
        """
        when = self._clock()
        results: list[Outcome | LabelweaveError | None] = [None] * len(commands)
        requests: list[AppendRequest] = []
        planned: list[tuple[int, str, int, aggregates.State | None, list[Message]]] = []
        for i, (cmd, cid) in enumerate(commands):
            stream_id = aggregates.stream_of(cmd)
            try:
                prior = self.prior(cid)
            except LabelweaveError as exc:
                results[i] = exc
                continue
            if prior is not None:
                self._count("duplicate")
                results[i] = prior
                continue
            version, state = self.load(stream_id, fresh=False)
            try:
                payloads = aggregates.decide(state, cmd)
            except LabelweaveError:
                continue  # decided again on the log's latest state below
            envelopes = [
                codec.make_envelope(
                    p,
                    stream_id=stream_id,
                    actor_id=actor.user_id,
                    actor_role=actor.role,
                    command_id=cid,
                    correlation_id=correlation_id,
                    occurred_at=when,
                )
                for p in payloads
            ]
            requests.append(AppendRequest(stream_id, version, envelopes, cid))
            planned.append((i, stream_id, version, state, payloads))
        appended = self._log.append_many(requests) if requests else []
        for (i, stream_id, version, state, payloads), result in zip(planned, appended, strict=True):
            if isinstance(result, WrongExpectedVersion):
                self._count("conflict")
                continue  # retried alone below
            if isinstance(result, LabelweaveError):
                results[i] = result
                continue
            if result.duplicate:
                self._count("duplicate")
                results[i] = self._outcome(result, duplicate=True)
                continue
            new_state = state
            for p in payloads:
                new_state = aggregates.evolve(new_state, p)
            self._remember(stream_id, version + len(payloads), new_state)
            self._count("appended")
            results[i] = Outcome(result.events, False, version + len(payloads))
        out: list[Outcome | LabelweaveError] = []
        for i, done in enumerate(results):
            if done is None:
                cmd, cid = commands[i]
                try:
                    done = self.execute(
                        cmd, actor=actor, command_id=cid, correlation_id=correlation_id, occurred_at=when
                    )
                except LabelweaveError as exc:
                    done = exc
            out.append(done)
        return out

    def _outcome(self, result: AppendResult, *, duplicate: bool) -> Outcome:
        version = result.events[-1].envelope.stream_version if result.events else 0
        return Outcome(result.events, duplicate, version)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            counter = self._counters.get(outcome)
            if counter is None:
                counter = self._counters[outcome] = self._metrics.commands_total.labels(outcome)
            counter.inc()
