"""Queue and stage gauges refreshed from the projections (embedded runner or follower).

Label sets are bounded: project ids and the stage names of their pipelines. A series whose
project or stage disappeared is set to 0 rather than left at its last value.

Stage gauges (docs/planning-and-dashboards.md): depth and oldest age of every stage ("annotate"
and each review stage, the expert stage counting open disputes; one family for the whole pipeline,
so a bottleneck panel compares like with like) and the SLA-at-risk task count per
project. SLA risk is recomputed at most every `sla_interval` seconds (it plans every open task
with a deadline against the coming shifts).
"""

from __future__ import annotations

import math
import time

from coordinator.metrics import Metrics
from projections.base import ProjectionStore


class ProjectionGauges:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._projects: set[str] = set()
        self._plan_stages: set[tuple[str, str]] = set()
        self._sla_projects: set[str] = set()
        self._sla_at = -math.inf
        self.sla_interval = 60.0

    def refresh(self, store: ProjectionStore, now: float | None = None) -> None:
        from projections.queries import queue_depths
        from projections.review_queries import all_stage_depths

        m = self.metrics
        depths = queue_depths(store)
        for pid in self._projects - depths.keys():
            m.queue_depth.labels(pid).set(0)
        for pid, depth in depths.items():
            m.queue_depth.labels(pid).set(depth)
        self._projects = set(depths)

        now_ms = int((time.time() if now is None else now) * 1000)
        stages = all_stage_depths(store)
        self._refresh_stages(store, now_ms, stages, depths)

    def _refresh_stages(
        self,
        store: ProjectionStore,
        now_ms: int,
        review_depths: dict[tuple[str, str], int],
        queue_depths: dict[str, int],
    ) -> None:
        from datetime import UTC, datetime

        from projections import planning_queries
        from projections.review_queries import stage_backlog
        from projections.views.throughput import ANNOTATE

        m = self.metrics
        now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
        seen: set[tuple[str, str]] = set()
        for project in sorted(set(queue_depths) | {p for p, _ in review_depths}):
            oldest = planning_queries.annotate_oldest(store, project)
            rows = [(ANNOTATE, queue_depths.get(project, 0), oldest)]
            for backlog in stage_backlog(store, project):
                since = (
                    None
                    if backlog.oldest_ms is None or not backlog.depth
                    else datetime.fromtimestamp(backlog.oldest_ms / 1000, tz=UTC)
                )
                rows.append((backlog.stage, backlog.depth, since))
            for stage, depth, since in rows:
                age = 0.0 if since is None or not depth else max((now - since).total_seconds(), 0.0)
                m.stage_depth.labels(project, stage).set(depth)
                m.stage_oldest_seconds.labels(project, stage).set(age)
                seen.add((project, stage))
        for key in self._plan_stages - seen:
            m.stage_depth.labels(*key).set(0)
            m.stage_oldest_seconds.labels(*key).set(0)
        self._plan_stages = seen

        tick = time.monotonic()
        if tick - self._sla_at < self.sla_interval:
            return
        self._sla_at = tick
        at_risk: dict[str, int] = {}
        for project in planning_queries.projects_with_deadlines(store):
            assessed = planning_queries.sla_assessments(store, project, now)
            at_risk[project] = sum(1 for a in assessed if a.at_risk)
        for project in self._sla_projects - at_risk.keys():
            m.sla_at_risk_tasks.labels(project).set(0)
        for project, n in at_risk.items():
            m.sla_at_risk_tasks.labels(project).set(n)
        self._sla_projects = set(at_risk)
