"""The rebuild's pipeline (a store's commit written in the background while the next batch is
applied) and its dropping of deletes of documents that do not exist, against a memory store that
checks every read for a stale value."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

import consumers.rebuild as rebuild_module
from consumers.rebuild import PipelinedStore, rebuild
from consumers.runner import DocCache, ProjectionRunner
from coordinator.eventlog.base import Checkpoint
from coordinator.eventlog.memory import MemoryEventLog
from projections.base import Change, Delete, Doc, Put, View
from projections.memory import MemoryStore
from projections.views import default_views
from tests.unit.test_runner import Exploding, Workload, metric_totals

Frozen = list[tuple[str, str, str, str | None]]


class SlowPipelinedStore(MemoryStore):
    """A `PipelinedStore` whose writes take a while and which records reads of documents that a
    write in flight is about to change (stale reads), commits out of order, and no-op deletes."""

    def __init__(self, delay: float = 0.003) -> None:
        super().__init__()
        self.delay = delay
        self.bulk_commits = 0
        self.stale_reads: list[tuple[str, str, str]] = []
        self.noop_deletes: list[tuple[str, str, str]] = []
        self.offsets: list[int] = []
        self.overlapped = 0  # batches prepared while a write was in flight
        self._lock2 = threading.Lock()
        self._writing: set[tuple[str, str, str]] = set()

    def get(self, collection: str, pk: str, sk: str = "") -> Doc | None:
        with self._lock2:
            if (collection, pk, sk) in self._writing:
                self.stale_reads.append((collection, pk, sk))
        return super().get(collection, pk, sk)

    def prepare_commit(self, changes: Sequence[Change]) -> Frozen:
        with self._lock2:
            self.overlapped += bool(self._writing)
        return [
            (c.collection, c.pk, c.sk, json.dumps(c.value) if isinstance(c, Put) else None) for c in changes
        ]

    def commit_prepared(
        self, consumer: str, prepared: Frozen, checkpoint: Checkpoint, *, bulk: bool = False
    ) -> None:
        with self._lock2:
            self._writing = {(c, p, s) for c, p, s, _ in prepared}
        try:
            time.sleep(self.delay)  # the next batch's views run meanwhile
            changes: list[Change] = []
            for c, p, s, text in prepared:
                if text is None:
                    if super().get(c, p, s) is None:
                        self.noop_deletes.append((c, p, s))
                    changes.append(Delete(c, p, s))
                else:
                    changes.append(Put(c, p, s, json.loads(text)))
            self.commit(consumer, changes, checkpoint)
            self.bulk_commits += bulk
            self.offsets.append(max(checkpoint.values(), default=0))
        finally:
            with self._lock2:
                self._writing = set()


def live_checksum(log: MemoryEventLog, views: list[View] | None = None) -> str:
    """What the embedded runner (no rebuild code involved) projects from `log`."""
    store = MemoryStore()
    ProjectionRunner(log, store, views, batch_size=13).catch_up()
    return store.checksum()


def history(seed: int, tasks: int) -> tuple[MemoryEventLog, Workload]:
    log = MemoryEventLog()
    work = Workload(log, seed=seed)
    work.project()
    work.run(tasks)
    return log, work


def test_the_store_is_recognised_as_pipelined() -> None:
    assert isinstance(SlowPipelinedStore(), PipelinedStore)
    assert not isinstance(MemoryStore(), PipelinedStore)


def test_pipelined_rebuild_equals_a_plain_one_and_never_reads_stale_documents() -> None:
    log, work = history(seed=11, tasks=60)
    store = SlowPipelinedStore()
    result = rebuild(log, store, batch_size=9)
    assert result.checksum == live_checksum(log)
    assert result.events == work.events
    assert result.checkpoint == log.head()
    assert store.bulk_commits == len(store.offsets) > 10
    assert store.offsets == sorted(store.offsets)  # one at a time, in log order
    assert store.stale_reads == []
    assert store.noop_deletes == []
    assert metric_totals(store) == work.counts


def test_deletes_of_documents_that_do_not_exist_are_not_written() -> None:
    log, _ = history(seed=12, tasks=40)
    written: list[Change] = []

    class Recording(MemoryStore):
        def commit(self, consumer: str, changes: Sequence[Change], checkpoint: Checkpoint) -> None:
            for ch in changes:
                if isinstance(ch, Delete):
                    assert self.get(ch.collection, ch.pk, ch.sk) is not None, ch
            written.extend(changes)
            super().commit(consumer, changes, checkpoint)

    store = Recording()
    assert rebuild(log, store, batch_size=1000).checksum == live_checksum(log)
    assert written  # and every delete that was written removed an existing row (checked above)


def test_evictions_and_view_failures_wait_for_the_write_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    log, work = history(seed=13, tasks=50)
    expected = live_checksum(log, [*default_views(), Exploding(7)])
    monkeypatch.setattr(rebuild_module, "CACHE_CAPACITY", 40)  # evicts nearly every batch
    store = SlowPipelinedStore()
    result = rebuild(log, store, [*default_views(), Exploding(7)], batch_size=5)
    assert result.checksum == expected
    assert store.stale_reads == []
    assert metric_totals(store) == work.counts


def test_a_full_cache_waits_for_the_write_only_before_reading_an_evicted_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Evicting does not drain the pipeline (it did at every batch once the cache was full); a
    read of an evicted document still waits for the write in flight (no stale read)."""
    log = MemoryEventLog()
    work = Workload(log, seed=15)
    work.project()
    for i in range(300):
        work.append(f"task:t{i:05d}", *next(work.task_script(i)))
    monkeypatch.setattr(rebuild_module, "CACHE_CAPACITY", 300)  # a batch writes ~120 documents
    waits: list[str] = []
    real_wait = rebuild_module._Writer.wait

    def wait(writer: Any) -> None:
        waits.append(sys._getframe(1).f_code.co_name)
        real_wait(writer)

    monkeypatch.setattr(rebuild_module._Writer, "wait", wait)
    evictions = 0
    real_evict = DocCache._evict

    def evict(cache: DocCache, recent: Any) -> None:
        nonlocal evictions
        evictions += 1
        real_evict(cache, recent)

    monkeypatch.setattr(DocCache, "_evict", evict)
    store = SlowPipelinedStore(delay=0.002)
    result = rebuild(log, store, batch_size=10)
    assert result.checksum == live_checksum(log)
    assert store.stale_reads == []
    assert evictions > 5
    assert set(waits) <= {"commit", "commit_pending", "before_read", "_replay"}, set(waits)
    assert waits.count("before_read") < len(store.offsets)


def test_a_failed_write_fails_the_rebuild() -> None:
    log, _ = history(seed=14, tasks=20)

    class Failing(SlowPipelinedStore):
        def commit_prepared(
            self, consumer: str, prepared: Frozen, checkpoint: Checkpoint, *, bulk: bool = False
        ) -> None:
            if self.offsets:
                raise RuntimeError("disk full")
            super().commit_prepared(consumer, prepared, checkpoint, bulk=bulk)

    with pytest.raises(RuntimeError, match="disk full"):
        rebuild(log, Failing(), batch_size=10)
