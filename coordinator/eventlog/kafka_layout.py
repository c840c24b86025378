"""Where the Kafka event log keeps what: topics, partitions and virtual partitions, from the URL alone.

Nothing here connects to a broker, so workers, tools and tests can map Kafka coordinates to log
positions (and back) from a `kafka://` URL:

    layout = KafkaLayout.from_url("kafka://127.0.0.1:9092/?prefix=labelweave&task_partitions=12")
    layout.topic_partition(13)                      # ('labelweave.projects', 1)
    layout.virtual_partition("labelweave.projects", 1)  # 13
    layout.position("labelweave.projects", 1, 41)   # Position(13, 42): offset = Kafka offset + 1

Virtual partitions number the partitions of the event topics in a fixed order: tasks
`0..T-1`, projects `T..T+P-1`, workforce `T+P..T+P+W-1`. A log `Position(vp, n)` is the event at
Kafka offset `n - 1` of `topic_partition(vp)`, so a checkpoint `{vp: n}` is exactly Kafka's "next
offset to read" and 0 still means "nothing yet". The mapping depends on the partition counts, so
they can never change for an existing log (the log refuses to start if the topics disagree).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from kafka.partitioner.default import murmur2  # type: ignore[import-untyped]

from coordinator.errors import InvalidArgument
from coordinator.eventlog.base import Position

SCHEME = "kafka"
DEFAULT_PORT = 9092
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("task", "tasks"),
    ("project", "projects"),
    ("person", "workforce"),
)
"""(stream id prefix, topic suffix) in virtual-partition order."""
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_TOPIC = 249


def partition_for_key(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner for a keyed record (murmur2, as the Java client and faust)."""
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class KafkaOptions:
    """Per-process settings from the URL (not part of the log's identity)."""

    create_topics: bool = True
    replica: str = ":memory:"
    """SQLite file of the local replica index, or `:memory:` (rebuilt from Kafka at every start)."""
    client_id: str = "labelweave"
    timeout: float = 30.0
    """Seconds an append waits for its decision (then Unavailable: outcome unknown)."""
    decider: bool = True
    """Join the decider group (False: a pure client that only sends commands and reads)."""
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    transaction_timeout_ms: int = 15_000


