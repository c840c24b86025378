"""The distributed worker's core without a broker: records in, rows and dead letters out."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import pytest

from consumers.projector import DeadLetter, PartitionProjector, Record
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.eventlog.base import Position, RecordedEvent
from projections.base import StagedTx, ViewTx
from projections.memory import MemoryStore
from projections.views import default_views

from .test_views import PROJECT, Script

TOPICS = {"t.tasks": 0, "t.projects": 4}  # virtual partition base per topic


class FakeLayout:
    """tasks: 4 partitions (vp 0-3), projects: 1 (vp 4); position offset = Kafka offset + 1."""

    def position(self, topic: str, partition: int, offset: int) -> Position:
        return Position(TOPICS[topic] + partition, offset + 1)

    def next_offset(self, topic: str, partition: int, applied: Mapping[int, int]) -> int:
        return applied.get(TOPICS[topic] + partition, 0)


def history() -> list[RecordedEvent]:
    s = Script()
    for i in range(10):
        s.imported(f"t{i}", priority=i % 3)
    for i in range(6):
        person = ("alice", "bob")[i % 2]
        s.lease(f"t{i}", f"l{i}", person)
        s.submit(f"t{i}", f"l{i}", person, f"a{i}", x=float(i))
        verdict = M.VERDICT_ACCEPT if i % 2 else M.VERDICT_REJECT
        s.emit(f"task:t{i}", s.review(f"t{i}", f"a{i}", 1, verdict, person, () if i % 2 else ("blurry",)))
    return s.events


def to_records(events: list[RecordedEvent]) -> list[Record]:
    """Distribute task events over 4 partitions by key, as Kafka would; offsets from 0."""
    next_offset: dict[tuple[str, int], int] = {}
    out = []
    for ev in events:
        kind, _, key = ev.stream_id.partition(":")
        topic, part = ("t.tasks", zlib.crc32(key.encode()) % 4) if kind == "task" else ("t.projects", 0)
        off = next_offset.get((topic, part), 0)
        next_offset[(topic, part)] = off + 1
        out.append(Record(topic, part, off, key.encode(), ev.data))
    return out


def expected_checksum(records: list[Record]) -> str:
    """What an embedded rebuild of the same records gives."""
    layout = FakeLayout()
    from coordinator.eventlog import codec

    store = MemoryStore()
    tx = StagedTx(store)
    for rec in records:
        assert rec.value is not None
        ev = RecordedEvent(
            layout.position(rec.topic, rec.partition, rec.offset), codec.decode(rec.value), rec.value
        )
        for view in default_views():
            view.apply(ev, tx)
    store.commit("rebuild", tx.changes(), {})
    return store.checksum()


def test_batches_in_any_split_give_the_rebuild_checksum_and_redeliveries_are_skipped() -> None:
    records = to_records(history())
    store = MemoryStore()
    projector = PartitionProjector(store, FakeLayout())
    applied = 0
    for i in range(0, len(records), 7):
        applied += projector.process(records[i : i + 7])
    assert applied == len(records)
    assert store.checksum() == expected_checksum(records)

    # faust redelivers after a restart or rebalance: a fresh projector on the same store skips them
    again = PartitionProjector(store, FakeLayout())
    assert again.process(records) == 0
    assert again.skipped == len(records)
    assert store.checksum() == expected_checksum(records)
    assert store.checkpoint("projections") == again.applied()


def test_resume_offsets_are_one_past_the_store_checkpoint() -> None:
    records = to_records(history())
    store = MemoryStore()
    projector = PartitionProjector(store, FakeLayout())
    projector.process(records[:20])
    last: dict[tuple[str, int], int] = {}
    for rec in records[:20]:
        last[(rec.topic, rec.partition)] = rec.offset
    tps = [("t.tasks", p) for p in range(4)] + [("t.projects", 0)]
    resume = PartitionProjector(store, FakeLayout()).resume_offsets(tps)
    assert resume == {tp: last.get(tp, -1) + 1 for tp in tps}


def test_a_malformed_record_becomes_a_dead_letter_and_processing_goes_on() -> None:
    records = to_records(history())
    # two records in the middle of the log are not events: garbage bytes and a tombstone
    bad_at, tomb_at = 12, 26
    bad = records[bad_at] = records[bad_at]._replace(value=b"\x08\x96\x01not-an-envelope\xff")
    tomb = records[tomb_at] = records[tomb_at]._replace(value=None)
    letters: list[DeadLetter] = []
    store = MemoryStore()
    projector = PartitionProjector(store, FakeLayout(), dead_letter=letters.append)
    projector.process(records[:20])
    projector.process(records[20:])
    assert [(d.record, d.reason) for d in letters] == [(bad, "decode"), (tomb, "decode")]
    assert projector.dead_letters == 2
    good = [r for i, r in enumerate(records) if i not in (bad_at, tomb_at)]
    assert store.checksum() == expected_checksum(good)
    last = max(r.offset for r in records if (r.topic, r.partition) == (bad.topic, bad.partition))
    assert store.checkpoint("projections")[bad.partition] == last + 1  # moved past the bad record


def test_a_view_that_raises_sends_a_dead_letter_naming_the_view_and_others_still_apply() -> None:
    class Broken:
        name = "broken"
        collections: tuple[str, ...] = ("broken",)

        def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
            if event.type == "annotation_submitted":
                raise RuntimeError("boom")
            tx.put("broken", "all", f"{event.position.partition}:{event.position.offset}", {"ok": True})

    records = to_records(history())
    letters: list[DeadLetter] = []
    store = MemoryStore()
    projector = PartitionProjector(
        store, FakeLayout(), views=[*default_views(), Broken()], dead_letter=letters.append
    )
    projector.process(records)
    submitted = [d for d in letters if d.view == "broken"]
    assert len(submitted) == 6 and all(d.reason == "view" and "boom" in d.error for d in submitted)
    assert all(d.event_id for d in submitted)
    assert len(store.scan("broken", "all")) == len(records) - 6
    # the real views are complete
    assert sorted(queries_depth(store)) == [PROJECT]


def queries_depth(store: MemoryStore) -> dict[str, int]:
    from projections.queries import queue_depths

    return queue_depths(store)


def test_reset_drops_cached_documents_written_by_another_worker() -> None:
    records = to_records(history())
    store = MemoryStore()
    a = PartitionProjector(store, FakeLayout())
    b = PartitionProjector(store, FakeLayout())
    half = len(records) // 2
    a.process(records[:half])
    # partitions move to b, which applies the rest; then they move back to a
    b.process(records[half:])
    a.reset()
    extra = Record("t.tasks", 0, 50_000, b"t0", records[0].value)  # re-import of t0: ignored by the views
    a.process([extra])
    assert store.checksum() == expected_checksum(records)


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_batch_size_does_not_change_the_result(size: int) -> None:
    records = to_records(history())
    store = MemoryStore()
    projector = PartitionProjector(store, FakeLayout())
    for i in range(0, len(records), size):
        projector.process(records[i : i + size])
    assert store.checksum() == expected_checksum(records)
