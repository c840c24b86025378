"""Kafka event log (`kafka://host:port/?prefix=…`): the distributed backend.

Layout (`KafkaLayout`, from the URL alone): events of `task:<id>` streams go to
`<prefix>.tasks` keyed by the task id, `project:<id>` to `<prefix>.projects`, `person:<id>` to
`<prefix>.workforce`, partitioned by Kafka's default murmur2 partitioner over the key, with the
serialized `EventEnvelope` as value (the bytes every backend stores); plus `<prefix>.dlq`, and the
internal `<prefix>.commands` (one partition per virtual partition) and `<prefix>.replies`.
Positions are (virtual partition, Kafka offset + 1); offsets are not gap-free (transaction
markers take offsets too).

Writes: an append is a command sent to the decider of its virtual partition
(`kafka_decider.py`), which checks it against the authoritative stream versions and command ids
and appends in a Kafka transaction; the reply comes back on this process's reply partition. The
append is acknowledged only once this process's read_committed tailer has consumed the event
partition past everything the decision saw or wrote, so anything acknowledged is committed,
replicated (acks=all) and visible to every reader.

Reads: a local replica index (`kafka_replica.py`) is fed by a tailer that reads every event
partition with read_committed. `read_stream`, `stream_version`, `outcome`, `head` and `wait` first
sync the replica up to the partitions' last stable offsets (one ListOffsets round, shared by
concurrent callers), so they see every append acknowledged before the call (linearizable);
`read` serves from the replica as it is (it always includes this process's acknowledged appends).

See docs/kafka-event-log.md for the protocol, the failure cases and the URL parameters.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from google.protobuf.message import DecodeError
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]

from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator._pb.labelweave.internal.v1 import log_pb2
from coordinator.errors import FailedPrecondition, InvalidArgument, LabelweaveError, Unavailable
from coordinator.eventlog import codec
from coordinator.eventlog.base import (
    AppendRequest,
    AppendResult,
    Checkpoint,
    CommandReused,
    EventLog,
    Position,
    RecordedEvent,
    WrongExpectedVersion,
)
from coordinator.eventlog.kafka_decider import (
    COMMAND_ID_HEADER,
    FINGERPRINT_HEADER,
    DeciderGroup,
    producer_config,
)
from coordinator.eventlog.kafka_layout import KafkaLayout, KafkaOptions, log_retry
from coordinator.eventlog.kafka_replica import Replica, Row
from coordinator.eventlog.memory import PreparedEvent, prepare_append, record_metrics
from coordinator.metrics import Metrics

__all__ = ["KafkaEventLog", "KafkaLayout", "KafkaOptions", "ensure_topics"]

logger = logging.getLogger(__name__)

Outcome = log_pb2.AppendOutcome
EXPIRY_GRACE_MS = 60_000
"""A command not decided within its timeout plus this is dropped by the decider (EXPIRED): after a
long outage, deciders do not apply a backlog whose requesters gave up long ago."""

MAX_COMMAND_BYTES = 900_000
"""Most bytes of events in one command record (Kafka's default record limit is 1 MiB): bigger
`append_many` calls are split, a single bigger append is refused."""
_Item = tuple[int, AppendRequest, list[PreparedEvent]]

UNKNOWN_TOPIC = 3
TOPIC_EXISTS = 36


def ensure_topics(layout: KafkaLayout, *, create: bool, client_id: str) -> dict[str, str]:
    """Create the log's topics if missing (when `create`), check every partition count, and
    return topic name → topic id. Idempotent; safe to race with other processes."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=list(layout.bootstrap),
            client_id=f"{client_id}-admin",
            bootstrap_timeout_ms=int(layout.options.timeout * 1000),
        )
    except Exception as exc:
        raise Unavailable(f"cannot reach Kafka at {','.join(layout.bootstrap)}: {exc}") from exc
    try:
        wanted = layout.partition_counts()
        described = _describe(admin, list(wanted))
        missing = [t for t in wanted if t not in described]
        if missing:
            if not create:
                raise FailedPrecondition(
                    f"Kafka topics {', '.join(missing)} do not exist and create_topics=false"
                )
            _create(admin, layout, missing)
            described = _describe(admin, list(wanted))
        for topic, partitions in wanted.items():
            if topic not in described:
                raise Unavailable(f"Kafka topic {topic} was created but is not visible yet")
            have = len(described[topic]["partitions"])
            if have != partitions:
                raise FailedPrecondition(
                    f"Kafka topic {topic} has {have} partitions, the URL says {partitions}: the partition "
                    "counts of an existing log cannot change (positions and stream placement depend on them)"
                )
        return {t: str(described[t].get("topic_id") or "") for t in wanted}
    finally:
        admin.close()


