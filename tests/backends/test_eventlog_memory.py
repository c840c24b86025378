from __future__ import annotations

import pytest

from coordinator.errors import InvalidArgument, Unavailable
from coordinator.eventlog.base import EventLog
from coordinator.eventlog.factory import open_event_log
from coordinator.eventlog.memory import MemoryEventLog
from tests.contracts.eventlog_contract import EventLogContract, request


class TestMemoryEventLog(EventLogContract):
    def make_log(self) -> EventLog:
        return open_event_log("memory://")


def test_factory_opens_memory_log() -> None:
    log = open_event_log("memory://")
    assert isinstance(log, MemoryEventLog)
    assert log.url == "memory://"


@pytest.mark.parametrize("url", ["postgres://x/y", "events.db", ""])
def test_factory_refuses_unknown_schemes_naming_the_supported_ones(url: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        open_event_log(url)
    assert info.value.field == "event_log"
    assert "memory" in info.value.message and "sqlite" in info.value.message
    assert "kafka" in info.value.message


def test_kafka_url_with_a_path_is_refused_before_connecting() -> None:
    with pytest.raises(InvalidArgument) as info:
        open_event_log("kafka://broker:9092/events")
    assert info.value.field == "event_log"


def test_closed_log_is_unavailable() -> None:
    log = open_event_log("memory://")
    log.close()
    with pytest.raises(Unavailable):
        log.append(request("project:a", 0))
    with pytest.raises(Unavailable):
        log.read({})
