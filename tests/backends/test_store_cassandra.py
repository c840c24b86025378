"""The Cassandra projection store against a real node (ops/services.sh start; no mocks).

The contract runs twice: `commit=batch` (logged batches, staged beyond the server's batch size
limit) and `commit=staged` (the default: every commit through a redo record). Both share one migrated
keyspace whose tables are truncated before each test (~0.1 s, against ~1.3 s for a new keyspace);
migration tests make keyspaces of their own. Every keyspace made here is dropped at the end.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from coordinator.errors import FailedPrecondition, InvalidArgument, Unavailable
from projections.base import Delete, ProjectionStore, Put, StagedTx
from projections.cassandra import _CLOCK, CassandraStore, _collapse, parse_url
from projections.factory import open_store
from projections.memory import MemoryStore
from projections.migrate import load_migrations, main, migrate, split_statements
from tests.backends.cassandra_util import (  # noqa: F401 - the fixtures register by being imported
    Admin,
    cassandra_admin_fixture,
    cassandra_hosts_fixture,
    store_url,
)
from tests.contracts.store_contract import StoreContract

REPO = Path(__file__).resolve().parents[2]


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def keyspace(cassandra_admin: Admin) -> str:
    """One migrated keyspace for the store tests of this module."""
    name = cassandra_admin.new_keyspace("store")
    migrate(store_url(cassandra_admin.hosts, name), out=quiet)
    return name


# ---------------------------------------------------------------------- the contract


class TestCassandraStore(StoreContract):
    isolated_commits = False
    checkpoint_follows_rows = False  # a logged batch applies its mutations concurrently
    commit_mode = "batch"

    @pytest.fixture(autouse=True)
    def _fresh_tables(self, cassandra_admin: Admin, keyspace: str) -> None:
        cassandra_admin.truncate(keyspace)
        self.url = store_url(cassandra_admin.hosts, keyspace, commit=self.commit_mode)

    def make_store(self) -> ProjectionStore:
        return open_store(self.url)


class TestCassandraStoreStaged(TestCassandraStore):
    checkpoint_follows_rows = True  # redo record, then rows, then checkpoint
    commit_mode = "staged"


# ---------------------------------------------------------------------- URL and opening


def test_url_parameters() -> None:
    cfg = parse_url(
        "cassandra://u:p%40ss@10.0.0.1,10.0.0.2:9043,[::1]:9044/lw_prod?consistency=quorum"
        "&serial_consistency=local_serial&datacenters=dc1:3,dc2:2&local_dc=dc1&connect_timeout=2"
        "&request_timeout=7.5&fetch_size=500&batch_bytes=100000&commit=staged&migrate=true"
    )
    assert cfg.hosts == (("10.0.0.1", 9042), ("10.0.0.2", 9043), ("::1", 9044))
    assert cfg.keyspace == "lw_prod"
    assert (cfg.username, cfg.password) == ("u", "p@ss")
    assert ":***@" in cfg.safe_url and "p%40ss" not in cfg.safe_url
    assert (cfg.consistency, cfg.serial_consistency, cfg.local_dc) == ("quorum", "local_serial", "dc1")
    assert cfg.replication_cql() == "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
    assert (cfg.connect_timeout, cfg.request_timeout, cfg.fetch_size) == (2.0, 7.5, 500)
    assert (cfg.batch_bytes, cfg.commit, cfg.migrate) == (100000, "staged", True)
    plain = parse_url("cassandra://127.0.0.1/labelweave")
    assert plain.hosts == (("127.0.0.1", 9042),)
    assert (plain.consistency, plain.commit, plain.migrate) == ("local_quorum", "staged", False)
    assert plain.replication_cql() == "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    assert "keyspace 'labelweave'" in plain.where and "127.0.0.1:9042" in plain.where


@pytest.mark.parametrize(
    "url",
    [
        "cassandra://127.0.0.1",
        "cassandra://127.0.0.1/",
        "cassandra://127.0.0.1/Upper",
        "cassandra://127.0.0.1/ks-dash",
        "cassandra://127.0.0.1:99999/ks",
        "cassandra://127.0.0.1:x/ks",
        "cassandra://,/ks",
        "cassandra://127.0.0.1/ks?nope=1",
        "cassandra://127.0.0.1/ks?consistency=sometimes",
        "cassandra://127.0.0.1/ks?replication_factor=0",
        "cassandra://127.0.0.1/ks?replication_factor=1&datacenters=dc1:3",
        "cassandra://127.0.0.1/ks?commit=maybe",
        "cassandra://127.0.0.1/ks?migrate=perhaps",
        "cassandra://127.0.0.1/ks?fetch_size=1&fetch_size=2",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_url(url)
    assert info.value.field == "store"


def test_factory_opens_a_migrated_keyspace(cassandra_admin: Admin, keyspace: str) -> None:
    url = store_url(cassandra_admin.hosts, keyspace)
    store = open_store(url)
    try:
        assert isinstance(store, CassandraStore)
        assert store.url == url
        # The server's batch_size_fail_threshold (50 KiB by default) minus a margin.
        assert 1024 < store.batch_limit < 10 * 1024 * 1024
    finally:
        store.close()
    with pytest.raises(Unavailable):
        store.get("c", "p")


def test_unreachable_node_is_unavailable_naming_host_and_keyspace() -> None:
    with pytest.raises(Unavailable) as info:
        CassandraStore("cassandra://127.0.0.1:1/lw_nowhere?connect_timeout=1")
    assert "127.0.0.1:1" in info.value.message and "lw_nowhere" in info.value.message


# ---------------------------------------------------------------------- migrations


def test_split_statements() -> None:
    text = """
        -- a comment; with a semicolon
        CREATE TABLE a (x text);  // another; comment
        /* block; comment */ INSERT INTO a (x) VALUES ('semi;colon''s');
        CREATE FUNCTION f() RETURNS NULL ON NULL INPUT RETURNS int LANGUAGE java AS $$ return 1; $$;
        ALTER TABLE a WITH comment = "x;y"
    """
    assert split_statements(text) == [
        "CREATE TABLE a (x text)",
        "INSERT INTO a (x) VALUES ('semi;colon''s')",
        "CREATE FUNCTION f() RETURNS NULL ON NULL INPUT RETURNS int LANGUAGE java AS $$ return 1; $$",
        'ALTER TABLE a WITH comment = "x;y"',
    ]


def test_shipped_migrations_are_numbered_and_idempotent() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].label == "001_docs"
    for m in migrations:
        for stmt in m.statements:
            assert "IF NOT EXISTS" in stmt.upper() or "IF EXISTS" in stmt.upper(), (m.label, stmt)


def _migration_rows(admin: Admin, ks: str) -> dict[int, tuple[str, object]]:
    rows = admin.execute(f"SELECT version, state, owner FROM {ks}.schema_migrations")
    return {int(v): (state, owner) for v, state, owner in rows}


def test_migrating_twice_is_a_no_op(cassandra_admin: Admin) -> None:
    ks = cassandra_admin.new_keyspace("twice")
    url = store_url(cassandra_admin.hosts, ks, replication_factor=1)
    first = migrate(url, out=quiet)
    latest = [m.version for m in load_migrations()]
    assert (first.applied, first.already) == (latest, [])
    before = _migration_rows(cassandra_admin, ks)
    assert {state for state, _ in before.values()} == {"applied"}
    second = migrate(url, out=quiet)
    assert (second.applied, second.already) == ([], latest)
    assert _migration_rows(cassandra_admin, ks) == before  # same owners: nothing re-claimed
    repl = cassandra_admin.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (ks,)
    ).one()[0]
    assert repl["class"].endswith("SimpleStrategy") and repl["replication_factor"] == "1"
    # the CLI: exit 0, and --status lists every version as applied
    assert main([url]) == 0
    assert main(["--status", url]) == 0


def test_concurrent_runners_apply_each_version_exactly_once(cassandra_admin: Admin) -> None:
    ks = cassandra_admin.new_keyspace("race")
    url = store_url(cassandra_admin.hosts, ks)
    script = textwrap.dedent(
        """
        import json, sys, time
        from projections.migrate import migrate
        start = float(sys.argv[2])
        time.sleep(max(0.0, start - time.time()))
        report = migrate(sys.argv[1], out=lambda line: None)
        print(json.dumps({"applied": report.applied, "already": report.already}))
        """
    )
    start = time.time() + 2.0  # all runners connect first, then race for the claims
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, url, str(start)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        reports.append(json.loads(out.strip().splitlines()[-1]))
    latest = [m.version for m in load_migrations()]
    applied = sorted(v for r in reports for v in r["applied"])
    assert applied == latest  # each version applied by exactly one runner
    for r in reports:
        assert sorted(r["applied"] + r["already"]) == latest
    rows = _migration_rows(cassandra_admin, ks)
    assert sorted(rows) == latest and {state for state, _ in rows.values()} == {"applied"}


def test_store_refuses_a_keyspace_with_missing_migrations(cassandra_admin: Admin) -> None:
    ks = cassandra_admin.new_keyspace("partial")
    url = store_url(cassandra_admin.hosts, ks)
    with pytest.raises(FailedPrecondition) as info:
        open_store(url)
    assert ks in info.value.message and "projections.migrate" in info.value.message
    assert (
        cassandra_admin.execute(  # refusing created nothing
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s", (ks,)
        ).one()
        is None
    )

    migrate(url, upto=1, out=quiet)
    with pytest.raises(FailedPrecondition) as info:
        open_store(url)
    message = info.value.message
    assert ks in message and "002_checkpoints" in message and "001_docs" not in message

    store = open_store(store_url(cassandra_admin.hosts, ks, migrate="true"))  # explicit opt-in
    try:
        store.commit("x", [Put("c", "p", "s", {"v": 1})], {0: 1})
        assert store.get("c", "p", "s") == {"v": 1}
    finally:
        store.close()
    open_store(url).close()


def test_store_refuses_a_keyspace_newer_than_it_knows(cassandra_admin: Admin, keyspace: str) -> None:
    ks = cassandra_admin.new_keyspace("newer")
    url = store_url(cassandra_admin.hosts, ks)
    migrate(url, out=quiet)
    cassandra_admin.execute(
        f"INSERT INTO {ks}.schema_migrations (version, name, state, checksum) "
        "VALUES (999, 'from_the_future', 'applied', 'x')"
    )
    with pytest.raises(FailedPrecondition) as info:
        open_store(url)
    assert ks in info.value.message and "999_from_the_future" in info.value.message
    assert "newer" in info.value.message

    # A migration file changed after it was applied is refused by the runner.
    cassandra_admin.execute(f"DELETE FROM {ks}.schema_migrations WHERE version = 999")
    cassandra_admin.execute(f"UPDATE {ks}.schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(FailedPrecondition) as info:
        migrate(url, out=quiet)
    assert "001_docs" in info.value.message and "never change" in info.value.message


def test_a_stale_claim_is_taken_over(cassandra_admin: Admin) -> None:
    ks = cassandra_admin.new_keyspace("stale")
    url = store_url(cassandra_admin.hosts, ks)
    migrate(url, upto=1, out=quiet)
    # A runner claimed version 2 a minute ago and died before finishing it.
    cassandra_admin.execute(
        f"INSERT INTO {ks}.schema_migrations (version, name, state, owner, claimed_at, claimed_by) "
        "VALUES (2, 'checkpoints', 'applying', uuid(), toTimestamp(now()) - 1m, 'dead-host:1')"
    )
    lines: list[str] = []
    report = migrate(url, stale_after=30, out=lines.append)
    assert report.applied == [m.version for m in load_migrations()][1:]
    assert any("took over" in line and "dead-host:1" in line for line in lines)
    open_store(url).close()


# ---------------------------------------------------------------------- store specifics


@pytest.fixture
def fresh(cassandra_admin: Admin, keyspace: str) -> str:
    cassandra_admin.truncate(keyspace)
    return keyspace


def _open(admin: Admin, ks: str, **params: object) -> CassandraStore:
    store = open_store(store_url(admin.hosts, ks, **params))
    assert isinstance(store, CassandraStore)
    return store


def test_checkpoint_offsets_never_go_back(cassandra_admin: Admin, fresh: str) -> None:
    for mode in ("batch", "staged"):
        store = _open(cassandra_admin, fresh, commit=mode)
        try:
            store.commit(mode, [], {0: 5, 1: 2})
            store.commit(mode, [Put("c", mode, "s", {})], {0: 3, 1: 4})  # 0 keeps 5: merged by max
            assert store.checkpoint(mode) == {0: 5, 1: 4}
        finally:
            store.close()


def test_small_commits_are_one_logged_batch_and_big_ones_are_staged(
    cassandra_admin: Admin, fresh: str
) -> None:
    store = _open(cassandra_admin, fresh, commit="batch")
    latencies: list[float] = []
    store.write_latency = latencies.append
    try:
        store.commit("small", [Put("c", "p", f"{i}", {"i": i}) for i in range(10)], {0: 1})
        assert list(cassandra_admin.execute(f"SELECT writer FROM {fresh}.commit_intents")) == []
        big = [Put("c", f"p{i % 7}", f"{i:04d}", {"i": i, "pad": "x" * 200}) for i in range(1000)]
        store.commit("big", big, {0: 1})  # ~280 KB > batch_size_fail_threshold
        intents = list(cassandra_admin.execute(f"SELECT consumer, state FROM {fresh}.commit_intents"))
        assert intents == [("big", "done")]
        assert store.checkpoint("big") == {0: 1}
        assert sum(len(store.scan("c", f"p{j}")) for j in range(7)) == 1000
        assert len(latencies) == 2 and all(0 < s < 30 for s in latencies)
    finally:
        store.close()


def test_items_sorts_partitions_and_pages_through_them(cassandra_admin: Admin, fresh: str) -> None:
    store = _open(cassandra_admin, fresh, fetch_size=10)  # many pages per partition and in DISTINCT
    try:
        rng = random.Random(5)
        rows = [
            Put(f"c{c}", f"pk-{p:02d}-ż", f"{s:03d}", {"c": c, "p": p, "s": s})
            for c in range(3)
            for p in range(12)
            for s in range(rng.randrange(1, 30))
        ]
        shuffled = rows[:]
        rng.shuffle(shuffled)
        for i in range(0, len(shuffled), 150):
            store.commit("x", shuffled[i : i + 150], {0: i + 1})
        store.commit("x", [Delete("c1", "pk-03-ż", "000"), Put("c1", "pk-03-ż", "000", {"v": 2})], {0: 9999})
        expected = MemoryStore()
        expected.commit("x", rows, {0: 1})
        expected.commit("x", [Put("c1", "pk-03-ż", "000", {"v": 2})], {0: 2})
        assert [(c, p, s) for c, p, s, _ in store.items()] == [(c, p, s) for c, p, s, _ in expected.items()]
        assert store.checksum() == expected.checksum()
        assert store.scan("c2", "pk-05-ż") == expected.scan("c2", "pk-05-ż")  # paged scan
    finally:
        store.close()


def test_concurrent_staged_commits_from_many_threads(cassandra_admin: Admin, fresh: str) -> None:
    store = _open(cassandra_admin, fresh, commit="staged")
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for b in range(1, 11):
                store.commit("shared", [Put("c", f"w{w}", f"{i:02d}", {"b": b}) for i in range(30)], {w: b})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        # one checkpoint row per (consumer, partition): the workers never overwrote each other
        assert store.checkpoint("shared") == {0: 10, 1: 10, 2: 10, 3: 10}
        for w in range(4):
            assert {doc["b"] for _, doc in store.scan("c", f"w{w}")} == {10}
        states = {s for (s,) in cassandra_admin.execute(f"SELECT state FROM {fresh}.commit_intents")}
        assert states == {"done"}
    finally:
        store.close()


def test_a_torn_staged_commit_is_finished_before_the_checkpoint_is_read(
    cassandra_admin: Admin, fresh: str
) -> None:
    """A writer dies after sealing its redo record and applying part of the rows: the next
    checkpoint read (what a restarting runner does first) finishes the commit."""
    store = _open(cassandra_admin, fresh, commit="staged")
    parts = [f"p{j}" for j in range(5)]
    store.commit("x", [Put("c", p, f"{i}", {"b": 1}) for p in parts for i in range(4)], {0: 1})
    # Commit 2, torn by hand with the store's own steps: seal, then only partition p0's rows.
    rows = _collapse([Put("c", p, f"{i}", {"b": 2}) for p in parts for i in range(4)])
    ts = _CLOCK.next()
    writer, _ = store._take_slot()
    store._execute(store._q_seal, ("x", writer, ts, uuid.uuid4(), '{"0": 2}', 0, store._chunk(rows)[0], ts))
    store._apply([r for r in rows if r.pk == "p0"], ts)
    store.close()  # the process dies here

    other = _open(cassandra_admin, fresh)
    try:
        assert {d["b"] for _, d in other.scan("c", "p0")} == {2}  # torn: visible before recovery
        assert {d["b"] for _, d in other.scan("c", "p1")} == {1}
        assert other.checkpoint("x") == {0: 2}  # finished first, then answered
        for p in parts:
            assert {d["b"] for _, d in other.scan("c", p)} == {2}
        # Finishing again is a no-op; later commits win over a late re-application (timestamps).
        other.commit("x", [Put("c", "p1", "0", {"b": 3})], {0: 3})
        assert other.checkpoint("x") == {0: 3}
        assert other.get("c", "p1", "0") == {"b": 3}
    finally:
        other.close()


def test_a_redo_record_that_was_never_sealed_changes_nothing(cassandra_admin: Admin, fresh: str) -> None:
    store = _open(cassandra_admin, fresh, commit="staged")
    try:
        store.commit("x", [Put("c", "p", "a", {"b": 1})], {0: 1})
        writer, _ = store._take_slot()
        store._execute(store._q_chunk_put, ("x", writer, 0, uuid.uuid4(), '[["c","p","a",{"b":2}]]', 1))
    finally:
        store.close()
    other = _open(cassandra_admin, fresh)
    try:
        assert other.checkpoint("x") == {0: 1}
        assert other.get("c", "p", "a") == {"b": 1}
    finally:
        other.close()


# ---------------------------------------------------------------------- runner loop and crashes


def _counter_batch(store: ProjectionStore, offsets: range, partitions: int, rows: int) -> StagedTx:
    """What a view does: read each counter, add one per event, write it back (not idempotent)."""
    tx = StagedTx(store)
    for _ in offsets:
        for p in range(partitions):
            for r in range(rows):
                doc = tx.get("cnt", f"p{p:02d}", f"{r:02d}") or {"n": 0}
                tx.put("cnt", f"p{p:02d}", f"{r:02d}", {"n": doc["n"] + 1})
    return tx


@pytest.mark.parametrize("mode", ["batch", "staged"])
def test_runner_loop_neither_repeats_nor_skips_after_a_crash(
    cassandra_admin: Admin, fresh: str, mode: str
) -> None:
    events, per_batch, partitions, rows = 60, 4, 3, 5
    reference = MemoryStore()
    crashed = False
    store = _open(cassandra_admin, fresh, commit=mode)
    try:
        while True:
            done = store.checkpoint("runner").get(0, 0)
            assert done == reference.checkpoint("runner").get(0, 0)
            if done >= events:
                break
            batch = range(done + 1, min(events, done + per_batch) + 1)
            tx = _counter_batch(store, batch, partitions, rows)
            if not crashed and done >= events // 2:
                crashed = True  # computed, never committed: the process dies, a new one resumes
                store.close()
                store = _open(cassandra_admin, fresh, commit=mode)
                continue
            store.commit("runner", tx.changes(), {0: batch[-1]})
            ref_tx = _counter_batch(reference, batch, partitions, rows)
            reference.commit("runner", ref_tx.changes(), {0: batch[-1]})
        assert crashed
        assert store.checkpoint("runner") == {0: events}
        assert {doc["n"] for _, _, _, doc in store.items()} == {events}  # no repeat, no gap
        assert store.checksum() == reference.checksum()
    finally:
        store.close()


CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    from projections.base import Put
    from projections.cassandra import CassandraStore

    store = CassandraStore(sys.argv[1])
    partitions, rows, pad = int(sys.argv[2]), int(sys.argv[3]), "x" * int(sys.argv[4])
    offset = store.checkpoint("kill").get(0, 0)
    # Read the counters once and keep them in memory, as the runner's document cache does: the
    # loop then spends its time in commit(), where the kill should land.
    counts = {}
    for p in range(partitions):
        for sk, doc in store.scan("cnt", f"p{p:02d}"):
            counts[(p, sk)] = doc["n"]
    print("ready", offset, flush=True)
    while True:
        offset += 1
        changes = []
        for p in range(partitions):
            for r in range(rows):
                n = counts[(p, f"{r:02d}")] = counts.get((p, f"{r:02d}"), 0) + 1
                changes.append(Put("cnt", f"p{p:02d}", f"{r:02d}", {"n": n, "pad": pad}))
        store.commit("kill", changes, {0: offset})
        print("committed", offset, flush=True)
    """
)


