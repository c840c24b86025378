"""Helpers for the tests that run against a real Cassandra node (no mocks).

The node is `127.0.0.1:9042` unless `LABELWEAVE_CASSANDRA` says otherwise (`host:port[,host:port]`).
If it is not reachable the tests FAIL, never skip: start it with `ops/services.sh start`.

Import the fixtures into a test module (pytest registers fixtures found in the module namespace):

    from tests.backends.cassandra_util import cassandra_admin_fixture, cassandra_hosts_fixture  # noqa: F401

and ask for them by their names, `cassandra_hosts` and `cassandra_admin`.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from coordinator.errors import LabelweaveError
from projections.cassandra import connect, parse_url

DEFAULT_ADDRESS = "127.0.0.1:9042"
START_HINT = "start it with ops/services.sh start (or point LABELWEAVE_CASSANDRA=host:port at a node)"
STORE_TABLES = ("docs", "checkpoints", "commit_intents", "commit_chunks")


def cassandra_address() -> str:
    return os.environ.get("LABELWEAVE_CASSANDRA", "").strip() or DEFAULT_ADDRESS


def store_url(hosts: str, keyspace: str, **params: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"cassandra://{hosts}/{keyspace}" + (f"?{query}" if query else "")


def new_keyspace_name(tag: str) -> str:
    """Unique per call; `lwtest_` marks keyspaces made by tests (dropped when the session ends)."""
    return f"lwtest_{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


class Admin:
    """A driver session for test set-up: truncating, dropping and peeking at tables."""

    def __init__(self, hosts: str) -> None:
        self.hosts = hosts
        self.cluster, self.session = connect(parse_url(store_url(hosts, "system")))
        self.created: list[str] = []

    def execute(self, cql: str, params: Any = None) -> Any:
        return self.session.execute(cql, params, timeout=60)

    def new_keyspace(self, tag: str) -> str:
        """A keyspace name that is dropped at the end of the session (created by whoever migrates)."""
        name = new_keyspace_name(tag)
        self.created.append(name)
        return name

    def truncate(self, keyspace: str) -> None:
        for table in STORE_TABLES:
            self.execute(f"TRUNCATE {keyspace}.{table}")

    def drop_all(self) -> None:
        for name in self.created:
            try:
                self.execute(f"DROP KEYSPACE IF EXISTS {name}")
            except Exception as exc:  # a leftover keyspace must not fail the run
                print(f"could not drop test keyspace {name}: {exc!r}")
        self.created.clear()

    def close(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="session", name="cassandra_hosts")
def cassandra_hosts_fixture() -> str:
    """`host:port[,…]` of a reachable Cassandra node, or the test fails with how to start one."""
    address = cassandra_address()
    for part in address.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host:
            host, port = port, "9042"
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    pytest.fail(f"Cassandra is not reachable at {part} ({exc}); {START_HINT}", pytrace=False)
                time.sleep(0.5)
    return address


@pytest.fixture(scope="session", name="cassandra_admin")
def cassandra_admin_fixture(cassandra_hosts: str) -> Iterator[Admin]:
    try:
        admin = Admin(cassandra_hosts)
    except LabelweaveError as exc:
        pytest.fail(
            f"Cassandra at {cassandra_hosts} does not answer CQL ({exc}); {START_HINT}", pytrace=False
        )
    try:
        yield admin
    finally:
        admin.drop_all()
        admin.close()


# ---------------------------------------------------------------------- measurements


def bench(hosts: str, *, repeat: int = 20) -> list[str]:
    """The numbers in docs/cassandra-store.md: `python -m tests.backends.cassandra_util [host:port]`.

    Uses a keyspace of its own (created, then dropped). Rows are ~200-byte JSON documents.
    """
    import statistics

    from projections.base import Put
    from projections.cassandra import CassandraStore
    from projections.migrate import migrate

    admin = Admin(hosts)
    ks = admin.new_keyspace("bench")
    lines: list[str] = []
    try:
        migrate(store_url(hosts, ks), out=lambda _: None)
        doc = {"status": "queued", "priority": 3, "deadline": "2026-12-01T10:00:00Z", "pad": "x" * 120}
        shapes = [(100, 10), (1000, 100), (1000, 1)]  # (rows, partitions)
        for mode in ("batch", "staged"):
            store = CassandraStore(store_url(hosts, ks, commit=mode))
            try:
                offset = 0
                for rows, parts in shapes:
                    times = []
                    for r in range(repeat):
                        changes = [
                            Put("bench", f"{mode}-{rows}-{parts}-p{i % parts}", f"{r:03d}-{i:05d}", doc)
                            for i in range(rows)
                        ]
                        offset += 1
                        t0 = time.perf_counter()
                        store.commit(f"bench-{mode}", changes, {0: offset})
                        times.append(time.perf_counter() - t0)
                    med = statistics.median(times)
                    path = "logged batch" if mode == "batch" and rows * 260 < store.batch_limit else "staged"
                    lines.append(
                        f"commit {rows:>5} rows / {parts:>3} partitions, commit={mode:<6} ({path}): "
                        f"median {med * 1000:7.1f} ms = {rows / med:8.0f} rows/s"
                    )
            finally:
                store.close()
        store = CassandraStore(store_url(hosts, ks))
        try:
            store.commit("read", [Put("read", "p", f"{i:05d}", doc) for i in range(1000)], {0: 1})
            keys = [f"{i:05d}" for i in range(1000)]
            lat = []
            for sk in keys * 3:
                t0 = time.perf_counter()
                store.get("read", "p", sk)
                lat.append(time.perf_counter() - t0)
            lat.sort()
            p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
            lines.append(
                f"point read (get), {len(lat)} sequential: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"
            )
            scans = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                got = store.scan("read", "p")
                scans.append(time.perf_counter() - t0)
            assert len(got) == 1000
            lines.append(
                "scan of 1,000 rows (one partition, fetch_size 1000): "
                f"median {statistics.median(scans) * 1000:.1f} ms"
            )
            t0 = time.perf_counter()
            n = sum(1 for _ in store.items())
            lines.append(f"items() over {n} rows: {time.perf_counter() - t0:.2f} s")
        finally:
            store.close()
    finally:
        admin.drop_all()
        admin.close()
    return lines


if __name__ == "__main__":
    import sys

    for line in bench(sys.argv[1] if len(sys.argv) > 1 else cassandra_address()):
        print(line, flush=True)
