"""Rebuild an embedded (SQLite) store on several cores by splitting the *views*, not the log.

The embedded log is one partition, so `rebuild_from_kafka`'s split by partition does not apply.
The views split instead: every view owns its collections (`check_views`) and reads only them, so
a process that applies a group of views over the whole log has a complete document cache for
everything it reads and writes, and no other process writes those rows. Each group is replayed by
its own process (the first by this one) up to the same head, fixed here before anything starts,
into the same SQLite store: SQLite serialises the writers (one `BEGIN IMMEDIATE` at a time, with
a busy timeout), while applying the views, the larger half of the cost, runs in parallel. The
store is opened for a bulk load (`SqliteStore(bulk=True)`: no WAL, no fsync per commit, one at
the end), and each process writes inline: with every core replaying, a write thread would only
add switching.

Groups are balanced by each view's measured cost per event including its writes (`VIEW_COST_US`,
docs/benchmarks.md pass 4; unknown views count 1 µs), the spawned processes handicapped by their
start-up (`SPAWN_SECONDS`). Every process commits the consumer's checkpoint
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
from projections.base import ProjectionStore, View

VIEW_COST_US: Mapping[str, float] = {
    "tasks": 22.7,
    "throughput": 21.0,
    "queue": 15.0,
    "review": 8.6,
    "agreement": 5.3,
    "metrics": 5.3,
    "manager": 3.9,
    "history": 1.9,
}
"""CPU per event of each view including the writes of its rows (µs: a bulk rebuild of the view
alone minus one of no view, 20k-task bench log, docs/benchmarks.md pass 4; the others under
0.5, unknown views count 1): what a group costs. Rows dominate: `tasks` writes five per import."""
SPAWN_SECONDS = 0.15
"""How much later than this one a spawned process starts replaying (start-up and imports)."""
MIN_EVENTS_PER_WORKER = 4_000
"""Below this many events per process a second process costs more (spawn, imports) than it saves."""


def split_views(views: Sequence[View], groups: int, handicap_us: float = 0.0) -> list[list[View]]:
    """`views` in at most `groups` groups of about equal cost: largest first, each to the cheapest
    group so far, where every group but the first starts at `handicap_us` (the first is replayed
    by this process at once, the others by processes that start later). Every group is non-empty,
    in `views` order within a group."""
    if groups < 1:
        raise InvalidArgument(f"groups must be >= 1, got {groups}", field="workers")
    order = {v.name: i for i, v in enumerate(views)}
    n = min(groups, len(views))
    out: list[list[View]] = [[] for _ in range(n)]
    loads = [0.0] + [handicap_us] * (n - 1)
    ranked = sorted(views, key=lambda v: (-VIEW_COST_US.get(v.name, 1.0), order[v.name]))
    for k, view in enumerate(ranked):
        empty = [g for g in range(n) if not out[g]]
        i = empty[0] if len(empty) >= len(ranked) - k else loads.index(min(loads))
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
    alone: bool = False,
) -> tuple[int, int]:
    from coordinator.eventlog.factory import open_event_log
    from projections.views import default_views

    views = [v for v in default_views() if v.name in set(names)]
    log = open_event_log(log_url)
    store = _bulk_store(store_url)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as in rebuild(): millions of short-lived acyclic dicts
    try:
        # Alone, a write thread overlaps the views on the idle core; beside other processes
        # every core is busy and inline writes cost the least.
        return _replay(_upto(log, head, batch_size), store, views, consumer, background=alone)
    finally:
        if gc_was_enabled:
            gc.enable()
        store.close()
        log.close()


def _bulk_store(store_url: str) -> ProjectionStore:
    from projections.factory import open_store
    from projections.sqlite import SqliteStore

    return SqliteStore(store_url, bulk=True) if store_url.startswith("sqlite:") else open_store(store_url)


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
    from projections.views import default_views

    if workers < 1:
        raise InvalidArgument(f"workers must be >= 1, got {workers}", field="workers")
    views = default_views()
    check_views(views)
    log = open_event_log(log_url)
    store = _bulk_store(store_url)
    try:
        t0 = time.perf_counter()
        head = {p: o for p, o in log.head().items() if o > 0}
        processes = max(1, min(workers, sum(head.values()) // max(min_events_per_worker, 1)))
        events = max(sum(head.values()), 1)
        handicap = SPAWN_SECONDS / events * 1e6  # as µs per event, as the views' costs
        groups = [[v.name for v in group] for group in split_views(views, processes, handicap)]
        store.clear()
        levels = _log_levels()
        (total, failures), outcomes = fan_out(
            _worker,
            [
                (f"rebuild-views-{names[0]}", (log_url, store_url, names, head, consumer, batch_size, levels))
                for names in groups[1:]
            ],
            lambda: _replay_group(
                log_url, store_url, groups[0], head, consumer, batch_size, alone=len(groups) == 1
            ),
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
