"""The projection runner: tails the event log and applies every view, batch by batch.

Per batch: one `StagedTx`; every view applies every event in log order; then one
`store.commit(consumer, changes, checkpoint)` writes the rows and the checkpoint atomically, so
a restart resumes exactly after the last committed batch (no repeat, no gap).

A view that raises on an event does not wedge the runner: the event is logged (position,
view, error), counted in `failures`, and skipped *for that view only*. To make "skipped" exact
(no half-applied writes leaking from the failed apply), a batch in which any view failed is
re-applied from scratch with every (event, view) pair isolated in its own overlay; batches
without failures take the fast path with no copying.

Views read through a `DocCache` of the documents the runner itself committed, so consecutive
batches do not re-read (and re-parse) rows they just wrote. Views therefore must `put` every
document they change; the cache is dropped whenever a batch fails or a commit raises.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any

from consumers.gauges import ProjectionGauges
from coordinator.eventlog.base import Checkpoint, EventLog, RecordedEvent
from coordinator.metrics import Metrics
from projections.base import (
    Change,
    Doc,
    ProjectionStore,
    Put,
    StagedTx,
    View,
    ViewTx,
    merge_checkpoint,
)

logger = logging.getLogger(__name__)

_ABSENT: Any = object()

OnError = Callable[[View, RecordedEvent, BaseException], None]


def check_views(views: Sequence[View]) -> None:
    owner: dict[str, str] = {}
    for v in views:
        for c in v.collections:
            if c in owner:
                raise ValueError(f"collection {c!r} is written by both {owner[c]!r} and {v.name!r}")
            owner[c] = v.name


class _Overlay:
    """A ViewTx over a parent tx whose writes are kept apart until `flush` (docs read from the
    parent are copied, so in-place edits of a failed apply cannot leak)."""

    def __init__(self, parent: ViewTx) -> None:
        self._parent = parent
        self._local: dict[tuple[str, str, str], Doc | None] = {}

    def get(self, collection: str, pk: str, sk: str = "") -> Doc | None:
        key = (collection, pk, sk)
        if key in self._local:
            return self._local[key]
        value = self._parent.get(collection, pk, sk)
        return None if value is None else copy.deepcopy(value)

    def put(self, collection: str, pk: str, sk: str, value: Doc) -> None:
        self._local[(collection, pk, sk)] = value

    def delete(self, collection: str, pk: str, sk: str) -> None:
        self._local[(collection, pk, sk)] = None

    def flush(self) -> None:
        for (c, p, s), value in self._local.items():
            if value is None:
                self._parent.delete(c, p, s)
            else:
                self._parent.put(c, p, s, value)


class DocCache:
    """Documents of the runner's own collections as last committed (or read), so a batch does not
    re-read rows the runner itself wrote. Valid because a runner is the only writer of its views'
    collections. Views must `put` every document they change (they mutate what `get` returns).

    `complete` means "the store holds nothing the cache does not know", e.g. right after
    `clear()`; then a miss is an absent row and needs no store read. Eviction (oldest first, beyond
    `capacity` documents, but never what the last batch wrote: hot counters stay) keeps
    completeness by remembering the hashes of evicted keys: a miss on one of those reads the
    store, any other miss is an absent row. (A hash collision only costs a needless read.)
    Without this, a rebuild of 100k tasks outgrew the cache and paid one SELECT per new document.
    """

    def __init__(self, capacity: int = 250_000) -> None:
        self.capacity = capacity
        self.docs: dict[tuple[str, str, str], Doc | None] = {}
        self.complete = False
        self.evicted: set[int] = set()

    def remember(self, changes: Sequence[Change]) -> None:
        docs = self.docs
        for ch in changes:
            docs[ch[:3]] = ch[3] if type(ch) is Put or isinstance(ch, Put) else None
        if len(docs) > self.capacity:
            self._evict({ch[:3] for ch in changes})

    def remember_pending(self, pending: Mapping[tuple[str, str, str], Doc | None]) -> None:
        """`remember(changes_of(pending))`, without building the changes."""
        docs = self.docs
        docs.update(pending)
        if len(docs) > self.capacity:
            self._evict(pending)

    def _evict(self, recent: Container[tuple[str, str, str]]) -> None:
        """Drop the oldest documents down to 90 % of the capacity, except those in `recent` (the
        batch just remembered), which move to the end: counters every batch writes stay."""
        docs = self.docs
        oldest = list(itertools.islice(docs, len(docs) - self.capacity * 9 // 10))
        dropped = [key for key in oldest if key not in recent]
        if len(dropped) < len(oldest):
            for key in oldest:
                if key in recent:
                    docs[key] = docs.pop(key)
        if self.complete:
            self.evicted.update(map(hash, dropped))
        for key in dropped:
            del docs[key]

    def before_read(self) -> None:
        """Called before a miss is read from the store (a hook: the rebuild's cache waits there
        for its commit in flight)."""

    def must_read(self, key: tuple[str, str, str]) -> bool:
        """Whether a key absent from `docs` may exist in the store."""
        return not self.complete or hash(key) in self.evicted

    def clear(self) -> None:
        self.docs.clear()
        self.evicted.clear()
        self.complete = False


class _ReadThrough(ProjectionStore):
    """What a batch's StagedTx reads through: the cache first, then the store."""

    def __init__(self, store: ProjectionStore, cache: DocCache) -> None:
        self.url = store.url
        self._store = store
        self._cache = cache

    def get(self, collection: str, pk: str, sk: str = "") -> Doc | None:
        key = (collection, pk, sk)
        docs = self._cache.docs
        value = docs.get(key, _ABSENT)
        if value is not _ABSENT:
            return value  # type: ignore[no-any-return]
        cache = self._cache
        if cache.complete and (not cache.evicted or hash(key) not in cache.evicted):  # = not must_read
            return None
        cache.before_read()
        doc = self._store.get(collection, pk, sk)
        docs[key] = doc
        return doc

    def scan(
        self,
        collection: str,
        pk: str,
        *,
        start: str = "",
        end: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[str, Doc]]:  # pragma: no cover - views only read via get
        return self._store.scan(collection, pk, start=start, end=end, limit=limit, reverse=reverse)

    def commit(
        self, consumer: str, changes: Sequence[Change], checkpoint: Checkpoint
    ) -> None:  # pragma: no cover
        raise TypeError("read-only")

    def checkpoint(self, consumer: str) -> dict[int, int]:  # pragma: no cover
        return self._store.checkpoint(consumer)

    def items(self) -> Iterable[tuple[str, str, str, Doc]]:  # pragma: no cover
        return self._store.items()

    def clear(self) -> None:  # pragma: no cover
        raise TypeError("read-only")


