"""The event-log port: what every backend (memory, SQLite, Kafka) must do.

Positions are `(partition, offset)`; the embedded backends have one partition (0) and offsets
that start at 1 and grow by one per event, so offset 0 means "nothing yet". A `Checkpoint`
maps partition → last offset consumed and is what projections store with their rows and what
label-stream resume tokens encode.

Appends are atomic per call: every event of one command lands, or none does. A command is
acknowledged (append returns) only once its events are durable.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator.errors import Conflict, InvalidArgument, LabelweaveError

Checkpoint = Mapping[int, int]
"""partition → last offset applied (0: none)."""


@dataclass(frozen=True, order=True)
class Position:
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, text: str, *, field_name: str = "position") -> Position:
        try:
            part, off = text.split(":")
            pos = cls(int(part), int(off))
        except ValueError:
            raise InvalidArgument(
                f"not a log position: {text!r} (expected PARTITION:OFFSET)", field=field_name
            ) from None
        if pos.partition < 0 or pos.offset < 0:
            raise InvalidArgument(f"not a log position: {text!r}", field=field_name)
        return pos


def format_checkpoint(checkpoint: Checkpoint) -> str:
    """Resume tokens: `0:42,1:17` (partitions in order)."""
    return ",".join(f"{p}:{o}" for p, o in sorted(checkpoint.items()))


def parse_checkpoint(text: str, *, field_name: str = "resume_token") -> dict[int, int]:
    if not text:
        return {}
    out: dict[int, int] = {}
    for part in text.split(","):
        pos = Position.parse(part, field_name=field_name)
        out[pos.partition] = pos.offset
    return out


@dataclass(frozen=True)
class RecordedEvent:
    """An event as stored: its position, the decoded envelope, and the exact bytes stored."""

    position: Position
    envelope: events_pb2.EventEnvelope
    data: bytes

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def stream_id(self) -> str:
        return self.envelope.stream_id


@dataclass(frozen=True)
class AppendResult:
    events: tuple[RecordedEvent, ...]
    duplicate: bool = False
    """True when `command_id` had been appended before: `events` are the first outcome's."""

    @property
    def last_position(self) -> Position | None:
        return self.events[-1].position if self.events else None


class WrongExpectedVersion(Conflict):
    """Another writer appended to the stream first; reload the state and decide again."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id} is at version {actual}, expected {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class CommandReused(Conflict):
    """A command id arrived again with different content (fingerprint mismatch)."""


@dataclass
class AppendRequest:
    """Envelopes must have stream_id/type/payload/ids/occurred_at set; the log sets
    `stream_version` (expected_version + 1, + 2, …) and `recorded_at`."""

    stream_id: str
    expected_version: int
    envelopes: Sequence[events_pb2.EventEnvelope]
    command_id: str
    fingerprint: str = ""
    partition_key: str = field(default="")  # defaults to stream_id


class EventLog(abc.ABC):
    """Abstract event log. Implementations must be thread-safe."""

    url: str

    @abc.abstractmethod
    def append(self, request: AppendRequest) -> AppendResult:
        """Append atomically and durably.

        - If `command_id` was appended before: return its first outcome with `duplicate=True`
          and append nothing (raise `CommandReused` if the fingerprint differs and both are set).
        - If the stream's current version != `expected_version`: raise `WrongExpectedVersion`.
        - Returns once the events are durable (SQLite committed, Kafka acks=all).
        """

    def append_many(self, requests: Sequence[AppendRequest]) -> list[AppendResult | LabelweaveError]:
        """Append several requests (normally for distinct streams), each atomic on its own, in
        the order given: within a partition, request i's events come before request i + 1's.

        Each request succeeds or fails alone (the error is returned in its slot, not raised), so
        one stale version does not sink a whole import batch. Backends override this to make the
        whole call one durable commit (SQLite) or one transaction (Kafka).
        """
        out: list[AppendResult | LabelweaveError] = []
        for request in requests:
            try:
                out.append(self.append(request))
            except LabelweaveError as exc:
                out.append(exc)
        return out

    @abc.abstractmethod
    def outcome(self, command_id: str, fingerprint: str = "") -> AppendResult | None:
        """The first outcome of `command_id`, or None if it never appended anything.

        Raises `CommandReused` if both fingerprints are set and differ, exactly as append does.
        """

    @abc.abstractmethod
    def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        """Events of one stream with stream_version > after_version, in version order."""

    @abc.abstractmethod
    def stream_version(self, stream_id: str) -> int:
        """Current version of a stream (0 if empty)."""

    @abc.abstractmethod
    def read(self, after: Checkpoint, limit: int = 1000) -> list[RecordedEvent]:
        """Up to `limit` events after the checkpoint, in log order within each partition."""

    @abc.abstractmethod
    def head(self) -> dict[int, int]:
        """Last offset of every partition (what `read` would reach eventually)."""

    @abc.abstractmethod
    def wait(self, after: Checkpoint, timeout: float) -> bool:
        """Block until some partition has events after `after` (True) or timeout (False)."""

    def partitions(self) -> list[int]:
        return sorted(self.head())

    def subscribe(
        self,
        after: Checkpoint,
        *,
        follow: bool = True,
        poll: float = 0.5,
        batch: int = 500,
        stopped: object = None,
    ) -> Iterator[RecordedEvent]:
        """Every event after `after`, then (with follow) new ones as they arrive.

        `stopped`, if given, is an object with `is_set()` (threading.Event) ending the tail.
        """
        cursor = dict(after)
        while True:
            events = self.read(cursor, batch)
            for ev in events:
                cursor[ev.position.partition] = ev.position.offset
                yield ev
            if events:
                continue
            if not follow:
                return
            if stopped is not None and stopped.is_set():  # type: ignore[attr-defined]
                return
            self.wait(cursor, poll)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; further calls may fail."""
