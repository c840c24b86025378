"""Replaying the Kafka event log straight from its topics, for a rebuild.

`KafkaEventLog` answers reads from its replica index, which it fills from Kafka when it opens: every
record parsed, indexed in SQLite, then read back and decoded again by the reader. A rebuild needs
none of that (it reads every event once, in partition order, and keeps no index), so
`KafkaReplay` reads the event partitions with one plain read_committed consumer (no group, no
decider, no replica), decodes every value once and hands out `RecordedEvent` batches with the same
positions and envelopes the log's `read` returns. `consumers.rebuild.rebuild` accepts it in place of
an `EventLog` (see `ReplaySource` there):

    with KafkaReplay.from_url("kafka://127.0.0.1:9092/?prefix=labelweave") as replay:
        rebuild(replay, CassandraStore(url))

The end of the replay is fixed when it starts: the last stable offset of every event partition
(what a read_committed reader can see), like `rebuild`'s `log.head()`. Records that are not event
envelopes are skipped and logged, as the log's tailer does. Kafka checksums (`check_crcs`) stay on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from coordinator.errors import InvalidArgument, LabelweaveError, Unavailable
from coordinator.eventlog import codec
from coordinator.eventlog.base import Position, RecordedEvent
from coordinator.eventlog.kafka_layout import KafkaLayout

logger = logging.getLogger(__name__)

POLL_RECORDS = 2_000
"""Records per `poll()` (kafka-python's default is 500)."""


class KafkaReplay:
    """Every committed event of a Kafka event log, read once from the topics. Not thread-safe;
    `batches()` can run once per instance (it consumes)."""

    def __init__(
        self,
        layout: KafkaLayout,
        *,
        partitions: Iterable[int] | None = None,
        ends: Mapping[int, int] | None = None,
    ) -> None:
        """Replay the virtual `partitions` (default: all) up to `ends` (default: their last stable
        offsets now; given by `consumers.rebuild.rebuild_from_kafka` so that every worker process
        replays up to the same head)."""
        self.layout = layout
        vps = sorted(set(range(layout.virtual_partitions) if partitions is None else partitions))
        self._tps = {vp: TopicPartition(*layout.topic_partition(vp)) for vp in vps}
        self._vp_of = {tp: vp for vp, tp in self._tps.items()}
        timeout_ms = int(layout.options.timeout * 1000)
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=list(layout.bootstrap),
                client_id=f"{layout.options.client_id}-replay",
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                max_poll_records=POLL_RECORDS,
            )
        except Exception as exc:
            raise Unavailable(f"cannot reach Kafka at {','.join(layout.bootstrap)}: {exc}") from exc
        try:
            if ends is None:
                missing = [t for t in layout.event_topics if t not in self._consumer.topics()]
                if missing:
                    raise InvalidArgument(
                        f"Kafka topics {', '.join(missing)} do not exist: nothing to replay",
                        field="event_log",
                    )
                found = self._consumer.end_offsets(list(self._tps.values()), timeout_ms=timeout_ms)
                self._ends = {vp: int(found[tp]) for vp, tp in self._tps.items()}
            else:
                self._ends = {vp: int(ends.get(vp, 0)) for vp in self._tps}
            if self._tps:
                self._consumer.assign(list(self._tps.values()))
                self._consumer.seek_to_beginning(*self._tps.values())
        except LabelweaveError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise Unavailable(f"cannot read the end offsets of the event topics: {exc}") from exc
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> KafkaReplay:
        return cls(KafkaLayout.from_url(url))

    def head(self) -> dict[int, int]:
        """The end of the replay per virtual partition: Kafka's "next offset" (the last stable
        offset when it started), so a checkpoint of the last event read is at most this."""
        return dict(self._ends)

    def batches(self, size: int) -> Iterator[list[RecordedEvent]]:
        """Every event up to `head()`, in batches of `size` (the last one may be smaller; each
        partition in offset order, partitions interleaved as Kafka delivers them)."""
        size = max(size, 1)
        consumer = self._consumer
        timeout_ms = int(self.layout.options.timeout * 1000)
        left = {vp for vp, end in self._ends.items() if end > 0}
        done = [self._tps[vp] for vp in self._ends if vp not in left]
        if done:
            consumer.pause(*done)
        batch: list[RecordedEvent] = []
        positions: dict[int, int] = {}
        progress = time.monotonic()
        while left:
            polled = consumer.poll(timeout_ms=500)
            for tp, records in polled.items():
                vp = self._vp_of[tp]
                end = self._ends[vp]
                for record in records:
                    if record.offset >= end:
                        break
                    event = _event(vp, record)
                    if event is not None:
                        batch.append(event)
            for vp in list(left):
                tp = self._tps[vp]
                position = int(consumer.position(tp, timeout_ms=timeout_ms))
                if position != positions.get(vp):
                    positions[vp] = position
                    progress = time.monotonic()
                if position >= self._ends[vp]:
                    left.discard(vp)
                    consumer.pause(tp)  # appended meanwhile: not this replay's
            if left and time.monotonic() - progress > self.layout.options.timeout:
                raise Unavailable(
                    f"the replay made no progress for {self.layout.options.timeout:g}s on partitions "
                    f"{sorted(left)}"
                )
            while len(batch) >= size:
                yield batch[:size]
                batch = batch[size:]
        if batch:
            yield batch

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            self._consumer.close()
        except Exception:  # pragma: no cover - best effort
            logger.debug("closing the replay consumer failed", exc_info=True)

    def __enter__(self) -> KafkaReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _event(vp: int, record: Any) -> RecordedEvent | None:
    """The record as the log's `read` returns it; None (logged) for a record that is not an event
    envelope (the tailer's `parse_row` skips the same records)."""
    data = bytes(record.value or b"")
    try:
        envelope = codec.decode(data)
    except InvalidArgument:
        envelope = None
    if envelope is None or not envelope.stream_id:
        logger.warning(
            "skipping record %s:%s:%s: not an event envelope", record.topic, record.partition, record.offset
        )
        return None
    return RecordedEvent(Position(vp, int(record.offset) + 1), envelope, data)
