"""Rebuilding an embedded store with the views split over processes equals a one-process rebuild."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.rebuild import rebuild
from consumers.rebuild_views import VIEW_COST_US, rebuild_by_views, split_views
from coordinator.errors import InvalidArgument
from coordinator.eventlog.sqlite import SqliteEventLog
from projections.memory import MemoryStore
from projections.views import default_views
from tests.unit.test_runner import Workload


def test_views_are_split_into_balanced_groups_each_view_once() -> None:
    views = default_views()
    for n in (1, 2, 3, 4, 50):
        groups = split_views(views, n)
        assert len(groups) == min(n, len(views)) and all(groups)
        assert sorted(v.name for g in groups for v in g) == sorted(v.name for v in views)
    costs = [sum(VIEW_COST_US.get(v.name, 1.0) for v in g) for g in split_views(views, 2)]
    assert max(costs) - min(costs) <= max(VIEW_COST_US.values())  # greedy: within one view's cost
    with pytest.raises(InvalidArgument):
        split_views(views, 0)


def test_processes_that_start_later_get_less_work() -> None:
    views = default_views()
    handicap = 9.0
    first, second = (sum(VIEW_COST_US.get(v.name, 1.0) for v in g) for g in split_views(views, 2, handicap))
    assert first > second
    assert abs(first - (second + handicap)) <= max(VIEW_COST_US.values())
    for groups in split_views(views, 3, 1e9), split_views(views, 11, 1e9):  # still one view each at least
        assert all(groups) and sum(map(len, groups)) == len(views)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_rebuild_by_view_groups_equals_a_one_process_rebuild(tmp_path: Path, workers: int) -> None:
    log_url = f"sqlite:///{tmp_path / 'events.db'}"
    log = SqliteEventLog.from_url(log_url)
    try:
        work = Workload(log, seed=5)
        work.project()
        work.run(120)
        expected = rebuild(log, MemoryStore())
    finally:
        log.close()
    result = rebuild_by_views(
        log_url, f"sqlite:///{tmp_path / 'p.db'}", workers=workers, min_events_per_worker=1
    )
    assert result.processes == workers
    assert result.events == expected.events == work.events
    assert result.checksum == expected.checksum
    assert dict(result.checkpoint) == dict(expected.checkpoint)


def test_a_small_log_is_not_split(tmp_path: Path) -> None:
    log_url = f"sqlite:///{tmp_path / 'events.db'}"
    log = SqliteEventLog.from_url(log_url)
    try:
        work = Workload(log, seed=6)
        work.project()
        work.run(10)
    finally:
        log.close()
    assert rebuild_by_views(log_url, f"sqlite:///{tmp_path / 'p.db'}", workers=4).processes == 1


@pytest.mark.parametrize("replace", [False, True])
def test_the_application_rebuilds_into_a_bulk_loaded_file(tmp_path: Path, replace: bool) -> None:
    """`labelweave rebuild` lets the view-group processes create the scratch file themselves: a
    file opened as a live store first would be a WAL database and load as slowly as one."""
    import sqlite3

    from coordinator.app import Application
    from coordinator.settings import Settings

    app = Application.open(Settings(data_dir=tmp_path, metrics_port=0))
    try:
        work = Workload(app.log, seed=7)
        work.project()
        work.run(40)
        result = app.rebuild(workers=2, replace=replace)
        assert result["match"], result
        assert result["events"] == work.events
        rebuilt = tmp_path / ("projections.db" if replace else "projections.rebuild.db")
        conn = sqlite3.connect(rebuilt)
        try:
            assert conn.execute("PRAGMA page_size").fetchone()[0] == 16384  # created by a bulk load
        finally:
            conn.close()
        assert app.store.checksum() == result["live_checksum"]
    finally:
        app.close()
