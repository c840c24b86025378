"""The Kafka event log against a real broker (ops/services.sh start): the shared contract, the
record format other Kafka clients see, and consistent decisions across instances and processes
(concurrent writers, shared command ids, fencing, failover by close and by SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]
from kafka.partitioner.default import murmur2  # type: ignore[import-untyped]

from coordinator.errors import FailedPrecondition, InvalidArgument, Unavailable
from coordinator.eventlog import codec
from coordinator.eventlog.base import AppendRequest, AppendResult, EventLog, Position, WrongExpectedVersion
from coordinator.eventlog.factory import open_event_log
from coordinator.eventlog.kafka import KafkaEventLog, KafkaLayout
from coordinator.eventlog.kafka_replay import KafkaReplay
from tests.backends import kafka_util
from tests.backends.kafka_util import delete_topics, kafka_url, new_prefix
from tests.contracts.eventlog_contract import EventLogContract, append_with_retry, envelope, request

kafka_broker = kafka_util.kafka_broker  # fixtures, used by name
prefixes = kafka_util.prefixes
ROOT = Path(__file__).resolve().parents[2]


def open_kafka(url: str) -> KafkaEventLog:
    log = open_event_log(url)
    assert isinstance(log, KafkaEventLog)
    return log


class TestKafkaEventLog(EventLogContract):
    gap_free_offsets = False  # transaction markers take offsets

    @pytest.fixture(autouse=True)
    def _prefix(self, kafka_broker: str) -> Iterator[None]:
        self.prefix = new_prefix()
        yield
        delete_topics(self.prefix)  # after the `log` fixture closed the log

    def make_log(self) -> EventLog:
        return open_kafka(kafka_url(self.prefix))


# ---------------------------------------------------------------------- URL and layout (no broker)


def test_url_defaults_and_options() -> None:
    layout = KafkaLayout.from_url("kafka://127.0.0.1:9092")
    assert layout.bootstrap == ("127.0.0.1:9092",)
    assert layout.prefix == "labelweave"
    assert (layout.task_partitions, layout.project_partitions, layout.workforce_partitions) == (12, 3, 3)
    assert layout.options.replica == ":memory:" and layout.options.create_topics
    assert layout.event_topics == ("labelweave.tasks", "labelweave.projects", "labelweave.workforce")
    assert (layout.dlq_topic, layout.commands_topic, layout.replies_topic) == (
        "labelweave.dlq",
        "labelweave.commands",
        "labelweave.replies",
    )
    assert layout.partition_counts()["labelweave.commands"] == 18

    other = KafkaLayout.from_url(
        "kafka://a:1,b/?prefix=x.y&task_partitions=4&project_partitions=2&workforce_partitions=1"
        "&replication=3&create_topics=false&replica=/tmp/r.db&client_id=srv&timeout=2.5&decider=false"
    )
    assert other.bootstrap == ("a:1", "b:9092")
    assert other.replication == 3 and other.virtual_partitions == 7
    assert other.options.create_topics is False and other.options.decider is False
    assert other.options.replica == "/tmp/r.db" and other.options.client_id == "srv"
    assert other.options.timeout == 2.5
    assert other.transactional_id(5) == "x.y-decider-5" and other.decider_group == "x.y.deciders"


@pytest.mark.parametrize(
    "url",
    [
        "kafka://",
        "kafka://h:9092/events",
        "kafka://h:notaport",
        "kafka://h:9092/?task_partitions=0",
        "kafka://h:9092/?prefix=bad/prefix",
        "kafka://h:9092/?create_topics=maybe",
        "kafka://h:9092/?colour=blue",
        "kafka://h:9092/?timeout=-1",
    ],
)
def test_bad_urls_are_invalid_arguments(url: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        open_event_log(url)
    assert info.value.field == "event_log"


def test_virtual_partitions_map_both_ways_and_streams_use_kafkas_partitioner() -> None:
    layout = KafkaLayout.from_url(
        "kafka://h:9092/?task_partitions=5&project_partitions=2&workforce_partitions=3"
    )
    seen = set()
    for vp in range(layout.virtual_partitions):
        topic, partition = layout.topic_partition(vp)
        assert layout.virtual_partition(topic, partition) == vp
        seen.add((topic, partition))
    assert len(seen) == 10
    assert layout.topic_partition(0) == ("labelweave.tasks", 0)
    assert layout.topic_partition(5) == ("labelweave.projects", 0)
    assert layout.topic_partition(9) == ("labelweave.workforce", 2)
    assert layout.position("labelweave.projects", 1, 41) == Position(6, 42)
    assert layout.next_offset("labelweave.projects", 1, {6: 42}) == 42
    with pytest.raises(InvalidArgument):
        layout.topic_partition(10)
    with pytest.raises(InvalidArgument):
        layout.virtual_partition("labelweave.dlq", 0)
    for stream, topic, base, count in [
        ("task:t-17", "labelweave.tasks", 0, 5),
        ("project:demo", "labelweave.projects", 5, 2),
        ("person:alice", "labelweave.workforce", 7, 3),
    ]:
        key = stream.partition(":")[2].encode()
        vp, got_key = layout.stream_partition(stream)
        assert got_key == key
        assert vp == base + (murmur2(key) & 0x7FFFFFFF) % count
        assert layout.topic_partition(vp)[0] == topic
    with pytest.raises(InvalidArgument):
        layout.stream_partition("token:x")


# ---------------------------------------------------------------------- topics and records


def test_topics_are_created_once_and_a_different_partition_count_is_refused(
    kafka_broker: str, prefixes: list[str]
) -> None:
    from kafka import KafkaAdminClient

    prefix = new_prefix()
    prefixes.append(prefix)
    with pytest.raises(FailedPrecondition, match="create_topics=false"):
        open_kafka(kafka_url(prefix, create_topics=False))
    log = open_kafka(kafka_url(prefix, decider=False))
    log.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker)
    try:
        described = {
            d["name"]: len(d["partitions"])
            for d in admin.describe_topics(list(log.layout.partition_counts()))
        }
    finally:
        admin.close()
    assert described == log.layout.partition_counts()
    again = open_kafka(kafka_url(prefix, decider=False, create_topics=False))  # exists already: fine
    again.close()
    with pytest.raises(FailedPrecondition, match="has 3 partitions"):
        open_kafka(kafka_url(prefix, task_partitions=4))


def test_records_are_keyed_envelopes_in_the_default_partition(kafka_broker: str, prefixes: list[str]) -> None:
    prefix = new_prefix()
    prefixes.append(prefix)
    log = open_kafka(kafka_url(prefix))
    try:
        results = {
            stream: log.append(request(stream, 0, 2, command_id=f"c-{stream}", fingerprint="fp"))
            for stream in ("task:t-1", "task:t-2", "task:t-3", "project:demo", "person:alice")
        }
        consumer = KafkaConsumer(
            bootstrap_servers=kafka_broker, isolation_level="read_committed", enable_auto_commit=False
        )
        try:
            for stream, result in results.items():
                kind, _, ident = stream.partition(":")
                topic = {"task": log.layout.tasks_topic, "project": log.layout.projects_topic}.get(
                    kind, log.layout.workforce_topic
                )
                partitions = len(consumer.partitions_for_topic(topic))
                expected = (murmur2(ident.encode()) & 0x7FFFFFFF) % partitions
                vp = result.events[0].position.partition
                assert log.topic_partition(vp) == (topic, expected)
                tp = TopicPartition(topic, expected)
                consumer.assign([tp])
                consumer.seek(tp, result.events[0].position.offset - 1)
                records = consumer.poll(timeout_ms=5000, max_records=2)[tp]
                assert [r.key for r in records] == [ident.encode()] * 2
                assert [r.value for r in records] == [e.data for e in result.events]
                assert [r.offset + 1 for r in records] == [e.position.offset for e in result.events]
                headers = dict(records[0].headers)
                assert headers["lw-command-id"] == f"c-{stream}".encode()
                assert headers["lw-fingerprint"] == b"fp"
        finally:
            consumer.close()
    finally:
        log.close()


def test_big_batches_are_split_in_order_and_oversized_appends_refused(
    kafka_broker: str, prefixes: list[str]
) -> None:
    prefix = new_prefix()
    prefixes.append(prefix)
    log = open_kafka(kafka_url(prefix))  # one project partition: every project stream shares it
    try:
        big = "x" * 30_000
        reqs = [
            AppendRequest(f"project:b{i}", 0, [envelope(f"project:b{i}", big)], f"big-{i}") for i in range(40)
        ]  # 1.2 MB: more than one command record
        results = log.append_many(reqs)
        assert all(isinstance(r, AppendResult) and not r.duplicate for r in results), results
        positions = [r.events[0].position for r in results if isinstance(r, AppendResult)]
        assert positions == sorted(positions) and len({p.partition for p in positions}) == 1
        huge = AppendRequest("project:h", 0, [envelope("project:h", "y" * 1_000_000)], "huge")
        with pytest.raises(InvalidArgument, match="takes up to"):
            log.append(huge)
        assert log.stream_version("project:h") == 0
    finally:
        log.close()


def test_undecodable_commands_go_to_the_dead_letter_topic(kafka_broker: str, prefixes: list[str]) -> None:
    prefix = new_prefix()
    prefixes.append(prefix)
    log = open_kafka(kafka_url(prefix))
    try:
        vp = log.append(request("project:p", 0)).events[0].position.partition
        producer = KafkaProducer(bootstrap_servers=kafka_broker)
        producer.send(log.layout.commands_topic, value=b"\x0a\xff", partition=vp).get(timeout=10)
        producer.close()
        assert log.append(request("project:p", 1)).events[0].envelope.stream_version == 2  # not stuck
        consumer = KafkaConsumer(
            bootstrap_servers=kafka_broker, isolation_level="read_committed", enable_auto_commit=False
        )
        try:
            tp = TopicPartition(log.layout.dlq_topic, 0)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            records: list[Any] = []
            deadline = time.monotonic() + 10
            while not records and time.monotonic() < deadline:
                records.extend(consumer.poll(timeout_ms=500).get(tp, []))
        finally:
            consumer.close()
        assert [r.value for r in records] == [b"\x0a\xff"]
        reason = dict(records[0].headers)["lw-reason"]
        assert reason.startswith(b"undecodable command")
    finally:
        log.close()


def test_a_replay_reads_the_topics_as_the_log_reads_them(kafka_broker: str, prefixes: list[str]) -> None:
    prefix = new_prefix()
    prefixes.append(prefix)
    url = kafka_url(prefix)
    log = open_kafka(url)
    try:
        streams = [f"task:t-{i}" for i in range(8)] + ["project:p", "person:alice"]
        log.append_many([request(s, 0, 2) for s in streams])
        log.append_many([request(s, 2, 1) for s in streams[::2]])
        with pytest.raises(WrongExpectedVersion):
            log.append(request("task:t-0", 1))  # refused: nothing appended
        vp = log.append(request("task:t-1", 2)).events[0].position.partition
        producer = KafkaProducer(bootstrap_servers=kafka_broker)
        topic, partition = log.topic_partition(vp)
        producer.send(topic, key=b"t-1", value=b"not an envelope", partition=partition).get(timeout=10)
        producer.close()
        log.append(request("task:t-1", 3))  # after the foreign record
        head = log.head()
        expected = log.read({}, 1000)
        assert len(expected) == 2 * len(streams) + len(streams[::2]) + 2
        with KafkaReplay.from_url(url) as replay:
            assert all(replay.head()[p] >= o for p, o in head.items())  # markers take offsets too
            log.append(request("project:p", 3))  # after the replay opened: not in it
            batches = list(replay.batches(4))
    finally:
        log.close()
    got = [ev for batch in batches for ev in batch]
    assert len(batches) > 1 and all(batch for batch in batches)
    assert sorted((ev.position, ev.data) for ev in got) == [(ev.position, ev.data) for ev in expected]
    assert all(ev.envelope == codec.decode(ev.data) for ev in got)
    for p in {ev.position.partition for ev in got}:  # each partition in offset order
        offsets = [ev.position.offset for ev in got if ev.position.partition == p]
        assert offsets == sorted(offsets)


def test_a_replay_of_missing_topics_is_refused(kafka_broker: str) -> None:
    with pytest.raises(InvalidArgument, match="do not exist") as info:
        KafkaReplay.from_url(kafka_url(new_prefix()))
    assert info.value.field == "event_log"


def test_unreachable_broker_is_unavailable() -> None:
    began = time.monotonic()
    with pytest.raises(Unavailable, match="cannot reach Kafka"):
        open_event_log("kafka://127.0.0.1:1/?timeout=1")
    assert time.monotonic() - began < 10


def test_file_replica_resumes_where_it_stopped(
    kafka_broker: str, prefixes: list[str], tmp_path: Path
) -> None:
    prefix = new_prefix()
    prefixes.append(prefix)
    url = kafka_url(prefix, replica=tmp_path / "replica.db")
    log = open_kafka(url)
    try:
        first = [log.append(request("project:a", i)) for i in range(3)]
    finally:
        log.close()
    log = open_kafka(url)
    try:
        assert [e.position for e in log.read({}, 10)] == [r.events[0].position for r in first]
        log.append(request("project:a", 3))
        assert log.stream_version("project:a") == 4
        with pytest.raises(FailedPrecondition, match="another process"):
            open_kafka(url)  # one process per replica file
    finally:
        log.close()
    # the same file for another log (other topics) is rebuilt, not mixed in
    other = new_prefix()
    prefixes.append(other)
    log = open_kafka(kafka_url(other, replica=tmp_path / "replica.db"))
    try:
        assert log.read({}, 10) == []
        assert log.stream_version("project:a") == 0
    finally:
        log.close()


# ---------------------------------------------------------------------- several instances


def _appender(
    log: EventLog, streams: list[str], count: int, acked: list[AppendResult], errors: list[BaseException]
) -> threading.Thread:
    def run() -> None:
        try:
            for i in range(count):
                acked.append(append_with_retry(log, streams[i % len(streams)]))
        except BaseException as exc:
            errors.append(exc)

    return threading.Thread(target=run)


def _assert_consistent(log: EventLog, streams: list[str], acked: list[AppendResult]) -> None:
    """Versions gap-free, every acknowledged event readable exactly once, no event twice."""
    everything = log.read({}, 1_000_000)
    ids = [e.envelope.event_id for e in everything]
    assert len(ids) == len(set(ids)), "an event is in the log twice"
    assert {e.envelope.event_id for r in acked for e in r.events} <= set(ids)
    by_position = {e.position: e.data for e in everything}
    for r in acked:
        for e in r.events:
            assert by_position[e.position] == e.data
    commands = Counter(e.envelope.command_id for e in everything)
    assert all(n == 1 for n in commands.values()), "a command was appended twice"
    for stream in streams:
        versions = [e.envelope.stream_version for e in log.read_stream(stream)]
        assert versions == list(range(1, len(versions) + 1))
        assert log.stream_version(stream) == len(versions)


def _race(a: EventLog, b: EventLog, stream: str, command_id: str) -> list[AppendResult]:
    """Both instances run the optimistic loop for one command id, released at the same moment."""
    barrier = threading.Barrier(2)
    results: list[AppendResult] = []

    def run(log: EventLog) -> None:
        barrier.wait()
        results.append(append_with_retry(log, stream, command_id=command_id))

    racers = [threading.Thread(target=run, args=(log,)) for log in (a, b)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    assert len(results) == 2
    return results


def _wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _split(a: KafkaEventLog, b: KafkaEventLog, partitions: int) -> None:
    """Wait until the two instances share the decider partitions."""
    _wait_until(
        lambda: (
            a.owned_partitions()
            and b.owned_partitions()
            and len(a.owned_partitions() | b.owned_partitions()) == partitions
        ),
        30,
        "two deciders to split the partitions",
    )


def test_two_instances_decide_consistently_and_fail_over_on_close(
    kafka_broker: str, prefixes: list[str]
) -> None:
    prefix = new_prefix()
    prefixes.append(prefix)
    url = kafka_url(prefix, task_partitions=4)
    a, b = open_kafka(url), open_kafka(url)
    try:
        _split(a, b, a.layout.virtual_partitions)
        streams = [f"task:t{i}" for i in range(12)] + ["project:p", "person:x"]
        acked: list[AppendResult] = []
        errors: list[BaseException] = []
        threads = [_appender(log, streams, 25, acked, errors) for log in (a, b, a, b)]
        for t in threads:
            t.start()

        # the same command id sent to both instances at once: appended exactly once
        for n in range(10):
            results = _race(a, b, streams[n % len(streams)], f"race-{n}")
            assert sum(not r.duplicate for r in results) == 1
            assert results[0].events[0].position == results[1].events[0].position
            acked.extend(results)

        # failover: b leaves mid-load; a takes over b's partitions and finishes
        b_owned = b.owned_partitions()
        b.close()
        _wait_until(lambda: b_owned <= a.owned_partitions(), 30, "a to take over b's partitions")
        for t in threads:
            t.join()
        errors = [e for e in errors if not (isinstance(e, Unavailable) and "closed" in str(e))]
        assert not errors, errors
        _assert_consistent(a, streams, acked)
    finally:
        a.close()
        b.close()


def test_a_fenced_decider_recovers_and_nothing_is_decided_twice(
    kafka_broker: str, prefixes: list[str]
) -> None:
    prefix = new_prefix()
    prefixes.append(prefix)
    log = open_kafka(kafka_url(prefix))
    try:
        first = log.append(request("project:p", 0, command_id="before"))
        vp = first.events[0].position.partition
        # A zombie-fencing producer with the decider's transactional id (what a new owner does)
        intruder = KafkaProducer(
            bootstrap_servers=kafka_broker, transactional_id=log.layout.transactional_id(vp)
        )
        intruder.init_transactions()
        intruder.close()
        # The old producer is fenced: the next transaction fails, the decider takes the partition
        # again (new producer, catch-up) and decides the command; the requester never notices.
        results = [log.append(request("project:p", i + 1, command_id=f"after-{i}")) for i in range(3)]
        assert [r.events[0].envelope.stream_version for r in results] == [2, 3, 4]
        again = log.append(request("project:p", 0, command_id="after-0"))
        assert again.duplicate and again.events[0].position == results[0].events[0].position
        _assert_consistent(log, ["project:p"], [first, *results])
    finally:
        log.close()


def test_unanswered_command_is_unavailable_and_retrying_its_id_appends_once(
    kafka_broker: str, prefixes: list[str]
) -> None:
    prefix = new_prefix()
    prefixes.append(prefix)
    client = open_kafka(kafka_url(prefix, decider=False, timeout=1))  # nobody decides yet
    try:
        with pytest.raises(Unavailable, match="outcome is unknown"):
            client.append(request("project:p", 0, command_id="cmd-1"))
        server = open_kafka(kafka_url(prefix))  # a decider appears and finds the command queued
        try:
            retry = append_with_retry(server, "project:p", command_id="cmd-1")
            assert server.stream_version("project:p") == 1
            stored = server.outcome("cmd-1")
            assert stored is not None and [e.position for e in stored.events] == [
                e.position for e in retry.events
            ]
            _wait_until(lambda: client.stream_version("project:p") == 1, 10, "the client to see it")
            with pytest.raises(WrongExpectedVersion):
                client.append(request("project:p", 0))
        finally:
            server.close()
    finally:
        client.close()


def test_concurrent_process_shared_command_ids_and_failover_after_sigkill(
    kafka_broker: str, prefixes: list[str]
) -> None:
    prefix = new_prefix()
    prefixes.append(prefix)
    url = kafka_url(prefix, task_partitions=4, timeout=30)
    streams = [f"task:t{i}" for i in range(8)] + ["project:p"]
    parent = open_kafka(url)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.backends.kafka_util", "append", url, "60", *streams],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    child_acks: list[dict[str, Any]] = []
    assert child.stdout is not None
    stdout = child.stdout

    def read_child() -> None:
        for line in stdout:
            if line.startswith("{"):
                child_acks.append(json.loads(line))

    reader = threading.Thread(target=read_child, daemon=True)
    try:
        assert stdout.readline().strip() == "READY"
        reader.start()
        everyone = set(range(parent.layout.virtual_partitions))
        _wait_until(
            lambda: 0 < len(parent.owned_partitions()) < len(everyone), 30, "the child to own partitions"
        )
        acked: list[AppendResult] = []
        errors: list[BaseException] = []

        def shared() -> None:  # the child's shared command ids, sent at about the same time
            try:
                for i in range(0, 60, 3):
                    acked.append(
                        append_with_retry(parent, streams[i % len(streams)], command_id=f"shared-{i}")
                    )
            except BaseException as exc:
                errors.append(exc)

        threads = [_appender(parent, streams, 40, acked, errors) for _ in range(2)]
        threads.append(threading.Thread(target=shared))
        for t in threads:
            t.start()
        _wait_until(lambda: len(child_acks) >= 30, 60, "the child's appends")
        child.send_signal(
            signal.SIGKILL
        )  # mid-load, no goodbye: its partitions move after the session timeout
        child.wait()
        for t in threads:
            t.join()
        assert not errors, errors
        _wait_until(lambda: parent.owned_partitions() == everyone, 30, "the parent to own every partition")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        reader.join(timeout=5)
        parent.close()

    check = open_kafka(kafka_url(prefix, task_partitions=4, decider=False))  # a fresh replica from Kafka
    try:
        everything = {e.envelope.event_id: e for e in check.read({}, 1_000_000)}
        for ack in child_acks:
            for event_id, position in zip(ack["event_ids"], ack["positions"], strict=True):
                assert str(everything[event_id].position) == position, "an acknowledged append is lost"
        for ack in child_acks:
            if str(ack["command_id"]).startswith("shared-"):
                same = [r for r in acked if r.events[0].envelope.command_id == ack["command_id"]]
                for r in same:
                    assert [str(e.position) for e in r.events] == ack["positions"]
        _assert_consistent(check, streams, acked)
        shared_ids = Counter(
            e.envelope.command_id for e in everything.values() if e.envelope.command_id.startswith("shared-")
        )
        assert shared_ids and set(shared_ids.values()) == {1}
    finally:
        check.close()


def test_closed_log_is_unavailable(kafka_broker: str, prefixes: list[str]) -> None:
    prefix = new_prefix()
    prefixes.append(prefix)
    log = open_kafka(kafka_url(prefix, decider=False))
    log.close()
    for call in (lambda: log.append(request("project:a", 0)), lambda: log.read({}), lambda: log.head()):
        with pytest.raises(Unavailable):
            call()
