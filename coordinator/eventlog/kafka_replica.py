"""The local replica index of the Kafka event log: every committed event, in SQLite.

Each process tails the event partitions (read_committed) into this index and answers reads from
it; the deciders check appends against it. Rows are keyed by (virtual partition, Kafka offset),
indexed by (stream id, stream version), command id and event id. `cursors` holds, per virtual
partition, the next Kafka offset the tailer will read, committed in the same transaction as the
rows it covers, so a file replica restarts where it stopped. The decider of a partition also
inserts its own committed events directly (the tailer's later copy is ignored), so its next batch
is checked against them without waiting for the tailer.

A replica is a cache: `meta` records the layout and topic ids it was built from, and a replica
built from other topics (deleted and re-created, another prefix, other partition counts) is
emptied and rebuilt. One process per file (`locking_mode=EXCLUSIVE`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.errors import FailedPrecondition, Unavailable

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_CHUNK = 400
"""Most `?` parameters in one IN list."""

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS events (
        vp              INTEGER NOT NULL,
        kafka_offset    INTEGER NOT NULL,
        stream_id       TEXT    NOT NULL,
        stream_version  INTEGER NOT NULL,
        event_id        TEXT    NOT NULL,
        command_id      TEXT    NOT NULL,
        fingerprint     TEXT    NOT NULL,
        data            BLOB    NOT NULL,
        PRIMARY KEY (vp, kafka_offset)
    )
    """,
    "CREATE INDEX IF NOT EXISTS events_stream ON events (stream_id, stream_version)",
    "CREATE INDEX IF NOT EXISTS events_command ON events (command_id) WHERE command_id <> ''",
    "CREATE INDEX IF NOT EXISTS events_event_id ON events (event_id)",
    "CREATE TABLE IF NOT EXISTS cursors (vp INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

