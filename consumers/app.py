"""faust-streaming workers: build the projections from the Kafka event log into the store.

Start any number of them; Kafka's consumer group spreads the event partitions over them and
rebalances when one joins or leaves:

    labelweave workers --event-log kafka://127.0.0.1:9092 --store cassandra://127.0.0.1:9042/labelweave
    # or, the faust way (configuration from the environment):
    LABELWEAVE_EVENT_LOG=kafka://… LABELWEAVE_STORE=cassandra://… faust -A consumers.app worker -l info

The agent is thin: it takes batches of raw records from the task, project and workforce topics
and hands them to a `PartitionProjector` (decode, the same pure views as the embedded runner,
one store commit with the checkpoint, dead letters), run in a thread so the event loop keeps
heartbeating while the store writes.

Prometheus (on `LABELWEAVE_WORKER_METRICS_PORT`, default 9465; 0 disables): records applied,
consumer lag per partition, rebalances, dead letters by reason, store commit latency.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from consumers.projector import DeadLetter, PartitionProjector, Record
from coordinator.eventlog.kafka_layout import KafkaLayout
from projections.base import ProjectionStore

logger = logging.getLogger(__name__)

DEFAULT_EVENT_LOG = "kafka://127.0.0.1:9092"
DEFAULT_STORE = "cassandra://127.0.0.1:9042/labelweave"
BATCH = 500
LINGER = 0.05


@dataclass
class WorkerSettings:
    event_log: str = DEFAULT_EVENT_LOG
    store: str = DEFAULT_STORE
    metrics_port: int = 9465
    metrics_host: str = "127.0.0.1"
    app_id: str = ""
    data_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        e = os.environ if env is None else env
        return cls(
            event_log=e.get("LABELWEAVE_EVENT_LOG", DEFAULT_EVENT_LOG),
            store=e.get("LABELWEAVE_STORE", DEFAULT_STORE),
            metrics_port=int(e.get("LABELWEAVE_WORKER_METRICS_PORT", "9465")),
            metrics_host=e.get("LABELWEAVE_WORKER_METRICS_HOST", "127.0.0.1"),
            app_id=e.get("LABELWEAVE_WORKER_APP_ID", ""),
            data_dir=e.get("LABELWEAVE_WORKER_DATA_DIR", ""),
        )


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.registry = r
        self.applied = Counter(
            "labelweave_worker_events_applied_total", "Events applied to the projections", registry=r
        )
        self.skipped = Counter(
            "labelweave_worker_events_redelivered_total",
            "Records skipped because the store had applied them already (redeliveries)",
            registry=r,
        )
        self.lag = Gauge(
            "labelweave_worker_consumer_lag_records",
            "Records behind the partition's high watermark",
            ["topic", "partition"],
            registry=r,
        )
        self.rebalances = Counter(
            "labelweave_worker_rebalances_total", "Partition assignments received", registry=r
        )
        self.dead_letters = Counter(
            "labelweave_worker_dead_letters_total",
            "Records sent to the dead-letter topic, by reason (decode or view)",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "labelweave_worker_batch_retries_total",
            "Batches retried after a store or dead-letter failure",
            registry=r,
        )
        self.commit_latency = Histogram(
            "labelweave_worker_store_commit_seconds",
            "Store write (rows + checkpoint) latency per batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )


class DeadLetterSender:
    """Sends dead letters with a kafka-python producer (acks=all, flushed per letter)."""

    def __init__(self, bootstrap: list[str], topic: str) -> None:
        from kafka import KafkaProducer  # type: ignore[import-untyped]

        self.topic = topic
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)

    def __call__(self, letter: DeadLetter) -> None:
        rec = letter.record
        headers = [
            ("labelweave-error", letter.error.encode()),
            ("labelweave-reason", letter.reason.encode()),
            ("labelweave-topic", rec.topic.encode()),
            ("labelweave-partition", str(rec.partition).encode()),
            ("labelweave-offset", str(rec.offset).encode()),
            ("labelweave-view", letter.view.encode()),
            ("labelweave-event-id", letter.event_id.encode()),
        ]
        self._producer.send(self.topic, key=rec.key, value=rec.value, headers=headers).get(timeout=30)

    def close(self) -> None:
        self._producer.close(timeout=5)


class Worker:
    """The faust app and everything it holds; `app` is what faust runs."""

    def __init__(self, settings: WorkerSettings, *, store: ProjectionStore | None = None) -> None:
        self.settings = settings
        self.layout = KafkaLayout.from_url(settings.event_log)
        self.metrics = WorkerMetrics()
        self._store = store
        self._projector: PartitionProjector | None = None
        self._dlq: DeadLetterSender | None = None
        app_id = settings.app_id or f"{self.layout.prefix}.projections"
        data_dir = settings.data_dir or os.path.join(os.getcwd(), ".run", "workers", app_id)
        self.app = faust.App(
            app_id,
            broker=[f"kafka://{hp}" for hp in self.layout.bootstrap],
            store="memory://",
            web_enabled=False,
            consumer_auto_offset_reset="earliest",
            topic_allow_declare=False,  # the event log creates its topics with the right counts
            datadir=data_dir,
            broker_commit_every=BATCH,
            # A killed worker's partitions move after the session timeout: 10 s, not faust's 60 s.
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
        )
        self.topic = self.app.topic(
            *self.layout.event_topics,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.app.agent(self.topic, name="labelweave-projections")(self._agent)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.on_partitions_revoked.connect(self._on_revoked)

    # ------------------------------------------------------------------ wiring

    @property
    def projector(self) -> PartitionProjector:
        if self._projector is None:
            store = self._store
            if store is None:
                from projections.factory import open_store

                store = self._store = open_store(self.settings.store)
            self._dlq = DeadLetterSender(list(self.layout.bootstrap), self.layout.dlq_topic)
            self._projector = PartitionProjector(
                store, self.layout, dead_letter=self._dead_letter, on_commit=self._committed
            )
        return self._projector

    def _dead_letter(self, letter: DeadLetter) -> None:
        assert self._dlq is not None
        self._dlq(letter)
        self.metrics.dead_letters.labels(letter.reason).inc()

    def _committed(self, applied: int, seconds: float) -> None:
        self.metrics.applied.inc(applied)
        self.metrics.commit_latency.observe(seconds)

    def serve_metrics(self) -> None:
        port = self.settings.metrics_port
        if port:
            start_http_server(port, addr=self.settings.metrics_host, registry=self.metrics.registry)
            logger.info("worker metrics on http://%s:%d/metrics", self.settings.metrics_host, port)

    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        self.projector.reset()

    async def _on_assigned(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """Start every assigned event partition one past what the store applied: the store's
        checkpoint is the truth, whatever offsets faust committed."""
        assigned = args[0] if args else kwargs.get("assigned", set())
        self.metrics.rebalances.inc()
        projector = self.projector
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, projector.reset)
        ours = [tp for tp in assigned if tp.topic in self.layout.event_topics]
        if not ours:
            return
        resume = await loop.run_in_executor(
            None, projector.resume_offsets, [(tp.topic, tp.partition) for tp in ours]
        )
        for tp in ours:
            await self.app.consumer.seek(tp, resume[(tp.topic, tp.partition)])

    async def _agent(self, stream: faust.StreamT[bytes]) -> None:
        loop = asyncio.get_running_loop()
        # take_events exists on faust-streaming's Stream, not on its StreamT protocol
        async for events in stream.take_events(BATCH, within=LINGER):  # type: ignore[attr-defined]
            records = [
                Record(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
                for e in events
            ]
            projector = self.projector
            skipped = projector.skipped
            backoff = 0.1
            while True:  # never drop a batch: faust will not deliver these records again
                try:
                    await loop.run_in_executor(None, projector.process, records)
                    break
                except Exception:
                    logger.exception("projection batch failed (store down?); retrying in %.1f s", backoff)
                    self.metrics.retries.inc()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            self.metrics.skipped.inc(projector.skipped - skipped)
            self._update_lag(records)

    def _update_lag(self, records: list[Record]) -> None:
        last: dict[tuple[str, int], int] = {}
        for r in records:
            last[(r.topic, r.partition)] = max(r.offset, last.get((r.topic, r.partition), -1))
        consumer = self.app.consumer
        for (topic, partition), offset in last.items():
            try:
                high = consumer.highwater(faust.types.TP(topic, partition))
            except Exception:  # lag is best effort
                continue
            if high is not None:
                self.metrics.lag.labels(topic, str(partition)).set(max(0, high - offset - 1))


def run_worker(settings: WorkerSettings, *, loglevel: str = "info") -> None:
    """Run one worker in this process until SIGTERM/SIGINT (what `labelweave workers` calls)."""
    from faust.worker import Worker as FaustWorker

    worker = Worker(settings)
    worker.serve_metrics()
    FaustWorker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()


def _module_app() -> faust.App:
    return Worker(WorkerSettings.from_env()).app


app = _module_app() if os.environ.get("LABELWEAVE_EVENT_LOG", "").startswith("kafka://") else None
"""For `faust -A consumers.app worker`: configured from LABELWEAVE_EVENT_LOG/LABELWEAVE_STORE."""

if __name__ == "__main__":  # python -m consumers.app (configuration from the environment)
    run_worker(WorkerSettings.from_env())
