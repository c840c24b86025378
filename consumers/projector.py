"""The core of a distributed projection worker: raw Kafka records in, view rows out.

The faust agents (`consumers/app.py`) are thin: they hand batches of records to a
`PartitionProjector`, which does what the embedded runner does per batch (decode, apply every
view through a `StagedTx`, commit the rows and the checkpoint in one store write) plus what a
distributed consumer needs:

- **Exactly-once effect on the store.** faust gives at-least-once delivery, and across restarts
  and rebalances it may redeliver records (see docs/distributed-compat.md). The store's
  checkpoint (partition → last offset applied, written with the rows) is the truth: records at
  or below it are skipped. So a record is applied once even if faust delivers it twice.
- **Dead letters.** A record that cannot be decoded, or on which a view raises, is sent to the
  dead-letter topic with the error, its topic/partition/offset and the view, counted in
  metrics, and processing goes on (the checkpoint moves past it).
- **Single writer per document.** Views write every read-modify-write document from one log
  partition only (`projections.base.shard_of`), so workers owning different partitions never
  race on a document, and the document cache is valid for the partitions a worker owns. It is
  dropped on every rebalance.

Nothing here is async or faust-specific, so it is unit-tested without a broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from consumers.runner import DocCache, apply_batch, check_views, commit_batch
from coordinator.eventlog import codec
from coordinator.eventlog.base import Position, RecordedEvent
from projections.base import ProjectionStore, View, merge_checkpoint

logger = logging.getLogger(__name__)

CONSUMER = "projections"
"""Checkpoint name of the distributed workers in the store (the embedded runner uses "embedded")."""


class Record(NamedTuple):
    """One Kafka record as the projector needs it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class DeadLetter:
    record: Record
    reason: str  # "decode" | "view"
    error: str
    view: str = ""
    event_id: str = ""


class Layout(Protocol):
    """How Kafka coordinates map onto the log's `Position`s (the Kafka event log provides it)."""

    def position(self, topic: str, partition: int, offset: int) -> Position: ...

    def next_offset(self, topic: str, partition: int, applied: Mapping[int, int]) -> int:
        """The Kafka offset to read next, given a checkpoint of applied positions."""
        ...


class PartitionProjector:
    """Applies batches of records of any assigned partitions; thread-safe (one batch at a time)."""

    def __init__(
        self,
        store: ProjectionStore,
        layout: Layout,
        *,
        views: Sequence[View] | None = None,
        dead_letter: Callable[[DeadLetter], None] | None = None,
        consumer: str = CONSUMER,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        if views is None:
            from projections.views import default_views

            views = default_views()
        check_views(views)
        self.store = store
        self.views: tuple[View, ...] = tuple(views)
        self.consumer = consumer
        self._layout = layout
        self._dead_letter = dead_letter
        self._on_commit = on_commit
        self._lock = threading.Lock()
        self._cache = DocCache()
        self._applied: dict[int, int] | None = None  # loaded lazily from the store
        self.dead_letters = 0
        self.skipped = 0
        """Records skipped because the store had applied them already (redeliveries)."""

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget cached documents and positions (on every rebalance): another worker may have
        written the documents of partitions this one owned before."""
        with self._lock:
            self._cache.clear()
            self._applied = None

    def applied(self) -> dict[int, int]:
        with self._lock:
            return dict(self._positions())

    def _positions(self) -> dict[int, int]:
        if self._applied is None:
            self._applied = self.store.checkpoint(self.consumer)
        return self._applied

    def resume_offsets(self, topic_partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Next Kafka offset to read per (topic, partition): one past what the store applied."""
        with self._lock:
            applied = self._positions()
            return {(t, p): self._layout.next_offset(t, p, applied) for t, p in topic_partitions}

    # ------------------------------------------------------------------ applying

    def process(self, records: Sequence[Record]) -> int:
        """Apply a batch; returns how many events were applied (not skipped, not dead)."""
        with self._lock:
            applied = self._positions()
            events: list[RecordedEvent] = []
            origin: dict[tuple[int, int], Record] = {}
            dead: list[DeadLetter] = []
            checkpoint: dict[int, int] = {}
            for rec in records:
                pos = self._layout.position(rec.topic, rec.partition, rec.offset)
                vp = pos.partition
                if pos.offset <= applied.get(vp, 0) or pos.offset <= checkpoint.get(vp, 0):
                    self.skipped += 1
                    continue
                checkpoint[vp] = pos.offset
                try:
                    if rec.value is None:
                        raise ValueError("record has no value (tombstone)")
                    env = codec.decode(rec.value)
                    if not env.WhichOneof("payload"):
                        raise ValueError("envelope has no payload")
                except Exception as exc:
                    dead.append(DeadLetter(rec, "decode", f"{type(exc).__name__}: {exc}"))
                    continue
                events.append(RecordedEvent(pos, env, rec.value))
                origin[(vp, pos.offset)] = rec
            if not checkpoint:
                return 0

            def on_error(view: View, ev: RecordedEvent, exc: BaseException) -> None:
                rec = origin[(ev.position.partition, ev.position.offset)]
                dead.append(
                    DeadLetter(rec, "view", f"{type(exc).__name__}: {exc}", view.name, ev.envelope.event_id)
                )

            tx = apply_batch(self.store, self.views, events, on_error, self._cache)
            # Dead letters are sent (and flushed) before the commit moves the checkpoint past them:
            # a crash in between re-sends them (at least once), never loses one.
            for letter in dead:
                self._send_dead(letter)
            t0 = time.perf_counter()
            try:
                commit_batch(self.store, self.consumer, tx, checkpoint, self._cache)
            except BaseException:
                # The commit may still land (a Cassandra batch in doubt): read the checkpoint
                # again before the caller retries; the store settles commits in doubt first.
                self._applied = None
                raise
            elapsed = time.perf_counter() - t0
            self._applied = merge_checkpoint(applied, checkpoint)
            if self._on_commit is not None:
                self._on_commit(len(events), elapsed)
            return len(events)

    def _send_dead(self, letter: DeadLetter) -> None:
        self.dead_letters += 1
        rec = letter.record
        logger.error(
            "dead letter: %s/%d@%d %s%s: %s",
            rec.topic,
            rec.partition,
            rec.offset,
            letter.reason,
            f" (view {letter.view})" if letter.view else "",
            letter.error,
        )
        if self._dead_letter is not None:
            self._dead_letter(letter)