def apply_batch(
    store: ProjectionStore,
    views: Sequence[View],
    events: Sequence[RecordedEvent],
    on_error: OnError,
    cache: DocCache | None = None,
) -> StagedTx:
    """Apply `events` to every view (log order, views in order) and return the staged writes.

    With a `cache`, reads go through it; the caller must `cache.remember(tx.changes())` after a
    successful commit and `cache.clear()` if the commit fails.
    """
    source: ProjectionStore = store if cache is None else _ReadThrough(store, cache)
    tx = StagedTx(source)
    applies = [view.apply for view in views]
    try:
        for ev in events:
            for apply in applies:
                apply(ev, tx)
        return tx
    except Exception:  # some view failed: redo the batch with isolation
        if cache is not None:
            cache.clear()  # the failed pass may have edited cached documents in place
    tx = StagedTx(source)
    for ev in events:
        for view in views:
            overlay = _Overlay(tx)
            try:
                view.apply(ev, overlay)
            except Exception as exc:  # a broken view must not stop the others
                on_error(view, ev, exc)
                continue
            overlay.flush()
    return tx


def commit_batch(
    store: ProjectionStore, consumer: str, tx: StagedTx, checkpoint: Checkpoint, cache: DocCache | None
) -> None:
    changes = tx.changes()
    try:
        store.commit(consumer, changes, checkpoint)
    except BaseException:
        if cache is not None:
            cache.clear()
        raise
    if cache is not None:
        cache.remember(changes)


def checkpoint_of(events: Sequence[RecordedEvent]) -> dict[int, int]:
    out: dict[int, int] = {}
    for ev in events:
        p, o = ev.position.partition, ev.position.offset
        if o > out.get(p, 0):
            out[p] = o
    return out


