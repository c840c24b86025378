"""Queue and review-stage gauges refreshed from the projections (embedded runner or follower).

Label sets are bounded: project ids and the stage names of their pipelines. A series whose
project or stage disappeared is set to 0 rather than left at its last value.
"""

from __future__ import annotations

import time

from coordinator.metrics import Metrics
from projections.base import ProjectionStore


class ProjectionGauges:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._projects: set[str] = set()
        self._stages: set[tuple[str, str]] = set()

    def refresh(self, store: ProjectionStore, now: float | None = None) -> None:
        from projections.queries import queue_depths
        from projections.review_queries import all_stage_depths, stage_backlog

        m = self.metrics
        depths = queue_depths(store)
        for pid in self._projects - depths.keys():
            m.queue_depth.labels(pid).set(0)
        for pid, depth in depths.items():
            m.queue_depth.labels(pid).set(depth)
        self._projects = set(depths)

        now_ms = int((time.time() if now is None else now) * 1000)
        stages = all_stage_depths(store)
        for key in self._stages - stages.keys():
            m.review_stage_depth.labels(*key).set(0)
            m.review_stage_oldest_seconds.labels(*key).set(0)
        for key, depth in stages.items():
            m.review_stage_depth.labels(*key).set(depth)
        for project in {p for p, _ in stages}:
            for backlog in stage_backlog(store, project):
                age = (
                    0.0
                    if backlog.oldest_ms is None or not backlog.depth
                    else (now_ms - backlog.oldest_ms) / 1000
                )
                m.review_stage_oldest_seconds.labels(project, backlog.stage).set(max(age, 0.0))
        self._stages = set(stages)
