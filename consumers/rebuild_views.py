"""Rebuild an embedded (SQLite) store on several cores by splitting the *views*, not the log.

The embedded log is one partition, so `rebuild_from_kafka`'s split by partition does not apply.
The views split instead: every view owns its collections (`check_views`) and reads only them, so
a process that applies a group of views over the whole log has a complete document cache for
everything it reads and writes, and no other process writes those rows. Each group is replayed by
its own process (the first by this one) up to the same head, fixed here before anything starts,
into the same SQLite store: SQLite serialises the writers (one `BEGIN IMMEDIATE` at a time, with
a busy timeout), while applying the views, the larger half of the cost, runs in parallel.

Groups are balanced by each view's measured cost per event (`VIEW_COST_US`, from the profile in
docs/benchmarks.md; unknown views count 1 µs). Every process commits the consumer's checkpoint
with its batches; all reach the same head, so the result has one checkpoint, equal to a
one-process rebuild's. A failing worker fails the rebuild (it is run again from scratch, into a
scratch file: `Application.rebuild` replaces the live store only afterwards).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from consumers.rebuild import RebuildResult, _log_levels, _read_log, _replay, fan_out, split_result
from consumers.runner import check_views
from coordinator.errors import InvalidArgument
from coordinator.eventlog.base import EventLog, RecordedEvent
from projections.base import View

VIEW_COST_US: Mapping[str, float] = {
    "throughput": 9.3,
    "tasks": 6.8,
    "queue": 5.7,
    "review": 2.8,
    "metrics": 1.8,
    "manager": 1.5,
    "history": 1.1,
    "agreement": 1.1,
}
"""CPU per event of each view (µs, measured as all views minus this one, MemoryStore; the others
under 0.8): what a group costs; writes scale alike."""
MIN_EVENTS_PER_WORKER = 10_000
"""Below this many events per process a second process costs more (spawn, imports) than it saves."""


def split_views(views: Sequence[View], groups: int) -> list[list[View]]:
    """`views` in at most `groups` groups of about equal cost (largest first, each to the cheapest
    group so far); every group non-empty, in `views` order within a group."""
    if groups < 1:
        raise InvalidArgument(f"groups must be >= 1, got {groups}", field="workers")
    order = {v.name: i for i, v in enumerate(views)}
    out: list[list[View]] = [[] for _ in range(min(groups, len(views)))]
    loads = [0.0] * len(out)
    for view in sorted(views, key=lambda v: (-VIEW_COST_US.get(v.name, 1.0), order[v.name])):
        i = loads.index(min(loads))
        out[i].append(view)
        loads[i] += VIEW_COST_US.get(view.name, 1.0)
    return [sorted(group, key=lambda v: order[v.name]) for group in out]


def _upto(log: EventLog, head: Mapping[int, int], batch_size: int) -> Iterator[list[RecordedEvent]]:
    """The log up to `head` (fixed by the parent, so every process replays the same events)."""
    for batch in _read_log(log, batch_size):
        events = [ev for ev in batch if ev.position.offset <= head.get(ev.position.partition, 0)]
        if events:
            yield events


def _replay_group(
    log_url: str,
    store_url: str,
    names: Sequence[str],
    head: Mapping[int, int],
    consumer: str,
    batch_size: int,
) -> tuple[int, int]:
    from coordinator.eventlog.factory import open_event_log
    from projections.factory import open_store
    from projections.views import default_views

    views = [v for v in default_views() if v.name in set(names)]
    log = open_event_log(log_url)
    store = open_store(store_url)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as in rebuild(): millions of short-lived acyclic dicts
    try:
        return _replay(_upto(log, head, batch_size), store, views, consumer)
    finally:
        if gc_was_enabled:
            gc.enable()
        store.close()
        log.close()


def _worker(
    log_url: str,
    store_url: str,
    names: list[str],
    head: dict[int, int],
    consumer: str,
    batch_size: int,
    levels: dict[str, int],
    reply: Any,
) -> None:
    logging.basicConfig(level=levels.get("", logging.WARNING))
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    outcome: tuple[Any, ...]
    try:
        total, failures = _replay_group(log_url, store_url, names, head, consumer, batch_size)
        outcome = ("ok", total, failures)
    except BaseException as exc:  # reported to the parent, which fails the rebuild
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    reply.send(outcome)
    reply.close()


def rebuild_by_views(
    log_url: str,
    store_url: str,
    *,
    workers: int = 2,
    consumer: str = "embedded",
    batch_size: int = 10_000,
    checksum: bool = True,
    min_events_per_worker: int = MIN_EVENTS_PER_WORKER,
) -> RebuildResult:
    """Clear the store at `store_url` and rebuild it from the log at `log_url` with the default
    views split over up to `workers` processes (fewer for small logs: one per
    `min_events_per_worker` events)."""
    from coordinator.eventlog.factory import open_event_log
    from projections.factory import open_store
    from projections.views import default_views

    if workers < 1:
        raise InvalidArgument(f"workers must be >= 1, got {workers}", field="workers")
    views = default_views()
    check_views(views)
    log = open_event_log(log_url)
    store = open_store(store_url)
    try:
        t0 = time.perf_counter()
        head = {p: o for p, o in log.head().items() if o > 0}
        processes = max(1, min(workers, sum(head.values()) // max(min_events_per_worker, 1)))
        groups = [[v.name for v in group] for group in split_views(views, processes)]
        store.clear()
        levels = _log_levels()
        (total, failures), outcomes = fan_out(
            _worker,
            [
                (f"rebuild-views-{names[0]}", (log_url, store_url, names, head, consumer, batch_size, levels))
                for names in groups[1:]
            ],
            lambda: _replay_group(log_url, store_url, groups[0], head, consumer, batch_size),
        )
        errors: list[str] = []
        for names, outcome in zip(groups[1:], outcomes, strict=True):
            if outcome[0] != "ok":
                errors.append(f"views {names}: {outcome[1]}")
                continue
            failures += outcome[2]
            if outcome[1] != total:
                errors.append(f"views {names}: replayed {outcome[1]} events, not {total}")
        return split_result(store, consumer, t0, total, failures, errors, len(groups), checksum)
    finally:
        store.close()
        log.close()
