"""Rebuild every projection from the start of the log.

Stop the runner that writes to the store first: `rebuild` clears the whole store (every
consumer's rows and checkpoints) and replays the log up to the head as of the start. Events
appended meanwhile are left for the runner, which resumes from the rebuilt checkpoint.

Because the store starts empty and the rebuild is its only writer, the document cache is
complete: a document it does not hold does not exist. Two things follow, used here:

- A delete of a document that does not exist (a queue row added and removed within one batch,
  say; 23 % of all changes in `bench.distributed`'s log) is dropped instead of written.
- With a store that can split a commit into serializing and writing (`PipelinedStore`: the
  Cassandra store), the write of batch k runs in a background thread while batch k + 1 is
  applied. Commits stay one at a time and in log order, each with its own checkpoint, so the
  store holds a prefix of the log at any time; they are *bulk* commits (no redo record: an
  unfinished one makes the store refuse to resume, see `projections/cassandra.py`), since a
  rebuild that fails is run again from scratch. Batch k + 1 only reads documents from the cache
  (which holds batch k's writes before they land), except after a view failure or a cache
  eviction, and both first wait for the write in flight.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from consumers.runner import DocCache, apply_batch, check_views, checkpoint_of
from coordinator.eventlog.base import Checkpoint, EventLog, RecordedEvent
from projections.base import Change, Delete, ProjectionStore, View

logger = logging.getLogger(__name__)

CACHE_CAPACITY = 250_000
"""Documents the rebuild keeps in its cache (`DocCache.capacity`)."""


@dataclass(frozen=True)
class RebuildResult:
    events: int
    seconds: float
    """Wall time of clearing and replaying (excluding the final checksum)."""
    checksum: str
    checkpoint: dict[int, int]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@runtime_checkable
class PipelinedStore(Protocol):
    """A store whose commit splits into a CPU half (`prepare_commit`, in the caller's thread: the
    result must not refer to the documents) and an I/O half (`commit_prepared`, thread-safe)."""

    def prepare_commit(self, changes: Sequence[Change]) -> Any: ...

    def commit_prepared(
        self, consumer: str, prepared: Any, checkpoint: Checkpoint, *, bulk: bool = False
    ) -> None: ...


def rebuild(
    log: EventLog,
    store: ProjectionStore,
    views: Sequence[View] | None = None,
    *,
    consumer: str = "embedded",
    batch_size: int | None = None,
) -> RebuildResult:
    """Clear `store` and replay `log` into it; `batch_size` events per commit (default 5,000, or
    10,000 for a `PipelinedStore`: fewer pipeline fill-and-drain cycles, ~10 % faster on Cassandra)."""
    if batch_size is None:
        batch_size = 10_000 if isinstance(store, PipelinedStore) else 5_000
    if views is None:
        from projections.views import default_views

        views = default_views()
    check_views(views)
    # Rebuilding allocates millions of small dicts that live until their batch commits (or in the
    # cache); the cyclic collector would re-scan them over and over. None of them form cycles, so
    # pause it for the rebuild (reference counting still frees everything) and restore it after.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _rebuild(log, store, views, consumer, batch_size)
    finally:
        if gc_was_enabled:
            gc.enable()


class _Writer:
    """Commits in order: inline for an ordinary store; for a `PipelinedStore`, one bulk commit at
    a time in a background thread, overlapping the next batch's views."""

    def __init__(self, store: ProjectionStore, consumer: str) -> None:
        self._store = store
        self._consumer = consumer
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="rebuild-commit")
            if isinstance(store, PipelinedStore)
            else None
        )
        self._in_flight: Future[None] | None = None

    def commit(self, changes: Sequence[Change], checkpoint: Checkpoint) -> None:
        store = self._store
        if self._pool is None or not isinstance(store, PipelinedStore):
            store.commit(self._consumer, changes, checkpoint)
            return
        prepared = store.prepare_commit(changes)  # serialized here: later batches edit the documents
        self.wait()
        self._in_flight = self._pool.submit(
            store.commit_prepared, self._consumer, prepared, dict(checkpoint), bulk=True
        )

    def wait(self) -> None:
        """Until the commit in flight (if any) has landed; raises its error."""
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class _RebuildCache(DocCache):
    """The rebuild's cache. Before it stops being authoritative for a key (an eviction, or
    `clear()` after a view failure), the commit in flight must land: the store is read next."""

    def __init__(self, wait: Callable[[], None]) -> None:
        super().__init__(CACHE_CAPACITY)
        self.complete = True  # the store is empty: a document not in the cache does not exist
        self._wait = wait

    def remember(self, changes: Sequence[Change]) -> None:
        if len(self.docs) + len(changes) > self.capacity:  # this may evict
            self._wait()
        super().remember(changes)

    def clear(self) -> None:
        self._wait()
        super().clear()

    def without_noop_deletes(self, changes: list[Change]) -> list[Change]:
        """`changes` minus deletes of documents that do not exist (before `remember(changes)`)."""
        docs = self.docs
        out: list[Change] = []
        for ch in changes:
            if isinstance(ch, Delete):
                key = (ch.collection, ch.pk, ch.sk)
                if key in docs:
                    if docs[key] is None:
                        continue
                elif not self.must_read(key):
                    continue
            out.append(ch)
        return out


def _rebuild(
    log: EventLog, store: ProjectionStore, views: Sequence[View], consumer: str, batch_size: int
) -> RebuildResult:
    failures = 0

    def on_error(view: View, ev: RecordedEvent, exc: BaseException) -> None:
        nonlocal failures
        failures += 1
        logger.error(
            "rebuild: view %s failed on event at %s (%s); skipped: %r", view.name, ev.position, ev.type, exc
        )

    t0 = time.perf_counter()
    store.clear()
    writer = _Writer(store, consumer)
    try:
        cache = _RebuildCache(writer.wait)
        target = {p: o for p, o in log.head().items() if o > 0}
        cursor: dict[int, int] = {}  # what has been read (events past the target are read, not applied)
        total = 0
        while any(cursor.get(p, 0) < o for p, o in target.items()):
            batch = log.read(cursor, batch_size)
            if not batch:
                break
            cursor.update(checkpoint_of(batch))
            events = [ev for ev in batch if ev.position.offset <= target.get(ev.position.partition, 0)]
            if not events:
                continue
            tx = apply_batch(store, views, events, on_error, cache)
            changes = cache.without_noop_deletes(tx.changes()) if cache.complete else tx.changes()
            writer.commit(changes, checkpoint_of(events))
            cache.remember(changes)
            total += len(events)
        writer.wait()
    finally:
        writer.close()
    seconds = time.perf_counter() - t0
    if failures:
        logger.warning("rebuild: %d (event, view) applications failed and were skipped", failures)
    return RebuildResult(
        events=total, seconds=seconds, checksum=store.checksum(), checkpoint=store.checkpoint(consumer)
    )
