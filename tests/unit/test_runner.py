"""The projection runner and rebuild: tailing, checkpoints, restarts, failures, equivalence."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.message import Message

from consumers.rebuild import RebuildResult, rebuild
from consumers.runner import DocCache, ProjectionRunner
from coordinator._pb.labelweave.events.v1 import annotation_pb2, events_pb2, model_pb2
from coordinator.eventlog import codec
from coordinator.eventlog.base import AppendRequest, Checkpoint, EventLog, RecordedEvent
from coordinator.eventlog.memory import MemoryEventLog
from coordinator.eventlog.sqlite import SqliteEventLog
from coordinator.metrics import Metrics
from projections import queries
from projections.base import Change, ProjectionStore, ViewTx
from projections.factory import open_store
from projections.memory import MemoryStore
from projections.views import default_views

E = events_pb2
M = model_pb2
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
PROJECT = "proj-1"


class Workload:
    """Appends plausible task histories (interleaved across tasks) and counts what it wrote."""

    def __init__(self, log: EventLog, seed: int = 1) -> None:
        self.log = log
        self.rng = random.Random(seed)
        self.versions: Counter[str] = Counter()
        self.counts: Counter[tuple[str, str]] = Counter()  # (person, metric) → n
        self.events = 0
        self.tasks = 0

    def append(self, stream: str, *payloads: Message) -> None:
        cid = uuid.uuid4().hex
        envs = [
            codec.make_envelope(
                p, stream_id=stream, actor_id="w", actor_role=M.ROLE_ADMIN, command_id=cid, occurred_at=T0
            )
            for p in payloads
        ]
        self.log.append(AppendRequest(stream, self.versions[stream], envs, cid))
        self.versions[stream] += len(envs)
        self.events += len(envs)

    def project(self) -> None:
        self.append(f"project:{PROJECT}", E.ProjectCreated(project_id=PROJECT, name="P"))

    def task_script(self, i: int) -> Iterator[tuple[Message, ...]]:
        """The commands of task i, each a tuple of payloads."""
        tid = f"t{i:05d}"
        person = f"p{i % 5}"
        spec = M.TaskSpec(
            task_id=tid,
            data_uri=f"s3://b/{tid}",
            priority=i % 7,
            overlap=1,
            required_skills=["lidar"] if i % 3 == 0 else [],
        )
        yield (E.TaskImported(project_id=PROJECT, batch_id="b", task=spec, lease_seconds=60),)
        expires = codec.timestamp(T0 + timedelta(seconds=60 + i))
        lease = f"L{i}"
        yield (
            E.TaskLeased(
                task_id=tid, lease_id=lease, person_id=person, expires_at=expires, project_id=PROJECT
            ),
        )
        self.counts[(person, "leased")] += 1
        if i % 4 == 0:
            yield (E.LeaseExpired(task_id=tid, lease_id=lease, person_id=person),)
            self.counts[(person, "expired")] += 1
            lease = f"L{i}b"
            yield (
                E.TaskLeased(
                    task_id=tid, lease_id=lease, person_id=person, expires_at=expires, project_id=PROJECT
                ),
            )
            self.counts[(person, "leased")] += 1
        ann = annotation_pb2.Annotation(
            shapes=[
                annotation_pb2.Shape(label="car", box=annotation_pb2.BoundingBox(x=i, y=1, width=2, height=3))
            ]
        )
        aid = f"A{i}"
        yield (
            E.AnnotationSubmitted(
                task_id=tid,
                annotation_id=aid,
                version=1,
                lease_id=lease,
                person_id=person,
                annotation=ann,
                time_on_task_ms=100 + i,
                project_id=PROJECT,
            ),
        )
        self.counts[(person, "submitted")] += 1
        self.counts[(person, "time_on_task_ms")] += 100 + i
        version = 1
        if i % 3 == 1:
            yield (
                E.ReviewRecorded(
                    task_id=tid,
                    annotation_id=aid,
                    version=1,
                    reviewer_id="rev",
                    verdict=M.VERDICT_REJECT,
                    reason_codes=["x"],
                    author_id=person,
                    project_id=PROJECT,
                ),
            )
            self.counts[(person, "rejected")] += 1
            version = 2
            yield (
                E.AnnotationEdited(
                    task_id=tid,
                    annotation_id=aid,
                    version=2,
                    previous_version=1,
                    person_id=person,
                    annotation=ann,
                    project_id=PROJECT,
                ),
            )
            self.counts[(person, "edits")] += 1
        if i % 5 != 2:  # some stay in review
            yield (
                E.ReviewRecorded(
                    task_id=tid,
                    annotation_id=aid,
                    version=version,
                    reviewer_id="rev",
                    verdict=M.VERDICT_ACCEPT,
                    author_id=person,
                    project_id=PROJECT,
                ),
                E.AnnotationAccepted(
                    task_id=tid,
                    annotation_id=aid,
                    version=version,
                    author_id=person,
                    accepted_by="rev",
                    annotation=ann,
                    project_id=PROJECT,
                    data_uri=f"s3://b/{tid}",
                ),
                E.TaskCompleted(task_id=tid, project_id=PROJECT, annotation_ids=[aid]),
            )
            self.counts[(person, "accepted")] += 1
            if i % 10 == 0:
                yield (E.TaskReopened(task_id=tid, project_id=PROJECT, reason="r", round=2),)

    def run(self, n_tasks: int) -> None:
        """Append the histories of tasks [self.tasks, self.tasks + n_tasks), interleaved."""
        scripts = {i: self.task_script(i) for i in range(self.tasks, self.tasks + n_tasks)}
        self.tasks += n_tasks
        while scripts:
            i = self.rng.choice(sorted(scripts))
            try:
                payloads = next(scripts[i])
            except StopIteration:
                del scripts[i]
                continue
            self.append(f"task:t{i:05d}", *payloads)


def metric_totals(store: ProjectionStore) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for doc in queries.annotator_metrics(store, PROJECT, None):
        for k, v in doc.items():
            if k != "person_id" and v:
                out[(doc["person_id"], k)] += v
    return out


StoreFactory = Callable[[], ProjectionStore]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    opened: list[ProjectionStore] = []

    def factory() -> ProjectionStore:
        if request.param == "memory":
            store = open_store("memory://")
        else:
            store = open_store(f"sqlite:///{tmp_path / f'p{len(opened)}.db'}")
        opened.append(store)
        return store

    yield factory
    for s in opened:
        s.close()


def test_runner_tails_a_log_while_it_grows(make_store: StoreFactory) -> None:
    log = MemoryEventLog()
    store = make_store()
    metrics = Metrics()
    runner = ProjectionRunner(log, store, consumer="live", batch_size=50, metrics=metrics)
    runner.start()
    work = Workload(log)
    work.project()
    writer = threading.Thread(target=work.run, args=(120,))
    writer.start()
    writer.join(30)
    try:
        assert runner.wait_for(log.head(), timeout=30)
        assert runner.applied == log.head()
        assert runner.lag() == 0
        assert store.checkpoint("live") == log.head()
        assert metric_totals(store) == work.counts
        assert len(store.scan("tasks_by_project", PROJECT, start="all|", end="all}")) == 120
        applied = metrics.registry.get_sample_value(
            "labelweave_projection_events_applied_total", {"consumer": "live"}
        )
        assert applied == work.events
        # more events after catching up are picked up too
        work.run(10)
        assert runner.wait_for(log.head(), timeout=30)
        assert metric_totals(store) == work.counts
    finally:
        runner.stop()
    assert runner.failures == 0
    depth = queries.queue_depth(store, PROJECT)
    # the gauge is refreshed at most once a second; force one refresh to check it is wired
    runner._last_depths = 0.0
    runner._record(0, 0.0)
    assert metrics.registry.get_sample_value("labelweave_queue_depth_tasks", {"project": PROJECT}) == depth


def test_restart_from_checkpoint_neither_repeats_nor_skips(make_store: StoreFactory) -> None:
    log = MemoryEventLog()
    store = make_store()
    work = Workload(log, seed=2)
    work.project()
    work.run(40)
    first = ProjectionRunner(log, store, batch_size=17)
    assert first.run_once() == 17
    assert first.run_once() == 17
    assert store.checkpoint("embedded") == {0: 34}
    del first  # "crash" after two committed batches
    work.run(20)
    second = ProjectionRunner(log, store, batch_size=23)
    assert second.applied == {0: 34}
    assert second.lag() == work.events - 34
    assert second.catch_up() == work.events - 34
    assert second.run_once() == 0
    assert metric_totals(store) == work.counts
    live = store.checksum()
    fresh = make_store()
    result = rebuild(log, fresh)
    assert result.checksum == live
    assert result.events == work.events
    assert result.checkpoint == log.head()


def test_rebuild_checksum_equals_live_checksum(make_store: StoreFactory) -> None:
    log = MemoryEventLog()
    work = Workload(log, seed=3)
    work.project()
    work.run(60)
    live = make_store()
    runner = ProjectionRunner(log, live, batch_size=7)
    assert runner.catch_up() == work.events
    rebuilt = make_store()
    result = rebuild(log, rebuilt, batch_size=1000)
    assert isinstance(result, RebuildResult)
    assert result.checksum == live.checksum() == rebuilt.checksum()
    assert result.events == work.events and result.seconds > 0
    # rebuilding over a store that has rows already starts from scratch
    again = rebuild(log, live, batch_size=13)
    assert again.checksum == result.checksum
    assert live.checkpoint("embedded") == log.head()


def test_memory_and_sqlite_stores_hold_identical_rows(tmp_path: Path) -> None:
    log = MemoryEventLog()
    work = Workload(log, seed=4)
    work.project()
    work.run(30)
    memory = MemoryStore()
    sqlite = open_store(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        assert rebuild(log, memory).checksum == rebuild(log, sqlite).checksum
    finally:
        sqlite.close()


def test_rebuild_from_a_sqlite_log_stops_at_the_head_it_started_with(tmp_path: Path) -> None:
    log = SqliteEventLog.from_url(f"sqlite:///{tmp_path / 'events.db'}")
    store = open_store(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        work = Workload(log, seed=5)
        work.project()
        work.run(25)
        result = rebuild(log, store, batch_size=10)
        assert result.events == work.events
        assert result.checkpoint == log.head()
        runner = ProjectionRunner(log, store)
        assert runner.catch_up() == 0
        work.run(5)
        assert runner.catch_up() > 0
        assert metric_totals(store) == work.counts
    finally:
        store.close()
        log.close()


class Exploding:
    """A view that writes, then raises, on every `n`th task event."""

    name = "exploding"
    collections: tuple[str, ...] = ("boom",)

    def __init__(self, n: int) -> None:
        self.n = n

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        doc = tx.get("boom", "seen") or {"offsets": []}
        doc["offsets"].append(event.position.offset)  # mutated in place before a possible failure
        if event.position.offset % self.n == 0:
            tx.put("boom", "half-written", str(event.position.offset), {})
            raise RuntimeError(f"boom at {event.position.offset}")
        tx.put("boom", "seen", "", doc)


def test_a_failing_view_is_skipped_for_that_event_only(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    log = MemoryEventLog()
    work = Workload(log, seed=6)
    work.project()
    work.run(15)
    store = make_store()
    runner = ProjectionRunner(log, store, [*default_views(), Exploding(5)], batch_size=11)
    assert runner.catch_up() == work.events
    assert runner.failures == work.events // 5
    assert "failed on event" in caplog.text
    assert metric_totals(store) == work.counts  # the other views saw everything
    seen = store.get("boom", "seen")
    assert seen is not None
    assert seen["offsets"] == [o for o in range(1, work.events + 1) if o % 5]
    assert store.scan("boom", "half-written") == []
    assert store.checkpoint("embedded") == log.head()
    # the same failures during a rebuild give the same rows
    fresh = make_store()
    assert rebuild(log, fresh, [*default_views(), Exploding(5)]).checksum == store.checksum()


def test_wait_for_without_a_background_thread_applies_itself() -> None:
    log = MemoryEventLog()
    store = MemoryStore()
    work = Workload(log, seed=7)
    work.project()
    work.run(5)
    runner = ProjectionRunner(log, store, batch_size=4)
    assert runner.wait_for({0: 9}, timeout=5)
    assert runner.applied[0] >= 9
    assert runner.wait_for(log.head(), timeout=5)
    assert not runner.wait_for({0: log.head()[0] + 1}, timeout=0.2)
    assert runner.wait_for({}, timeout=0)


def test_wait_for_wakes_when_the_background_thread_applies() -> None:
    log = MemoryEventLog()
    store = MemoryStore()
    runner = ProjectionRunner(log, store)
    runner.start()
    try:
        work = Workload(log, seed=8)
        work.project()
        assert runner.wait_for(log.head(), timeout=5)
        assert not runner.wait_for({0: 99}, timeout=0.1)
        done = threading.Event()

        def waiter() -> None:
            if runner.wait_for({0: 1 + 1}, timeout=10):
                done.set()

        t = threading.Thread(target=waiter)
        t.start()
        work.run(1)
        t.join(10)
        assert done.is_set()
    finally:
        runner.stop()


def test_views_must_not_share_collections() -> None:
    class Copy(Exploding):
        name = "copy"
        collections: tuple[str, ...] = ("task",)

    with pytest.raises(ValueError, match="task"):
        ProjectionRunner(MemoryEventLog(), MemoryStore(), [*default_views(), Copy(1)])


class FlakyStore(MemoryStore):
    """Fails the `fail_on`th commit (after the views already edited their cached documents)."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.commits = 0
        self.fail_on = fail_on

    def commit(self, consumer: str, changes: Sequence[Change], checkpoint: Checkpoint) -> None:
        self.commits += 1
        if self.commits == self.fail_on:
            raise OSError("disk full")
        super().commit(consumer, changes, checkpoint)