@pytest.mark.parametrize(
    ("mode", "partitions", "rows", "pad"),
    [("batch", 10, 4, 40), ("staged", 30, 20, 150)],  # ~10 KB logged batches; ~300 KB staged commits
)
def test_sigkill_mid_stream_leaves_rows_matching_the_checkpoint(
    cassandra_admin: Admin, fresh: str, mode: str, partitions: int, rows: int, pad: int
) -> None:
    """A writer doing read-modify-write counters is SIGKILLed at random moments; every restart
    must find each counter equal to the checkpoint (a torn commit would show counters ahead of it)."""
    url = store_url(cassandra_admin.hosts, fresh, commit=mode)
    rng = random.Random(11)
    committed = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHING_WRITER, url, str(partitions), str(rows), str(pad)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline().split()
            time.sleep(rng.uniform(0.2, 0.8))
        finally:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        assert ready[:1] == ["ready"], f"the writer did not start: {err[-2000:]}"
        assert int(ready[1]) == committed
        lines = [line.split() for line in out.splitlines() if line.startswith("committed")]
        last_acked = int(lines[-1][1]) if lines else committed
        store = _open(cassandra_admin, fresh)
        try:
            cp = store.checkpoint("kill").get(0, 0)
            assert last_acked <= cp <= last_acked + 1  # the in-flight commit: all or nothing
            counts = {(pk, sk): doc["n"] for c, pk, sk, doc in store.items() if c == "cnt"}
            if cp:
                assert len(counts) == partitions * rows
            assert set(counts.values()) <= {cp}, sorted(set(counts.values()))
            committed = cp
        finally:
            store.close()
    assert committed >= 3  # the writers made progress
