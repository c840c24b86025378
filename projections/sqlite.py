"""SQLite projection store (`sqlite:///path/projections.db`).

One table of documents keyed `(collection, pk, sk)` (WITHOUT ROWID, so a partition scan is a
range read of the primary key) and one table of per-consumer checkpoints.

Durability: the database runs in WAL mode with `synchronous=NORMAL`. A power cut may lose the
last few committed batches, which is fine for projections: they are derived data and are
rebuilt (or simply caught up) from the event log. What must never happen — rows without their
checkpoint or a checkpoint without its rows — cannot: both are written in one transaction, so
after any crash the store is at *some* consistent checkpoint and the runner resumes from it.

Readers use one connection per thread (WAL readers never block the writer nor each other);
all writes go through one lock-guarded connection.

Big commits (a rebuild's batches, `commit_prepared(..., bulk=True)`) insert all their rows with
ONE statement over a JSON array (`json_each`), so SQLite holds the GIL released for the whole
insert. `executemany` releases and re-takes it around every row, and a thread that re-takes the
GIL while another thread computes waits up to the switch interval (5 ms) each time: 250k rows
written by a background thread beside a busy one took 98 s instead of 0.7 s (docs/benchmarks.md,
pass 4). The statement costs ~0.7 µs more CPU per row, so small commits keep `executemany`.

A *bulk-load* store (`SqliteStore(url, bulk=True)`) is for filling a new file nobody reads until
the load ends, such as the scratch file `labelweave rebuild` replays into: bigger pages, an
in-memory rollback journal instead of the WAL, and no fsync per commit (one at `close()`). A crash
meanwhile can leave the file unusable, which is fine for a scratch file that is then discarded.
Opened again without `bulk`, the file turns to WAL mode as any store. A file already in WAL mode
keeps it and its syncs; only the bigger page cache applies.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import orjson

from coordinator.errors import InvalidArgument
from coordinator.eventlog.base import Checkpoint
from projections.base import Change, Delete, Doc, ProjectionStore, Put
from projections.jsonfast import compact_json, loads

_dumps = compact_json
_loads = loads

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    collection TEXT NOT NULL,
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (collection, pk, sk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    PRIMARY KEY (consumer, "partition")
) WITHOUT ROWID;
"""

_PREFIX = "sqlite:///"
_INSERT_ROWS = "INSERT OR REPLACE INTO docs (collection, pk, sk, value) VALUES (?,?,?,?)"
_INSERT_JSON_ROWS = (
    "INSERT OR REPLACE INTO docs (collection, pk, sk, value) SELECT json_extract(value, '$[0]'), "
    "json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]') "
    "FROM json_each(?)"
)
JSON_INSERT_MIN_ROWS = 256
"""A bulk commit with at least this many rows is inserted by one statement (GIL released)."""
_BULK_PAGE_SIZE = 16384  # fewer page splits for ~300-byte rows: ~20 % faster inserts
_BULK_CACHE_KIB = -262144  # 256 MiB of page cache while loading (a 100k-task store is ~180 MB)


class Prepared(NamedTuple):
    """A commit's rows, encoded and sorted by key (`SqliteStore.prepare_commit`)."""

    puts: list[tuple[str, str, str, str]]
    deletes: list[tuple[str, str, str]]


def path_of(url: str) -> str:
    """`sqlite:///rel.db` → `rel.db`; `sqlite:////abs/p.db` → `/abs/p.db` (a `?query` is ignored)."""
    path = url[len(_PREFIX) :].split("?", 1)[0] if url.startswith(_PREFIX) else ""
    if not path:
        raise InvalidArgument(
            f"not a SQLite store URL: {url!r} (expected sqlite:///path/projections.db)", field="store"
        )
    return path