def test_a_failed_commit_is_retried_without_stale_cached_documents() -> None:
    log = MemoryEventLog()
    work = Workload(log, seed=9)
    work.project()
    work.run(20)
    store = FlakyStore(fail_on=3)
    runner = ProjectionRunner(log, store, batch_size=9)
    assert runner.run_once() == 9
    assert runner.run_once() == 9
    with pytest.raises(OSError):
        runner.run_once()
    assert runner.applied == {0: 18}
    assert runner.catch_up() == work.events - 18
    assert metric_totals(store) == work.counts
    assert store.checksum() == rebuild(log, MemoryStore()).checksum


def test_a_small_document_cache_gives_the_same_rows(make_store: StoreFactory) -> None:
    log = MemoryEventLog()
    work = Workload(log, seed=10)
    work.project()
    work.run(30)
    store = make_store()
    runner = ProjectionRunner(log, store, batch_size=25)
    runner._cache = DocCache(capacity=20)  # evicts all the time
    runner.catch_up()
    assert store.checksum() == rebuild(log, make_store()).checksum


def test_switching_stores_resumes_from_the_new_store_checkpoint() -> None:
    log = MemoryEventLog()
    work = Workload(log, seed=11)
    work.project()
    work.run(10)
    runner = ProjectionRunner(log, MemoryStore())
    runner.catch_up()
    fresh = MemoryStore()
    runner.store = fresh
    assert runner.applied == {}
    assert runner.catch_up() == work.events
    assert metric_totals(fresh) == work.counts


def test_a_complete_cache_that_evicts_still_reads_evicted_rows_and_skips_unknown_ones() -> None:
    from consumers.runner import DocCache, _ReadThrough
    from projections.base import Put
    from projections.memory import MemoryStore

    store = MemoryStore()
    cache = DocCache(capacity=10)
    cache.complete = True
    changes = [Put("c", f"k{i}", "", {"i": i}) for i in range(30)]
    store.commit("t", changes, {0: 30})
    cache.remember(changes[:25])  # one batch bigger than the capacity: all kept for now
    assert len(cache.docs) == 25
    cache.remember(changes[25:])  # evicts the oldest rows, not the batch just remembered
    assert len(cache.docs) <= 10
    assert all(("c", f"k{i}", "") in cache.docs for i in range(25, 30))
    reads: list[tuple[str, str, str]] = []

    class Counting(MemoryStore):
        def get(self, collection: str, pk: str, sk: str = "") -> dict[str, object] | None:
            reads.append((collection, pk, sk))
            return store.get(collection, pk, sk)

    through = _ReadThrough(Counting(), cache)
    assert through.get("c", "k0") == {"i": 0}  # evicted: read from the store
    assert through.get("c", "never") is None  # never written: no read
    assert reads == [("c", "k0", "")]
