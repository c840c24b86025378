"""Rebuild every projection from the start of the log.

Stop the runner that writes to the store first: `rebuild` clears the whole store (every
consumer's rows and checkpoints) and replays the log up to the head as of the start. Events
appended meanwhile are left for the runner, which resumes from the rebuilt checkpoint.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from consumers.runner import DocCache, apply_batch, check_views, checkpoint_of, commit_batch
from coordinator.eventlog.base import EventLog, RecordedEvent
from projections.base import ProjectionStore, View

logger = logging.getLogger(__name__)


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


def rebuild(
    log: EventLog,
    store: ProjectionStore,
    views: Sequence[View] | None = None,
    *,
    consumer: str = "embedded",
    batch_size: int = 5000,
) -> RebuildResult:
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
    cache = DocCache()
    cache.complete = True  # the store is empty: a document not in the cache does not exist
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
        commit_batch(store, consumer, tx, checkpoint_of(events), cache)
        total += len(events)
    seconds = time.perf_counter() - t0
    if failures:
        logger.warning("rebuild: %d (event, view) applications failed and were skipped", failures)
    return RebuildResult(
        events=total, seconds=seconds, checksum=store.checksum(), checkpoint=store.checkpoint(consumer)
    )
