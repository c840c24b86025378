"""Deciders of the Kafka event log: exactly one per virtual partition, moving with the group.

Kafka has no conditional append, so every append of virtual partition `vp` goes through the one
process that owns `vp`: the member of the consumer group `<prefix>.deciders` that is assigned
partition `vp` of `<prefix>.commands`. Every `KafkaEventLog` joins that group, so ownership moves
with rebalances. Taking over `vp` (one worker thread per partition does the blocking work):

1. a new transactional producer with `transactional_id = <prefix>-decider-<vp>` and
   `init_transactions()`: the broker bumps the producer epoch, aborts (or completes) the previous
   owner's open transaction, and from then on refuses that owner's writes (zombie fencing);
2. the local replica index catches up on the event partition to its last stable offset, which the
   previous owner can no longer move: the replica now holds the authoritative state of `vp`;
3. the commands consumer seeks to the group's committed offset (fetched after step 1, so it is
   final) and resumes.

Then each batch of commands is one transaction: per append, a duplicate `command_id` answers with
the first outcome, a stale expected version with `WrongExpectedVersion(actual)`, a bad request
with an error, and anything else produces its events (explicit partition); then the replies to
`<prefix>.replies`, the consumed command offsets (`send_offsets_to_transaction`, with the group
metadata, so a deposed member's commit is refused too), commit. A crash or fence before the commit
aborts all of it and the next owner decides the same commands again; an outcome is never produced
twice because events, replies and consumed offsets commit together.

Commands from the same process skip the Kafka round trip when this process owns their partition
(`submit_local`): they join the same worker queue, so they are serialised with forwarded ones.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]
from kafka.consumer.subscription_state import ConsumerRebalanceListener  # type: ignore[import-untyped]
from kafka.errors import ProducerFencedError  # type: ignore[import-untyped]
from kafka.structs import MemberState, OffsetAndMetadata  # type: ignore[import-untyped]

from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator._pb.labelweave.internal.v1 import log_pb2
from coordinator.errors import InvalidArgument, Unavailable
from coordinator.eventlog.kafka_layout import KafkaLayout, log_retry
from coordinator.eventlog.kafka_replica import Replica, Row

logger = logging.getLogger(__name__)

Outcome = log_pb2.AppendOutcome
MAX_BATCH = 200
"""Most command records (or local commands) decided in one transaction."""
COMMAND_ID_HEADER = "lw-command-id"
FINGERPRINT_HEADER = "lw-fingerprint"
FENCED_BACKOFF = 1.0
"""Seconds before retaking a partition after being fenced: long enough for the group to tell us
whether we still own it, so two members never fence each other in a loop."""
ERROR_BACKOFF = 0.2
REBALANCE_NUDGE = 3.0
"""Seconds in REBALANCING after which the member asks to rejoin (see DeciderGroup._stable)."""


def producer_config(layout: KafkaLayout, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap_servers": list(layout.bootstrap),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 0,
        "retry_backoff_ms": 10,  # a new transaction retries AddPartitionsToTxn while the last completes
        "max_block_ms": int(layout.options.timeout * 1000),
        "request_timeout_ms": 15_000,
        "delivery_timeout_ms": 30_000,
    }


# ---------------------------------------------------------------------- worker inbox items


@dataclass
class _Takeover:
    inc: int


@dataclass
class _Release:
    inc: int


@dataclass
class _Commands:
    inc: int
    records: list[Any]
    group_metadata: Any


@dataclass
class _Local:
    inc: int
    batch: log_pb2.CommandBatch
    future: Future[log_pb2.ReplyBatch]


@dataclass
class _Stop:
    pass


_Item = _Takeover | _Release | _Commands | _Local | _Stop


@dataclass
class _Phase:
    inc: int
    ready: bool = False
    retry_at: float | None = None  # waiting to retake after a failure


@dataclass
class _Pending:
    """An append accepted into the open transaction: its events' send futures."""

    futures: list[Any]
    rows: list[Row]


