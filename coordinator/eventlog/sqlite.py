"""SQLite event log (`sqlite:///path/to/events.db`): the single-node production backend.

Writes go through one writer thread that owns the write connection and commits in groups: it
takes one queued request, drains up to `MAX_BATCH - 1` more without blocking, and checks and
inserts all of them in ONE `BEGIN IMMEDIATE` transaction (a savepoint per request, so a request
that fails its checks does not affect the others), then commits once and resolves every
caller's future. A caller is acknowledged only after that commit (`synchronous=FULL` by default,
so after the WAL fsync).

Every check (command dedupe, expected version, next offset) runs inside the write transaction
against the database itself, so other processes appending to the same file (an offline CLI
command, a second server by mistake) stay correct: SQLite's write lock serialises them.

Reads use one connection per thread (WAL: readers never block the writer nor each other).
`wait()` is woken by this process's commits and also polls the head, so it notices appends
made by other processes.
"""

from __future__ import annotations

import contextlib
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

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
from coordinator.eventlog.memory import PARTITION, PreparedEvent, prepare_append, record_metrics, recorded
from coordinator.metrics import Metrics

SCHEMA_VERSION = 1
"""Stored in `PRAGMA user_version`; bump with a migration step in `_migrate`."""
MAX_BATCH = 256
"""Most requests committed in one transaction."""
URL_PREFIX = "sqlite:///"
SYNCHRONOUS_MODES = ("full", "normal")

