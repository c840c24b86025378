from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from coordinator.errors import FailedPrecondition, InvalidArgument, Unavailable
from coordinator.eventlog.base import AppendResult, CommandReused, EventLog, WrongExpectedVersion
from coordinator.eventlog.factory import open_event_log
from coordinator.eventlog.sqlite import SqliteEventLog, parse_sqlite_url
from coordinator.metrics import Metrics
from tests.contracts.eventlog_contract import EventLogContract, request


class TestSqliteEventLog(EventLogContract):
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.directory = tmp_path

    def make_log(self) -> EventLog:
        return open_event_log(f"sqlite:///{self.directory / 'events.db'}")


# ---------------------------------------------------------------------- URLs and setup


def test_url_forms() -> None:
    assert parse_sqlite_url("sqlite:////abs/path/events.db") == (Path("/abs/path/events.db"), "full")
    assert parse_sqlite_url("sqlite:///rel/events.db") == (Path("rel/events.db"), "full")
    assert parse_sqlite_url("sqlite:///e.db?synchronous=normal") == (Path("e.db"), "normal")
    assert parse_sqlite_url("sqlite:///e.db?synchronous=FULL") == (Path("e.db"), "full")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://e.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///e.db?synchronous=off",
        "sqlite:///e.db?x=1",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        open_event_log(url)
    assert info.value.field == "event_log"