class ProjectionRunner:
    DEPTH_INTERVAL = 1.0
    """Seconds between queue-depth gauge refreshes."""

    def __init__(
        self,
        log: EventLog,
        store: ProjectionStore,
        views: Sequence[View] | None = None,
        *,
        consumer: str = "embedded",
        batch_size: int = 1000,
        metrics: Metrics | None = None,
        linger: float = 0.005,
    ) -> None:
        if views is None:
            from projections.views import default_views

            views = default_views()
        check_views(views)
        self.log = log
        self._store = store
        self.views: tuple[View, ...] = tuple(views)
        self.consumer = consumer
        self.batch_size = max(1, batch_size)
        self.linger = linger
        self.metrics = metrics
        self.failures = 0
        """Number of (event, view) applications skipped because the view raised."""
        self._cond = threading.Condition()
        self._waiting = 0  # callers blocked in wait_for: the loop stops lingering for them
        self._run_lock = threading.Lock()  # one batch at a time (background thread or callers)
        self._applied: dict[int, int] = store.checkpoint(consumer)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_depths = 0.0
        self._gauges = ProjectionGauges(metrics) if metrics is not None else None
        self._cache = DocCache()

    # ------------------------------------------------------------------ state

    @property
    def store(self) -> ProjectionStore:
        return self._store

    @store.setter
    def store(self, store: ProjectionStore) -> None:
        """Switch to another store (e.g. one swapped in after a rebuild); resumes from its checkpoint."""
        self._store = store
        self._reload()

    def _reload(self) -> None:
        """Forget cached documents and take the applied position from the store (the truth)."""
        with self._run_lock:
            self._cache.clear()
            with self._cond:
                self._applied = self._store.checkpoint(self.consumer)
                self._cond.notify_all()

    @property
    def running(self) -> bool:
        """True while the background thread tails the log."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def applied(self) -> dict[int, int]:
        with self._cond:
            return dict(self._applied)

    def lag(self) -> int:
        head = self.log.head()
        applied = self.applied
        return sum(max(0, off - applied.get(p, 0)) for p, off in head.items())

    # ------------------------------------------------------------------ applying

    def _on_error(self, view: View, ev: RecordedEvent, exc: BaseException) -> None:
        self.failures += 1
        logger.error(
            "projection view %s failed on event %s (%s, %s) at %s; skipped for this view: %r",
            view.name,
            ev.envelope.event_id,
            ev.envelope.type,
            ev.stream_id,
            ev.position,
            exc,
            exc_info=exc,
        )

    def run_once(self) -> int:
        """Apply one batch synchronously; returns the number of events applied (0: caught up)."""
        with self._run_lock:
            events = self.log.read(self.applied, self.batch_size)
            if not events:
                if self.metrics is not None:
                    self.metrics.projection_lag.labels(self.consumer).set(self.lag())
                return 0
            tx = apply_batch(self.store, self.views, events, self._on_error, self._cache)
            checkpoint = checkpoint_of(events)
            t0 = time.perf_counter()
            commit_batch(self.store, self.consumer, tx, checkpoint, self._cache)
            elapsed = time.perf_counter() - t0
            with self._cond:
                self._applied = merge_checkpoint(self._applied, checkpoint)
                self._cond.notify_all()
            if self.metrics is not None:
                self._record(len(events), elapsed)
            return len(events)

    def _record(self, n: int, commit_seconds: float) -> None:
        m = self.metrics
        assert m is not None
        m.projection_applied.labels(self.consumer).inc(n)
        m.projection_commit_latency.labels(self.consumer).observe(commit_seconds)
        m.projection_lag.labels(self.consumer).set(self.lag())
        now = time.monotonic()
        if self._gauges is not None and now - self._last_depths >= self.DEPTH_INTERVAL:
            self._last_depths = now
            self._gauges.refresh(self.store)

    def catch_up(self) -> int:
        """Apply batches until the log head (as of each read); returns the total applied."""
        total = 0
        while True:
            n = self.run_once()
            if n == 0:
                return total
            total += n

    def wait_for(self, checkpoint: Mapping[int, int], timeout: float) -> bool:
        """Block until every partition named in `checkpoint` is applied up to its offset.

        If the background thread is not running, the caller's thread applies batches itself.
        """
        deadline = time.monotonic() + timeout

        def reached() -> bool:
            return all(self._applied.get(p, 0) >= o for p, o in checkpoint.items())

        if not self.running:
            while True:
                with self._cond:
                    if reached():
                        return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if self.run_once() == 0:
                    self.log.wait(self.applied, min(remaining, 0.5))
        with self._cond:
            if reached():
                return True
            self._waiting += 1
            self._cond.notify_all()  # cut the loop's linger short: someone waits for this position
            try:
                return self._cond.wait_for(reached, timeout=max(0.0, deadline - time.monotonic()))
            finally:
                self._waiting -= 1

    # ------------------------------------------------------------------ background

    def start(self) -> None:
        """Tail the log from the store's checkpoint in a daemon thread."""
        if self.running:
            return
        self._stop.clear()
        self._reload()
        self._thread = threading.Thread(target=self._loop, name=f"projection-{self.consumer}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("projection runner %s did not stop within %.1fs", self.consumer, timeout)
            else:
                self._thread = None

    def _loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                applied = self.run_once()
                if applied == 0:
                    self.log.wait(self.applied, 0.2)
                elif applied < self.batch_size and self.linger > 0:
                    # Under a trickle of events, committing per event costs more than the
                    # events; a few milliseconds of lag buys batches (and store commits) 10x larger.
                    # A caller waiting in `wait_for` (read-your-writes of an admin change) ends
                    # the linger at once, so only unobserved work waits for a fuller batch.
                    with self._cond:
                        self._cond.wait_for(lambda: self._waiting > 0 or self._stop.is_set(), self.linger)
                backoff = 0.1
            except Exception:  # keep tailing; the store or log may come back
                logger.exception(
                    "projection runner %s: batch failed; retrying in %.1fs", self.consumer, backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                # A failed commit may still land (Cassandra): take the position from the store.
                with contextlib.suppress(Exception):
                    self._reload()
