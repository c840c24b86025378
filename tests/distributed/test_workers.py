"""faust workers against a real Kafka broker: the projections equal a rebuild, whatever happens.

Events are produced straight to the event topics (as the Kafka event log lays them out), so
these tests prove the worker alone; the store is an SQLite file shared with the worker process
(the Cassandra store passes the same store contract; the end-to-end test runs on Cassandra).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.eventlog import codec
from coordinator.eventlog.base import RecordedEvent
from coordinator.eventlog.kafka import ensure_topics
from coordinator.eventlog.kafka_layout import KafkaLayout
from projections.base import StagedTx
from projections.factory import open_store
from projections.memory import MemoryStore
from projections.views import default_views
from tests.backends.kafka_util import BOOTSTRAP, kafka_broker  # noqa: F401 - fixture
from tests.e2e.conftest import free_port
from tests.unit.test_views import Script

pytestmark = pytest.mark.usefixtures("kafka_broker")

ROOT = Path(__file__).resolve().parents[2]


def history(tasks: int, start: int = 0) -> list[RecordedEvent]:
    s = Script()
    for i in range(start, start + tasks):
        s.imported(f"t{i}", priority=i % 3)
    for i in range(start, start + tasks, 2):
        person = ("alice", "bob", "carol")[i % 3]
        s.lease(f"t{i}", f"l{i}", person)
        s.submit(f"t{i}", f"l{i}", person, f"a{i}", x=float(i))
    return s.events


class Cluster:
    """A fresh topic prefix, a producer, and worker processes writing one SQLite store."""

    def __init__(self, tmp: Path) -> None:
        prefix = f"lwtest-{uuid.uuid4().hex[:10]}"
        self.url = (
            f"kafka://{BOOTSTRAP}/?prefix={prefix}&task_partitions=4&project_partitions=1"
            "&workforce_partitions=1&reply_partitions=1"
        )
        self.layout = KafkaLayout.from_url(self.url)
        ensure_topics(self.layout, create=True, client_id=prefix)
        self.store_url = f"sqlite:///{tmp / 'projections.db'}"
        self.tmp = tmp
        self.workers: list[subprocess.Popen[bytes]] = []
        from kafka import KafkaProducer  # type: ignore[import-untyped]

        self.producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
        self.produced: list[tuple[str, int, int, bytes, bytes]] = []  # topic, partition, offset, key, value

    def produce(self, events: list[RecordedEvent]) -> None:
        futures = []
        for ev in events:
            vp, key = self.layout.stream_partition(ev.stream_id)
            topic, partition = self.layout.topic_partition(vp)
            futures.append(
                (
                    topic,
                    partition,
                    key,
                    ev.data,
                    self.producer.send(topic, key=key, value=ev.data, partition=partition),
                )
            )
        self.producer.flush()
        for topic, partition, key, value, fut in futures:
            meta = fut.get(timeout=30)
            self.produced.append((topic, partition, meta.offset, key, value))

    def produce_raw(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        meta = self.producer.send(topic, key=key, value=value, partition=partition).get(timeout=30)
        self.produced.append((topic, partition, meta.offset, key, value))

    def start_worker(self, metrics_port: int = 0) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            LABELWEAVE_EVENT_LOG=self.url,
            LABELWEAVE_STORE=self.store_url,
            LABELWEAVE_WORKER_METRICS_PORT=str(metrics_port),
            LABELWEAVE_WORKER_DATA_DIR=str(self.tmp / f"worker-{len(self.workers)}"),
            PYTHONPATH=str(ROOT),
        )
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumers.app"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        self.workers.append(proc)
        return proc

    def expected_checkpoint(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for topic, partition, offset, _, _ in self.produced:
            pos = self.layout.position(topic, partition, offset)
            out[pos.partition] = max(out.get(pos.partition, 0), pos.offset)
        return out

    def expected_checksum(self, skip_values: set[bytes] = frozenset()) -> str:  # type: ignore[assignment]
        """An embedded rebuild of the same records, in each partition's order."""
        store = MemoryStore()
        tx = StagedTx(store)
        for topic, partition, offset, _, value in sorted(self.produced, key=lambda r: (r[0], r[1], r[2])):
            if value in skip_values:
                continue
            ev = RecordedEvent(self.layout.position(topic, partition, offset), codec.decode(value), value)
            for view in default_views():
                view.apply(ev, tx)
        store.commit("rebuild", tx.changes(), {})
        return store.checksum()

    def wait_applied(self, timeout: float = 90.0) -> None:
        want = self.expected_checkpoint()
        store = open_store(self.store_url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                have = store.checkpoint("projections")
                if all(have.get(p, 0) >= o for p, o in want.items()):
                    return
                time.sleep(0.2)
            raise AssertionError(
                f"workers did not apply {want} in {timeout}s (have {have}); see {self.tmp}/*.log"
            )
        finally:
            store.close()

    def checksum(self) -> str:
        store = open_store(self.store_url)
        try:
            return store.checksum()
        finally:
            store.close()

    def dead_letters(self, expected: int, timeout: float = 30.0) -> list[dict[str, str]]:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            self.layout.dlq_topic,
            bootstrap_servers=BOOTSTRAP,
            auto_offset_reset="earliest",
            consumer_timeout_ms=1000,
        )
        out: list[dict[str, str]] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < expected and time.monotonic() < deadline:
                for rec in consumer:
                    out.append({k: v.decode() for k, v in rec.headers})
        finally:
            consumer.close()
        return out

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.producer.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def test_two_workers_build_the_rebuild_checksum_and_report_metrics(cluster: Cluster) -> None:
    cluster.produce(history(40))
    port = free_port()
    cluster.start_worker(metrics_port=port)
    cluster.start_worker()
    cluster.produce(history(40, start=40))  # while they join and rebalance
    cluster.wait_applied()
    assert cluster.checksum() == cluster.expected_checksum()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in (
        "labelweave_worker_events_applied_total",
        "labelweave_worker_rebalances_total",
        "labelweave_worker_store_commit_seconds",
        "labelweave_worker_consumer_lag_records",
        "labelweave_worker_dead_letters_total",
    ):
        assert name in text, name


