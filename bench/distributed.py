"""Distributed-backend benchmark: the Kafka event log and the Cassandra rebuild, as ratios to raw clients.

    python -m bench.distributed                  # 50,000 events, 3 rounds (~5 min)
    python -m bench.distributed --quick          # 3,000 events, 1 round, 2 s phases (CI smoke test, < 60 s)
    python -m bench.distributed --events 100000 --repeat 5 --json out.json
    python -m bench.distributed --profile-rebuild /tmp/rebuild.prof   # + cProfile of each rebuild
    python -m bench.distributed --rebuild-workers 1   # the rebuild in one process (default 2)

The performance goals of the distributed-backend issue, measured side by side in one run against
the same broker and node. Every round builds the same realistic history (a project, 8 annotators,
and per task TaskImported, TaskLeased, then AnnotationSubmitted + AnnotationAccepted +
TaskCompleted as one append: 5 events in 3 appends, as NextTask/Submit with review NONE write
them), then measures in this order:

1. baseline: a raw kafka-python `KafkaProducer(acks="all", enable_idempotence=True)` sending the
   same encoded envelopes with the same keys and partitions to fresh topics, then `flush()`;
2. `KafkaEventLog.append_many` in import-sized calls of 500 appends (new log);
3. `KafkaEventLog.append` from 8 threads, one stream per append at a time (new log), for
   `--seconds`; and, for reference, the raw producer driven the same way (each thread waits for
   the broker's ack of each append's records);
4. baseline: a raw read_committed `KafkaConsumer` reading every event partition of log 2 from the
   beginning and decoding every value with `codec.decode`;
5. `consumers.rebuild.rebuild_from_kafka(url, "cassandra://…", workers=2)` of log 2 into a fresh
   migrated keyspace: the event topics read directly (`KafkaReplay`, no replica index) by
   `--rebuild-workers` processes split by partition, timed by its `RebuildResult.seconds` (head,
   TRUNCATE, starting the workers, replay, commits; the checksum after it is timed apart); then,
   untimed, the same log opened as a `KafkaEventLog` (replica filled from Kafka) and rebuilt into
   a `MemoryStore` in this process, whose checksum must match the Cassandra one.

Topics (`lwbench-<run>-<round>-*`) and keyspaces (`lwbench_<run>_<round>`) are created per round
and deleted at its end. Goals are printed as PASS/MISS, never asserted. Exit status 0 when the
run completed (goals met or not); 1 when something broke (an append or a view failed, a checksum
mismatch, a service unreachable).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from bench.common import ANNOTATION, BenchError
from bench.report import host_notes, loadavg, render_errors, render_header, render_rows, say, thousands
from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
from coordinator.errors import LabelweaveError
from coordinator.eventlog import codec
from coordinator.eventlog.base import AppendRequest
from coordinator.eventlog.kafka_layout import KafkaLayout
from coordinator.eventlog.memory import prepare_append

DEFAULT_EVENTS = 50_000
QUICK_EVENTS = 3_000
DEFAULT_REPEAT = 3
DEFAULT_SECONDS = 10.0
QUICK_SECONDS = 2.0
IMPORT_BATCH = 500
"""Appends per `append_many` call: ImportTasks-sized."""
THREADS = 8
DEFAULT_REBUILD_WORKERS = 2
"""Processes of the rebuild (`rebuild_from_kafka`): one per core of the reference machine."""
ANNOTATORS = 8
EVENTS_PER_TASK = 5
PROJECT = "bench"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

TARGET_APPEND_RATIO = 0.50
TARGET_REBUILD_RATIO = 0.30
TARGET_REBUILD_EVENTS_PER_S = 5_000.0


# ---------------------------------------------------------------------- small helpers


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def cpu() -> float:
    """CPU seconds of this process so far, every thread (client threads, the log's, the driver's)."""
    t = os.times()
    return t.user + t.system


def machine_notes(kafka_address: str, cassandra_address: str) -> dict[str, str]:
    import cassandra  # type: ignore[import-untyped]
    import google.protobuf
    import kafka  # type: ignore[import-untyped]

    return {
        **host_notes(),
        "clients": f"kafka-python {kafka.__version__} (CRC32C {kafka_crc32c()}),"
        f" cassandra-driver {cassandra.__version__}, protobuf {google.protobuf.__version__}",
        "kafka": kafka_version(kafka_address),
        "cassandra": cassandra_version(cassandra_address),
    }


def kafka_crc32c() -> str:
    """kafka-python checksums every record batch it produces and (check_crcs) fetches with CRC32C:
    in C with the `crc32c` package, else in pure Python, which costs raw clients and the log alike."""
    from kafka.record import _crc32c, util  # type: ignore[import-untyped]

    return "pure Python" if util._crc32c is _crc32c.crc else "native"


def kafka_version(bootstrap: str) -> str:
    from kafka import KafkaConsumer

    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="lwbench-probe")
    except Exception as exc:
        raise BenchError(f"Kafka is not reachable at {bootstrap}: {exc} (ops/services.sh start)") from exc
    try:
        api = consumer.config.get("api_version")
        version = ".".join(str(x) for x in api) if api else "?"
    finally:
        consumer.close()
    return f"{bootstrap} (protocol {version})"


def cassandra_version(address: str) -> str:
    from projections.cassandra import connect, parse_url

    try:
        cluster, session = connect(parse_url(f"cassandra://{address}/system"))
    except LabelweaveError as exc:
        raise BenchError(str(exc)) from exc
    try:
        row = session.execute("SELECT release_version FROM system.local").one()
        return f"{address} (Cassandra {row[0] if row else '?'})"
    finally:
        cluster.shutdown()


# ---------------------------------------------------------------------- the workload


@dataclass
class Workload:
    """The same appends for every subject; `records` are the baseline's (vp, key, value) triples."""

    setup: list[list[AppendRequest]]
    """Project and people, then the warm-up tasks' three appends: sent untimed, in this order."""
    timed: list[AppendRequest]
    """Every timed task's import, then every lease, then every submit (the bulk order)."""
    tasks: list[tuple[AppendRequest, AppendRequest, AppendRequest]]
    """The same appends per task (import, lease, submit): the threaded phase's order."""
    setup_records: list[tuple[int, bytes, bytes]]
    timed_records: list[tuple[int, bytes, bytes]]
    records_of: dict[str, list[tuple[int, bytes, bytes]]] = field(repr=False)
    """command id → its records, for the threaded raw-producer reference."""

    @property
    def timed_events(self) -> int:
        return len(self.timed_records)

    @property
    def total_events(self) -> int:
        return len(self.setup_records) + len(self.timed_records)


