"""Compatibility check: cassandra-driver against the local node (ops/cassandra.sh).

Run with the node up:  python ops/compat/cassandra_check.py [--host 127.0.0.1] [--port 9042]

Checks, each printed as PASS/FAIL (exit status 1 if any fails):
  1. Connect; report server release_version and the negotiated native protocol version.
  2. CREATE KEYSPACE (SimpleStrategy, RF 1) and a table.
  3. Prepared INSERT (1,000 rows via execute_concurrent_with_args) and prepared SELECT.
  4. Logged and unlogged BATCH of prepared statements.
  5. Lightweight transaction (INSERT ... IF NOT EXISTS), as an optimistic-concurrency guard.
  6. Paging read: fetch_size=100 over a 1,000-row partition, page by page and with paging_state resume.
The keyspace (lw_compat_<random>) is dropped at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import cassandra
from cassandra.cluster import Cluster, Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.query import BatchStatement, BatchType, SimpleStatement

ROWS = 1000
results: list[tuple[str, bool, str]] = []


def check(name: str) -> Callable[[Callable[..., str]], Callable[..., str | None]]:
    """Run the decorated step, record PASS/FAIL with its summary line, and keep going on failure."""

    def wrap(fn: Callable[..., str]) -> Callable[..., str | None]:
        def run(*args: Any, **kwargs: Any) -> str | None:
            start = time.monotonic()
            try:
                detail = fn(*args, **kwargs)
            except Exception as exc:
                results.append((name, False, f"{type(exc).__name__}: {exc}"))
                print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
                return None
            results.append((name, True, detail))
            print(f"PASS {name} ({time.monotonic() - start:.1f}s): {detail}", flush=True)
            return detail

        return run

    return wrap


@check("connect + system.local")
def connect_info(cluster: Cluster, session: Session) -> str:
    row = session.execute("SELECT release_version, cluster_name, cql_version FROM system.local").one()
    return (
        f"release_version {row.release_version}, cluster {row.cluster_name}, CQL {row.cql_version}, "
        f"native protocol v{cluster.protocol_version}"
    )


@check("schema: keyspace (SimpleStrategy RF 1) + table")
def create_schema(session: Session, ks: str) -> str:
    session.execute(
        f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    )
    session.set_keyspace(ks)
    session.execute(
        """
        CREATE TABLE events (
            stream_id text,
            seq bigint,
            event_type text,
            payload blob,
            recorded_at timestamp,
            PRIMARY KEY ((stream_id), seq)
        ) WITH CLUSTERING ORDER BY (seq ASC)
        """
    )
    session.execute("CREATE TABLE stream_heads (stream_id text PRIMARY KEY, seq bigint)")
    return f"keyspace {ks}, tables events, stream_heads"


@check("prepared statements: 1,000 inserts + select")
def prepared(session: Session) -> str:
    insert = session.prepare(
        "INSERT INTO events (stream_id, seq, event_type, payload, recorded_at) "
        "VALUES (?, ?, ?, ?, toTimestamp(now()))"
    )
    args = [("stream-a", i, "LabelAdded", f"payload-{i}".encode()) for i in range(ROWS)]
    outcomes = execute_concurrent_with_args(session, insert, args, concurrency=50)
    failures = [r for ok, r in outcomes if not ok]
    assert not failures, failures[:3]
    select = session.prepare("SELECT seq, payload FROM events WHERE stream_id = ? AND seq = ?")
    row = session.execute(select, ("stream-a", 500)).one()
    assert row.payload == b"payload-500", row
    count = session.execute("SELECT count(*) FROM events WHERE stream_id = 'stream-a'").one()[0]
    assert count == ROWS, count
    return f"{ROWS} prepared inserts (execute_concurrent, concurrency 50), prepared select, count(*)={count}"


@check("batches: logged + unlogged")
def batches(session: Session) -> str:
    insert = session.prepare("INSERT INTO events (stream_id, seq, event_type, payload) VALUES (?, ?, ?, ?)")
    head = session.prepare("INSERT INTO stream_heads (stream_id, seq) VALUES (?, ?)")
    logged = BatchStatement(batch_type=BatchType.LOGGED)
    for i in range(5):
        logged.add(insert, ("stream-b", i, "ItemCreated", b"x"))
    logged.add(head, ("stream-b", 4))
    session.execute(logged)
    unlogged = BatchStatement(batch_type=BatchType.UNLOGGED)
    for i in range(5, 10):
        unlogged.add(insert, ("stream-b", i, "ItemCreated", b"y"))
    session.execute(unlogged)
    n = session.execute("SELECT count(*) FROM events WHERE stream_id = 'stream-b'").one()[0]
    h = session.execute("SELECT seq FROM stream_heads WHERE stream_id = 'stream-b'").one().seq
    assert n == 10 and h == 4, (n, h)
    return f"logged batch (2 tables, 6 statements) + unlogged batch (5 statements); stream-b has {n} rows"


@check("lightweight transaction (IF NOT EXISTS)")
def lwt(session: Session) -> str:
    stmt = session.prepare("INSERT INTO events (stream_id, seq, event_type) VALUES (?, ?, ?) IF NOT EXISTS")
    first = session.execute(stmt, ("stream-c", 0, "Created"))
    second = session.execute(stmt, ("stream-c", 0, "Duplicate"))
    assert first.was_applied and not second.was_applied
    return "first insert applied, conflicting insert rejected (was_applied False)"


@check("paging read (fetch_size=100)")
def paging(session: Session) -> str:
    stmt = SimpleStatement("SELECT seq FROM events WHERE stream_id = 'stream-a'", fetch_size=100)
    result = session.execute(stmt)
    pages = 0
    seen: list[int] = []
    while True:
        if result.current_rows:
            pages += 1
        seen.extend(r.seq for r in result.current_rows)
        if not result.has_more_pages:
            break
        result.fetch_next_page()
    assert seen == list(range(ROWS)), (len(seen), seen[:5])
    # Resume from a saved paging_state, as a stateless API would between requests.
    first = session.execute(stmt)
    state = first.paging_state
    resumed = session.execute(stmt, paging_state=state)
    assert resumed.current_rows[0].seq == 100, resumed.current_rows[0]
    # Iterating the result transparently pages through everything.
    total = sum(1 for _ in session.execute(stmt))
    assert total == ROWS
    return (
        f"{pages} non-empty pages of 100 in order; paging_state resume starts at seq 100; "
        f"iteration saw {total}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9042)
    parser.add_argument("--keep-keyspace", action="store_true")
    args = parser.parse_args()
    print(f"cassandra-driver {cassandra.__version__}, contact point {args.host}:{args.port}")

    ks = f"lw_compat_{uuid.uuid4().hex[:8]}"
    cluster = Cluster([args.host], port=args.port, connect_timeout=10)
    session = cluster.connect()
    try:
        connect_info(cluster, session)
        if create_schema(session, ks) is not None:
            prepared(session)
            batches(session)
            lwt(session)
            paging(session)
    finally:
        if not args.keep_keyspace:
            session.execute(f"DROP KEYSPACE IF EXISTS {ks}")
        cluster.shutdown()
    failed = [name for name, ok, _ in results if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