@dataclass(frozen=True)
class KafkaLayout:
    bootstrap: tuple[str, ...]
    prefix: str = "labelweave"
    task_partitions: int = 12
    project_partitions: int = 3
    workforce_partitions: int = 3
    reply_partitions: int = 6
    replication: int = 1
    options: KafkaOptions = field(default_factory=KafkaOptions, compare=False)
    url: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.bootstrap:
            raise InvalidArgument("kafka URL names no broker", field="event_log")
        if not self.prefix or not _TOPIC_CHARS.match(self.prefix):
            raise InvalidArgument(
                f"prefix {self.prefix!r} must be non-empty and use only [A-Za-z0-9._-]", field="event_log"
            )
        if len(self.prefix) + len(".workforce") > _MAX_TOPIC:
            raise InvalidArgument(f"prefix {self.prefix!r} is too long for a topic name", field="event_log")
        for name in ("task_partitions", "project_partitions", "workforce_partitions", "reply_partitions"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be >= 1", field="event_log")
        if self.replication < 1:
            raise InvalidArgument("replication must be >= 1", field="event_log")

    # ------------------------------------------------------------------ parsing

    @classmethod
    def from_url(cls, url: str) -> KafkaLayout:
        """`kafka://host:port[,host:port…][/][?name=value&…]`; see docs/kafka-event-log.md."""
        parts = urlsplit(url)
        if parts.scheme != SCHEME or not url.startswith(f"{SCHEME}://"):
            raise InvalidArgument(f"not a kafka URL: {url!r}", field="event_log")
        if parts.path not in ("", "/"):
            raise InvalidArgument(
                f"kafka URL {url!r} has a path; name topics with ?prefix=… "
                "(supported event logs: memory://, sqlite:///path, kafka://host:port/?prefix=…)",
                field="event_log",
            )
        bootstrap = tuple(_host_port(hp, url) for hp in parts.netloc.split(",") if hp)
        counts: dict[str, int] = {}
        prefix = "labelweave"
        opts: dict[str, Any] = {}
        ints = {"task_partitions", "project_partitions", "workforce_partitions", "reply_partitions"}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in ints or key == "replication":
                counts[key] = _int(key, value)
            elif key == "prefix":
                prefix = value
            elif key in ("create_topics", "decider"):
                opts[key] = _bool(key, value)
            elif key == "replica":
                opts[key] = ":memory:" if value in ("", "memory", ":memory:") else value
            elif key == "client_id":
                if not value:
                    raise InvalidArgument("client_id must not be empty", field="event_log")
                opts[key] = value
            elif key == "timeout":
                try:
                    seconds = float(value)
                except ValueError:
                    seconds = 0.0
                if not seconds > 0:
                    raise InvalidArgument(f"timeout={value!r} is not a positive number", field="event_log")
                opts[key] = seconds
            elif key in ("session_timeout_ms", "heartbeat_interval_ms", "transaction_timeout_ms"):
                opts[key] = _int(key, value)
            else:
                raise InvalidArgument(
                    f"unknown kafka URL option {key!r} (supported: prefix, task_partitions, "
                    "project_partitions, workforce_partitions, reply_partitions, replication, "
                    "create_topics, replica, client_id, timeout, decider, session_timeout_ms, "
                    "heartbeat_interval_ms, transaction_timeout_ms)",
                    field="event_log",
                )
        return cls(
            bootstrap=bootstrap,
            prefix=prefix,
            task_partitions=counts.get("task_partitions", 12),
            project_partitions=counts.get("project_partitions", 3),
            workforce_partitions=counts.get("workforce_partitions", 3),
            reply_partitions=counts.get("reply_partitions", 6),
            replication=counts.get("replication", 1),
            options=KafkaOptions(**opts),
            url=url,
        )

    # ------------------------------------------------------------------ names

    @property
    def tasks_topic(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def projects_topic(self) -> str:
        return f"{self.prefix}.projects"

    @property
    def workforce_topic(self) -> str:
        return f"{self.prefix}.workforce"

    @property
    def dlq_topic(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def commands_topic(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def replies_topic(self) -> str:
        return f"{self.prefix}.replies"

    @property
    def decider_group(self) -> str:
        return f"{self.prefix}.deciders"

    def transactional_id(self, vp: int) -> str:
        return f"{self.prefix}-decider-{vp}"

    @property
    def event_topics(self) -> tuple[str, str, str]:
        """In virtual-partition order."""
        return (self.tasks_topic, self.projects_topic, self.workforce_topic)

    def partition_counts(self) -> dict[str, int]:
        """Every topic with its partition count (what the log creates or checks at start-up)."""
        return {
            self.tasks_topic: self.task_partitions,
            self.projects_topic: self.project_partitions,
            self.workforce_topic: self.workforce_partitions,
            self.dlq_topic: 1,
            self.commands_topic: self.virtual_partitions,
            self.replies_topic: self.reply_partitions,
        }

    # ------------------------------------------------------------------ virtual partitions

    @property
    def virtual_partitions(self) -> int:
        return self.task_partitions + self.project_partitions + self.workforce_partitions

    def _bases(self) -> tuple[tuple[str, int, int], ...]:
        """(topic, first virtual partition, partition count) in layout order."""
        t, p = self.task_partitions, self.project_partitions
        return (
            (self.tasks_topic, 0, t),
            (self.projects_topic, t, p),
            (self.workforce_topic, t + p, self.workforce_partitions),
        )

    def topic_partition(self, vp: int) -> tuple[str, int]:
        for topic, base, count in self._bases():
            if base <= vp < base + count:
                return topic, vp - base
        raise InvalidArgument(
            f"virtual partition {vp} is outside 0..{self.virtual_partitions - 1}", field="partition"
        )

    def virtual_partition(self, topic: str, partition: int) -> int:
        for name, base, count in self._bases():
            if name == topic:
                if not 0 <= partition < count:
                    raise InvalidArgument(f"{topic} has no partition {partition}", field="partition")
                return base + partition
        raise InvalidArgument(f"{topic!r} is not an event topic of this log", field="topic")

    def position(self, topic: str, partition: int, offset: int) -> Position:
        """The log position of the record at Kafka `offset` of (topic, partition)."""
        return Position(self.virtual_partition(topic, partition), offset + 1)

    def next_offset(self, topic: str, partition: int, applied: Mapping[int, int]) -> int:
        """The Kafka offset to read next in (topic, partition), given a checkpoint."""
        return applied.get(self.virtual_partition(topic, partition), 0)

    def stream_topic(self, stream_id: str) -> tuple[str, bytes]:
        """(topic, record key) of a stream: the key is the id after the `kind:` prefix."""
        kind, sep, ident = stream_id.partition(":")
        if sep:
            for prefix, suffix in CATEGORIES:
                if kind == prefix:
                    return f"{self.prefix}.{suffix}", ident.encode()
        raise InvalidArgument(
            f"stream id {stream_id!r} is not task:<id>, project:<id> or person:<id>", field="stream_id"
        )

    def stream_partition(self, stream_id: str, partition_key: str = "") -> tuple[int, bytes]:
        """(virtual partition, record key) of a stream. `partition_key` (same `kind:` as the
        stream) overrides the key; every append of one stream must then use the same one."""
        topic, key = self.stream_topic(stream_id)
        if partition_key and partition_key != stream_id:
            other, key = self.stream_topic(partition_key)
            if other != topic:
                raise InvalidArgument(
                    f"partition key {partition_key!r} is of another kind than stream {stream_id!r}",
                    field="partition_key",
                )
        for name, base, count in self._bases():
            if name == topic:
                return base + partition_for_key(key, count), key
        raise AssertionError(topic)  # pragma: no cover - stream_topic only returns event topics


def _host_port(text: str, url: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"bad broker address {text!r} in {url!r} (want host:port)", field="event_log")
    return f"{host}:{int(port)}"


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{key}={value!r} is not an integer", field="event_log") from None


def _bool(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InvalidArgument(f"{key}={value!r} is not true or false", field="event_log")


def log_retry(log: Any, what: str, exc: BaseException) -> None:
    """Log a failure that will be retried: one WARNING line (no traceback) for what a broker
    outage or restart causes (connection refused, timeouts, retriable Kafka errors), the full
    traceback for anything else, which is a bug."""
    import kafka.errors as kerr  # type: ignore[import-untyped]

    outage = tuple(
        t
        for t in (getattr(kerr, n, None) for n in ("KafkaConnectionError", "NoBrokersAvailable"))
        if isinstance(t, type)
    )
    transient = isinstance(exc, (*outage, TimeoutError, ConnectionError)) or (
        isinstance(exc, kerr.KafkaError) and bool(getattr(exc, "retriable", False))
    )
    if transient:
        log.warning("%s (%s: %s); retrying", what, type(exc).__name__, exc)
    else:
        log.error("%s; retrying", what, exc_info=exc)