def test_sigkill_mid_stream_then_restart_converges_without_repeats(cluster: Cluster) -> None:
    cluster.produce(history(1500))
    victim = cluster.start_worker()
    want = sum(cluster.expected_checkpoint().values())
    store = open_store(cluster.store_url)
    try:
        deadline = time.monotonic() + 60
        while sum(store.checkpoint("projections").values()) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)  # mid-stream: some batches committed, others not
        victim.wait()
        at_kill = sum(store.checkpoint("projections").values())
    finally:
        store.close()
    assert 0 < at_kill < want, (at_kill, want)
    cluster.produce(history(30, start=1500))
    cluster.start_worker()
    cluster.wait_applied()
    assert cluster.checksum() == cluster.expected_checksum()


def test_a_malformed_event_goes_to_the_dead_letter_topic_and_nothing_else_stops(cluster: Cluster) -> None:
    cluster.start_worker()
    cluster.produce(history(10))
    garbage = b"\x08\x96\x01this is not an envelope\xff"
    topic, partition = cluster.layout.topic_partition(0)
    cluster.produce_raw(topic, partition, b"t-bad", garbage)
    cluster.produce(history(10, start=10))
    cluster.wait_applied()
    assert cluster.checksum() == cluster.expected_checksum(skip_values={garbage})
    (letter,) = cluster.dead_letters(1)
    assert letter["labelweave-reason"] == "decode"
    assert letter["labelweave-topic"] == topic and letter["labelweave-partition"] == str(partition)
    assert "labelweave-error" in letter and letter["labelweave-offset"].isdigit()
