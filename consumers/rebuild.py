"""Rebuild every projection from the start of the log.

Stop the runner that writes to the store first: `rebuild` clears the whole store (every
consumer's rows and checkpoints) and replays the log up to the head as of the start. Events
appended meanwhile are left for the runner, which resumes from the rebuilt checkpoint.

Because the store starts empty and the rebuild is its only writer, the document cache is
complete: a document it does not hold does not exist. Two things follow, used here:

- A delete of a document that does not exist (a queue row added and removed within one batch,
  say; 23 % of all changes in `bench.distributed`'s log) is dropped instead of written.
- With a store that can split a commit into serializing and writing (`PipelinedStore`: the
  Cassandra and SQLite stores), the write of batch k runs in a background thread while batch
  k + 1 is applied (unless every core already replays: `rebuild_by_views`). For that to overlap
  at all, the write must hold the GIL released while it works: Cassandra waits on the network,
  and SQLite inserts a bulk commit's rows with one statement (`projections/sqlite.py`).
  Commits stay one at a time and in log order, each with its own checkpoint, so the store
  holds a prefix of the log at any time; they are *bulk* commits (no redo record: an
  unfinished one makes the store refuse to resume, see `projections/cassandra.py`), since a
  rebuild that fails is run again from scratch. Batch k + 1 only reads documents from the cache
  (which holds batch k's writes before they land), except after a view failure or when it
  needs a document the cache evicted, and both first wait for the write in flight. Evicting
  itself does not wait (it drained the pipeline at every batch once the cache was full).

The log is read through `log.read` (any `EventLog`), or from a `ReplaySource`: the Kafka log's
`KafkaReplay` reads the event topics directly instead of filling a replica index first.
`rebuild_from_kafka` uses it to split a rebuild by partition over several processes (one core
each), which the single-writer rule makes safe: each process's cache is complete for the
documents its partitions write, and no other process writes them.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from consumers.runner import DocCache, apply_batch, check_views, checkpoint_of
from coordinator.errors import InvalidArgument, Unavailable
from coordinator.eventlog.base import Checkpoint, EventLog, RecordedEvent
from projections.base import Change, Delete, Doc, ProjectionStore, View, changes_of

logger = logging.getLogger(__name__)

CACHE_CAPACITY = 1_000_000
"""Documents a rebuild process keeps in its cache (`DocCache.capacity`). A view group of a
100k-task log writes ~550k documents: with 250k the cache evicted and read back, and the process
spent ~12 % more CPU; the price is memory, ~0.45-0.55 GB per process at 100k tasks instead of
~0.36 GB (docs/benchmarks.md, pass 4). Beyond this the cache evicts, oldest first."""
SPLIT_MIN_EVENTS = 20_000
"""`rebuild_from_kafka` starts another process only for this many events (records up to the
head) per process: a worker takes about a second to start (spawn, imports, connections), what one
process replays 5,000-7,000 events in."""


@dataclass(frozen=True)
class RebuildResult:
    events: int
    seconds: float
    """Wall time of clearing and replaying (excluding the final checksum)."""
    checksum: str
    checkpoint: dict[int, int]
    processes: int = 1
    """Processes that replayed the log (`rebuild_from_kafka`)."""

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


@runtime_checkable
class ReplaySource(Protocol):
    """A source of the whole log that is not an `EventLog`: the events up to a head fixed when it
    was opened, in batches of at most `size` (each partition in offset order), read once. The Kafka
    log's `coordinator.eventlog.kafka_replay.KafkaReplay` reads the topics directly, without the
    replica index a `KafkaEventLog` fills before it can be read."""

    def batches(self, size: int) -> Iterator[list[RecordedEvent]]: ...


def rebuild(
    log: EventLog | ReplaySource,
    store: ProjectionStore,
    views: Sequence[View] | None = None,
    *,
    consumer: str = "embedded",
    batch_size: int | None = None,
) -> RebuildResult:
    """Clear `store` and replay `log` (an `EventLog`, or a `ReplaySource` such as `KafkaReplay`)
    into it; `batch_size` events per commit (default 5,000, or
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
    a time in a background thread, overlapping the next batch's views — unless `background` is
    False: when every core already replays (`rebuild_by_views`), a write thread only adds
    switching, and inline writes cost the least CPU."""

    def __init__(self, store: ProjectionStore, consumer: str, background: bool = True) -> None:
        self._store = store
        self._consumer = consumer
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="rebuild-commit")
            if background and isinstance(store, PipelinedStore)
            else None
        )
        self._in_flight: Future[None] | None = None

    def commit_pending(
        self, pending: Mapping[tuple[str, str, str], Doc | None], checkpoint: Checkpoint
    ) -> None:
        """`commit(changes_of(pending), checkpoint)`; a store with `prepare_pending` (SQLite)
        encodes the mapping straight away, without `Change` objects."""
        store = self._store
        prepare = getattr(store, "prepare_pending", None)
        if prepare is None or not isinstance(store, PipelinedStore):
            self.commit(changes_of(pending), checkpoint)
            return
        prepared = prepare(pending)  # serialized here: later batches edit the documents
        if self._pool is None:
            store.commit_prepared(self._consumer, prepared, checkpoint)
            return
        self.wait()
        self._in_flight = self._pool.submit(
            store.commit_prepared, self._consumer, prepared, dict(checkpoint), bulk=True
        )

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
    """The rebuild's cache. Before the store is read for a key the cache no longer knows (it was
    evicted, or `clear()` after a view failure), the commit in flight must land. Evicting does
    not wait: waiting there drained the write pipeline at every batch once the cache was full
    (a rebuild of 100k tasks spent 2 s of its 7 s there), while reads of evicted keys are rare."""

    def __init__(self, wait: Callable[[], None]) -> None:
        super().__init__(CACHE_CAPACITY)
        self.complete = True  # the store is empty: a document not in the cache does not exist
        self._wait = wait

    def before_read(self) -> None:
        self._wait()

    def clear(self) -> None:
        self._wait()
        super().clear()

    def drop_noop_deletes(self, pending: dict[tuple[str, str, str], Doc | None]) -> None:
        """Remove from `pending` the deletes of documents that do not exist (before
        `remember_pending(pending)`)."""
        docs = self.docs
        noop = [
            key
            for key, value in pending.items()
            if value is None and (docs[key] is None if key in docs else not self.must_read(key))
        ]
        for key in noop:
            del pending[key]

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


def _read_log(log: EventLog, batch_size: int) -> Iterator[list[RecordedEvent]]:
    """The log up to its head as of the start, in `read()` pages (events appended meanwhile are
    read, not returned)."""
    target = {p: o for p, o in log.head().items() if o > 0}
    cursor: dict[int, int] = {}  # what has been read
    while any(cursor.get(p, 0) < o for p, o in target.items()):
        batch = log.read(cursor, batch_size)
        if not batch:
            return
        cursor.update(checkpoint_of(batch))
        events = [ev for ev in batch if ev.position.offset <= target.get(ev.position.partition, 0)]
        if events:
            yield events


def _rebuild(
    log: EventLog | ReplaySource,
    store: ProjectionStore,
    views: Sequence[View],
    consumer: str,
    batch_size: int,
) -> RebuildResult:
    t0 = time.perf_counter()
    store.clear()
    source = log.batches(batch_size) if isinstance(log, ReplaySource) else _read_log(log, batch_size)
    total, failures = _replay(source, store, views, consumer)
    seconds = time.perf_counter() - t0
    if failures:
        logger.warning("rebuild: %d (event, view) applications failed and were skipped", failures)
    return RebuildResult(
        events=total, seconds=seconds, checksum=store.checksum(), checkpoint=store.checkpoint(consumer)
    )


def _replay(
    source: Iterable[list[RecordedEvent]],
    store: ProjectionStore,
    views: Sequence[View],
    consumer: str,
    *,
    background: bool = True,
) -> tuple[int, int]:
    """Apply and commit every batch of `source` into the (cleared) store: (events, view failures).
    `background`: see `_Writer`."""
    failures = 0

    def on_error(view: View, ev: RecordedEvent, exc: BaseException) -> None:
        nonlocal failures
        failures += 1
        logger.error(
            "rebuild: view %s failed on event at %s (%s); skipped: %r", view.name, ev.position, ev.type, exc
        )

    writer = _Writer(store, consumer, background)
    try:
        cache = _RebuildCache(writer.wait)
        total = 0
        for events in source:
            pending = apply_batch(store, views, events, on_error, cache).pending
            if cache.complete:
                cache.drop_noop_deletes(pending)
            writer.commit_pending(pending, checkpoint_of(events))
            cache.remember_pending(pending)
            total += len(events)
        writer.wait()
    finally:
        writer.close()
    return total, failures


# ---------------------------------------------------------------------- Kafka: several processes


def rebuild_from_kafka(
    log_url: str,
    store_url: str,
    *,
    workers: int = 2,
    consumer: str = "embedded",
    batch_size: int | None = None,
    checksum: bool = True,
) -> RebuildResult:
    """Clear the store at `store_url` and rebuild it from the event topics of the Kafka log at
    `log_url`, read directly (`KafkaReplay`: no replica index), split over `workers` processes.

    The split is by virtual partition, which the single-writer rule makes safe
    (docs/architecture.md): every document is written from one partition, so each worker's
    document cache is complete for what it writes and the workers never write the same row, as
    the faust workers that own disjoint partitions. This process replays the first share itself
    and starts the others (`spawn`: nothing of this process's threads or connections is
    inherited), at most one per `SPLIT_MIN_EVENTS` records and only into a store several
    processes can write at once (Cassandra: a `PipelinedStore`); partitions are dealt out by size
    (records up to the head), largest first. Every worker replays up to the same head, fixed here
    when the rebuild starts, and commits its own partitions' checkpoints with its batches (bulk
    commits: a worker that fails leaves the store refusing to resume until it is rebuilt, see
    `rebuild`). Any worker failing fails the rebuild.
    `workers=1` is `rebuild(KafkaReplay.from_url(log_url), open_store(store_url))`.
    `checksum=False` leaves `RebuildResult.checksum` empty (it reads the whole store back).
    """
    from coordinator.eventlog.kafka_layout import KafkaLayout
    from coordinator.eventlog.kafka_replay import KafkaReplay
    from projections.factory import open_store

    if workers < 1:
        raise InvalidArgument(f"workers must be >= 1, got {workers}", field="workers")
    layout = KafkaLayout.from_url(log_url)
    store = open_store(store_url)
    try:
        t0 = time.perf_counter()
        with KafkaReplay(layout) as probe:
            ends = probe.head()
        processes = max(1, min(workers, sum(ends.values()) // max(SPLIT_MIN_EVENTS, 1)))
        if not isinstance(store, PipelinedStore):
            processes = 1  # a memory store is this process's own; SQLite has one writer at a time
        shares = _deal([vp for vp, end in ends.items() if end > 0], ends, processes)
        store.clear()
        mine = shares[0] if shares else []
        levels = _log_levels()
        (total, failures), outcomes = fan_out(
            _kafka_worker,
            [
                (f"rebuild-worker-{vps[0]}", (log_url, store_url, vps, ends, consumer, batch_size, levels))
                for vps in shares[1:]
            ],
            lambda: _replay_partitions(layout, store, mine, ends, consumer, batch_size),
        )
        errors: list[str] = []
        for vps, outcome in zip(shares[1:], outcomes, strict=True):
            if outcome[0] == "ok":
                total += outcome[1]
                failures += outcome[2]
            else:
                errors.append(f"partitions {vps}: {outcome[1]}")
        return split_result(store, consumer, t0, total, failures, errors, max(len(shares), 1), checksum)
    finally:
        store.close()


def split_result(
    store: ProjectionStore,
    consumer: str,
    t0: float,
    total: int,
    failures: int,
    errors: list[str],
    processes: int,
    checksum: bool,
) -> RebuildResult:
    """The result of a rebuild split over processes, or `Unavailable` naming what failed."""
    if errors:
        raise Unavailable("the rebuild failed (run it again): " + "; ".join(errors))
    seconds = time.perf_counter() - t0
    if failures:
        logger.warning("rebuild: %d (event, view) applications failed and were skipped", failures)
    return RebuildResult(
        events=total,
        seconds=seconds,
        checksum=store.checksum() if checksum else "",
        checkpoint=store.checkpoint(consumer),
        processes=processes,
    )


T = TypeVar("T")


def fan_out(
    target: Callable[..., None], jobs: Sequence[tuple[str, tuple[Any, ...]]], mine: Callable[[], T]
) -> tuple[T, list[tuple[Any, ...]]]:
    """Start one spawned process per job (`name`, `args`) running `target(*args, reply)`, run
    `mine()` here meanwhile, then collect each job's outcome in job order: what the worker sent
    through `reply` ("ok", ...) or ("error", message), also when it died without a word.
    `spawn`: a worker inherits none of this process's threads or connections. Workers still
    running when this fails are terminated."""
    context = multiprocessing.get_context("spawn")
    children: list[tuple[Any, Any]] = []
    try:
        for name, args in jobs:
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=target, args=(*args, send), name=name, daemon=True)
            process.start()
            send.close()
            children.append((process, receive))
        result = mine()
        outcomes: list[tuple[Any, ...]] = []
        for process, receive in children:
            try:
                outcome = receive.recv()
            except EOFError:
                outcome = ("error", f"the worker process exited with code {process.exitcode}")
            process.join()
            outcomes.append(tuple(outcome))
        return result, outcomes
    finally:
        for process, receive in children:
            receive.close()
            if process.is_alive():
                process.terminate()
                process.join()


def _deal(vps: list[int], sizes: dict[int, int], workers: int) -> list[list[int]]:
    """Partitions into at most `workers` shares of about equal size (largest first, each to the
    smallest share so far)."""
    shares: list[list[int]] = [[] for _ in range(min(workers, len(vps)))]
    loads = [0] * len(shares)
    for vp in sorted(vps, key=lambda v: (-sizes[v], v)):
        i = loads.index(min(loads))
        shares[i].append(vp)
        loads[i] += sizes[vp]
    return [sorted(share) for share in shares]


def _replay_partitions(
    layout: Any,
    store: ProjectionStore,
    vps: list[int],
    ends: dict[int, int],
    consumer: str,
    batch_size: int | None,
) -> tuple[int, int]:
    from coordinator.eventlog.kafka_replay import KafkaReplay
    from projections.views import default_views

    if not vps:
        return 0, 0
    if batch_size is None:
        batch_size = 10_000 if isinstance(store, PipelinedStore) else 5_000
    views = default_views()
    check_views(views)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as in rebuild()
    try:
        with KafkaReplay(layout, partitions=vps, ends=ends) as replay:
            return _replay(replay.batches(batch_size), store, views, consumer)
    finally:
        if gc_was_enabled:
            gc.enable()


_LOGGERS = ("", "cassandra", "kafka", "consumers", "coordinator", "projections")


def _log_levels() -> dict[str, int]:
    """This process's effective log levels, for a spawned worker to log like it."""
    return {name: logging.getLogger(name).getEffectiveLevel() for name in _LOGGERS}


def _kafka_worker(
    log_url: str,
    store_url: str,
    vps: list[int],
    ends: dict[int, int],
    consumer: str,
    batch_size: int | None,
    levels: dict[str, int],
    reply: Any,
) -> None:
    """A worker process of `rebuild_from_kafka`: replays `vps` into the store (already cleared)
    and sends ("ok", events, failures) or ("error", message)."""
    from coordinator.eventlog.kafka_layout import KafkaLayout
    from projections.factory import open_store

    logging.basicConfig(level=levels.get("", logging.WARNING))
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    outcome: tuple[Any, ...]
    try:
        store = open_store(store_url)
        try:
            total, failures = _replay_partitions(
                KafkaLayout.from_url(log_url), store, vps, ends, consumer, batch_size
            )
        finally:
            store.close()
    except BaseException as exc:
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    else:
        outcome = ("ok", total, failures)
    reply.send(outcome)
    reply.close()
