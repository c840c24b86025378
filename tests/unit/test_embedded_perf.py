"""Performance changes of the embedded backend that must not change behaviour: the SQLite store's
split commit (rebuild pipelining), the runner's linger that a waiter cuts short, and the
arithmetic event-id and timestamp encoders."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from consumers.rebuild import PipelinedStore, rebuild
from consumers.runner import ProjectionRunner
from coordinator.eventlog import codec
from coordinator.eventlog.memory import MemoryEventLog
from projections.base import Delete, Doc, Put
from projections.memory import MemoryStore
from projections.sqlite import SqliteStore
from tests.unit.test_runner import Workload


def test_the_sqlite_store_pipelines_its_rebuild_and_equals_the_memory_rebuild(tmp_path: Path) -> None:
    log = MemoryEventLog()
    work = Workload(log, seed=11)
    work.project()
    work.run(80)
    sqlite = SqliteStore(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        assert isinstance(sqlite, PipelinedStore)
        memory = MemoryStore()
        expected = rebuild(log, memory, batch_size=17).checksum
        for batch_size in (None, 17, 1):  # default (pipelined, 10,000), many small commits, one event each
            result = rebuild(log, sqlite, batch_size=batch_size)
            assert result.checksum == expected == sqlite.checksum()
            assert sqlite.checkpoint("embedded") == log.head()
    finally:
        sqlite.close()


def test_a_prepared_commit_keeps_no_reference_to_the_documents(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        doc: Doc = {"n": 1, "tags": ["a"]}
        prepared = store.prepare_commit(
            [
                Put("c", "p", "b", doc),
                Put("c", "p", "a", {"x": 0}),
                Delete("c", "p", "a"),
                Put("c", "q", "", doc),
            ]
        )
        doc["n"] = 2
        doc["tags"].append("b")  # edited after prepare: not what gets written
        store.commit_prepared("embedded", prepared, {0: 4}, bulk=True)
        assert store.get("c", "p", "b") == {"n": 1, "tags": ["a"]}
        assert store.get("c", "q") == {"n": 1, "tags": ["a"]}
        assert store.get("c", "p", "a") is None  # the last change of a key wins
        assert store.checkpoint("embedded") == {0: 4}
        # a failing commit writes nothing, not even its checkpoint
        bad = store.prepare_commit([Put("c", "p", "z", {"v": 1})])
        with pytest.raises(sqlite3.ProgrammingError):  # a row with the wrong number of columns
            # deliberately malformed: a 1-column key where (collection, pk, sk) is expected
            store.commit_prepared("embedded", bad._replace(deletes=[("c",)]), {0: 9})  # type: ignore[list-item]
        assert store.get("c", "p", "z") is None and store.checkpoint("embedded") == {0: 4}
        store.commit("embedded", [Put("c", "p", "z", {"v": 1})], {0: 5})  # and the store still works
        assert store.get("c", "p", "z") == {"v": 1}
    finally:
        store.close()


def test_a_waiter_cuts_the_runner_linger_short() -> None:
    log = MemoryEventLog()
    runner = ProjectionRunner(log, MemoryStore(), linger=30.0)  # absurdly long: only a waiter ends it
    runner.start()
    try:
        work = Workload(log, seed=5)
        work.project()
        assert runner.wait_for(log.head(), timeout=5)
        for i in range(5):
            work.run(1)  # appended while the loop lingers after its last (partial) batch
            t0 = time.monotonic()
            assert runner.wait_for(log.head(), timeout=10), i
            assert time.monotonic() - t0 < 5.0
        # unobserved appends are still applied (after the linger), and stop() does not wait it out
        t0 = time.monotonic()
        runner.stop(timeout=10)
        assert not runner.running and time.monotonic() - t0 < 5.0
    finally:
        runner.stop()


def test_concurrent_waiters_all_wake() -> None:
    log = MemoryEventLog()
    runner = ProjectionRunner(log, MemoryStore(), linger=30.0)
    runner.start()
    try:
        work = Workload(log, seed=6)
        work.project()
        results: list[bool] = []
        lock = threading.Lock()

        def waiter(target: dict[int, int]) -> None:
            ok = runner.wait_for(target, timeout=10)
            with lock:
                results.append(ok)

        threads = []
        for _ in range(4):
            work.run(1)
            t = threading.Thread(target=waiter, args=(log.head(),))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(15)
        assert results == [True] * 4
    finally:
        runner.stop()


def test_uuid7_is_a_monotonic_version_7_uuid() -> None:
    ids = [codec.uuid7() for _ in range(3000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for value in ids[:200]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_timestamp_equals_protobuf_from_datetime() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        dt = datetime(1950, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(10**17))
        if rng.random() < 0.5:
            dt = dt.astimezone(timezone(timedelta(minutes=30 * rng.randint(-24, 24))))
        expected = Timestamp()
        expected.FromDatetime(dt.astimezone(UTC))
        assert codec.timestamp(dt) == expected
        assert codec.from_timestamp(codec.timestamp(dt)) == dt


def _rows(store: SqliteStore) -> list[tuple[str, str, str, object]]:
    return [(c, p, s, v) for c, p, s, v in store.items()]


def test_a_big_bulk_commit_is_one_statement_and_writes_what_executemany_writes(tmp_path: Path) -> None:
    from projections.sqlite import JSON_INSERT_MIN_ROWS

    n = JSON_INSERT_MIN_ROWS + 5
    changes = [
        Put("c", f"p{i % 7}", f"s{i:04d}", {"i": i, "name": 'Zoë 東京 "q" \\ \n', "f": i / 3})
        for i in range(n)
    ] + [Put("d", "p", "", {"nested": [{"a": None}, [], {}]})]
    one = SqliteStore(f"sqlite:///{tmp_path / 'one.db'}")
    many = SqliteStore(f"sqlite:///{tmp_path / 'many.db'}")
    statements: list[str] = []
    one._writer.set_trace_callback(statements.append)
    try:
        one.commit_prepared("embedded", one.prepare_commit(changes), {0: 1}, bulk=True)
        many.commit("embedded", changes, {0: 1})  # not bulk: executemany
        inserts = [s for s in statements if s.startswith("INSERT OR REPLACE INTO docs")]
        assert len(inserts) == 1 and "json_each" in inserts[0]
        assert _rows(one) == _rows(many) and len(_rows(one)) == n + 1
        assert one.checksum() == many.checksum()
    finally:
        one.close()
        many.close()


def test_a_bulk_load_store_skips_the_wal_and_turns_to_wal_when_opened_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scratch.db'}"
    bulk = SqliteStore(url, bulk=True)
    try:
        assert bulk._writer.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
        assert bulk._writer.execute("PRAGMA page_size").fetchone()[0] == 16384
        assert bulk._writer.execute("PRAGMA synchronous").fetchone()[0] == 0
        bulk.commit_prepared(
            "embedded", bulk.prepare_commit([Put("c", "p", "", {"v": 1})]), {0: 7}, bulk=True
        )
    finally:
        bulk.close()  # fsyncs the file
    assert not (tmp_path / "scratch.db-wal").exists()
    again = SqliteStore(url)
    try:
        assert again._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert again.get("c", "p") == {"v": 1}
        assert again.checkpoint("embedded") == {0: 7}
    finally:
        again.close()
    # a file already in WAL mode (say, a live store) stays in WAL mode when opened for bulk
    live = SqliteStore(url, bulk=True)
    try:
        assert live._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert live._writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL, as live
        assert live.get("c", "p") == {"v": 1}
    finally:
        live.close()