_INSERT = (
    "INSERT OR IGNORE INTO events (vp, kafka_offset, stream_id, stream_version, event_id, command_id,"
    " fingerprint, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class Row:
    vp: int
    offset: int
    """Kafka offset."""
    stream_id: str
    stream_version: int
    event_id: str
    command_id: str
    fingerprint: str
    data: bytes

    def values(self) -> tuple[Any, ...]:
        return (
            self.vp,
            self.offset,
            self.stream_id,
            self.stream_version,
            self.event_id,
            self.command_id,
            self.fingerprint,
            self.data,
        )


@dataclass(frozen=True)
class StoredCommand:
    vp: int
    fingerprint: str
    events: tuple[tuple[int, bytes], ...]
    """(Kafka offset, data) in offset order."""


class Replica:
    """Thread-safe (one connection behind a lock: every statement is short)."""

    def __init__(self, path: str, identity: Mapping[str, Any]) -> None:
        self.path = path
        self._lock = threading.RLock()
        memory = path in ("", ":memory:")
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(
                ":memory:" if memory else path, isolation_level=None, check_same_thread=False, timeout=1.0
            )
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open the replica index {path}: {exc}") from exc
        try:
            if not memory:
                self._conn.execute("PRAGMA locking_mode=EXCLUSIVE")
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._setup(dict(identity))
        except sqlite3.OperationalError as exc:
            self._conn.close()
            raise FailedPrecondition(
                f"cannot use the replica index {path} ({exc}); is another process using it?"
            ) from exc
        except BaseException:
            self._conn.close()
            raise
        self._closed = False

    def _setup(self, identity: dict[str, Any]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"replica index {self.path} has schema version {version};"
                    f" this build knows {SCHEMA_VERSION}"
                )
            for ddl in _SCHEMA:
                conn.execute(ddl)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            wanted = json.dumps(identity, sort_keys=True)
            row = conn.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
            if row is None or row[0] != wanted:
                if row is not None:
                    logger.warning(
                        "replica index %s was built from another log (%s); rebuilding it", self.path, row[0]
                    )
                conn.execute("DELETE FROM events")
                conn.execute("DELETE FROM cursors")
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('identity', ?)", (wanted,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ writes

    def cursors(self) -> dict[int, int]:
        return {int(vp): int(off) for vp, off in self._query("SELECT vp, next_offset FROM cursors")}

    def apply(self, rows: Sequence[Row], cursors: Mapping[int, int]) -> None:
        """The tailer's batch: rows and the cursors they bring each partition to, atomically."""
        with self._lock:
            self._check_open()
            conn = self._conn
            conn.execute("BEGIN")
            try:
                if rows:
                    conn.executemany(_INSERT, [r.values() for r in rows])
                if cursors:
                    conn.executemany(
                        "INSERT INTO cursors (vp, next_offset) VALUES (?, ?) ON CONFLICT (vp)"
                        " DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
                        list(cursors.items()),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def insert(self, rows: Sequence[Row]) -> None:
        """A decider's committed events (ahead of the tailer; its copy is ignored later)."""
        if rows:
            self.apply(rows, {})

    def reset(self) -> None:
        with self._lock:
            self._check_open()
            self._conn.execute("BEGIN")
            self._conn.execute("DELETE FROM events")
            self._conn.execute("DELETE FROM cursors")
            self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ reads

    def stream_version(self, stream_id: str) -> int:
        rows = self._query(
            "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = ?", (stream_id,)
        )
        return int(rows[0][0])

    def stream_versions(self, stream_ids: Iterable[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(stream_ids))
        out = dict.fromkeys(ids, 0)
        for chunk in _chunks(ids):
            sql = (
                "SELECT stream_id, MAX(stream_version) FROM events WHERE stream_id IN "
                f"({', '.join('?' * len(chunk))}) GROUP BY stream_id"
            )
            for sid, version in self._query(sql, tuple(chunk)):
                out[str(sid)] = int(version)
        return out

    def read_stream(self, stream_id: str, after_version: int) -> list[tuple[int, int, bytes]]:
        """(vp, Kafka offset, data) in version order."""
        rows = self._query(
            "SELECT vp, kafka_offset, data FROM events WHERE stream_id = ? AND stream_version > ?"
            " ORDER BY stream_version",
            (stream_id, after_version),
        )
        return [(int(vp), int(off), bytes(data)) for vp, off, data in rows]

    def commands(self, command_ids: Iterable[str], vp: int | None = None) -> dict[str, StoredCommand]:
        """Stored commands by id (those of `vp` only, if given); each from the first partition that
        has it."""
        ids = [c for c in dict.fromkeys(command_ids) if c]
        found: dict[str, dict[int, list[tuple[int, str, bytes]]]] = {}
        for chunk in _chunks(ids):
            sql = (
                "SELECT command_id, vp, kafka_offset, fingerprint, data FROM events WHERE command_id IN "
                f"({', '.join('?' * len(chunk))})"
            )
            params: tuple[Any, ...] = tuple(chunk)
            if vp is not None:
                sql += " AND vp = ?"
                params += (vp,)
            for cid, part, off, fp, data in self._query(sql, params):
                found.setdefault(str(cid), {}).setdefault(int(part), []).append(
                    (int(off), str(fp), bytes(data))
                )
        out: dict[str, StoredCommand] = {}
        for cid, by_vp in found.items():
            part = min(by_vp)
            events = sorted(by_vp[part])
            out[cid] = StoredCommand(part, events[0][1], tuple((off, data) for off, _, data in events))
        return out

    def existing_event_ids(self, vp: int, event_ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(event_ids))
        out: set[str] = set()
        for chunk in _chunks(ids):
            sql = f"SELECT event_id FROM events WHERE vp = ? AND event_id IN ({', '.join('?' * len(chunk))})"
            out.update(str(r[0]) for r in self._query(sql, (vp, *chunk)))
        return out

    def rows_at(self, vp: int, offsets: Sequence[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for chunk in _chunks(list(offsets)):
            sql = (
                "SELECT kafka_offset, data FROM events WHERE vp = ? AND kafka_offset IN "
                f"({', '.join('?' * len(chunk))})"
            )
            out.update((int(off), bytes(data)) for off, data in self._query(sql, (vp, *chunk)))
        return out

    def read(self, after: Mapping[int, int], partitions: int, limit: int) -> list[tuple[int, int, bytes]]:
        """Up to `limit` (vp, Kafka offset, data) with offset >= after[vp] (a checkpoint is "next Kafka
        offset"), ordered by (vp, offset): one stable order, so paging with a cursor is exact."""
        out: list[tuple[int, int, bytes]] = []
        with self._lock:
            for vp in range(partitions):
                remaining = limit - len(out)
                if remaining <= 0:
                    break
                rows = self._query(
                    "SELECT kafka_offset, data FROM events WHERE vp = ? AND kafka_offset >= ?"
                    " ORDER BY kafka_offset LIMIT ?",
                    (vp, max(after.get(vp, 0), 0), remaining),
                )
                out.extend((vp, int(off), bytes(data)) for off, data in rows)
        return out

    def heads(self) -> dict[int, int]:
        """vp → last Kafka offset + 1 of the events held (absent: none)."""
        return {
            int(vp): int(off) + 1
            for vp, off in self._query("SELECT vp, MAX(kafka_offset) FROM events GROUP BY vp")
        }

    def has_after(self, after: Mapping[int, int]) -> bool:
        heads = self.heads()
        return any(head > max(after.get(vp, 0), 0) for vp, head in heads.items())

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the event log is closed")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            self._check_open()
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise Unavailable(f"replica index read failed: {exc}") from exc


def _chunks(values: list[Any]) -> Iterable[list[Any]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]
