"""The rebuild into a real Cassandra node (ops/services.sh start; no mocks): pipelined bulk
commits give the same rows as the embedded runner, a bulk commit that never finished makes
the store refuse to resume (the projections must be rebuilt) until it is cleared, and a rebuild
from the Kafka topics read directly, in one or several processes, equals one through the log."""

from __future__ import annotations

import pytest
from cassandra import OperationTimedOut  # type: ignore[import-untyped]

import consumers.rebuild as rebuild_module
from consumers.rebuild import PipelinedStore, _deal, rebuild, rebuild_from_kafka
from consumers.runner import ProjectionRunner
from coordinator.errors import FailedPrecondition, InvalidArgument, Unavailable
from coordinator.eventlog.kafka import KafkaEventLog
from coordinator.eventlog.kafka_replay import KafkaReplay
from coordinator.eventlog.memory import MemoryEventLog
from projections.base import Put
from projections.cassandra import CassandraStore
from projections.factory import open_store
from projections.memory import MemoryStore
from projections.migrate import migrate
from tests.backends import kafka_util
from tests.backends.cassandra_util import (  # noqa: F401 - the fixtures register by being imported
    Admin,
    cassandra_admin_fixture,
    cassandra_hosts_fixture,
    store_url,
)
from tests.backends.kafka_util import kafka_url, new_prefix
from tests.unit.test_runner import Workload, metric_totals

kafka_broker = kafka_util.kafka_broker  # fixtures, used by name
prefixes = kafka_util.prefixes


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


def test_a_rebuild_from_the_kafka_topics_equals_one_through_the_log(
    cassandra_admin: Admin, kafka_broker: str, prefixes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = new_prefix()
    prefixes.append(prefix)
    url = kafka_url(prefix)
    log = KafkaEventLog.from_url(url)
    try:
        work = Workload(log, seed=5)
        work.project()
        work.run(25)
        through_log = rebuild(log, MemoryStore())
    finally:
        log.close()
    assert through_log.events == work.events
    with KafkaReplay.from_url(url) as replay:  # one process, the topics read directly
        direct = rebuild(replay, MemoryStore(), batch_size=7)
    assert (direct.events, direct.checksum, direct.checkpoint) == (
        through_log.events,
        through_log.checksum,
        through_log.checkpoint,
    )
    assert rebuild_from_kafka(url, "memory://", workers=3).processes == 1  # too small to split
    monkeypatch.setattr(rebuild_module, "SPLIT_MIN_EVENTS", 1)
    for workers in (1, 3):  # into Cassandra, in this process and in three (two spawned)
        ks = cassandra_admin.new_keyspace(f"kafka{workers}")
        target = store_url(cassandra_admin.hosts, ks)
        migrate(target, out=lambda _: None)
        store = _open(cassandra_admin, ks)
        try:
            store.commit("embedded", [Put("stale", "row", "", {"x": 1})], {0: 999})  # cleared first
        finally:
            store.close()
        result = rebuild_from_kafka(url, target, workers=workers, batch_size=11)
        assert (result.events, result.checksum, result.checkpoint, result.processes) == (
            through_log.events,
            through_log.checksum,
            through_log.checkpoint,
            workers,
        )
        store = _open(cassandra_admin, ks)
        try:
            assert metric_totals(store) == work.counts
        finally:
            store.close()


def test_a_kafka_rebuild_of_missing_topics_or_no_workers_is_refused(
    cassandra_admin: Admin, keyspace: str
) -> None:
    url = kafka_url(new_prefix())  # no such topics
    with pytest.raises(InvalidArgument, match="do not exist"):
        rebuild_from_kafka(url, store_url(cassandra_admin.hosts, keyspace), workers=2)
    with pytest.raises(InvalidArgument) as info:
        rebuild_from_kafka(url, store_url(cassandra_admin.hosts, keyspace), workers=0)
    assert info.value.field == "workers"


def test_partitions_are_dealt_by_size() -> None:
    sizes = {0: 100, 1: 90, 2: 10, 3: 5, 4: 0}
    assert _deal([0, 1, 2, 3], sizes, 2) == [[0, 3], [1, 2]]
    assert _deal([0, 1, 2, 3], sizes, 1) == [[0, 1, 2, 3]]
    assert _deal([0, 1], sizes, 5) == [[0], [1]]
    assert _deal([], sizes, 2) == []