def _describe(admin: Any, topics: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in admin.describe_topics(topics):
        code = int(entry.get("error_code", 0))
        if code == 0:
            out[str(entry["name"])] = entry
        elif code != UNKNOWN_TOPIC:
            raise Unavailable(f"describing Kafka topic {entry.get('name')}: error code {code}")
    return out


def _create(admin: Any, layout: KafkaLayout, topics: list[str]) -> None:
    min_isr = str(2 if layout.replication >= 3 else 1)
    events = {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete",
        "min.insync.replicas": min_isr,
        "unclean.leader.election.enable": "false",
    }
    internal = {"retention.ms": str(24 * 3600 * 1000), "min.insync.replicas": min_isr}
    counts = layout.partition_counts()
    spec = {
        t: {
            "num_partitions": counts[t],
            "replication_factor": layout.replication,
            "configs": internal if t in (layout.commands_topic, layout.replies_topic) else events,
        }
        for t in topics
    }
    result = admin.create_topics(spec, raise_errors=False, wait_for_metadata=True)
    for entry in result.get("topics", []):
        code = int(entry.get("error_code", 0))
        if code not in (0, TOPIC_EXISTS):
            raise Unavailable(
                f"cannot create Kafka topic {entry.get('name')}: {entry.get('error_message') or code}"
            )
    logger.info("created Kafka topics %s", ", ".join(topics))


def _consumer(layout: KafkaLayout, client_id: str, **extra: Any) -> Any:
    return KafkaConsumer(
        bootstrap_servers=list(layout.bootstrap),
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        **extra,
    )


def parse_row(vp: int, record: Any) -> Row | None:
    """Index data of an event record; None (logged) for a record that is not an envelope."""
    data = bytes(record.value or b"")
    try:
        env = events_pb2.EventEnvelope.FromString(data)
    except DecodeError:
        env = None
    if env is None or not env.stream_id or env.WhichOneof("payload") is None:
        logger.warning(
            "skipping record %s:%s:%s: not an event envelope", record.topic, record.partition, record.offset
        )
        return None
    headers = {k: v for k, v in (record.headers or ()) if v is not None}
    return Row(
        vp,
        int(record.offset),
        env.stream_id,
        int(env.stream_version),
        env.event_id,
        bytes(headers.get(COMMAND_ID_HEADER, b"")).decode(),
        bytes(headers.get(FINGERPRINT_HEADER, b"")).decode(),
        data,
    )


class _Tailer:
    """Reads every event partition (read_committed) into the replica, and this process's reply
    partition into the waiting requests. Positions are the consumer's: the next Kafka offset of
    each partition, past commit/abort markers and aborted records."""

    def __init__(
        self,
        layout: KafkaLayout,
        replica: Replica,
        client_id: str,
        reply_partition: int,
        on_reply: Any,
    ) -> None:
        self.layout = layout
        self.replica = replica
        self._on_reply = on_reply
        self._tps = {
            vp: TopicPartition(*layout.topic_partition(vp)) for vp in range(layout.virtual_partitions)
        }
        self._vp_of = {tp: vp for vp, tp in self._tps.items()}
        self._reply_tp = TopicPartition(layout.replies_topic, reply_partition)
        self._consumer = _consumer(
            layout, f"{client_id}-tailer", fetch_max_wait_ms=200, max_poll_records=2000
        )
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        consumer = self._consumer
        try:
            consumer.assign([*self._tps.values(), self._reply_tp])
            cursors = replica.cursors()
            for vp, tp in self._tps.items():
                if vp in cursors:
                    consumer.seek(tp, cursors[vp])
                else:
                    consumer.seek_to_beginning(tp)
            consumer.seek_to_end(self._reply_tp)
            timeout_ms = int(layout.options.timeout * 1000)
            consumer.position(self._reply_tp, timeout_ms=timeout_ms)  # fixed before any command is sent
            self._positions = {
                vp: int(consumer.position(tp, timeout_ms=timeout_ms)) for vp, tp in self._tps.items()
            }
        except Exception:
            consumer.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"eventlog-tailer:{layout.prefix}", daemon=True
        )
        self._thread.start()

    def positions(self) -> dict[int, int]:
        with self._cond:
            return dict(self._positions)

    def wait_for(self, targets: Mapping[int, int], deadline: float) -> bool:
        """Block until every vp's position >= its target (True) or the deadline (False)."""
        with self._cond:
            while True:
                if all(self._positions.get(vp, 0) >= off for vp, off in targets.items()):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(min(remaining, 0.5))

    def wait_change(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        with self._cond:
            self._cond.notify_all()
        self._consumer.close()

    def _run(self) -> None:
        consumer = self._consumer
        while not self._stop.is_set():
            try:
                polled = consumer.poll(timeout_ms=100)
                rows: list[Row] = []
                replies: list[log_pb2.ReplyBatch] = []
                for tp, records in polled.items():
                    if tp == self._reply_tp:
                        for rec in records:
                            try:
                                replies.append(log_pb2.ReplyBatch.FromString(rec.value or b""))
                            except DecodeError:
                                logger.warning("undecodable reply at %s:%s", tp, rec.offset)
                        continue
                    vp = self._vp_of[tp]
                    for rec in records:
                        row = parse_row(vp, rec)
                        if row is not None:
                            rows.append(row)
                positions = {vp: int(consumer.position(tp)) for vp, tp in self._tps.items()}
                moved = {vp: off for vp, off in positions.items() if off != self._positions.get(vp)}
                if rows or moved:
                    self.replica.apply(rows, moved)
                    with self._cond:
                        self._positions = positions
                        self.error = None
                        self._cond.notify_all()
                for reply in replies:
                    self._on_reply(reply)
            except Exception as exc:
                if self._stop.is_set():
                    break
                log_retry(logger, "event log tailer failed", exc)
                with self._cond:
                    self.error = exc
                time.sleep(0.5)


class _EndOffsets:
    """Last stable offsets of every event partition; concurrent callers share one ListOffsets
    round, as long as it started after they asked."""

    def __init__(self, layout: KafkaLayout, client_id: str) -> None:
        self._layout = layout
        self._tps = {
            vp: TopicPartition(*layout.topic_partition(vp)) for vp in range(layout.virtual_partitions)
        }
        self._consumer = _consumer(layout, f"{client_id}-offsets")
        self._cond = threading.Condition()
        self._wanted = 0
        self._started = 0
        self._done = 0
        self._result: dict[int, int] = {}
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(
            target=self._run, name=f"eventlog-offsets:{layout.prefix}", daemon=True
        )
        self._thread.start()

    def get(self, deadline: float) -> dict[int, int]:
        with self._cond:
            ticket = self._started + 1
            self._wanted = max(self._wanted, ticket)
            self._cond.notify_all()
            while self._done < ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop:
                    raise Unavailable("Kafka did not answer a ListOffsets request in time")
                self._cond.wait(remaining)
            if self._error is not None:
                raise Unavailable(f"cannot read Kafka end offsets: {self._error}") from self._error
            return dict(self._result)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        self._consumer.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and self._wanted <= self._started:
                    self._cond.wait()
                if self._stop:
                    return
                self._started += 1
                round_ = self._started
            try:
                ends = self._consumer.end_offsets(
                    list(self._tps.values()), timeout_ms=int(self._layout.options.timeout * 1000)
                )
                result = {vp: int(ends[tp]) for vp, tp in self._tps.items()}
                error: BaseException | None = None
            except Exception as exc:
                result, error = {}, exc
            with self._cond:
                self._done = round_
                self._result, self._error = result, error
                self._cond.notify_all()


class KafkaEventLog(EventLog):
    """Thread-safe. One per process (each joins the decider group and keeps its own replica)."""

    gap_free_offsets = False

    def __init__(self, layout: KafkaLayout, *, metrics: Metrics | None = None) -> None:
        self.layout = layout
        self.url = layout.url or f"kafka://{','.join(layout.bootstrap)}/?prefix={layout.prefix}"
        opts = layout.options
        self._timeout = opts.timeout
        self._metrics = metrics
        self._client_id = f"{opts.client_id}-{uuid.uuid4().hex[:8]}"
        self._closed = False
        self._close_lock = threading.Lock()
        self._pending: dict[str, Future[log_pb2.ReplyBatch]] = {}
        self._pending_lock = threading.Lock()
        self._reply_partition = random.randrange(layout.reply_partitions)

        topic_ids = ensure_topics(layout, create=opts.create_topics, client_id=self._client_id)
        identity = {
            "prefix": layout.prefix,
            "partitions": [layout.task_partitions, layout.project_partitions, layout.workforce_partitions],
            "topics": {t: topic_ids[t] for t in layout.event_topics},
        }
        self._replica = Replica(opts.replica, identity)
        self._tailer: _Tailer | None = None
        self._offsets: _EndOffsets | None = None
        self._producer: Any = None
        self._decider: DeciderGroup | None = None
        try:
            self._producer = KafkaProducer(**producer_config(layout, f"{self._client_id}-requester"))
            self._offsets = _EndOffsets(layout, self._client_id)
            self._tailer = _Tailer(
                layout, self._replica, self._client_id, self._reply_partition, self._on_reply
            )
            if opts.decider:
                self._decider = DeciderGroup(
                    layout,
                    self._replica,
                    sync=self._sync_for_decider,
                    forward=self._send,
                    client_id=self._client_id,
                )
            self._catch_up()
        except BaseException as exc:
            self._shutdown()
            if isinstance(exc, LabelweaveError):
                raise
            raise Unavailable(f"cannot start the Kafka event log at {self.url}: {exc}") from exc

    @classmethod
    def from_url(cls, url: str, *, metrics: Metrics | None = None) -> KafkaEventLog:
        return cls(KafkaLayout.from_url(url), metrics=metrics)

    # ------------------------------------------------------------------ virtual partitions

    def topic_partition(self, vp: int) -> tuple[str, int]:
        return self.layout.topic_partition(vp)

    def virtual_partition(self, topic: str, partition: int) -> int:
        return self.layout.virtual_partition(topic, partition)

    def owned_partitions(self) -> set[int]:
        """Virtual partitions this process decides right now (diagnostics and tests)."""
        return self._decider.owned() if self._decider is not None else set()

    # ------------------------------------------------------------------ writes

    def append(self, request: AppendRequest) -> AppendResult:
        result = self.append_many([request])[0]
        if isinstance(result, LabelweaveError):
            raise result
        return result

    def append_many(self, requests: Sequence[AppendRequest]) -> list[AppendResult | LabelweaveError]:
        """The requests of each virtual partition go to its decider as one command, in order (one
        transaction; split into several, still in order, past MAX_COMMAND_BYTES); different
        partitions are decided in parallel."""
        self._check_open()
        started = time.perf_counter()
        deadline = time.monotonic() + self._timeout
        out: list[AppendResult | LabelweaveError | None] = [None] * len(requests)
        chunks: list[tuple[int, list[_Item]]] = []  # (vp, items), in request order per vp
        open_chunk: dict[int, tuple[list[_Item], int]] = {}  # vp → (items, bytes)
        for i, request in enumerate(requests):
            try:
                prepared = prepare_append(request)
                vp, _ = self.layout.stream_partition(request.stream_id, request.partition_key)
                size = (
                    sum(len(p.data) for p in prepared)
                    + 200
                    + len(request.stream_id)
                    + len(request.command_id)
                )
                if size > MAX_COMMAND_BYTES:
                    raise InvalidArgument(
                        f"append of {size} bytes: the Kafka event log takes up to {MAX_COMMAND_BYTES}",
                        field="envelopes",
                    )
            except LabelweaveError as exc:
                out[i] = exc
                continue
            items, used = open_chunk.get(vp, ([], 0))
            if items and used + size > MAX_COMMAND_BYTES:
                items, used = [], 0
            if not items:
                chunks.append((vp, items))
            items.append((i, request, prepared))
            open_chunk[vp] = (items, used + size)
        expires = int(time.time() * 1000 + self._timeout * 1000 + EXPIRY_GRACE_MS)
        futures: list[Future[log_pb2.ReplyBatch]] = []
        for vp, items in chunks:
            batch = log_pb2.CommandBatch(
                request_id=uuid.uuid4().hex,
                virtual_partition=vp,
                reply_partition=self._reply_partition,
                expires_at_ms=expires,
                requester=self._client_id,
                appends=[
                    log_pb2.AppendCommand(
                        stream_id=r.stream_id,
                        expected_version=r.expected_version,
                        command_id=r.command_id,
                        fingerprint=r.fingerprint,
                        partition_key=r.partition_key,
                        events=[p.data for p in prepared],
                    )
                    for _, r, prepared in items
                ],
            )
            future: Future[log_pb2.ReplyBatch] = Future()
            if self._decider is None or not self._decider.submit_local(vp, batch, future):
                self._send(batch, future)
            futures.append(future)
        for (vp, items), future in zip(chunks, futures, strict=True):
            try:
                reply = self._await_reply(vp, future, deadline)
                if len(reply.outcomes) != len(items):
                    raise Unavailable(
                        f"decider of partition {vp} answered {len(reply.outcomes)} of {len(items)}"
                    )
            except LabelweaveError as exc:
                for i, _, _ in items:
                    out[i] = exc
                continue
            for (i, request, prepared), outcome in zip(items, reply.outcomes, strict=True):
                try:
                    result = self._result(vp, request, prepared, outcome)
                except LabelweaveError as exc:
                    out[i] = exc
                    continue
                out[i] = result
                if not result.duplicate:
                    record_metrics(self._metrics, prepared, started, batch=None)
        return [r if r is not None else Unavailable("no outcome") for r in out]

    def _send(self, batch: log_pb2.CommandBatch, future: Future[log_pb2.ReplyBatch]) -> None:
        """Forward a command to its decider through `<prefix>.commands`."""
        with self._pending_lock:
            if self._closed:
                _set_exception(future, Unavailable("the event log is closed"))
                return
            self._pending[batch.request_id] = future
        try:
            sent = self._producer.send(
                self.layout.commands_topic, value=batch.SerializeToString(), partition=batch.virtual_partition
            )
        except Exception as exc:
            self._fail_pending(batch.request_id, Unavailable(f"cannot send the command to Kafka: {exc}"))
            return
        sent.add_errback(
            lambda exc: self._fail_pending(
                batch.request_id, Unavailable(f"cannot send the command to Kafka: {exc}")
            )
        )

    def _fail_pending(self, request_id: str, exc: LabelweaveError) -> None:
        with self._pending_lock:
            future = self._pending.pop(request_id, None)
        if future is not None:
            _set_exception(future, exc)

    def _on_reply(self, reply: log_pb2.ReplyBatch) -> None:
        with self._pending_lock:
            future = self._pending.pop(reply.request_id, None)
        if future is not None:
            with contextlib.suppress(InvalidStateError):  # failed meanwhile (close)
                future.set_result(reply)

    def _await_reply(
        self, vp: int, future: Future[log_pb2.ReplyBatch], deadline: float
    ) -> log_pb2.ReplyBatch:
        try:
            reply = future.result(timeout=max(deadline - time.monotonic(), 0.0))
        except FutureTimeout:
            with self._pending_lock:
                for rid, f in list(self._pending.items()):
                    if f is future:
                        del self._pending[rid]
            raise Unavailable(
                f"no decision from the decider of partition {vp} within {self._timeout:g}s; the outcome is "
                "unknown: retrying with the same command id is safe"
            ) from None
        # Acknowledge only once everything the decision saw or wrote is readable here (and, being
        # read_committed, everywhere).
        assert self._tailer is not None
        if not self._tailer.wait_for({vp: reply.visible_through}, deadline):
            self._check_open()
            raise Unavailable(
                f"partition {vp} decided, but its events did not become readable within {self._timeout:g}s;"
                " retrying with the same command id is safe"
            )
        return reply

    def _result(
        self, vp: int, request: AppendRequest, prepared: list[PreparedEvent], outcome: Outcome
    ) -> AppendResult:
        status = outcome.status
        if status == Outcome.STATUS_APPENDED:
            if len(outcome.offsets) != len(prepared):
                raise Unavailable(f"decider of partition {vp} returned {len(outcome.offsets)} offsets")
            return AppendResult(
                tuple(
                    RecordedEvent(Position(vp, off + 1), p.envelope, p.data)
                    for off, p in zip(outcome.offsets, prepared, strict=True)
                )
            )
        if status == Outcome.STATUS_DUPLICATE:
            stored = self._replica.rows_at(vp, list(outcome.offsets))
            if len(stored) != len(outcome.offsets):
                raise Unavailable(f"the first outcome of command {request.command_id} is not readable yet")
            return AppendResult(
                tuple(_recorded(vp, off, stored[off]) for off in outcome.offsets),
                duplicate=True,
            )
        if status == Outcome.STATUS_WRONG_EXPECTED_VERSION:
            raise WrongExpectedVersion(request.stream_id, request.expected_version, outcome.actual_version)
        if status == Outcome.STATUS_COMMAND_REUSED:
            raise CommandReused(outcome.message, field=outcome.field or "command_id")
        if status == Outcome.STATUS_INVALID_ARGUMENT:
            raise InvalidArgument(outcome.message, field=outcome.field)
        if status == Outcome.STATUS_EXPIRED:
            raise Unavailable("the command reached its decider after it expired; nothing was appended")
        raise Unavailable(f"unknown decision status {status}")

    # ------------------------------------------------------------------ reads

    def sync(self, vps: Sequence[int] | None = None, *, timeout: float | None = None) -> dict[int, int]:
        """Bring the replica up to the last stable offsets Kafka reports now (all partitions, or
        `vps`); returns the tailer positions reached."""
        self._check_open()
        assert self._offsets is not None and self._tailer is not None
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        ends = self._offsets.get(deadline)
        targets = ends if vps is None else {vp: ends[vp] for vp in vps}
        if not self._tailer.wait_for(targets, deadline):
            self._check_open()
            raise Unavailable(
                "the replica index did not catch up with Kafka in time"
                + (f" (tailer error: {self._tailer.error})" if self._tailer.error else "")
            )
        return self._tailer.positions()

    def _catch_up(self) -> None:
        """At start-up: fill the replica up to the current end of the log, however long that takes
        while it makes progress, so a new instance reads everything acknowledged before it opened."""
        assert self._offsets is not None and self._tailer is not None
        targets = self._offsets.get(time.monotonic() + self._timeout)
        last = self._tailer.positions()
        while not self._tailer.wait_for(targets, time.monotonic() + self._timeout):
            now = self._tailer.positions()
            if now == last:
                raise Unavailable(f"the replica index made no progress in {self._timeout:g}s")
            last = now

    def _sync_for_decider(self, vp: int, timeout: float) -> int:
        return self.sync([vp], timeout=timeout)[vp]

    def outcome(self, command_id: str, fingerprint: str = "") -> AppendResult | None:
        if not command_id:
            return None
        self.sync()
        stored = self._replica.commands([command_id]).get(command_id)
        if stored is None:
            return None
        if fingerprint and stored.fingerprint and fingerprint != stored.fingerprint:
            raise CommandReused(
                f"command_id {command_id!r} was used before for a different command", field="command_id"
            )
        return AppendResult(
            tuple(_recorded(stored.vp, off, data) for off, data in stored.events), duplicate=True
        )

    def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        try:
            vp, _ = self.layout.stream_partition(stream_id)
        except InvalidArgument:
            self._check_open()
            return []  # no stream of another kind can exist in this log
        self.sync([vp])
        return [
            _recorded(p, off, data) for p, off, data in self._replica.read_stream(stream_id, after_version)
        ]

    def stream_version(self, stream_id: str) -> int:
        try:
            vp, _ = self.layout.stream_partition(stream_id)
        except InvalidArgument:
            self._check_open()
            return 0
        self.sync([vp])
        return self._replica.stream_version(stream_id)

    def read(self, after: Checkpoint, limit: int = 1000) -> list[RecordedEvent]:
        if limit < 1:
            raise InvalidArgument(f"limit must be >= 1, got {limit}", field="limit")
        self._check_open()
        rows = self._replica.read(after, self.layout.virtual_partitions, limit)
        return [_recorded(vp, off, data) for vp, off, data in rows]

    def head(self) -> dict[int, int]:
        self.sync()
        heads = self._replica.heads()
        return {vp: heads.get(vp, 0) for vp in range(self.layout.virtual_partitions)}

    def wait(self, after: Checkpoint, timeout: float) -> bool:
        self._check_open()
        assert self._tailer is not None
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._replica.has_after(after):
            return True
        try:  # anything acknowledged before this call counts, even from other processes
            self.sync(timeout=max(deadline - time.monotonic(), 0.05))
        except Unavailable:
            if self._closed:
                return False
        while True:
            if self._closed:
                return False
            if self._replica.has_after(after):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._tailer.wait_change(min(remaining, 0.25))

    def partitions(self) -> list[int]:
        return list(range(self.layout.virtual_partitions))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown()

    def _shutdown(self) -> None:
        self._closed = True
        with self._pending_lock:
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            _set_exception(future, Unavailable("the event log is closed"))
        if self._decider is not None:
            self._decider.close()  # first: workers finish or abort their transaction, then leave the group
        for closer in (
            (lambda: self._producer.close(timeout=5)) if self._producer is not None else None,
            self._tailer.close if self._tailer is not None else None,
            self._offsets.close if self._offsets is not None else None,
        ):
            if closer is None:
                continue
            try:
                closer()
            except Exception:  # pragma: no cover - best effort
                logger.exception("closing the Kafka event log")
        self._replica.close()

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the event log is closed")


def _set_exception(future: Future[Any], exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):  # resolved meanwhile
        future.set_exception(exc)


def _recorded(vp: int, offset: int, data: bytes) -> RecordedEvent:
    return RecordedEvent(Position(vp, offset + 1), codec.decode(data), data)