class _Builder:
    def __init__(self) -> None:
        self.tick = 0

    def request(
        self, stream: str, version: int, actor: str, role: model_pb2.Role.ValueType, *payloads: Message
    ) -> AppendRequest:
        command_id = uuid.uuid4().hex
        envelopes = []
        for payload in payloads:
            self.tick += 1
            envelopes.append(
                codec.make_envelope(
                    payload,
                    stream_id=stream,
                    actor_id=actor,
                    actor_role=role,
                    command_id=command_id,
                    occurred_at=T0 + timedelta(milliseconds=self.tick),
                )
            )
        return AppendRequest(stream, version, envelopes, command_id)

    def task(self, n: int) -> tuple[AppendRequest, AppendRequest, AppendRequest]:
        task_id = f"t{n:07d}"
        stream = f"task:{task_id}"
        person = f"ann-{n % ANNOTATORS}"
        M, E = model_pb2, events_pb2
        spec = M.TaskSpec(
            task_id=task_id,
            data_uri=f"s3://bench/{task_id}.jpg",
            media_type=M.MEDIA_TYPE_IMAGE,
            priority=n % 10,
            overlap=1,
        )
        imported = self.request(
            stream,
            0,
            "admin",
            M.ROLE_ADMIN,
            E.TaskImported(
                project_id=PROJECT,
                batch_id=f"b{n // IMPORT_BATCH}",
                task=spec,
                review_policy=M.REVIEW_POLICY_NONE,
                lease_seconds=1800,
            ),
        )
        lease_id = f"L{n}"
        leased = self.request(
            stream,
            1,
            person,
            M.ROLE_ANNOTATOR,
            E.TaskLeased(
                task_id=task_id,
                lease_id=lease_id,
                person_id=person,
                expires_at=codec.timestamp(T0 + timedelta(hours=1)),
                project_id=PROJECT,
            ),
        )
        ann_id = f"A{n}"
        submitted = self.request(
            stream,
            2,
            person,
            M.ROLE_ANNOTATOR,
            E.AnnotationSubmitted(
                task_id=task_id,
                annotation_id=ann_id,
                version=1,
                lease_id=lease_id,
                person_id=person,
                annotation=ANNOTATION,
                label_schema_version=1,
                guideline_version=1,
                time_on_task_ms=1500 + n % 1000,
                project_id=PROJECT,
            ),
            E.AnnotationAccepted(
                task_id=task_id,
                annotation_id=ann_id,
                version=1,
                author_id=person,
                accepted_by=person,
                annotation=ANNOTATION,
                project_id=PROJECT,
                label_schema_version=1,
                guideline_version=1,
                data_uri=spec.data_uri,
            ),
            E.TaskCompleted(task_id=task_id, project_id=PROJECT, annotation_ids=[ann_id]),
        )
        return imported, leased, submitted

    def setup(self) -> list[AppendRequest]:
        M, E = model_pb2, events_pb2
        out = [
            self.request(
                f"project:{PROJECT}",
                0,
                "admin",
                M.ROLE_ADMIN,
                E.ProjectCreated(
                    project_id=PROJECT,
                    name="Bench",
                    settings=M.ProjectSettings(default_overlap=1, review_policy=M.REVIEW_POLICY_NONE),
                ),
            )
        ]
        for i in range(ANNOTATORS):
            person = f"ann-{i}"
            out.append(
                self.request(
                    f"person:{person}",
                    0,
                    "admin",
                    M.ROLE_ADMIN,
                    E.PersonRegistered(
                        person=M.PersonSpec(
                            person_id=person,
                            display_name=f"Annotator {i}",
                            roles=[M.ROLE_ANNOTATOR],
                            time_zone="Europe/Warsaw",
                        )
                    ),
                )
            )
            out.append(
                self.request(
                    f"project:{PROJECT}",
                    1 + i,
                    "admin",
                    M.ROLE_ADMIN,
                    E.ProjectMemberAdded(project_id=PROJECT, person_id=person),
                )
            )
        return out


