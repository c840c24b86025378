"""Open an event log by URL: `memory://`, `sqlite:///path/to/events.db[?synchronous=normal]` or
`kafka://host:port[,host:port…]/?prefix=labelweave&…` (docs/kafka-event-log.md)."""

from __future__ import annotations

from coordinator.errors import InvalidArgument
from coordinator.eventlog.base import EventLog
from coordinator.metrics import Metrics

SUPPORTED_SCHEMES = ("memory", "sqlite", "kafka")


def open_event_log(url: str, *, metrics: Metrics | None = None) -> EventLog:
    scheme, sep, _ = url.partition("://")
    if not sep:
        scheme = ""
    if scheme == "memory":
        from coordinator.eventlog.memory import MemoryEventLog

        return MemoryEventLog(url=url, metrics=metrics)
    if scheme == "sqlite":
        from coordinator.eventlog.sqlite import SqliteEventLog

        return SqliteEventLog.from_url(url, metrics=metrics)
    if scheme == "kafka":
        from coordinator.eventlog.kafka import KafkaEventLog

        return KafkaEventLog.from_url(url, metrics=metrics)
    raise InvalidArgument(
        f"unsupported event log URL {url!r}: supported schemes are memory://, sqlite:///path and "
        "kafka://host:port/?prefix=…",
        field="event_log",
    )
