from __future__ import annotations

import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from coordinator.errors import InvalidArgument
from projections.base import ProjectionStore, Put
from projections.factory import open_store
from projections.sqlite import SqliteStore, path_of

# The repo root must be importable for `tests.contracts` (until pytest's `pythonpath = ["."]` is set).
if str(Path(__file__).resolve().parents[2]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.contracts.store_contract import StoreContract


class TestSqliteStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def make_store(self) -> ProjectionStore:
        return open_store(f"sqlite:///{self.tmp_path / 'projections.db'}")


def test_factory_opens_sqlite_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'projections.db'}"
    store = open_store(url)
    try:
        assert isinstance(store, SqliteStore)
        assert store.url == url
        assert (tmp_path / "sub" / "projections.db").exists()
    finally:
        store.close()


def test_path_of_follows_the_sqlalchemy_convention() -> None:
    assert path_of("sqlite:///rel/p.db") == "rel/p.db"
    assert path_of("sqlite:////abs/p.db") == "/abs/p.db"
    with pytest.raises(InvalidArgument):
        path_of("sqlite:///")


def test_schema_wal_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "projections.db"
    store = SqliteStore(f"sqlite:///{path}")
    store.commit("embedded", [Put("task", "t1", "", {"status": "queued"})], {0: 41})
    store.close()

    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0]: r[1] for r in raw.execute("SELECT name, sql FROM sqlite_master WHERE type='table'")}
        assert "WITHOUT ROWID" in tables["docs"]
        assert "checkpoints" in tables
        assert raw.execute("SELECT collection, pk, sk, value FROM docs").fetchall() == [
            ("task", "t1", "", '{"status":"queued"}')
        ]
    finally:
        raw.close()

    again = SqliteStore(f"sqlite:///{path}")
    try:
        assert again.checkpoint("embedded") == {0: 41}
        assert again.get("task", "t1") == {"status": "queued"}
    finally:
        again.close()


def test_reads_from_many_threads_use_their_own_connections(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'p.db'}")
    store.commit("x", [Put("c", "p", f"{i:02d}", {"i": i}) for i in range(10)], {0: 1})
    seen: list[int] = []
    lock = threading.Lock()

    def read() -> None:
        got = len(store.scan("c", "p"))
        with lock:
            seen.append(got)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert seen == [10] * 8