def _records(layout: KafkaLayout, request: AppendRequest) -> list[tuple[int, bytes, bytes]]:
    vp, key = layout.stream_partition(request.stream_id, request.partition_key)
    return [(vp, key, p.data) for p in prepare_append(request)]


def build_workload(events: int, layout: KafkaLayout) -> Workload:
    """About `events` timed events (whole tasks of 5), after a setup that the timing excludes:
    the project, the people and enough warm-up tasks to touch every task partition (the first
    append to a partition waits for its decider's takeover, a one-off at start-up)."""
    b = _Builder()
    setup = b.setup()
    warm: list[tuple[AppendRequest, AppendRequest, AppendRequest]] = []
    seen: set[int] = set()
    n = 0
    while len(seen) < layout.task_partitions:
        task = b.task(n)
        n += 1
        vp, _ = layout.stream_partition(task[0].stream_id)
        if vp not in seen:
            seen.add(vp)
            warm.append(task)
    tasks = [b.task(n + i) for i in range(max(1, events // EVENTS_PER_TASK))]
    timed = [t[0] for t in tasks] + [t[1] for t in tasks] + [t[2] for t in tasks]
    stages = [setup, [t[0] for t in warm], [t[1] for t in warm], [t[2] for t in warm]]
    records_of: dict[str, list[tuple[int, bytes, bytes]]] = {}
    setup_records: list[tuple[int, bytes, bytes]] = []
    for stage in stages:
        for r in stage:
            setup_records.extend(_records(layout, r))
    timed_records: list[tuple[int, bytes, bytes]] = []
    for r in timed:
        recs = _records(layout, r)
        records_of[r.command_id] = recs
        timed_records.extend(recs)
    return Workload(stages, timed, tasks, setup_records, timed_records, records_of)


# ---------------------------------------------------------------------- Kafka and Cassandra plumbing


def kafka_url(bootstrap: str, prefix: str, **extra: object) -> str:
    query = "&".join([f"prefix={prefix}", *(f"{k}={v}" for k, v in extra.items())])
    return f"kafka://{bootstrap}/?{query}"


def delete_topics(bootstrap: str, prefixes: Sequence[str]) -> None:
    """Delete every topic of these prefixes and their decider groups (best effort)."""
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="lwbench-cleanup")
    except Exception as exc:  # pragma: no cover - best effort
        logging.getLogger(__name__).warning("cannot delete bench topics: %r", exc)
        return
    try:
        topics = [t for t in admin.list_topics() if any(t.startswith(f"{p}.") for p in prefixes)]
        if topics:
            admin.delete_topics(topics, raise_errors=False)
        for p in prefixes:
            with contextlib.suppress(Exception):  # no such group (never joined) or already gone
                admin.delete_groups([f"{p}.deciders"])
    finally:
        admin.close()


def drop_keyspace(address: str, keyspace: str) -> None:
    from projections.cassandra import connect, parse_url

    cluster, session = connect(parse_url(f"cassandra://{address}/system"))
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
    finally:
        cluster.shutdown()


def create_event_topics(layout: KafkaLayout) -> None:
    """The baseline's topics: the same names, partition counts and configs as a log's."""
    from coordinator.eventlog.kafka import ensure_topics

    ensure_topics(layout, create=True, client_id="lwbench-raw")


def _check(results: Sequence[object], what: str) -> None:
    errors = [r for r in results if isinstance(r, LabelweaveError)]
    if errors:
        raise BenchError(f"{what}: {len(errors)} of {len(results)} appends failed, first: {errors[0]!r}")


# ---------------------------------------------------------------------- 1. appends


@dataclass
class AppendStats:
    events: int
    appends: int
    seconds: float
    cpu_seconds: float
    """CPU of this process during the phase (the broker's is not included)."""

    @property
    def cpu_us_per_event(self) -> float:
        return rate(self.cpu_seconds * 1e6, self.events)

    @property
    def events_per_s(self) -> float:
        return rate(self.events, self.seconds)

    @property
    def appends_per_s(self) -> float:
        return rate(self.appends, self.seconds)


def raw_producer(bootstrap: str) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap, client_id="lwbench-raw", acks="all", enable_idempotence=True
    )


def baseline_append(bootstrap: str, layout: KafkaLayout, work: Workload) -> AppendStats:
    """Raw producer, pipelined: send every timed record, then flush."""
    producer = raw_producer(bootstrap)
    tp = [layout.topic_partition(vp) for vp in range(layout.virtual_partitions)]
    try:
        for vp, key, value in work.setup_records:  # connections, metadata, producer id: untimed
            topic, part = tp[vp]
            producer.send(topic, key=key, value=value, partition=part)
        producer.flush()
        t0, c0 = time.perf_counter(), cpu()
        for vp, key, value in work.timed_records:
            topic, part = tp[vp]
            producer.send(topic, key=key, value=value, partition=part)
        producer.flush()
        seconds, cpu_seconds = time.perf_counter() - t0, cpu() - c0
    finally:
        producer.close(timeout=10)
    return AppendStats(work.timed_events, len(work.timed), seconds, cpu_seconds)


def reference_txn_readback(bootstrap: str, layout: KafkaLayout, work: Workload) -> AppendStats:
    """Reference for `append_many`: the least its design does per call of 500 appends, with raw
    clients. One transactional producer (acks=all, idempotent) sends the call's records in ONE
    transaction (the log has one per partition) and commits; then a read_committed consumer reads
    them back up to the committed offsets (the log acknowledges only once its tailer has read that
    far, so that the events are visible to every reader). No decoding, no checks, no index."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="lwbench-txn",
        acks="all",
        enable_idempotence=True,
        transactional_id=f"lwbench-txn-{uuid.uuid4().hex[:8]}",
    )
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="lwbench-readback",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    tp = [layout.topic_partition(vp) for vp in range(layout.virtual_partitions)]
    tps = [TopicPartition(*t) for t in tp]
    try:
        producer.init_transactions()
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for t in tps:
            consumer.position(t)
        t0, c0 = time.perf_counter(), cpu()
        for i in range(0, len(work.timed), IMPORT_BATCH):
            producer.begin_transaction()
            futures = [
                (vp, producer.send(tp[vp][0], key=key, value=value, partition=tp[vp][1]))
                for r in work.timed[i : i + IMPORT_BATCH]
                for vp, key, value in work.records_of[r.command_id]
            ]
            producer.commit_transaction()
            wanted: dict[int, int] = {}
            for vp, future in futures:
                wanted[vp] = max(wanted.get(vp, 0), int(future.get(timeout=30).offset) + 1)
            while any(consumer.position(tps[vp]) < off for vp, off in wanted.items()):
                consumer.poll(timeout_ms=100)
        seconds, cpu_seconds = time.perf_counter() - t0, cpu() - c0
    finally:
        consumer.close()
        producer.close(timeout=10)
    return AppendStats(work.timed_events, len(work.timed), seconds, cpu_seconds)


def baseline_append_threads(
    bootstrap: str, layout: KafkaLayout, work: Workload, threads: int, seconds: float
) -> AppendStats:
    """Reference for the threaded phase: the raw producer (one, shared) driven like `append` from
    `threads` threads, each waiting for the broker's ack of one append's records before the next."""
    producer = raw_producer(bootstrap)
    tp = [layout.topic_partition(vp) for vp in range(layout.virtual_partitions)]

    def send(records: list[tuple[int, bytes, bytes]]) -> None:
        futures = []
        for vp, key, value in records:
            topic, part = tp[vp]
            futures.append(producer.send(topic, key=key, value=value, partition=part))
        futures[-1].get(timeout=30)

    try:
        send(work.setup_records[:1])
        producer.flush()

        def one(request: AppendRequest) -> None:
            send(work.records_of[request.command_id])

        return _threaded(work, threads, seconds, one)
    finally:
        producer.close(timeout=10)


def _threaded(
    work: Workload, threads: int, seconds: float, append: Callable[[AppendRequest], None]
) -> AppendStats:
    """`threads` threads, each over its own tasks (import, lease, submit per task), for `seconds`."""
    barrier = threading.Barrier(threads + 1)
    counts = [(0, 0)] * threads
    ends = [0.0] * threads
    errors: list[BaseException] = []
    deadline = [0.0]

    def worker(i: int) -> None:
        events = appends = 0
        try:
            barrier.wait()
            for task in work.tasks[i::threads]:
                for request in task:
                    if time.monotonic() >= deadline[0]:
                        return
                    append(request)
                    events += len(request.envelopes)
                    appends += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            counts[i] = (events, appends)
            ends[i] = time.perf_counter()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    deadline[0] = time.monotonic() + seconds
    t0, c0 = time.perf_counter(), cpu()
    barrier.wait()
    for t in pool:
        t.join()
    cpu_seconds = cpu() - c0
    if errors:
        raise BenchError(f"threaded appends failed: {errors[0]!r}")
    return AppendStats(
        sum(c[0] for c in counts), sum(c[1] for c in counts), max(ends) - t0 if ends else 0.0, cpu_seconds
    )


def open_log(url: str) -> Any:
    from coordinator.eventlog.kafka import KafkaEventLog

    return KafkaEventLog.from_url(url)


def warm_up(log: Any, work: Workload) -> None:
    for stage in work.setup:
        _check(log.append_many(stage), "setup appends")


def subject_append_many(url: str, work: Workload) -> AppendStats:
    log = open_log(url)
    try:
        warm_up(log, work)
        t0, c0 = time.perf_counter(), cpu()
        for i in range(0, len(work.timed), IMPORT_BATCH):
            _check(log.append_many(work.timed[i : i + IMPORT_BATCH]), "append_many")
        seconds, cpu_seconds = time.perf_counter() - t0, cpu() - c0
    finally:
        log.close()
    return AppendStats(work.timed_events, len(work.timed), seconds, cpu_seconds)


def subject_append_threads(url: str, work: Workload, threads: int, seconds: float) -> AppendStats:
    log = open_log(url)
    try:
        warm_up(log, work)
        return _threaded(work, threads, seconds, log.append)
    finally:
        log.close()


# ---------------------------------------------------------------------- 2. rebuild


def baseline_consume(bootstrap: str, layout: KafkaLayout) -> tuple[int, float, float]:
    """Raw read_committed consumer over every event partition from the beginning, decoding every
    value with `codec.decode`; timed from creating the consumer to the last record."""
    from kafka import KafkaConsumer, TopicPartition

    t0, c0 = time.perf_counter(), cpu()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="lwbench-consume",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    try:
        tps = [TopicPartition(*layout.topic_partition(vp)) for vp in range(layout.virtual_partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        n = 0
        left = {tp for tp in tps if consumer.position(tp) < ends[tp]}
        while left:
            for _tp, records in consumer.poll(timeout_ms=1000).items():
                for rec in records:
                    codec.decode(rec.value)
                    n += 1
            left = {tp for tp in left if consumer.position(tp) < ends[tp]}
        return n, time.perf_counter() - t0, cpu() - c0
    finally:
        consumer.close()


@dataclass
class RebuildStats:
    events: int
    workers: int
    """Processes `rebuild_from_kafka` used (this one included; fewer than `--rebuild-workers` for a
    log too small to be worth a process start, as `--quick`'s)."""
    rebuild_seconds: float
    """`RebuildResult.seconds`: end offsets, TRUNCATE of the keyspace, starting the worker processes,
    reading the topics, replay and commits (no checksum)."""
    cpu_seconds: float
    """CPU of this process while rebuilding (the worker processes' and Cassandra's not included)."""
    checksum_seconds: float
    """`checksum()` of the rebuilt keyspace (verification, not part of the rate)."""
    replica_seconds: float
    """Opening the same log as a `KafkaEventLog` (replica filled from Kafka), for the comparison
    rebuild into memory: what a rebuild through the log would pay first (not in the rate)."""
    memory_events: int
    memory_seconds: float
    match: bool
    checksum: str

    @property
    def events_per_s(self) -> float:
        return rate(self.events, self.rebuild_seconds)

    @property
    def memory_events_per_s(self) -> float:
        return rate(self.memory_events, self.memory_seconds)


class _ViewFailures(logging.Handler):
    """Counts the rebuild's "view failed on event" errors (a broken workload, not a slow one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.first = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.first = self.first or record.getMessage()


def subject_rebuild(log_url: str, store_url: str, workers: int, profile: Path | None) -> RebuildStats:
    """`rebuild_from_kafka(url, store_url, workers=...)`: the event topics read directly
    (`KafkaReplay`, no replica index) by `workers` processes, split by partition, into a fresh
    keyspace; `RebuildResult.seconds` is the rate's time (reading the head, TRUNCATE, starting the
    workers, replay, commits; not the checksum). Then, untimed, the same log opened as a
    `KafkaEventLog` (replica filled from Kafka) and rebuilt in this process into a `MemoryStore`:
    the two paths must give the same checksum."""
    from consumers.rebuild import rebuild, rebuild_from_kafka
    from projections import migrate
    from projections.cassandra import CassandraStore
    from projections.memory import MemoryStore

    migrate.migrate(store_url, out=lambda _msg: None)
    failures = _ViewFailures()
    logging.getLogger("consumers.rebuild").addHandler(failures)
    profiler = cProfile.Profile() if profile is not None else None
    if profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
    try:
        if profiler is not None:
            profiler.enable()
        c0 = cpu()
        result = rebuild_from_kafka(log_url, store_url, workers=workers, checksum=False)
        cpu_seconds = cpu() - c0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(profile))
        t0 = time.perf_counter()
        store = CassandraStore(store_url)
        try:
            checksum = store.checksum()
        finally:
            store.close()
        checksum_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        log = open_log(log_url)
        replica_seconds = time.perf_counter() - t0
        try:
            memory = rebuild(log, MemoryStore())
        finally:
            log.close()
    finally:
        logging.getLogger("consumers.rebuild").removeHandler(failures)
    if failures.count:
        raise BenchError(f"rebuild: {failures.count} view failures, first: {failures.first}")
    return RebuildStats(
        events=result.events,
        workers=result.processes,
        rebuild_seconds=result.seconds,
        cpu_seconds=cpu_seconds,
        checksum_seconds=checksum_seconds,
        replica_seconds=replica_seconds,
        memory_events=memory.events,
        memory_seconds=memory.seconds,
        match=checksum == memory.checksum,
        checksum=checksum,
    )


def profile_summary(path: Path, top: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ---------------------------------------------------------------------- one round


@dataclass
class RoundResult:
    loadavg_before: str
    raw: AppendStats
    many: AppendStats
    txn: AppendStats
    threads: AppendStats
    raw_threads: AppendStats
    consume_events: int
    consume_seconds: float
    consume_cpu_seconds: float
    rebuild: RebuildStats

    @property
    def consume_events_per_s(self) -> float:
        return rate(self.consume_events, self.consume_seconds)

    @property
    def ratio_many(self) -> float:
        return rate(self.many.events_per_s, self.raw.events_per_s)

    @property
    def ratio_threads(self) -> float:
        return rate(self.threads.events_per_s, self.raw.events_per_s)

    @property
    def ratio_threads_sync(self) -> float:
        return rate(self.threads.events_per_s, self.raw_threads.events_per_s)

    @property
    def ratio_rebuild(self) -> float:
        return rate(self.rebuild.events_per_s, self.consume_events_per_s)


def run_round(args: argparse.Namespace, run_id: str, index: int, say: Callable[[str], None]) -> RoundResult:
    base = f"lwbench-{run_id}-{index}"
    prefixes = {name: f"{base}-{name}" for name in ("raw", "many", "single")}
    keyspace = f"lwbench_{run_id}_{index}"
    layouts = {name: KafkaLayout.from_url(kafka_url(args.kafka, p)) for name, p in prefixes.items()}
    before = loadavg()
    say(f"round {index}: building {args.events:,} events")
    work = build_workload(args.events, layouts["raw"])
    tag = f"round {index}/{args.repeat}:"
    try:
        create_event_topics(layouts["raw"])
        say(f"{tag} raw producer, {work.timed_events:,} events")
        raw = baseline_append(args.kafka, layouts["raw"], work)
        say(f"{tag}   {raw.events_per_s:,.0f} events/s")
        say(f"{tag} KafkaEventLog.append_many x{IMPORT_BATCH}")
        many = subject_append_many(kafka_url(args.kafka, prefixes["many"]), work)
        say(f"{tag}   {many.events_per_s:,.0f} events/s")
        say(f"{tag} reference: raw transactional producer + read back, x{IMPORT_BATCH}")
        txn = reference_txn_readback(args.kafka, layouts["raw"], work)
        say(f"{tag}   {txn.events_per_s:,.0f} events/s")
        say(f"{tag} raw producer, {THREADS} threads, ack per append, {args.seconds:g} s")
        raw_threads = baseline_append_threads(args.kafka, layouts["raw"], work, THREADS, args.seconds)
        say(f"{tag}   {raw_threads.events_per_s:,.0f} events/s")
        say(f"{tag} KafkaEventLog.append, {THREADS} threads, {args.seconds:g} s")
        single_url = kafka_url(args.kafka, prefixes["single"])
        threads = subject_append_threads(single_url, work, THREADS, args.seconds)
        say(f"{tag}   {threads.events_per_s:,.0f} events/s")
        say(f"{tag} raw consume + decode of the append_many log")
        consume_n, consume_s, consume_cpu = baseline_consume(args.kafka, layouts["many"])
        if consume_n != work.total_events:
            raise BenchError(f"the raw consumer read {consume_n} events, the log has {work.total_events}")
        say(f"{tag}   {rate(consume_n, consume_s):,.0f} events/s")
        say(
            f"{tag} rebuild of the same log into Cassandra (keyspace {keyspace}, {args.rebuild_workers}"
            " processes), then into memory"
        )
        profile = Path(args.profile_rebuild).with_suffix(f".{index}.prof") if args.profile_rebuild else None
        rebuilt = subject_rebuild(
            kafka_url(args.kafka, prefixes["many"], decider="false", create_topics="false"),
            f"cassandra://{args.cassandra}/{keyspace}",
            args.rebuild_workers,
            profile,
        )
        verdict = "MATCH" if rebuilt.match else "MISMATCH"
        say(f"{tag}   {rebuilt.events_per_s:,.0f} events/s, checksum {verdict}")
        if rebuilt.events != work.total_events:
            raise BenchError(f"the rebuild applied {rebuilt.events} events, the log has {work.total_events}")
    finally:
        say(f"{tag} deleting topics {base}-* and keyspace {keyspace}")
        delete_topics(args.kafka, list(prefixes.values()))
        with contextlib.suppress(Exception):
            drop_keyspace(args.cassandra, keyspace)
    return RoundResult(
        before, raw, many, txn, threads, raw_threads, consume_n, consume_s, consume_cpu, rebuilt
    )


# ---------------------------------------------------------------------- report


def _r(x: float) -> str:
    return f"{x:.3f}"


def render_table(results: Sequence[RoundResult], seconds: float) -> str:
    def row(
        label: str, pick: Callable[[RoundResult], float], fmt: Callable[[float], str] = thousands
    ) -> tuple[str, list[str]]:
        values = [pick(r) for r in results]
        return label, [fmt(v) for v in values] + ([fmt(median(values))] if len(results) > 1 else [])

    rows: list[tuple[str, list[str]]] = [
        ("round", [str(i + 1) for i in range(len(results))] + (["median"] if len(results) > 1 else [])),
        (
            "load average before (1/5/15 min)",
            [r.loadavg_before for r in results] + ([""] if len(results) > 1 else []),
        ),
        row("timed events (whole tasks of 5)", lambda r: r.raw.events),
        row("baseline: raw producer events/s", lambda r: r.raw.events_per_s),
        row(f"append_many x{IMPORT_BATCH}, events/s", lambda r: r.many.events_per_s),
        row(f"append_many x{IMPORT_BATCH}, appends/s", lambda r: r.many.appends_per_s),
        row("ratio append_many / raw producer", lambda r: r.ratio_many, _r),
        row(f"reference: raw txn producer + read back x{IMPORT_BATCH}", lambda r: r.txn.events_per_s),
        row(
            "ratio that reference / raw producer", lambda r: rate(r.txn.events_per_s, r.raw.events_per_s), _r
        ),
        row(
            "ratio append_many / that reference", lambda r: rate(r.many.events_per_s, r.txn.events_per_s), _r
        ),
        row(f"append, {THREADS} threads, events/s ({seconds:g} s)", lambda r: r.threads.events_per_s),
        row(f"append, {THREADS} threads, appends/s", lambda r: r.threads.appends_per_s),
        row(f"ratio append ({THREADS} thr.) / raw producer", lambda r: r.ratio_threads, _r),
        row(f"reference: raw producer, {THREADS} thr., ack per append", lambda r: r.raw_threads.events_per_s),
        row(f"ratio append ({THREADS} thr.) / that reference", lambda r: r.ratio_threads_sync, _r),
        row("CPU us/event: raw producer", lambda r: r.raw.cpu_us_per_event),
        row(f"CPU us/event: append_many x{IMPORT_BATCH}", lambda r: r.many.cpu_us_per_event),
        row("CPU us/event: raw txn producer + read back", lambda r: r.txn.cpu_us_per_event),
        row(f"CPU us/event: append, {THREADS} threads", lambda r: r.threads.cpu_us_per_event),
        row("log events (setup + timed)", lambda r: r.consume_events),
        row("baseline: raw consume + decode events/s", lambda r: r.consume_events_per_s),
        row("rebuild: worker processes", lambda r: r.rebuild.workers),
        row(
            "rebuild: rebuild_from_kafka() into Cassandra, s",
            lambda r: r.rebuild.rebuild_seconds,
            lambda x: f"{x:.2f}",
        ),
        row("rebuild events/s", lambda r: r.rebuild.events_per_s),
        row("ratio rebuild / raw consume + decode", lambda r: r.ratio_rebuild, _r),
        row(
            "checksum of the rebuilt keyspace, s", lambda r: r.rebuild.checksum_seconds, lambda x: f"{x:.2f}"
        ),
        row(
            "(not timed) KafkaEventLog open, fill replica, s",
            lambda r: r.rebuild.replica_seconds,
            lambda x: f"{x:.2f}",
        ),
        row("(not timed) its replica into MemoryStore, events/s", lambda r: r.rebuild.memory_events_per_s),
        row(
            "CPU us/event: raw consume + decode",
            lambda r: rate(r.consume_cpu_seconds * 1e6, r.consume_events),
        ),
        row(
            "CPU us/event: rebuild, this process only",
            lambda r: rate(r.rebuild.cpu_seconds * 1e6, r.rebuild.events),
        ),
        (
            "checksum vs embedded rebuild",
            ["MATCH" if r.rebuild.match else "MISMATCH" for r in results]
            + ([""] if len(results) > 1 else []),
        ),
    ]
    return render_rows(rows, min_width=10)


@dataclass
class Goal:
    name: str
    measured: str
    ratio: str
    ok: bool


def evaluate_goals(results: Sequence[RoundResult]) -> list[Goal]:
    raw = median([r.raw.events_per_s for r in results])
    consume = median([r.consume_events_per_s for r in results])
    many = median([r.many.events_per_s for r in results])
    threads = median([r.threads.events_per_s for r in results])
    rebuild = median([r.rebuild.events_per_s for r in results])
    r_many = median([r.ratio_many for r in results])
    r_threads = median([r.ratio_threads for r in results])
    r_rebuild = median([r.ratio_rebuild for r in results])
    pct = f"{TARGET_APPEND_RATIO:.0%}"
    return [
        Goal(
            f"append_many x{IMPORT_BATCH} >= {pct} of raw producer",
            f"{many:,.0f} vs {raw:,.0f} events/s",
            f"{r_many:.3f}",
            r_many >= TARGET_APPEND_RATIO,
        ),
        Goal(
            f"append, {THREADS} threads >= {pct} of raw producer",
            f"{threads:,.0f} vs {raw:,.0f} events/s",
            f"{r_threads:.3f}",
            r_threads >= TARGET_APPEND_RATIO,
        ),
        Goal(
            f"rebuild Kafka -> Cassandra >= {TARGET_REBUILD_RATIO:.0%} of raw consume + decode",
            f"{rebuild:,.0f} vs {consume:,.0f} events/s",
            f"{r_rebuild:.3f}",
            r_rebuild >= TARGET_REBUILD_RATIO,
        ),
        Goal(
            f"rebuild Kafka -> Cassandra >= {TARGET_REBUILD_EVENTS_PER_S:,.0f} events/s",
            f"{rebuild:,.0f} events/s",
            f"{rebuild / TARGET_REBUILD_EVENTS_PER_S:.3f}",
            rebuild >= TARGET_REBUILD_EVENTS_PER_S,
        ),
        Goal(
            "rebuild checksum = embedded rebuild (every round)",
            ", ".join("MATCH" if r.rebuild.match else "MISMATCH" for r in results),
            "",
            all(r.rebuild.match for r in results),
        ),
    ]


def render_goals(goals: Sequence[Goal]) -> str:
    rows = [("goal", "measured (median)", "ratio", "")] + [
        (g.name, g.measured, g.ratio, "PASS" if g.ok else "MISS") for g in goals
    ]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}  {d}".rstrip() for a, b, c, d in rows)


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.distributed",
        description="Distributed-backend benchmark: Kafka event log appends and the Kafka -> Cassandra "
        "rebuild, as ratios to raw kafka-python clients measured side by side.",
    )
    p.add_argument(
        "--events", type=int, default=None, help=f"timed events per round (default {DEFAULT_EVENTS:,})"
    )
    p.add_argument(
        "--repeat", type=int, default=None, help=f"rounds; medians are reported (default {DEFAULT_REPEAT})"
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"wall time of each threaded phase (default {DEFAULT_SECONDS:g})",
    )
    p.add_argument(
        "--quick", action="store_true", help=f"smoke test: {QUICK_EVENTS:,} events, 1 round, short phases"
    )
    p.add_argument(
        "--kafka",
        default=os.environ.get("LABELWEAVE_KAFKA", "127.0.0.1:9092"),
        help="bootstrap HOST:PORT (default: $LABELWEAVE_KAFKA or %(default)s)",
    )
    p.add_argument(
        "--cassandra",
        default=os.environ.get("LABELWEAVE_CASSANDRA", "127.0.0.1:9042"),
        help="contact point HOST:PORT (default: $LABELWEAVE_CASSANDRA or %(default)s)",
    )
    p.add_argument(
        "--rebuild-workers",
        type=int,
        default=DEFAULT_REBUILD_WORKERS,
        help="processes of the Kafka -> Cassandra rebuild, split by partition (default %(default)s)",
    )
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.add_argument(
        "--profile-rebuild",
        default=None,
        metavar="FILE",
        help="cProfile the Cassandra rebuild of each round (main thread) into FILE.<round>.prof"
        " and print its top functions",
    )
    args = p.parse_args(argv)
    args.events = args.events if args.events is not None else (QUICK_EVENTS if args.quick else DEFAULT_EVENTS)
    args.repeat = args.repeat if args.repeat is not None else (1 if args.quick else DEFAULT_REPEAT)
    args.seconds = (
        args.seconds if args.seconds is not None else (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    )
    if args.events < EVENTS_PER_TASK:
        p.error(f"--events must be at least {EVENTS_PER_TASK}")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.seconds <= 0:
        p.error("--seconds must be positive")
    if args.rebuild_workers < 1:
        p.error("--rebuild-workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The driver's protocol downgrade notes and the server's batch-size and tombstone warnings
    # (expected for a bulk load; see docs/cassandra-store.md) would bury the progress lines.
    logging.getLogger("cassandra").setLevel(logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.ERROR)  # "task ran for 0.12 s" on a busy machine

    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    results: list[RoundResult] = []
    failure = ""
    notes: dict[str, str] = {}
    try:
        notes = machine_notes(args.kafka, args.cassandra)
        for index in range(1, args.repeat + 1):
            results.append(run_round(args, run_id, index, say))
    except (BenchError, LabelweaveError, OSError) as exc:
        failure = f"{type(exc).__name__}: {exc}"

    workload = (
        f"{args.events:,} timed events per round (tasks of 5 events in 3 appends),"
        f" {args.repeat} round(s), threaded phases {args.seconds:g} s,"
        f" rebuild in {args.rebuild_workers} process(es)"
    )
    print(
        render_header(
            "Labelweave distributed benchmark (python -m bench.distributed)",
            [*notes.items(), ("workload", workload)],
            started,
        )
    )
    print()
    goals: list[Goal] = []
    if results:
        print(render_table(results, args.seconds))
        print()
        goals = evaluate_goals(results)
        print(render_goals(goals))
        if args.profile_rebuild:
            for index in range(1, len(results) + 1):
                path = Path(args.profile_rebuild).with_suffix(f".{index}.prof")
                print()
                print(f"rebuild profile, round {index} ({path}):")
                print(profile_summary(path))
    errors = [
        f"[round {i + 1}] rebuild checksum MISMATCH" for i, r in enumerate(results) if not r.rebuild.match
    ]
    if failure:
        errors.append(failure)
    if errors:
        print()
        print(render_errors(errors))
    if args.json:
        payload = {
            "machine": notes,
            "events": args.events,
            "repeat": args.repeat,
            "seconds": args.seconds,
            "rounds": [asdict(r) for r in results],
            "goals": [asdict(g) for g in goals],
            "errors": errors,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
