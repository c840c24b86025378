from __future__ import annotations

import sys
from pathlib import Path

import pytest

from coordinator.errors import InvalidArgument
from projections.base import ProjectionStore, Put
from projections.factory import open_store
from projections.memory import MemoryStore

# The repo root must be importable for `tests.contracts` (until pytest's `pythonpath = ["."]` is set).
if str(Path(__file__).resolve().parents[2]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.contracts.store_contract import StoreContract


class TestMemoryStore(StoreContract):
    def make_store(self) -> ProjectionStore:
        return open_store("memory://")


def test_factory_opens_memory_store() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    assert store.url == "memory://"


@pytest.mark.parametrize("url", ["postgres://x/y", "projections.db", ""])
def test_factory_refuses_unknown_schemes(url: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        open_store(url)
    assert info.value.field == "store"
    assert "memory://" in info.value.message and "sqlite" in info.value.message
    assert "cassandra://" in info.value.message


def test_memory_store_keeps_json_semantics() -> None:
    store = MemoryStore()
    store.commit("x", [Put("c", "p", "s", {"t": (1, 2), "n": None})], {0: 1})
    assert store.get("c", "p", "s") == {"t": [1, 2], "n": None}  # as after a SQLite round trip
