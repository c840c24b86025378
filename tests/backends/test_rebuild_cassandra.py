"""The rebuild into a real Cassandra node (ops/services.sh start; no mocks): pipelined bulk
commits give the same rows as the embedded runner, and a bulk commit that never finished makes
the store refuse to resume (the projections must be rebuilt) until it is cleared."""

from __future__ import annotations

import pytest
from cassandra import OperationTimedOut  # type: ignore[import-untyped]

from consumers.rebuild import PipelinedStore, rebuild
from consumers.runner import ProjectionRunner
from coordinator.errors import FailedPrecondition, Unavailable
from coordinator.eventlog.memory import MemoryEventLog
from projections.base import Put
from projections.cassandra import CassandraStore
from projections.factory import open_store
from projections.memory import MemoryStore
from projections.migrate import migrate
from tests.backends.cassandra_util import (  # noqa: F401 - the fixtures register by being imported
    Admin,
    cassandra_admin_fixture,
    cassandra_hosts_fixture,
    store_url,
)
from tests.unit.test_runner import Workload, metric_totals


@pytest.fixture(scope="module")
def keyspace(cassandra_admin: Admin) -> str:
    name = cassandra_admin.new_keyspace("rebuild")
    migrate(store_url(cassandra_admin.hosts, name), out=lambda _: None)
    return name


def _open(admin: Admin, ks: str) -> CassandraStore:
    store = open_store(store_url(admin.hosts, ks))
    assert isinstance(store, CassandraStore)
    return store


def test_a_pipelined_rebuild_into_cassandra_equals_the_embedded_runner(
    cassandra_admin: Admin, keyspace: str
) -> None:
    log = MemoryEventLog()
    work = Workload(log, seed=21)
    work.project()
    work.run(80)
    live = MemoryStore()
    ProjectionRunner(log, live, batch_size=17).catch_up()
    store = _open(cassandra_admin, keyspace)
    try:
        assert isinstance(store, PipelinedStore)
        store.commit("embedded", [Put("stale", "row", "", {"x": 1})], {0: 999})  # cleared first
        result = rebuild(log, store, batch_size=50)
        assert result.events == work.events
        assert result.checksum == live.checksum()
        assert result.checkpoint == log.head()
        assert metric_totals(store) == work.counts
        states = {s for (s,) in cassandra_admin.execute(f"SELECT state FROM {keyspace}.commit_intents")}
        assert states == {"done"}
        assert list(cassandra_admin.execute(f"SELECT writer FROM {keyspace}.commit_chunks")) == []  # no redo
    finally:
        store.close()


def test_an_unfinished_bulk_commit_makes_the_store_refuse_to_resume(
    cassandra_admin: Admin, keyspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _open(cassandra_admin, keyspace)
    try:
        store.clear()
        store.commit_prepared(
            "embedded", store.prepare_commit([Put("c", "p", "a", {"v": 1})]), {0: 1}, bulk=True
        )
        assert store.checkpoint("embedded") == {0: 1}

        def lost(*_: object, **__: object) -> None:
            raise OperationTimedOut("the rows did not all land")

        monkeypatch.setattr(store, "_apply", lost)
        with pytest.raises(Unavailable):
            store.commit_prepared(
                "embedded", store.prepare_commit([Put("c", "p", "b", {"v": 2})]), {0: 2}, bulk=True
            )
        monkeypatch.undo()
        with pytest.raises(FailedPrecondition, match="must be rebuilt"):
            store.checkpoint("embedded")  # this process
    finally:
        store.close()
    other = _open(cassandra_admin, keyspace)
    try:
        with pytest.raises(FailedPrecondition, match="must be rebuilt"):
            other.checkpoint("embedded")  # any process, e.g. a runner restarting on this keyspace
        assert other.checkpoint("someone-else") == {}
        other.clear()  # what the rebuild that must follow does first
        assert other.checkpoint("embedded") == {}
    finally:
        other.close()