_SCHEMA_V1 = (
    """
    CREATE TABLE IF NOT EXISTS events (
        "offset"        INTEGER PRIMARY KEY AUTOINCREMENT,
        stream_id       TEXT    NOT NULL,
        stream_version  INTEGER NOT NULL,
        event_id        TEXT    NOT NULL UNIQUE,
        type            TEXT    NOT NULL,
        command_id      TEXT    NOT NULL,
        recorded_at_us  INTEGER NOT NULL,
        data            BLOB    NOT NULL,
        UNIQUE (stream_id, stream_version)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS commands (
        command_id    TEXT    PRIMARY KEY,
        fingerprint   TEXT    NOT NULL,
        first_offset  INTEGER NOT NULL,
        last_offset   INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
)

_INSERT_EVENT = (
    'INSERT INTO events ("offset", stream_id, stream_version, event_id, type, command_id, recorded_at_us,'
    " data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

_INSERT_COMMAND = (
    "INSERT INTO commands (command_id, fingerprint, first_offset, last_offset) VALUES (?, ?, ?, ?)"
)

_SELECT_COMMANDS = (
    "SELECT command_id, fingerprint, first_offset, last_offset FROM commands WHERE command_id IN ({})"
)
_SELECT_VERSIONS = (
    "WITH s(id) AS (VALUES {})"
    " SELECT id, (SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = s.id) FROM s"
)
"""Current version of every stream of a batch: one index seek each (MAX per stream)."""

_HEAD = 'SELECT COALESCE(MAX("offset"), 0) FROM events'

Row = tuple[str, int, str, str, str, int, bytes]
"""An events row without its offset (assigned by the writer)."""


def parse_sqlite_url(url: str) -> tuple[Path, str]:
    """`sqlite:///rel/path` or `sqlite:////abs/path`, optional `?synchronous=full|normal`."""
    if not url.startswith(URL_PREFIX):
        raise InvalidArgument(
            f"not a SQLite URL: {url!r} (expected sqlite:///relative/path or sqlite:////absolute/path)",
            field="event_log",
        )
    rest, _, query = url[len(URL_PREFIX) :].partition("?")
    if not rest or rest == ":memory:" or rest.endswith("/"):
        raise InvalidArgument(
            f"SQLite URL {url!r} names no database file (use memory:// for a throwaway log)",
            field="event_log",
        )
    synchronous = "full"
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "synchronous":
            raise InvalidArgument(
                f"unknown SQLite URL option {key!r} (supported: synchronous)", field="event_log"
            )
        if value.lower() not in SYNCHRONOUS_MODES:
            raise InvalidArgument(
                f"synchronous={value!r} is not one of {', '.join(SYNCHRONOUS_MODES)}", field="event_log"
            )
        synchronous = value.lower()
    return Path(rest), synchronous


@dataclass(frozen=True)
class _Appended:
    first: int
    last: int


@dataclass(frozen=True)
class _Duplicate:
    first: int
    last: int


@dataclass(frozen=True)
class _Pending:
    request: AppendRequest
    rows: list[Row]
    future: Future[_Appended | _Duplicate]


class SqliteEventLog(EventLog):
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        metrics: Metrics | None = None,
        busy_timeout: float = 10.0,
        poll_interval: float = 0.05,
        url: str = "",
    ) -> None:
        if synchronous.lower() not in SYNCHRONOUS_MODES:
            raise InvalidArgument(
                f"synchronous={synchronous!r} is not one of {SYNCHRONOUS_MODES}", field="event_log"
            )
        self.path = Path(path)
        self.url = url or f"{URL_PREFIX}{self.path}"
        self._synchronous = synchronous.upper()
        self._metrics = metrics
        self._busy_timeout = busy_timeout
        self._poll = poll_interval
        self.path.parent.mkdir(parents=True, exist_ok=True)

        self._closed = False
        self._submit_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._cond = threading.Condition(threading.Lock())
        self._local = threading.local()
        self._readers: dict[threading.Thread, sqlite3.Connection] = {}
        self._readers_lock = threading.Lock()

        self._wconn = self._connect()
        try:
            self._wconn.execute(f"PRAGMA synchronous={self._synchronous}")
            mode = self._wconn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise Unavailable(f"could not switch {self.path} to WAL mode (got {mode})")
            self._migrate()
            self._wconn.execute("PRAGMA busy_timeout=0")  # the writer polls itself: see _begin
            self._committed = _head(self._wconn)
        except BaseException:
            self._wconn.close()
            raise
        self._writer = threading.Thread(
            target=self._run_writer, name=f"eventlog-writer:{self.path.name}", daemon=True
        )
        self._writer.start()

    @classmethod
    def from_url(cls, url: str, *, metrics: Metrics | None = None) -> SqliteEventLog:
        path, synchronous = parse_sqlite_url(url)
        return cls(path, synchronous=synchronous, metrics=metrics, url=url)

    # ------------------------------------------------------------------ setup

    def _connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open event log {self.path}: {exc}") from exc
        if readonly:
            conn.execute("PRAGMA query_only=ON")
        return conn

    def _migrate(self) -> None:
        conn = self._wconn
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"event log {self.path} has schema version {version};"
                    f" this build knows up to {SCHEMA_VERSION}"
                )
            if version < 1:
                for ddl in _SCHEMA_V1:
                    conn.execute(ddl)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ writes

    def append(self, request: AppendRequest) -> AppendResult:
        result = self.append_many([request])[0]
        if isinstance(result, LabelweaveError):
            raise result
        return result

    def append_many(self, requests: Sequence[AppendRequest]) -> list[AppendResult | LabelweaveError]:
        """Queue every request at once, in order, so the writer commits them in that order and
        (up to MAX_BATCH requests) in one transaction: one fsync for a whole import batch."""
        started = time.perf_counter()
        slots: list[tuple[list[PreparedEvent], Future[_Appended | _Duplicate]] | LabelweaveError] = []
        pendings: list[_Pending] = []
        for request in requests:
            try:
                prepared = prepare_append(request)
            except LabelweaveError as exc:
                slots.append(exc)
                continue
            future: Future[_Appended | _Duplicate] = Future()
            pendings.append(_Pending(request, self._rows(request, prepared), future))
            slots.append((prepared, future))
        with self._submit_lock:
            if self._closed:
                raise Unavailable("the event log is closed")
            for pending in pendings:
                self._queue.put(pending)
        out: list[AppendResult | LabelweaveError] = []
        for slot in slots:
            if isinstance(slot, LabelweaveError):
                out.append(slot)
                continue
            prepared, future = slot
            try:
                outcome = future.result()
            except LabelweaveError as exc:
                out.append(exc)
                continue
            if isinstance(outcome, _Duplicate):
                out.append(AppendResult(self._read_range(outcome.first, outcome.last), duplicate=True))
                continue
            record_metrics(self._metrics, prepared, started, batch=None)
            out.append(AppendResult(recorded(prepared, outcome.first)))
        return out

    @staticmethod
    def _rows(request: AppendRequest, prepared: list[PreparedEvent]) -> list[Row]:
        rows: list[Row] = []
        for p in prepared:
            env = p.envelope
            recorded_us = env.recorded_at.seconds * 1_000_000 + env.recorded_at.nanos // 1000
            rows.append(
                (
                    env.stream_id,
                    env.stream_version,
                    env.event_id,
                    env.type,
                    request.command_id,
                    recorded_us,
                    p.data,
                )
            )
        return rows

    def _run_writer(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._commit_batch(batch)
        self._wconn.close()

    def _commit_batch(self, batch: list[_Pending]) -> None:
        conn = self._wconn
        try:
            self._begin()
        except Exception as exc:
            self._fail(batch, exc)
            return
        try:
            try:
                outcomes, head = self._apply_batch(conn, batch)
            except sqlite3.IntegrityError:
                # Only a reused event id gets here: start over one request at a time, each in
                # its own savepoint, so the offender fails alone.
                conn.execute("ROLLBACK")
                self._begin()
                outcomes, head = self._apply_one_by_one(conn, batch)
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._fail(batch, exc)
            return
        with self._cond:
            self._committed = max(self._committed, head)
            self._cond.notify_all()
        if self._metrics is not None:
            self._metrics.append_batch_size.observe(len(batch))
        for pending, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, LabelweaveError):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)

    def _apply_batch(
        self, conn: sqlite3.Connection, batch: list[_Pending]
    ) -> tuple[list[_Appended | _Duplicate | LabelweaveError], int]:
        """Check every request against the database plus the requests before it in the batch,
        then insert all accepted events and command rows with two statements.

        A constant number of statements per batch, not per request: every statement releases and
        re-takes the GIL, and the writer thread's time per batch is the service's write ceiling."""
        next_offset = _head(conn) + 1
        command_ids = list({p.request.command_id for p in batch if p.request.command_id})
        commands: dict[str, tuple[str, int, int]] = {}
        if command_ids:
            sql = _SELECT_COMMANDS.format(", ".join(["?"] * _padded_len(command_ids)))
            for cid, fingerprint, first, last in conn.execute(sql, _pad(command_ids)):
                commands[cid] = (fingerprint, int(first), int(last))
        streams = list({p.request.stream_id for p in batch})
        sql = _SELECT_VERSIONS.format(", ".join(["(?)"] * _padded_len(streams)))
        versions: dict[str, int] = {sid: int(v) for sid, v in conn.execute(sql, _pad(streams))}
        outcomes: list[_Appended | _Duplicate | LabelweaveError] = []
        event_rows: list[tuple[Any, ...]] = []
        command_rows: list[tuple[str, str, int, int]] = []
        for pending in batch:
            req = pending.request
            prior = commands.get(req.command_id) if req.command_id else None
            if prior is not None:
                outcomes.append(_duplicate_or_reused(req, *prior))
                continue
            if versions[req.stream_id] != req.expected_version:
                outcomes.append(
                    WrongExpectedVersion(req.stream_id, req.expected_version, versions[req.stream_id])
                )
                continue
            first, last = next_offset, next_offset + len(pending.rows) - 1
            event_rows.extend((first + i, *row) for i, row in enumerate(pending.rows))
            versions[req.stream_id] = req.expected_version + len(pending.rows)
            if req.command_id:
                commands[req.command_id] = (req.fingerprint, first, last)
                command_rows.append((req.command_id, req.fingerprint, first, last))
            next_offset = last + 1
            outcomes.append(_Appended(first, last))
        if event_rows:
            conn.executemany(_INSERT_EVENT, event_rows)
        if command_rows:
            conn.executemany(_INSERT_COMMAND, command_rows)
        return outcomes, next_offset - 1

    def _apply_one_by_one(
        self, conn: sqlite3.Connection, batch: list[_Pending]
    ) -> tuple[list[_Appended | _Duplicate | LabelweaveError], int]:
        next_offset = _head(conn) + 1
        outcomes: list[_Appended | _Duplicate | LabelweaveError] = []
        for pending in batch:
            outcome = self._apply(conn, pending, next_offset)
            if isinstance(outcome, _Appended):
                next_offset = outcome.last + 1
            outcomes.append(outcome)
        return outcomes, next_offset - 1

    def _begin(self) -> None:
        """`BEGIN IMMEDIATE`, retrying every millisecond or two while another process writes.

        SQLite's own busy handler backs off to 100 ms sleeps, so against a busy writer in another
        process (which takes the lock again microseconds after each commit) it almost never wins:
        a CLI append would starve until the timeout. Short jittered polls share the lock fairly.
        """
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.0002
        while True:
            try:
                self._wconn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.002)

    @staticmethod
    def _apply(
        conn: sqlite3.Connection, pending: _Pending, first: int
    ) -> _Appended | _Duplicate | LabelweaveError:
        """Check and insert one request inside the batch transaction; sqlite errors other than
        constraint violations propagate and fail the whole batch."""
        req = pending.request
        if req.command_id:
            row = conn.execute(
                "SELECT fingerprint, first_offset, last_offset FROM commands WHERE command_id = ?",
                (req.command_id,),
            ).fetchone()
            if row is not None:
                if req.fingerprint and row[0] and req.fingerprint != row[0]:
                    return CommandReused(
                        f"command id {req.command_id} was used before for a different command",
                        field="command_id",
                    )
                return _Duplicate(int(row[1]), int(row[2]))
        actual = int(
            conn.execute(
                "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = ?", (req.stream_id,)
            ).fetchone()[0]
        )
        if actual != req.expected_version:
            return WrongExpectedVersion(req.stream_id, req.expected_version, actual)
        last = first + len(pending.rows) - 1
        conn.execute("SAVEPOINT request")
        try:
            conn.executemany(_INSERT_EVENT, [(first + i, *row) for i, row in enumerate(pending.rows)])
            if req.command_id:
                conn.execute(
                    _INSERT_COMMAND,
                    (req.command_id, req.fingerprint, first, last),
                )
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK TO request")
            conn.execute("RELEASE request")
            return InvalidArgument(f"event id already in the log ({exc})", field="envelopes.event_id")
        conn.execute("RELEASE request")
        return _Appended(first, last)

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        for pending in batch:
            err = Unavailable(f"event log commit failed: {exc}")
            err.__cause__ = exc
            pending.future.set_exception(err)

    # ------------------------------------------------------------------ reads

    def outcome(self, command_id: str, fingerprint: str = "") -> AppendResult | None:
        if not command_id:
            return None
        rows = self._query(
            "SELECT first_offset, last_offset, fingerprint FROM commands WHERE command_id = ?", (command_id,)
        )
        if not rows:
            return None
        if fingerprint and rows[0][2] and fingerprint != rows[0][2]:
            raise CommandReused(
                f"command_id {command_id!r} was used before for a different command", field="command_id"
            )
        return AppendResult(self._read_range(int(rows[0][0]), int(rows[0][1])), duplicate=True)

    def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        rows = self._query(
            'SELECT "offset", data FROM events WHERE stream_id = ? AND stream_version > ?'
            " ORDER BY stream_version",
            (stream_id, after_version),
        )
        return [_recorded(off, data) for off, data in rows]

    def stream_version(self, stream_id: str) -> int:
        rows = self._query(
            "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = ?", (stream_id,)
        )
        return int(rows[0][0])

    def read(self, after: Checkpoint, limit: int = 1000) -> list[RecordedEvent]:
        if limit < 1:
            raise InvalidArgument(f"limit must be >= 1, got {limit}", field="limit")
        rows = self._query(
            'SELECT "offset", data FROM events WHERE "offset" > ? ORDER BY "offset" LIMIT ?',
            (after.get(PARTITION, 0), limit),
        )
        return [_recorded(off, data) for off, data in rows]

    def head(self) -> dict[int, int]:
        return {PARTITION: self._db_head()}

    def wait(self, after: Checkpoint, timeout: float) -> bool:
        target = after.get(PARTITION, 0)
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            if self._committed > target or self._db_head() > target:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                if self._closed:
                    return False
                if self._committed <= target:
                    self._cond.wait(min(remaining, self._poll))

    def close(self) -> None:
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)  # after every accepted request: they are committed first
        self._writer.join()
        with self._cond:
            self._cond.notify_all()
        with self._readers_lock:
            readers, self._readers = list(self._readers.values()), {}
        for conn in readers:
            conn.close()

    # ------------------------------------------------------------------ helpers

    def _db_head(self) -> int:
        return int(self._query(_HEAD)[0][0])

    def _read_range(self, first: int, last: int) -> tuple[RecordedEvent, ...]:
        rows = self._query(
            'SELECT "offset", data FROM events WHERE "offset" BETWEEN ? AND ? ORDER BY "offset"',
            (first, last),
        )
        return tuple(_recorded(off, data) for off, data in rows)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self._closed:
            raise Unavailable("the event log is closed")
        try:
            return self._reader().execute(sql, params).fetchall()
        except (sqlite3.ProgrammingError, sqlite3.OperationalError) as exc:
            raise Unavailable(f"event log read failed: {exc}") from exc

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = self._connect(readonly=True)
        with self._readers_lock:
            if self._closed:
                conn.close()
                raise Unavailable("the event log is closed")
            for thread in [t for t in self._readers if not t.is_alive()]:
                self._readers.pop(thread).close()  # left behind by a finished thread
            self._readers[threading.current_thread()] = conn
        self._local.conn = conn
        return conn


def _duplicate_or_reused(
    req: AppendRequest, fingerprint: str, first: int, last: int
) -> _Duplicate | CommandReused:
    if req.fingerprint and fingerprint and req.fingerprint != fingerprint:
        return CommandReused(
            f"command id {req.command_id} was used before for a different command", field="command_id"
        )
    return _Duplicate(first, last)


def _head(conn: sqlite3.Connection) -> int:
    return int(conn.execute(_HEAD).fetchone()[0])


def _padded_len(values: list[str]) -> int:
    """Round the number of `?`s up to a power of two: few distinct statements to cache."""
    n = 1
    while n < len(values):
        n *= 2
    return n


def _pad(values: list[str]) -> list[str]:
    return values + [values[0]] * (_padded_len(values) - len(values))


def _recorded(offset: int, data: bytes) -> RecordedEvent:
    return RecordedEvent(Position(PARTITION, int(offset)), codec.decode(data), bytes(data))