class SqliteStore(ProjectionStore):
    def __init__(self, url: str, *, bulk: bool = False) -> None:
        self.url = url
        self.bulk = bulk
        self._path = path_of(url)
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        else:
            raise InvalidArgument(
                "sqlite :memory: cannot be shared between threads; use memory://", field="store"
            )
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        if bulk:
            self._writer.execute(f"PRAGMA page_size={_BULK_PAGE_SIZE}")  # only a new file takes it
            self._writer.execute(f"PRAGMA cache_size={_BULK_CACHE_KIB}")
            mode = self._writer.execute("PRAGMA journal_mode").fetchone()[0]
            # A WAL file (a live store, say) stays one, with its usual syncs: leaving WAL needs
            # the file to ourselves, and its WAL would not be synced by close().
            if str(mode).lower() != "wal":
                self._writer.execute("PRAGMA journal_mode=MEMORY")
                self._writer.execute("PRAGMA synchronous=OFF")
        else:
            self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.executescript(_SCHEMA)
        self._json_rows = _has_json_each(self._writer)

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA cache_size=-65536")  # 64 MiB
        conn.execute("PRAGMA temp_store=MEMORY")
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise sqlite3.ProgrammingError("store is closed")
            conn = self._connect()
            self._local.conn = conn
        return conn

    # ------------------------------------------------------------------ reads

    def get(self, collection: str, pk: str, sk: str = "") -> Doc | None:
        row = (
            self._reader()
            .execute("SELECT value FROM docs WHERE collection=? AND pk=? AND sk=?", (collection, pk, sk))
            .fetchone()
        )
        return None if row is None else _loads(row[0])

    def scan(
        self,
        collection: str,
        pk: str,
        *,
        start: str = "",
        end: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[str, Doc]]:
        if limit is not None and limit <= 0:
            return []
        sql = "SELECT sk, value FROM docs WHERE collection=? AND pk=? AND sk>=?"
        args: list[object] = [collection, pk, start]
        if end is not None:
            sql += " AND sk<?"
            args.append(end)
        sql += " ORDER BY sk DESC" if reverse else " ORDER BY sk"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = self._reader().execute(sql, args).fetchall()
        return [(sk, _loads(value)) for sk, value in rows]

    def checkpoint(self, consumer: str) -> dict[int, int]:
        rows = (
            self._reader()
            .execute('SELECT "partition", "offset" FROM checkpoints WHERE consumer=?', (consumer,))
            .fetchall()
        )
        return {int(p): int(o) for p, o in rows}

    def items(self) -> Iterable[tuple[str, str, str, Doc]]:
        # A dedicated connection and one read transaction: a consistent snapshot even while
        # the writer commits, and no interference with this thread's point reads.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("BEGIN")
            cur = conn.execute("SELECT collection, pk, sk, value FROM docs ORDER BY collection, pk, sk")
            while True:
                rows = cur.fetchmany(2000)
                if not rows:
                    break
                for collection, pk, sk, value in rows:
                    yield collection, pk, sk, _loads(value)
            conn.execute("COMMIT")
        finally:
            conn.close()

    # ------------------------------------------------------------------ writes

    def commit(self, consumer: str, changes: Sequence[Change], checkpoint: Checkpoint) -> None:
        self.commit_prepared(consumer, self.prepare_commit(changes), checkpoint)

    def prepare_pending(self, pending: Mapping[tuple[str, str, str], Doc | None]) -> Prepared:
        """`prepare_commit` of a key → document mapping (None: delete), one change per key."""
        dumps = _dumps
        puts = [(c, p, s, dumps(v)) for (c, p, s), v in pending.items() if v is not None]
        deletes = [key for key, v in pending.items() if v is None]
        puts.sort()  # keys are unique: the values are never compared
        deletes.sort()
        return Prepared(puts, deletes)

    def prepare_commit(self, changes: Sequence[Change]) -> Prepared:
        """The CPU half of a commit: JSON-encode and key-sort the rows (no reference to the
        documents is kept, so the caller may go on editing them). `consumers.rebuild` calls this
        and `commit_prepared` apart, so the write of batch k overlaps the views of batch k + 1."""
        # Only the last change per key matters, so runs collapse into two executemany calls.
        last: dict[tuple[str, str, str], Doc | None] = {}
        for ch in changes:
            if type(ch) is Put:
                last[ch[:3]] = ch.value
            elif type(ch) is Delete:
                last[ch[:3]] = None
            elif isinstance(ch, Put):  # pragma: no cover - a subclass
                last[(ch.collection, ch.pk, ch.sk)] = ch.value
            elif isinstance(ch, Delete):  # pragma: no cover - a subclass
                last[(ch.collection, ch.pk, ch.sk)] = None
            else:  # pragma: no cover - defensive
                raise TypeError(f"not a change: {ch!r}")
        return self.prepare_pending(last)

    def commit_prepared(
        self, consumer: str, prepared: Prepared, checkpoint: Checkpoint, *, bulk: bool = False
    ) -> None:
        """The I/O half: rows and checkpoint in one transaction (thread-safe). `bulk` (a rebuild's
        batch) inserts a big batch by one statement, holding the GIL released throughout."""
        cps = [(consumer, int(p), int(o)) for p, o in checkpoint.items()]
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                if prepared.deletes:
                    conn.executemany(
                        "DELETE FROM docs WHERE collection=? AND pk=? AND sk=?", prepared.deletes
                    )
                if prepared.puts:
                    if bulk and self._json_rows and len(prepared.puts) >= JSON_INSERT_MIN_ROWS:
                        conn.execute(_INSERT_JSON_ROWS, (_rows_json(prepared.puts),))
                    else:
                        conn.executemany(_INSERT_ROWS, prepared.puts)
                if cps:
                    conn.executemany(
                        'INSERT INTO checkpoints (consumer, "partition", "offset") VALUES (?,?,?) '
                        'ON CONFLICT (consumer, "partition") '
                        'DO UPDATE SET "offset"=max("offset", excluded."offset")',
                        cps,
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def clear(self) -> None:
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM docs")
                conn.execute("DELETE FROM checkpoints")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if self.bulk and conns:  # commits did not fsync: make the loaded file durable now
            fd = os.open(self._path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _has_json_each(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has the JSON functions (built in since 3.38, usually long before)."""
    try:
        conn.execute("SELECT json_extract(value, '$[0]') FROM json_each('[[1]]')").fetchall()
    except sqlite3.OperationalError:  # pragma: no cover - SQLite built without JSON1
        return False
    return True


def _rows_json(puts: list[tuple[str, str, str, str]]) -> str:
    """`puts` as one JSON array of [collection, pk, sk, value text] arrays."""
    return orjson.dumps(puts).decode()
