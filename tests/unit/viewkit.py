"""Scaffolding shared by the view unit tests: recording events as the log stores them, applying
them to views in a `MemoryStore`, and re-homing a log on several partitions.

Every view test drives its views with a history and checks the same two properties: a batch
rebuild gives the rows the live, command-by-command application gave, and the single-writer rule
(docs/architecture.md) holds: re-homed on four partitions and applied one event per commit in any
interleaving of the partitions, the log gives the same rows. One copy of the envelope building,
the ways of applying and the interleavings keeps those checks the same for every view; what each
test decides and asserts stays in the test.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from google.protobuf.message import Message

from consumers.runner import apply_batch
from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.eventlog import codec
from coordinator.eventlog.base import Position, RecordedEvent
from projections.base import StagedTx, View
from projections.memory import MemoryStore
from projections.views import default_views

Views = Callable[[], Sequence[View]]
"""Makes the view instances for one commit (`default_views`, or e.g. `lambda: [ReviewView()]`)."""

Partitions = dict[int, list[RecordedEvent]]
"""A log split by partition: each partition's events in their log order."""


class Recorder:
    """A log in the making: events recorded at offsets 1, 2, 3, … of their partition, stamped
    with the clock `now`, which the test (or the subclass deciding its commands) moves on."""

    def __init__(self, now: datetime) -> None:
        self.events: list[RecordedEvent] = []
        self.now = now
        self._offsets: dict[int, int] = {}

    def append(
        self,
        payload: Message,
        *,
        stream: str,
        command_id: str,
        actor: str = "x",
        correlation_id: str = "",
        partition: int = 0,
        recorded_at: bool = True,
    ) -> RecordedEvent:
        """Append `payload` as an admin's event at the next offset of `partition`; `recorded_at`
        stamps the envelope's recording time with `now`, as the event log does on append."""
        env = codec.make_envelope(
            payload,
            stream_id=stream,
            actor_id=actor,
            actor_role=model_pb2.ROLE_ADMIN,
            command_id=command_id,
            correlation_id=correlation_id,
            occurred_at=self.now,
        )
        if recorded_at:
            env.recorded_at.CopyFrom(codec.timestamp(self.now))
        offset = self._offsets.get(partition, 0) + 1
        self._offsets[partition] = offset
        ev = RecordedEvent(Position(partition, offset), env, codec.encode(env))
        self.events.append(ev)
        return ev


def commit_live(store: MemoryStore, views: Sequence[View], batch: Sequence[RecordedEvent]) -> None:
    """Apply one command's events to `views` as the projection runner does (one batch, one
    commit, checkpointed at the batch's last offset of partition 0); a failing view fails the test."""

    def fail(view: View, ev: RecordedEvent, exc: BaseException) -> None:
        raise AssertionError(f"view {view.name} failed on {ev.type}") from exc

    tx = apply_batch(store, views, batch, fail)
    store.commit("test", tx.changes(), {0: batch[-1].position.offset})


def apply_as_one_batch(events: Sequence[RecordedEvent], views: Views = default_views) -> MemoryStore:
    """A fresh store with a one-partition log applied in one batch and one commit, as a rebuild."""
    store = MemoryStore()
    tx = StagedTx(store)
    applied = views()
    for ev in events:
        for view in applied:
            view.apply(ev, tx)
    store.commit("test", tx.changes(), {0: len(events)})
    return store


def apply_event_by_event(events: Sequence[RecordedEvent], views: Views = default_views) -> MemoryStore:
    """A fresh store with `events` applied one per commit (fresh views each time), checkpointed at
    each event's own position: the finest interleaving independent partition workers can make."""
    store = MemoryStore()
    for ev in events:
        tx = StagedTx(store)
        for view in views():
            view.apply(ev, tx)
        store.commit("test", tx.changes(), {ev.position.partition: ev.position.offset})
    return store


def by_partition(events: Sequence[RecordedEvent]) -> Partitions:
    """`events` grouped by the partition they were recorded on."""
    parts: Partitions = {}
    for ev in events:
        parts.setdefault(ev.position.partition, []).append(ev)
    return parts


def repartition(events: Sequence[RecordedEvent], partitions: int = 4) -> Partitions:
    """A one-partition log re-homed as a partitioned log would hold it: every stream on partition
    crc32(stream id) % `partitions`, at offsets 1, 2, 3, … of that partition, in log order."""
    parts: Partitions = {}
    for ev in events:
        part = zlib.crc32(ev.stream_id.encode()) % partitions
        placed = parts.setdefault(part, [])
        placed.append(RecordedEvent(Position(part, len(placed) + 1), ev.envelope, ev.data))
    return parts


def interleavings(parts: Mapping[int, list[RecordedEvent]], seed: int) -> list[list[RecordedEvent]]:
    """Three orders of all the events that keep each partition's own order: partition after
    partition, the partitions backwards, and a random interleaving (a `seed`ed draw of the next
    partition, among those with events left, at every event)."""
    order = sorted(parts)
    sequential = [ev for p in order for ev in parts[p]]
    backwards = [ev for p in reversed(order) for ev in parts[p]]
    rng = random.Random(seed)
    cursors = dict.fromkeys(order, 0)
    shuffled: list[RecordedEvent] = []
    while any(cursors[p] < len(parts[p]) for p in order):
        p = rng.choice([p for p in order if cursors[p] < len(parts[p])])
        shuffled.append(parts[p][cursors[p]])
        cursors[p] += 1
    return [sequential, backwards, shuffled]


def apply_interleavings(
    parts: Mapping[int, list[RecordedEvent]], seed: int, views: Views = default_views
) -> tuple[MemoryStore, MemoryStore, MemoryStore]:
    """The stores the three `interleavings` give, each applied event by event: (sequential,
    backwards, interleaved). Under the single-writer rule their checksums are equal."""
    sequential, backwards, interleaved = (
        apply_event_by_event(order, views) for order in interleavings(parts, seed)
    )
    return sequential, backwards, interleaved
