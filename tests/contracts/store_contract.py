"""The behaviour every `ProjectionStore` backend must show.

A backend's test module subclasses `StoreContract` as `Test<Backend>Store` and implements
`make_store()` (it may add its own autouse fixtures, e.g. to get a temporary directory). Each test
gets a fresh, empty store from the `store` fixture, which closes it afterwards. Nothing here may
assume a particular backend.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from projections.base import Delete, ProjectionStore, Put


class StoreContract:
    """Abstract: not collected (no `Test` prefix); backends subclass it."""

    isolated_commits = True
    """A concurrent reader sees a commit all at once or not at all: its rows in every partition and
    its checkpoint appear together (SQLite's transaction, the memory store's lock). Cassandra's
    logged batch is atomic (all of it is eventually applied) but not isolated across partitions:
    between the first and the last mutation of a batch a reader may see one partition's new rows and
    another's old ones, or the checkpoint before the rows. Only the rows of ONE partition written by
    one commit are isolated there (a single-partition write is one mutation), and only while the
    scan fits in one page. A backend like that sets this to False; it is then held to
    `test_commit_is_complete_when_it_returns` and `test_partition_rows_of_a_commit_appear_together`,
    which every backend must pass."""

    checkpoint_follows_rows = True
    """The checkpoint of a commit is never visible before its rows: a reader that reads checkpoint
    N and then reads rows sees them at least as new as commit N. Implied by `isolated_commits`.
    Cassandra's staged commit (redo record, then rows, then checkpoint) guarantees it; a logged batch
    does not (its mutations are applied concurrently), so the Cassandra store in `commit=batch` mode
    sets this to False."""

    def make_store(self) -> ProjectionStore:
        raise NotImplementedError

    @pytest.fixture
    def store(self) -> Iterator[ProjectionStore]:
        store = self.make_store()
        try:
            yield store
        finally:
            store.close()

    # ------------------------------------------------------------------ point reads and writes

    def test_empty_store(self, store: ProjectionStore) -> None:
        assert store.get("c", "p") is None
        assert store.scan("c", "p") == []
        assert store.checkpoint("x") == {}
        assert list(store.items()) == []

    def test_put_get_delete(self, store: ProjectionStore) -> None:
        store.commit(
            "x", [Put("c", "p", "", {"a": 1}), Put("c", "p", "s", {"b": [1, 2, {"c": None}]})], {0: 1}
        )
        assert store.get("c", "p") == {"a": 1}
        assert store.get("c", "p", "") == {"a": 1}
        assert store.get("c", "p", "s") == {"b": [1, 2, {"c": None}]}
        assert store.get("c", "other") is None
        assert store.get("other", "p") is None
        store.commit("x", [Put("c", "p", "", {"a": 2}), Delete("c", "p", "s")], {0: 2})
        assert store.get("c", "p") == {"a": 2}
        assert store.get("c", "p", "s") is None
        store.commit("x", [Delete("c", "nothing", "")], {0: 3})  # deleting a missing row is fine
        assert store.checkpoint("x") == {0: 3}

    def test_changes_apply_in_order(self, store: ProjectionStore) -> None:
        store.commit(
            "x",
            [
                Put("c", "p", "a", {"v": 1}),
                Delete("c", "p", "a"),
                Put("c", "p", "b", {"v": 1}),
                Put("c", "p", "b", {"v": 2}),
            ],
            {0: 1},
        )
        assert store.get("c", "p", "a") is None
        assert store.get("c", "p", "b") == {"v": 2}
        store.commit("x", [Delete("c", "p", "b"), Put("c", "p", "b", {"v": 3})], {0: 2})
        assert store.get("c", "p", "b") == {"v": 3}

    def test_returned_docs_are_copies(self, store: ProjectionStore) -> None:
        value = {"list": [1, 2], "nested": {"k": "v"}}
        store.commit("x", [Put("c", "p", "s", value)], {0: 1})
        value["list"].append(3)  # type: ignore[attr-defined]
        got = store.get("c", "p", "s")
        assert got == {"list": [1, 2], "nested": {"k": "v"}}
        assert got is not None
        got["nested"]["k"] = "changed"
        got["list"].append(99)
        assert store.get("c", "p", "s") == {"list": [1, 2], "nested": {"k": "v"}}
        ((_, scanned),) = store.scan("c", "p")
        scanned["list"].clear()
        assert store.scan("c", "p") == [("s", {"list": [1, 2], "nested": {"k": "v"}})]
        for _, _, _, doc in store.items():
            doc.clear()
        assert store.get("c", "p", "s") == {"list": [1, 2], "nested": {"k": "v"}}

    def test_unicode_keys_and_values(self, store: ProjectionStore) -> None:
        keys = ["żółw", "日本語", "emoji-🦀", "a|b\x1fc", "plain"]
        store.commit(
            "x", [Put("kolekcja-ł", "pk-€", k, {"name": k, "text": "ünïcødé ✓"}) for k in keys], {0: 1}
        )
        for k in keys:
            assert store.get("kolekcja-ł", "pk-€", k) == {"name": k, "text": "ünïcødé ✓"}
        assert [sk for sk, _ in store.scan("kolekcja-ł", "pk-€")] == sorted(keys)

    def test_large_values(self, store: ProjectionStore) -> None:
        big = {
            "blob": "x" * 2_000_000,
            "items": list(range(50_000)),
            "nested": [{"i": i, "s": str(i)} for i in range(2000)],
        }
        store.commit("x", [Put("c", "p", "big", big)], {0: 1})
        assert store.get("c", "p", "big") == big

    # ------------------------------------------------------------------ scans

    def _fill(self, store: ProjectionStore) -> list[str]:
        keys = [f"{i:03d}" for i in range(50)]
        shuffled = keys[:]
        random.Random(7).shuffle(shuffled)
        store.commit("x", [Put("c", "p", k, {"k": k}) for k in shuffled], {0: 1})
        store.commit(
            "x", [Put("c", "q", "zzz", {"k": "other partition"}), Put("d", "p", "000", {"k": "d"})], {0: 2}
        )
        return keys

    def test_scan_orders_by_sort_key_within_one_partition(self, store: ProjectionStore) -> None:
        keys = self._fill(store)
        rows = store.scan("c", "p")
        assert [sk for sk, _ in rows] == keys
        assert all(doc == {"k": sk} for sk, doc in rows)
        assert [sk for sk, _ in store.scan("c", "q")] == ["zzz"]
        assert store.scan("c", "nothing") == []

    def test_scan_start_end_limit_reverse(self, store: ProjectionStore) -> None:
        keys = self._fill(store)

        def sks(**kw: object) -> list[str]:
            return [sk for sk, _ in store.scan("c", "p", **kw)]  # type: ignore[arg-type]

        assert sks(start="010") == keys[10:]
        assert sks(start="010", end="020") == keys[10:20]  # end is exclusive
        assert sks(start="0105") == keys[11:]  # start need not exist
        assert sks(end="003") == keys[:3]
        assert sks(limit=5) == keys[:5]
        assert sks(start="010", end="020", limit=3) == keys[10:13]
        assert sks(reverse=True) == keys[::-1]
        assert sks(reverse=True, limit=4) == keys[::-1][:4]
        assert sks(start="010", end="020", reverse=True) == keys[10:20][::-1]
        assert sks(start="010", end="020", reverse=True, limit=3) == ["019", "018", "017"]
        assert sks(start="020", end="010") == []
        assert sks(start="020", end="020") == []
        assert sks(limit=0) == []
        assert sks(start="999") == []
        assert sks(end="") == []

    def test_scan_after_deletes(self, store: ProjectionStore) -> None:
        keys = self._fill(store)
        store.commit("x", [Delete("c", "p", k) for k in keys[::2]], {0: 3})
        assert [sk for sk, _ in store.scan("c", "p")] == keys[1::2]
        store.commit("x", [Delete("c", "p", k) for k in keys[1::2]], {0: 4})
        assert store.scan("c", "p") == []
        store.commit("x", [Put("c", "p", "again", {})], {0: 5})
        assert store.scan("c", "p") == [("again", {})]

    # ------------------------------------------------------------------ checkpoints

    def test_checkpoints_are_per_consumer_and_merged_per_partition(self, store: ProjectionStore) -> None:
        store.commit("a", [], {0: 5, 1: 3})
        store.commit("b", [], {0: 1})
        assert store.checkpoint("a") == {0: 5, 1: 3}
        assert store.checkpoint("b") == {0: 1}
        store.commit("a", [], {1: 7})  # partition 0 keeps its offset
        assert store.checkpoint("a") == {0: 5, 1: 7}
        store.commit("a", [Put("c", "p", "", {})], {2: 1})
        assert store.checkpoint("a") == {0: 5, 1: 7, 2: 1}
        assert store.checkpoint("nobody") == {}

    def test_checkpoint_is_written_with_the_rows(self, store: ProjectionStore) -> None:
        class NotJson:
            pass

        store.commit("x", [Put("c", "p", "ok", {"v": 1})], {0: 1})
        with pytest.raises(Exception):  # noqa: B017 - any failure will do; nothing may be half-written
            store.commit("x", [Put("c", "p", "a", {"v": 2}), Put("c", "p", "b", {"bad": NotJson()})], {0: 2})
        assert store.checkpoint("x") == {0: 1}
        assert store.get("c", "p", "a") is None
        assert store.get("c", "p", "b") is None
        assert store.get("c", "p", "ok") == {"v": 1}
        store.commit("x", [Put("c", "p", "a", {"v": 3})], {0: 2})
        assert store.checkpoint("x") == {0: 2}
        assert store.get("c", "p", "a") == {"v": 3}

    def test_readers_see_whole_commits_only(self, store: ProjectionStore) -> None:
        """Each commit writes rows 0..n with one batch number plus the checkpoint; a concurrent
        reader must never see rows of two different batches in one scan, nor a checkpoint ahead
        of the rows. All rows are in one partition, so a backend without `isolated_commits` is
        held to the scan checks only (the checkpoint is another partition)."""
        n = 20
        stop = threading.Event()
        errors: list[str] = []

        def reader() -> None:
            while not stop.is_set():
                cp = store.checkpoint("x").get(0, 0)
                rows = store.scan("c", "p")
                batches = {doc["batch"] for _, doc in rows}
                if len(batches) > 1:
                    errors.append(f"mixed batches in one scan: {sorted(batches)}")
                if rows and len(rows) != n:
                    errors.append(f"partial batch: {len(rows)} rows")
                if self.isolated_commits and rows and cp > rows[0][1]["batch"]:
                    errors.append(f"checkpoint {cp} read before rows of batch {rows[0][1]['batch']}?")
                doc = store.get("c", "p", "000")
                if self.isolated_commits and doc is not None and doc["batch"] < cp:
                    errors.append(f"checkpoint {cp} visible before its rows (saw batch {doc['batch']})")

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for batch in range(1, 150):
                store.commit(
                    "x", [Put("c", "p", f"{i:03d}", {"batch": batch, "i": i}) for i in range(n)], {0: batch}
                )
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert errors[:5] == []
        assert store.checkpoint("x") == {0: 149}

    def test_commit_is_complete_when_it_returns(self, store: ProjectionStore) -> None:
        """What every backend guarantees to concurrent readers, isolated or not: once `commit`
        returns, every reader sees all of its rows (in every partition) and its checkpoint; a
        reader never sees a commit that has not been made; and, if `checkpoint_follows_rows`, a
        checkpoint is never visible before the rows it covers."""
        n = 10
        parts = ("p", "q", "r")
        stop = threading.Event()
        returned = [0]  # the last batch whose commit() returned
        errors: list[str] = []

        def reader() -> None:
            while not stop.is_set():
                done = returned[0]  # read before the rows: they must be at least this new
                cp = store.checkpoint("x").get(0, 0)
                for pk in parts:
                    batches = {doc["batch"] for _, doc in store.scan("c", pk)}
                    newest = max(batches, default=0)
                    low = min(batches, default=0)
                    if done and low < done:
                        errors.append(f"commit {done} returned but {pk} still has rows of batch {low}")
                    if self.checkpoint_follows_rows and low < cp:
                        errors.append(f"checkpoint {cp} visible before its rows ({pk} has batch {low})")
                    if newest > returned[0] + 1:
                        errors.append(f"{pk} shows batch {newest}, which is not being committed yet")
                if cp > returned[0] + 1:
                    errors.append(f"checkpoint {cp} of a commit that has not started")

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for batch in range(1, 60):
                store.commit(
                    "x",
                    [Put("c", pk, f"{i:03d}", {"batch": batch, "i": i}) for pk in parts for i in range(n)],
                    {0: batch},
                )
                returned[0] = batch
                # the committing thread itself, right after the return
                assert store.checkpoint("x") == {0: batch}
                for pk in parts:
                    assert [doc["batch"] for _, doc in store.scan("c", pk)] == [batch] * n
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert errors[:5] == []

    def test_partition_rows_of_a_commit_appear_together(self, store: ProjectionStore) -> None:
        """The rows one commit writes to one partition are seen all or none by a scan of that
        partition (every backend: a transaction, a lock, or one Cassandra mutation per partition),
        even when the commit spans many partitions and is large."""
        n = 20
        parts = [f"p{j:02d}" for j in range(12)]
        filler = "f" * 400  # 12 partitions x 20 rows x ~0.5 KB: beyond Cassandra's default batch limit
        stop = threading.Event()
        errors: list[str] = []

        def reader() -> None:
            while not stop.is_set():
                for pk in parts[::3]:
                    rows = store.scan("c", pk)
                    batches = {doc["batch"] for _, doc in rows}
                    if len(batches) > 1:
                        errors.append(f"mixed batches in one scan of {pk}: {sorted(batches)}")
                    if rows and len(rows) != n:
                        errors.append(f"partial batch in {pk}: {len(rows)} rows")

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for batch in range(1, 25):
                store.commit(
                    "x",
                    [
                        Put("c", pk, f"{i:03d}", {"batch": batch, "i": i, "f": filler})
                        for i in range(n)
                        for pk in parts
                    ],
                    {0: batch},
                )
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert errors[:5] == []
        assert store.checkpoint("x") == {0: 24}

    # ------------------------------------------------------------------ items, checksum, clear

    def test_items_in_key_order(self, store: ProjectionStore) -> None:
        store.commit(
            "x",
            [
                Put("b", "p", "2", {}),
                Put("a", "q", "1", {}),
                Put("a", "p", "9", {}),
                Put("a", "p", "10", {"v": 1}),
            ],
            {0: 1},
        )
        assert [(c, p, s) for c, p, s, _ in store.items()] == [
            ("a", "p", "10"),
            ("a", "p", "9"),
            ("a", "q", "1"),
            ("b", "p", "2"),
        ]

    def test_checksum_depends_on_contents_not_insertion_order(self, store: ProjectionStore) -> None:
        rows = [
            Put("c", f"p{i % 3}", f"s{i}", {"i": i, "z": "ż", "nested": {"b": 1, "a": 2}}) for i in range(30)
        ]
        empty = store.checksum()
        store.commit("x", rows, {0: 1})
        forward = store.checksum()
        assert forward != empty
        store.clear()
        assert store.checksum() == empty
        shuffled = rows[:]
        random.Random(3).shuffle(shuffled)
        for chunk in range(0, 30, 7):
            store.commit("y", shuffled[chunk : chunk + 7], {0: chunk + 1})
        assert store.checksum() == forward
        store.commit("y", [Put("c", "p0", "s0", {"i": 0, "z": "ż", "nested": {"a": 2, "b": 1}})], {0: 99})
        assert store.checksum() == forward  # key order inside a doc does not matter
        store.commit("y", [Put("c", "p0", "s0", {"i": -1})], {0: 100})
        assert store.checksum() != forward
        store.commit("y", [Put("c", "p0", "s0", rows[0].value), Put("c", "p0", "extra", {})], {0: 101})
        assert store.checksum() != forward
        store.commit("y", [Delete("c", "p0", "extra")], {0: 102})
        assert store.checksum() == forward

    def test_clear_drops_rows_and_checkpoints(self, store: ProjectionStore) -> None:
        self._fill(store)
        store.commit("other", [], {0: 9})
        store.clear()
        assert list(store.items()) == []
        assert store.scan("c", "p") == []
        assert store.checkpoint("x") == {}
        assert store.checkpoint("other") == {}
        store.commit("x", [Put("c", "p", "s", {"v": 1})], {0: 1})
        assert store.get("c", "p", "s") == {"v": 1}
        assert store.checkpoint("x") == {0: 1}
