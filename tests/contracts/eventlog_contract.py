"""The behaviour every `EventLog` backend must show.

A backend's test module subclasses `EventLogContract` as `Test<Backend>EventLog` and implements
`make_log()` (it may add its own autouse fixtures, e.g. to get a temporary directory). Each test
gets a fresh log from the `log` fixture, which closes it afterwards. Nothing here may assume a
particular backend: no files, no SQL, no partition count beyond "offsets grow within a partition".
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
from coordinator.errors import InvalidArgument
from coordinator.eventlog import codec
from coordinator.eventlog.base import (
    AppendRequest,
    AppendResult,
    CommandReused,
    EventLog,
    Position,
    RecordedEvent,
    WrongExpectedVersion,
)

OCCURRED = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def envelope(stream_id: str, person: str = "p-1", *, command_id: str = "") -> events_pb2.EventEnvelope:
    return codec.make_envelope(
        events_pb2.ProjectMemberAdded(project_id=stream_id.removeprefix("project:"), person_id=person),
        stream_id=stream_id,
        actor_id="admin-1",
        actor_role=model_pb2.Role.ROLE_ADMIN,
        command_id=command_id,
        occurred_at=OCCURRED,
    )


def request(
    stream_id: str,
    expected_version: int,
    count: int = 1,
    *,
    command_id: str | None = None,
    fingerprint: str = "",
) -> AppendRequest:
    cid = uuid.uuid4().hex if command_id is None else command_id
    envs = [envelope(stream_id, f"p-{i}", command_id=cid) for i in range(count)]
    return AppendRequest(stream_id, expected_version, envs, cid, fingerprint)


def offsets(events: tuple[RecordedEvent, ...] | list[RecordedEvent]) -> list[int]:
    return [e.position.offset for e in events]


def append_with_retry(log: EventLog, stream_id: str, *, command_id: str | None = None) -> AppendResult:
    """The optimistic loop a command bus runs: read the version, append, retry on conflict."""
    cid = uuid.uuid4().hex if command_id is None else command_id
    while True:
        version = log.stream_version(stream_id)
        try:
            return log.append(request(stream_id, version, command_id=cid))
        except WrongExpectedVersion:
            continue


class EventLogContract:
    """Abstract: not collected (no `Test` prefix); backends subclass it."""

    gap_free_offsets = True
    """Offsets of each partition are exactly 1, 2, 3, … (the embedded backends). A backend whose
    offsets may skip (Kafka transaction markers) sets this to False."""

    def make_log(self) -> EventLog:
        raise NotImplementedError

    @pytest.fixture
    def log(self) -> Iterator[EventLog]:
        log = self.make_log()
        try:
            yield log
        finally:
            log.close()

    # ------------------------------------------------------------------ appends

    def test_append_assigns_contiguous_positions_and_stream_versions(self, log: EventLog) -> None:
        first = log.append(request("project:a", 0, 3))
        second = log.append(request("project:b", 0, 2))
        third = log.append(request("project:a", 3, 1))

        assert not first.duplicate
        assert [e.envelope.stream_version for e in first.events] == [1, 2, 3]
        assert [e.envelope.stream_version for e in second.events] == [1, 2]
        assert [e.envelope.stream_version for e in third.events] == [4]
        assert first.last_position == first.events[-1].position
        for result in (first, second, third):
            positions = offsets(result.events)
            assert positions == list(range(positions[0], positions[0] + len(positions)))
        a_offsets = offsets(first.events) + offsets(third.events)
        assert a_offsets == sorted(a_offsets)
        assert log.stream_version("project:a") == 4
        assert log.stream_version("project:b") == 2
        assert log.stream_version("project:nothing") == 0
        everything = log.read({}, 100)
        assert len(everything) == 6
        by_partition: dict[int, list[int]] = defaultdict(list)
        for ev in everything:
            by_partition[ev.position.partition].append(ev.position.offset)
        for offs in by_partition.values():
            assert offs == sorted(offs)
            if self.gap_free_offsets:
                assert offs == list(range(1, len(offs) + 1))

    def test_append_many_keeps_request_order_and_fails_requests_alone(self, log: EventLog) -> None:
        log.append(request("project:x", 0))
        log.append(request("project:d", 0, command_id="dup"))
        head = log.head()
        streams = [f"project:s{i:02d}" for i in range(40)]
        reqs = [request(s, 0, 2) for s in streams]
        reqs.insert(5, request("project:x", 0))  # stale version
        reqs.insert(9, request("project:d", 0, command_id="dup"))  # retried command
        results = log.append_many(reqs)

        assert len(results) == len(reqs)
        assert isinstance(results[5], WrongExpectedVersion)
        dup = results[9]
        assert isinstance(dup, AppendResult) and dup.duplicate
        fresh = [r for i, r in enumerate(results) if i not in (5, 9)]
        assert all(isinstance(r, AppendResult) and not r.duplicate for r in fresh)
        positions = [e.position for r in fresh if isinstance(r, AppendResult) for e in r.events]
        by_partition: dict[int, list[int]] = defaultdict(list)
        for pos in positions:
            by_partition[pos.partition].append(pos.offset)
        for offs in by_partition.values():
            assert offs == sorted(offs)  # request i before request i + 1 within a partition
        assert log.stream_version("project:x") == 1
        assert all(log.stream_version(s) == 2 for s in streams)
        assert sum(len(log.read_stream(s)) for s in streams) == 80
        assert len(log.read(head, 1000)) == 80

    def test_envelope_fields_are_preserved_byte_exactly(self, log: EventLog) -> None:
        req = request("project:a", 0, 2, fingerprint="fp-1")
        originals = [events_pb2.EventEnvelope.FromString(codec.encode(e)) for e in req.envelopes]
        before = datetime.now(UTC)

        result = log.append(req)

        after = datetime.now(UTC)
        assert [codec.encode(e) for e in req.envelopes] == [codec.encode(e) for e in originals], (
            "the caller's envelopes must not be modified"
        )
        for original, ev in zip(originals, result.events, strict=True):
            assert ev.data == codec.encode(ev.envelope)
            assert codec.decode(ev.data) == ev.envelope
            recorded_at = codec.from_timestamp(ev.envelope.recorded_at)
            assert before.timestamp() - 1 <= recorded_at.timestamp() <= after.timestamp() + 1
            expected = events_pb2.EventEnvelope()
            expected.CopyFrom(original)
            expected.stream_version = ev.envelope.stream_version
            expected.recorded_at.CopyFrom(ev.envelope.recorded_at)
            assert ev.envelope == expected
            assert ev.type == "project_member_added"
            assert ev.stream_id == "project:a"
            assert codec.from_timestamp(ev.envelope.occurred_at) == OCCURRED
        for read_back in (log.read({}, 10), log.read_stream("project:a")):
            assert [e.data for e in read_back] == [e.data for e in result.events]
            assert [e.envelope for e in read_back] == [e.envelope for e in result.events]
            assert [e.position for e in read_back] == [e.position for e in result.events]

    def test_read_after_checkpoint_respects_limit(self, log: EventLog) -> None:
        for i in range(10):
            log.append(request("project:a", i))
        all_events = log.read({}, 100)
        assert len(all_events) == 10
        part = all_events[0].position.partition

        assert log.read({}, 3) == all_events[:3]
        assert log.read({part: all_events[2].position.offset}, 4) == all_events[3:7]
        assert log.read({part: all_events[-1].position.offset}, 10) == []
        # Paging with the cursor reaches every event exactly once.
        cursor: dict[int, int] = {}
        paged: list[RecordedEvent] = []
        while batch := log.read(cursor, 3):
            paged.extend(batch)
            for ev in batch:
                cursor[ev.position.partition] = ev.position.offset
        assert paged == all_events

    def test_read_stream_after_version(self, log: EventLog) -> None:
        log.append(request("project:a", 0, 2))
        log.append(request("project:b", 0, 1))
        log.append(request("project:a", 2, 3))

        assert [e.envelope.stream_version for e in log.read_stream("project:a")] == [1, 2, 3, 4, 5]
        assert [e.envelope.stream_version for e in log.read_stream("project:a", 3)] == [4, 5]
        assert log.read_stream("project:a", 5) == []
        assert log.read_stream("project:missing") == []
        assert {e.stream_id for e in log.read_stream("project:b")} == {"project:b"}

    def test_wrong_expected_version_is_refused_and_nothing_appended(self, log: EventLog) -> None:
        log.append(request("project:a", 0, 2))
        head = log.head()

        for expected in (0, 1, 3):
            with pytest.raises(WrongExpectedVersion) as info:
                log.append(request("project:a", expected, 3, command_id=f"c-{expected}"))
            assert (info.value.stream_id, info.value.expected, info.value.actual) == (
                "project:a",
                expected,
                2,
            )
            assert log.outcome(f"c-{expected}") is None
        with pytest.raises(WrongExpectedVersion):
            log.append(request("project:new", 1))

        assert log.head() == head
        assert log.stream_version("project:a") == 2
        assert len(log.read_stream("project:a")) == 2
        assert log.stream_version("project:new") == 0

    def test_duplicate_command_returns_first_outcome_and_appends_nothing(self, log: EventLog) -> None:
        first = log.append(request("project:a", 0, 2, command_id="cmd-1", fingerprint="fp"))
        log.append(request("project:b", 0))
        head = log.head()

        # A retry carries new event ids and (here) a now-stale expected version: still the first outcome.
        again = log.append(request("project:a", 0, 2, command_id="cmd-1", fingerprint="fp"))
        no_fingerprint = log.append(request("project:a", 7, 1, command_id="cmd-1"))

        for dup in (again, no_fingerprint):
            assert dup.duplicate
            assert [e.position for e in dup.events] == [e.position for e in first.events]
            assert [e.data for e in dup.events] == [e.data for e in first.events]
            assert [e.envelope for e in dup.events] == [e.envelope for e in first.events]
        assert log.head() == head
        assert log.stream_version("project:a") == 2
        stored = log.outcome("cmd-1")
        assert stored is not None
        assert [e.data for e in stored.events] == [e.data for e in first.events]

    def test_same_command_id_with_different_fingerprint_is_command_reused(self, log: EventLog) -> None:
        log.append(request("project:a", 0, command_id="cmd-1", fingerprint="fp-a"))
        head = log.head()

        with pytest.raises(CommandReused):
            log.append(request("project:a", 1, command_id="cmd-1", fingerprint="fp-b"))

        assert log.head() == head
        assert log.stream_version("project:a") == 1

    def test_empty_command_id_records_no_idempotency(self, log: EventLog) -> None:
        first = log.append(request("project:a", 0, command_id=""))
        second = log.append(request("project:a", 1, command_id=""))

        assert not second.duplicate
        assert first.events[0].position != second.events[0].position
        assert log.outcome("") is None
        assert log.stream_version("project:a") == 2

    def test_empty_append_is_refused(self, log: EventLog) -> None:
        with pytest.raises(InvalidArgument):
            log.append(AppendRequest("project:a", 0, [], "cmd-empty"))
        assert log.stream_version("project:a") == 0
        assert log.outcome("cmd-empty") is None
        assert sum(log.head().values()) == 0

    def test_outcome_of_unknown_command_is_none_and_of_known_is_first_result(self, log: EventLog) -> None:
        assert log.outcome("never-seen") is None
        first = log.append(request("project:a", 0, 3, command_id="cmd-1"))

        stored = log.outcome("cmd-1")

        assert stored is not None
        assert [e.position for e in stored.events] == [e.position for e in first.events]
        assert [e.data for e in stored.events] == [e.data for e in first.events]
        assert log.outcome("never-seen") is None

    # ------------------------------------------------------------------ head and wait

    def test_head_is_zero_when_empty_and_tracks_last_offset(self, log: EventLog) -> None:
        assert log.head() and all(off == 0 for off in log.head().values())
        result = log.append(request("project:a", 0, 3))
        last = result.events[-1].position
        assert log.head()[last.partition] == last.offset

    def test_wait_returns_true_when_another_thread_appends(self, log: EventLog) -> None:
        start = log.head()

        def later() -> None:
            time.sleep(0.2)
            log.append(request("project:a", 0))

        thread = threading.Thread(target=later)
        began = time.monotonic()
        thread.start()
        try:
            assert log.wait(start, timeout=10.0) is True
        finally:
            thread.join()
        assert time.monotonic() - began < 5.0
        assert log.wait(start, timeout=0.0) is True, "events after the checkpoint exist: no waiting"

    def test_wait_returns_false_on_timeout(self, log: EventLog) -> None:
        log.append(request("project:a", 0))
        began = time.monotonic()
        assert log.wait(log.head(), timeout=0.3) is False
        assert time.monotonic() - began >= 0.25

    def test_subscribe_yields_every_event_once_in_order_during_concurrent_appends(
        self, log: EventLog
    ) -> None:
        total = 500
        streams = [f"project:s{i}" for i in range(5)]
        appended: list[Position] = []

        def writer() -> None:
            for i in range(total):
                stream = streams[i % len(streams)]
                appended.extend(e.position for e in log.append(request(stream, i // len(streams))).events)

        stopped = threading.Event()
        seen: list[RecordedEvent] = []
        thread = threading.Thread(target=writer)
        thread.start()
        deadline = time.monotonic() + 30
        try:
            for ev in log.subscribe({}, poll=0.05, batch=37, stopped=stopped):
                seen.append(ev)
                if len(seen) == total or time.monotonic() > deadline:
                    break
        finally:
            stopped.set()
            thread.join()

        assert len(seen) == total
        assert len({e.envelope.event_id for e in seen}) == total
        assert sorted(e.position for e in seen) == sorted(appended)
        for part in {p.partition for p in appended}:
            # Within a partition, in exactly the order the log accepted them.
            assert [e.position for e in seen if e.position.partition == part] == [
                p for p in appended if p.partition == part
            ]
        for stream in streams:
            versions = [e.envelope.stream_version for e in seen if e.stream_id == stream]
            assert versions == list(range(1, total // len(streams) + 1))
        assert list(log.subscribe({}, follow=False)) == seen

    # ------------------------------------------------------------------ concurrency

    def test_concurrent_appends_lose_nothing_and_keep_stream_versions_gap_free(self, log: EventLog) -> None:
        threads, per_thread = 16, 25
        streams = [f"project:s{i}" for i in range(50)]
        acked: list[AppendResult] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(per_thread):
                    result = append_with_retry(log, rng.choice(streams))
                    with lock:
                        acked.append(result)
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

        assert not errors
        assert len(acked) == threads * per_thread
        everything = log.read({}, 100_000)
        assert len(everything) == threads * per_thread
        assert {e.envelope.event_id for r in acked for e in r.events} == {
            e.envelope.event_id for e in everything
        }
        for stream in streams:
            versions = [e.envelope.stream_version for e in log.read_stream(stream)]
            assert versions == list(range(1, len(versions) + 1))
            assert log.stream_version(stream) == len(versions)
        assert sum(log.stream_version(s) for s in streams) == threads * per_thread

    def test_concurrent_duplicate_command_ids_append_exactly_once(self, log: EventLog) -> None:
        threads = 8
        barrier = threading.Barrier(threads)
        results: list[AppendResult] = []
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                barrier.wait()
                # Every thread believes the stream is empty: retries of one command race each other.
                results.append(
                    log.append(request("project:a", 0, 2, command_id="cmd-shared", fingerprint="fp"))
                )
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

        assert not errors
        assert len(results) == threads
        assert sum(not r.duplicate for r in results) == 1
        first = next(r for r in results if not r.duplicate)
        for r in results:
            assert [e.position for e in r.events] == [e.position for e in first.events]
            assert [e.data for e in r.events] == [e.data for e in first.events]
        assert log.stream_version("project:a") == 2
        if self.gap_free_offsets:
            assert sum(log.head().values()) == 2
        assert len(log.read({}, 100)) == 2