def test_opens_in_wal_mode_with_full_sync_creating_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "events.db"
    log = open_event_log(f"sqlite:///{path}")
    try:
        assert isinstance(log, SqliteEventLog)
        assert log.url == f"sqlite:///{path}"
        log.append(request("project:a", 0))
        # Idle writer: safe to peek at its connection settings.
        assert log._wconn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert other.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        log.close()
    normal = open_event_log(f"sqlite:///{path}?synchronous=normal")
    try:
        assert isinstance(normal, SqliteEventLog)
        assert normal._wconn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert normal.stream_version("project:a") == 1
    finally:
        normal.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    SqliteEventLog(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(FailedPrecondition):
        SqliteEventLog(path)


def test_closed_log_is_unavailable_and_close_is_idempotent(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "events.db")
    log.append(request("project:a", 0))
    log.close()
    log.close()
    with pytest.raises(Unavailable):
        log.append(request("project:a", 1))
    with pytest.raises(Unavailable):
        log.read({})


def test_close_commits_every_accepted_request_first(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "events.db")
    results: list[AppendResult | Exception] = []

    def worker(n: int) -> None:
        try:
            results.append(log.append(request(f"project:{n}", 0)))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    log.close()
    for t in threads:
        t.join()
    acked = [r for r in results if isinstance(r, AppendResult)]
    assert all(isinstance(r, (AppendResult, Unavailable)) for r in results)
    reopened = SqliteEventLog(tmp_path / "events.db")
    try:
        assert reopened.head() == {0: len(acked)}
    finally:
        reopened.close()


# ---------------------------------------------------------------------- group commit semantics


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """Take SQLite's write lock the way another process would."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def _submit(
    log: SqliteEventLog, req_: object, out: dict[str, object], key: str, *, stays_queued: bool = True
) -> threading.Thread:
    def run() -> None:
        try:
            out[key] = log.append(req_)  # type: ignore[arg-type]
        except Exception as exc:
            out[key] = exc

    queued = log._queue.qsize()
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 5
    while stays_queued and log._queue.qsize() <= queued and time.monotonic() < deadline:
        time.sleep(0.001)  # one at a time: the queue order is the submission order
    return thread


@pytest.mark.parametrize("path_taken", ["fast", "slow"])
def test_one_batch_resolves_each_request_on_its_own(tmp_path: Path, path_taken: str) -> None:
    """Fast: checks for the whole batch, then bulk inserts. Slow: a reused event id makes the
    writer redo the batch request by request in savepoints. Same outcomes either way."""
    path = tmp_path / "events.db"
    metrics = Metrics()
    log = SqliteEventLog(path, metrics=metrics)
    try:
        taken = request("project:taken", 0)
        log.append(taken)
        reused_event_id = request("project:x", 0, 2)
        reused_event_id.envelopes[1].CopyFrom(taken.envelopes[0])
        reused_event_id.envelopes[1].stream_id = "project:x"
        blocker = _hold_write_lock(path)
        out: dict[str, object] = {}
        # The writer takes this one and blocks on the lock; the rest queue up behind it.
        threads = [_submit(log, request("project:first", 0), out, "first", stays_queued=False)]
        time.sleep(0.2)
        threads += [
            _submit(log, request("project:t", 0), out, "t1"),
            _submit(log, request("project:t", 1), out, "t2"),  # sees t1's uncommitted version
            _submit(log, request("project:taken", 0), out, "stale"),  # fails alone
            _submit(log, request("project:u", 0, 2, command_id="dup", fingerprint="f"), out, "dup1"),
            _submit(log, request("project:u", 0, 2, command_id="dup", fingerprint="f"), out, "dup2"),
            _submit(log, request("project:v", 0, command_id="dup", fingerprint="other"), out, "reused"),
        ]
        if path_taken == "slow":
            threads.append(_submit(log, reused_event_id, out, "bad-event"))
        threads.append(_submit(log, request("project:w", 0), out, "w"))
        assert log._queue.qsize() == (8 if path_taken == "slow" else 7)
        blocker.execute("COMMIT")
        blocker.close()
        for t in threads:
            t.join()

        assert isinstance(out["first"], AppendResult)
        t1, t2, dup1, dup2 = (out[k] for k in ("t1", "t2", "dup1", "dup2"))
        assert isinstance(t1, AppendResult) and isinstance(t2, AppendResult)
        assert [e.envelope.stream_version for e in t1.events + t2.events] == [1, 2]
        assert isinstance(out["stale"], WrongExpectedVersion)
        assert isinstance(out["reused"], CommandReused)
        assert isinstance(dup1, AppendResult) and isinstance(dup2, AppendResult)
        assert not dup1.duplicate and dup2.duplicate
        assert dup1.events == dup2.events
        if path_taken == "slow":
            assert isinstance(out["bad-event"], InvalidArgument)
            assert log.stream_version("project:x") == 0
        w = out["w"]
        assert isinstance(w, AppendResult)
        assert w.events[0].position.offset == dup1.events[-1].position.offset + 1
        assert log.head() == {0: 7}
        assert [e.position.offset for e in log.read({}, 100)] == list(range(1, 8))
        assert metrics.registry.get_sample_value("labelweave_append_batch_commands_count") == 3
        assert metrics.registry.get_sample_value("labelweave_append_batch_commands_sum") == (
            10 if path_taken == "slow" else 9
        )
    finally:
        log.close()


def test_failed_commit_fails_the_whole_batch_with_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path, busy_timeout=0.2)
    try:
        blocker = _hold_write_lock(path)
        with pytest.raises(Unavailable):
            log.append(request("project:a", 0, command_id="c1"))
        blocker.execute("ROLLBACK")
        blocker.close()
        # The client retries with the same command id and succeeds.
        result = log.append(request("project:a", 0, command_id="c1"))
        assert not result.duplicate
        assert log.head() == {0: 1}
    finally:
        log.close()


def test_event_id_already_in_the_log_is_refused_alone(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "events.db")
    try:
        req = request("project:a", 0)
        log.append(req)
        again = request("project:b", 0, 2)
        again.envelopes = [again.envelopes[0], req.envelopes[0]]
        again.envelopes[1].stream_id = "project:b"
        with pytest.raises(InvalidArgument):
            log.append(again)
        assert log.head() == {0: 1}
        assert log.stream_version("project:b") == 0
    finally:
        log.close()


def test_wait_notices_appends_by_another_writer_of_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    reader = SqliteEventLog(path, poll_interval=0.02)
    other = SqliteEventLog(path)  # its own writer and condition: only polling can see it
    try:
        start = reader.head()
        timer = threading.Timer(0.2, lambda: other.append(request("project:a", 0)))
        timer.start()
        began = time.monotonic()
        assert reader.wait(start, timeout=10) is True
        assert time.monotonic() - began < 2
        timer.join()
        assert reader.stream_version("project:a") == 1
    finally:
        other.close()
        reader.close()