@dataclass
class _Decision:
    """One command batch being decided (from Kafka or local)."""

    batch: log_pb2.CommandBatch
    outcomes: list[Outcome] = field(default_factory=list)
    pending: dict[int, _Pending] = field(default_factory=dict)
    """index in outcomes → events in flight (appended, or a duplicate of an append in this txn)."""
    future: Future[log_pb2.ReplyBatch] | None = None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, group: DeciderGroup) -> None:
        self._group = group

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._group._note_revoked(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        pass


class DeciderGroup:
    """This process's membership in the decider group, and its per-partition workers."""

    def __init__(
        self,
        layout: KafkaLayout,
        replica: Replica,
        *,
        sync: Callable[[int, float], int],
        forward: Callable[[log_pb2.CommandBatch, Future[log_pb2.ReplyBatch]], None],
        client_id: str,
    ) -> None:
        self.layout = layout
        self.replica = replica
        self.client_id = client_id
        self._sync = sync
        self._forward = forward
        opts = layout.options
        self._consumer = KafkaConsumer(
            bootstrap_servers=list(layout.bootstrap),
            client_id=f"{client_id}-decider",
            group_id=layout.decider_group,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            session_timeout_ms=opts.session_timeout_ms,
            heartbeat_interval_ms=opts.heartbeat_interval_ms,
            max_poll_interval_ms=max(60_000, opts.session_timeout_ms),
            fetch_max_wait_ms=100,
            max_poll_records=MAX_BATCH * 4,
        )
        self._consumer.subscribe([layout.commands_topic], listener=_Listener(self))
        # Fresh topic metadata before the first JoinGroup: otherwise the metadata arriving after
        # the join looks like a change and triggers a second rebalance, which kafka-python 3.0.12
        # can wedge (see _stable).
        self._consumer.topics()
        self._rebalancing_since: float | None = None
        self._lock = threading.Lock()
        self._phases: dict[int, _Phase] = {}  # partitions this member is taking or owns
        self._incs: dict[int, int] = {}
        self._revoked: set[int] = set()
        self._control: queue.SimpleQueue[tuple[str, int, int, float]] = queue.SimpleQueue()
        self._workers: dict[int, _Worker] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"decider-group:{layout.prefix}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def owned(self) -> set[int]:
        """Virtual partitions this process decides right now."""
        with self._lock:
            return {vp for vp, phase in self._phases.items() if phase.ready}

    def submit_local(self, vp: int, batch: log_pb2.CommandBatch, future: Future[log_pb2.ReplyBatch]) -> bool:
        """Queue a command of this process for the local worker if this process owns `vp`."""
        with self._lock:
            phase = self._phases.get(vp)
            if phase is None or not phase.ready or self._stop.is_set():
                return False
            self._workers[vp].put(_Local(phase.inc, batch, future))
            return True

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.put(_Stop())
        for worker in workers:
            worker.join(timeout=self.layout.options.timeout)
        try:
            self._consumer.close(autocommit=False, timeout_ms=5_000)
        except Exception:  # pragma: no cover - best effort on shutdown
            logger.exception("closing the decider consumer failed")

    # ------------------------------------------------------------------ worker → group

    def is_current(self, vp: int, inc: int, *, ready: bool) -> bool:
        with self._lock:
            phase = self._phases.get(vp)
            return phase is not None and phase.inc == inc and phase.ready == ready

    def report(self, kind: str, vp: int, inc: int, backoff: float = 0.0) -> None:
        self._control.put((kind, vp, inc, backoff))

    def sync(self, vp: int, timeout: float) -> int:
        return self._sync(vp, timeout)

    def forward(self, batch: log_pb2.CommandBatch, future: Future[log_pb2.ReplyBatch]) -> None:
        self._forward(batch, future)

    def _note_revoked(self, revoked: Any) -> None:
        """Rebalance listener (runs on the consumer's IO thread)."""
        with self._lock:
            self._revoked.update(
                int(tp.partition) for tp in revoked if tp.topic == self.layout.commands_topic
            )

    # ------------------------------------------------------------------ consumer thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._handle_control()
                self._handle_revoked()
                polled = self._consumer.poll(timeout_ms=50 if self._stable() else 500)
                self._handle_revoked()
                self._reconcile()
                self._dispatch(polled)
            except Exception as exc:
                if self._stop.is_set():
                    break
                log_retry(logger, "decider group loop failed", exc)
                time.sleep(0.5)

    def _stable(self) -> bool:
        """Whether the group membership is stable; un-wedges a stuck rebalance.

        kafka-python 3.0.12 can lose a JoinGroup/SyncGroup round that completes after the
        `poll()` that started it returned, when that rebalance was triggered by a metadata change:
        the member then stays in REBALANCING with no assignment forever. Asking for a rejoin is
        harmless while a round is in flight (the next poll awaits it) and starts a new round when
        the old one was lost."""
        state = self._consumer.group_metadata().state
        if state != MemberState.REBALANCING:
            self._rebalancing_since = None
            return bool(state == MemberState.STABLE)
        now = time.monotonic()
        if self._rebalancing_since is None:
            self._rebalancing_since = now
        elif now - self._rebalancing_since > REBALANCE_NUDGE:
            coordinator = getattr(self._consumer, "_coordinator", None)
            if coordinator is not None and hasattr(coordinator, "request_rejoin"):
                logger.warning(
                    "decider group: rebalancing for %.0fs; asking to rejoin", now - self._rebalancing_since
                )
                coordinator.request_rejoin()
            self._rebalancing_since = now
        return False

    def commands_tp(self, vp: int) -> Any:
        return TopicPartition(self.layout.commands_topic, vp)

    def _handle_control(self) -> None:
        while True:
            try:
                kind, vp, inc, backoff = self._control.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                phase = self._phases.get(vp)
                if phase is None or phase.inc != inc:
                    continue
            if kind == "ready":
                try:
                    committed = self._consumer.committed(self.commands_tp(vp))
                    if committed is None:
                        self._consumer.seek_to_beginning(self.commands_tp(vp))
                    else:
                        self._consumer.seek(self.commands_tp(vp), int(committed))
                    self._consumer.resume(self.commands_tp(vp))
                except Exception as exc:
                    log_retry(logger, f"decider {vp}: cannot position the commands consumer", exc)
                    self._fail(vp, inc, ERROR_BACKOFF)
                    continue
                with self._lock:
                    phase.ready = True
                logger.info("decider %d: owned by %s", vp, self.client_id)
            else:
                self._fail(vp, inc, backoff)

    def _fail(self, vp: int, inc: int, backoff: float) -> None:
        with self._lock:
            phase = self._phases.get(vp)
            if phase is None or phase.inc != inc:
                return
            phase.ready = False
            phase.retry_at = time.monotonic() + backoff
        self._pause(vp)

    def _pause(self, vp: int) -> None:
        try:
            if self.commands_tp(vp) in self._consumer.assignment():
                self._consumer.pause(self.commands_tp(vp))
        except Exception:  # pragma: no cover - the partition left the assignment meanwhile
            logger.debug("decider %d: pause failed", vp, exc_info=True)

    def _handle_revoked(self) -> None:
        with self._lock:
            revoked, self._revoked = self._revoked, set()
        for vp in revoked:
            self._release(vp)

    def _release(self, vp: int) -> None:
        with self._lock:
            if self._phases.pop(vp, None) is None:
                return
            inc = self._incs[vp] = self._incs.get(vp, 0) + 1
            worker = self._workers[vp]
        worker.put(_Release(inc))
        logger.info("decider %d: released by %s", vp, self.client_id)

    def _reconcile(self) -> None:
        assigned = {
            int(tp.partition) for tp in self._consumer.assignment() if tp.topic == self.layout.commands_topic
        }
        with self._lock:
            held = set(self._phases)
            due = [
                vp
                for vp, phase in self._phases.items()
                if phase.retry_at is not None and phase.retry_at <= time.monotonic()
            ]
        for vp in held - assigned:
            self._release(vp)
        for vp in sorted(assigned - held) + [vp for vp in due if vp in assigned]:
            self._take(vp)

    def _take(self, vp: int) -> None:
        self._pause(vp)
        with self._lock:
            inc = self._incs[vp] = self._incs.get(vp, 0) + 1
            self._phases[vp] = _Phase(inc)
            worker = self._workers.get(vp)
            if worker is None:
                worker = self._workers[vp] = _Worker(self, vp)
        worker.put(_Takeover(inc))

    def _dispatch(self, polled: Any) -> None:
        if not polled:
            return
        metadata = self._consumer.group_metadata()
        for tp, records in polled.items():
            vp = int(tp.partition)
            with self._lock:
                phase = self._phases.get(vp)
                if phase is None or not phase.ready:
                    continue  # fetched before the takeover finished: re-read after the seek
                self._workers[vp].put(_Commands(phase.inc, list(records), metadata))


class _Worker:
    """Owns the transactional producer of one virtual partition and decides its commands."""

    def __init__(self, group: DeciderGroup, vp: int) -> None:
        self.group = group
        self.vp = vp
        self.layout = group.layout
        self.topic, self.partition = self.layout.topic_partition(vp)
        self._inbox: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._held: deque[_Item] = deque()
        self._producer: Any = None
        self._inc: int | None = None
        self._known_end = 0
        self._thread = threading.Thread(
            target=self._run, name=f"decider:{self.layout.prefix}:{vp}", daemon=True
        )
        self._thread.start()

    def put(self, item: _Item) -> None:
        self._inbox.put(item)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # ------------------------------------------------------------------ loop

    def _next(self) -> _Item:
        return self._held.popleft() if self._held else self._inbox.get()

    def _run(self) -> None:
        while True:
            item = self._next()
            try:
                if isinstance(item, _Stop):
                    self._drain_on_stop()
                    self._drop_producer()
                    return
                if isinstance(item, _Takeover):
                    self._takeover(item.inc)
                elif isinstance(item, _Release):
                    self._drop_producer()
                else:
                    batch: list[_Commands | _Local] = [item]
                    while len(batch) < MAX_BATCH:
                        try:
                            more = self._inbox.get_nowait()
                        except queue.Empty:
                            break
                        if isinstance(more, _Commands | _Local) and more.inc == item.inc:
                            batch.append(more)
                        else:
                            self._held.append(more)
                            break
                    self._decide(batch)
            except Exception:  # pragma: no cover - _decide and _takeover handle their own errors
                logger.exception("decider %d: unexpected error", self.vp)

    def _drain_on_stop(self) -> None:
        while True:
            try:
                item = self._held.popleft() if self._held else self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Local):
                _fail_future(item.future, Unavailable("the event log is closed"))

    def _drop_producer(self) -> None:
        producer, self._producer, self._inc = self._producer, None, None
        if producer is not None:
            try:
                producer.close(timeout=1)
            except Exception:  # pragma: no cover - best effort
                logger.debug("decider %d: closing the producer failed", self.vp, exc_info=True)

    def _takeover(self, inc: int) -> None:
        self._drop_producer()
        if not self.group.is_current(self.vp, inc, ready=False):
            return
        started = time.monotonic()
        producer = None
        try:
            producer = KafkaProducer(
                transactional_id=self.layout.transactional_id(self.vp),
                transaction_timeout_ms=self.layout.options.transaction_timeout_ms,
                **producer_config(self.layout, f"{self.group.client_id}-decider-{self.vp}"),
            )
            producer.init_transactions()  # fences the previous owner, finishes its transaction
            known_end = self.group.sync(self.vp, self.layout.options.timeout)
        except Exception as exc:
            logger.warning("decider %d: takeover failed (%s); retrying", self.vp, exc)
            if producer is not None:
                with contextlib.suppress(Exception):
                    producer.close(timeout=0)
            self.group.report("failed", self.vp, inc, ERROR_BACKOFF)
            return
        self._producer, self._inc, self._known_end = producer, inc, known_end
        logger.info(
            "decider %d: took over at offset %d in %.0f ms",
            self.vp,
            known_end,
            (time.monotonic() - started) * 1e3,
        )
        self.group.report("ready", self.vp, inc)

    # ------------------------------------------------------------------ deciding

    def _decide(self, items: Sequence[_Commands | _Local]) -> None:
        inc = items[0].inc
        if self._producer is None or inc != self._inc or not self.group.is_current(self.vp, inc, ready=True):
            for item in items:  # stale: Kafka commands are read again by the owner; local ones go there
                if isinstance(item, _Local):
                    self.group.forward(item.batch, item.future)
            return
        decisions: list[_Decision] = []
        bad: list[tuple[Any, str]] = []
        last_record: Any = None
        metadata: Any = None
        for item in items:
            if isinstance(item, _Local):
                decisions.append(_Decision(item.batch, future=item.future))
                continue
            metadata = item.group_metadata
            for record in item.records:
                last_record = record
                try:
                    batch = log_pb2.CommandBatch.FromString(record.value or b"")
                except DecodeError as exc:
                    bad.append((record, f"undecodable command: {exc}"))
                    continue
                if not 0 <= batch.reply_partition < self.layout.reply_partitions:
                    bad.append((record, f"reply partition {batch.reply_partition} does not exist"))
                    continue
                decisions.append(_Decision(batch))
        producer = self._producer
        committing = False
        try:
            producer.begin_transaction()
            self._decide_all(producer, decisions)
            producer.flush(timeout=self.layout.options.timeout)
            rows = self._resolve(decisions)
            visible = max([self._known_end, *(r.offset + 1 for r in rows)])
            replies: list[log_pb2.ReplyBatch] = []
            for d in decisions:
                reply = log_pb2.ReplyBatch(
                    request_id=d.batch.request_id,
                    virtual_partition=self.vp,
                    visible_through=visible,
                    outcomes=d.outcomes,
                    decider=self.group.client_id,
                )
                replies.append(reply)
                if d.future is None:
                    producer.send(
                        self.layout.replies_topic,
                        value=reply.SerializeToString(),
                        partition=d.batch.reply_partition,
                    )
            for record, reason in bad:
                logger.warning(
                    "decider %d: command at offset %d to the DLQ: %s", self.vp, record.offset, reason
                )
                producer.send(
                    self.layout.dlq_topic,
                    key=record.key,
                    value=record.value,
                    headers=[
                        ("lw-source", f"{record.topic}:{record.partition}:{record.offset}".encode()),
                        ("lw-reason", reason.encode()),
                    ],
                )
            if last_record is not None:
                producer.send_offsets_to_transaction(
                    {self.group.commands_tp(self.vp): OffsetAndMetadata(int(last_record.offset) + 1, "", -1)},
                    metadata,
                )
            committing = True
            producer.commit_transaction()
        except Exception as exc:
            self._failed(
                producer, decisions, exc, ambiguous=committing and not isinstance(exc, ProducerFencedError)
            )
            return
        self._known_end = visible
        try:
            self.group.replica.insert(rows)
        except Exception:
            # Committed, but this worker's view of the partition is now incomplete: decide nothing
            # more on it; the next takeover reads the partition back from Kafka.
            logger.exception("decider %d: cannot index committed events; taking the partition again", self.vp)
            inc = self._inc
            self._drop_producer()
            if inc is not None:
                self.group.report("failed", self.vp, inc, ERROR_BACKOFF)
        for d, reply in zip(decisions, replies, strict=True):
            if d.future is not None:
                with contextlib.suppress(InvalidStateError):  # the requester's log closed meanwhile
                    d.future.set_result(reply)

    def _failed(
        self, producer: Any, decisions: list[_Decision], exc: BaseException, *, ambiguous: bool
    ) -> None:
        """The transaction is aborted (or, if `ambiguous`, its commit failed and it may have
        committed). Commands from Kafka are read again by whoever owns the partition next; local
        ones are forwarded there through Kafka, unless the outcome is unknown."""
        fenced = isinstance(exc, ProducerFencedError)
        logger.warning("decider %d: transaction failed (%s: %s)", self.vp, type(exc).__name__, exc)
        if not fenced:
            try:
                producer.abort_transaction()
            except Exception:
                logger.debug("decider %d: abort failed", self.vp, exc_info=True)
        inc = self._inc
        self._drop_producer()
        for d in decisions:
            if d.future is None:
                continue
            if not ambiguous:
                self.group.forward(d.batch, d.future)
                continue
            _fail_future(
                d.future,
                Unavailable(
                    f"the commit of partition {self.vp} failed ({type(exc).__name__}); the outcome is "
                    "unknown: retrying with the same command id is safe"
                ),
            )
        if inc is not None:
            self.group.report("failed", self.vp, inc, FENCED_BACKOFF if fenced else ERROR_BACKOFF)

    def _decide_all(self, producer: Any, decisions: list[_Decision]) -> None:
        appends = [a for d in decisions for a in d.batch.appends]
        envelopes: dict[int, list[events_pb2.EventEnvelope] | str] = {}
        for a in appends:
            envelopes[id(a)] = _decode_all(a)
        event_ids = [e.event_id for es in envelopes.values() if not isinstance(es, str) for e in es]
        stored_ids = self.group.replica.existing_event_ids(self.vp, event_ids)
        stored_cmds = self.group.replica.commands((a.command_id for a in appends), vp=self.vp)
        versions = self.group.replica.stream_versions(a.stream_id for a in appends)
        new_ids: set[str] = set()
        new_cmds: dict[str, tuple[str, _Pending]] = {}
        now_ms = int(time.time() * 1000)
        for d in decisions:
            for a in d.batch.appends:
                index = len(d.outcomes)
                cid = a.command_id
                if d.batch.expires_at_ms and now_ms > d.batch.expires_at_ms:
                    d.outcomes.append(Outcome(status=Outcome.STATUS_EXPIRED))
                    continue
                prior_new = new_cmds.get(cid) if cid else None
                prior_stored = stored_cmds.get(cid) if cid else None
                fingerprint = (
                    prior_new[0]
                    if prior_new is not None
                    else prior_stored.fingerprint
                    if prior_stored
                    else ""
                )
                if prior_new is not None or prior_stored is not None:
                    if a.fingerprint and fingerprint and a.fingerprint != fingerprint:
                        d.outcomes.append(
                            Outcome(
                                status=Outcome.STATUS_COMMAND_REUSED,
                                message=f"command id {cid} was used before for a different command",
                                field="command_id",
                            )
                        )
                    elif prior_new is not None:
                        d.outcomes.append(Outcome(status=Outcome.STATUS_DUPLICATE))
                        d.pending[index] = prior_new[1]
                    else:
                        assert prior_stored is not None
                        d.outcomes.append(
                            Outcome(
                                status=Outcome.STATUS_DUPLICATE,
                                offsets=[off for off, _ in prior_stored.events],
                            )
                        )
                    continue
                problem = self._check(a, envelopes[id(a)], stored_ids, new_ids)
                if problem is not None:
                    d.outcomes.append(problem)
                    continue
                actual = versions.get(a.stream_id, 0)
                if actual != a.expected_version:
                    d.outcomes.append(
                        Outcome(status=Outcome.STATUS_WRONG_EXPECTED_VERSION, actual_version=actual)
                    )
                    continue
                envs = envelopes[id(a)]
                assert not isinstance(envs, str)
                pending = self._produce(producer, a, envs)
                versions[a.stream_id] = a.expected_version + len(envs)
                new_ids.update(e.event_id for e in envs)
                if cid:
                    new_cmds[cid] = (a.fingerprint, pending)
                d.outcomes.append(Outcome(status=Outcome.STATUS_APPENDED))
                d.pending[index] = pending

    def _check(
        self,
        a: log_pb2.AppendCommand,
        envs: list[events_pb2.EventEnvelope] | str,
        stored_ids: set[str],
        new_ids: set[str],
    ) -> Outcome | None:
        def invalid(message: str, field: str) -> Outcome:
            return Outcome(status=Outcome.STATUS_INVALID_ARGUMENT, message=message, field=field)

        try:
            vp, _ = self.layout.stream_partition(a.stream_id, a.partition_key)
        except InvalidArgument as exc:
            return invalid(exc.message, exc.field)
        if vp != self.vp:
            return invalid(f"stream {a.stream_id} belongs to partition {vp}, not {self.vp}", "stream_id")
        if isinstance(envs, str):
            return invalid(envs, "envelopes")
        if not envs:
            return invalid("append needs at least one event", "envelopes")
        seen: set[str] = set()
        for i, env in enumerate(envs):
            where = f"envelopes[{i}]"
            if env.stream_id != a.stream_id:
                return invalid(f"event is for stream {env.stream_id!r}", f"{where}.stream_id")
            if env.stream_version != a.expected_version + 1 + i:
                return invalid(f"event has stream version {env.stream_version}", f"{where}.stream_version")
            if not env.event_id or env.event_id in seen:
                return invalid(f"event id {env.event_id!r} missing or repeated", f"{where}.event_id")
            if env.event_id in stored_ids or env.event_id in new_ids:
                return invalid(f"event id {env.event_id} is in the log already", f"{where}.event_id")
            seen.add(env.event_id)
        return None

    def _produce(
        self, producer: Any, a: log_pb2.AppendCommand, envs: list[events_pb2.EventEnvelope]
    ) -> _Pending:
        _, key = self.layout.stream_partition(a.stream_id, a.partition_key)
        headers = [(COMMAND_ID_HEADER, a.command_id.encode()), (FINGERPRINT_HEADER, a.fingerprint.encode())]
        futures = []
        rows = []
        for data, env in zip(a.events, envs, strict=True):
            futures.append(
                producer.send(
                    self.topic, key=key, value=data, partition=self.partition, headers=list(headers)
                )
            )
            rows.append(
                Row(
                    self.vp,
                    -1,
                    a.stream_id,
                    env.stream_version,
                    env.event_id,
                    a.command_id,
                    a.fingerprint,
                    bytes(data),
                )
            )
        return _Pending(futures, rows)

    def _resolve(self, decisions: list[_Decision]) -> list[Row]:
        """After the flush: fill in the offsets of every produced event; the rows to index."""
        rows: list[Row] = []
        done: set[int] = set()
        for d in decisions:
            for index, pending in d.pending.items():
                offsets = [int(f.get(timeout=self.layout.options.timeout).offset) for f in pending.futures]
                d.outcomes[index].offsets[:] = offsets
                if id(pending) not in done:
                    done.add(id(pending))
                    rows.extend(
                        Row(
                            r.vp,
                            off,
                            r.stream_id,
                            r.stream_version,
                            r.event_id,
                            r.command_id,
                            r.fingerprint,
                            r.data,
                        )
                        for r, off in zip(pending.rows, offsets, strict=True)
                    )
        rows.sort(key=lambda r: r.offset)
        return rows


def _decode_all(a: log_pb2.AppendCommand) -> list[events_pb2.EventEnvelope] | str:
    out = []
    for i, data in enumerate(a.events):
        try:
            out.append(events_pb2.EventEnvelope.FromString(data))
        except DecodeError as exc:
            return f"envelopes[{i}] is not an EventEnvelope: {exc}"
    return out


def _fail_future(future: Future[Any], exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        future.set_exception(exc)
