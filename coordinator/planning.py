"""Use cases behind `PlanningService`: authorise, validate, read the projections, compute with
`coordinator.domain.planning`, answer.

Everything here is a read computed at query time: coverage and SLA risk depend on "now" (the
injected clock) and on schedules that change the answer hour by hour, so materialising them in a
view would only store answers that go stale while nothing happens in the log. What is
materialised is what the log determines: hourly throughput, stage flows, open tasks with their
deadlines and remaining slots, and schedules (`projections.views.throughput`).

Roles: the project's managers, admins and auditors read everything here; anyone may read their
own dashboard in a project they belong to.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Final

from coordinator._pb.labelweave.api.v1 import planning_pb2
from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.auth import Principal
from coordinator.domain import planning as P
from coordinator.domain.project import ProjectState
from coordinator.domain.review import resolve_pipeline, stage_name
from coordinator.errors import InvalidArgument, NotFound, PermissionDenied
from coordinator.eventlog import codec
from coordinator.service import Service
from projections import gold_queries, planning_queries, queries, review_queries
from projections.views.throughput import ANNOTATE, RETENTION_HOURS

R = model_pb2
READERS: Final = (R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_AUDITOR)
DEFAULT_HOURS: Final = 24
MAX_WINDOW_HOURS: Final = RETENTION_HOURS
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 500
FORECAST_ROLES: Final = frozenset({R.ROLE_ANNOTATOR, R.ROLE_EXPERT, R.ROLE_REVIEWER, R.ROLE_QA})
"""Whose throughput feeds the forecast: everyone who annotates or reviews."""


def _hours(value: int, field: str, maximum: int, default: int = DEFAULT_HOURS) -> int:
    if value == 0:
        return default
    if value < 0 or value > maximum:
        raise InvalidArgument(f"must be 1 .. {maximum} (0: {default}), got {value}", field=field)
    return value


def _agreement(board: planning_pb2.AnnotatorDashboard, figures: object) -> None:
    """Copy a person's figures from `agreement_summary(...)["annotators"]` (None: unknown)."""
    if not isinstance(figures, dict):
        return
    board.agreement_known = True
    for name in ("percent_agreement", "cohen_kappa", "mean_iou"):
        value = figures.get(name)
        if isinstance(value, int | float):
            setattr(board, name, float(value))


class Planning:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.store = service.store

    # ------------------------------------------------------------------ helpers

    def _now(self) -> datetime:
        return self.service.clock()

    def _readable_project(self, who: Principal, project_id: str, what: str) -> ProjectState:
        who.require(READERS, what)
        project = self.service.project_state(project_id)
        self.service.require_member_or_admin(who, project)
        return project

    # ------------------------------------------------------------------ coverage

    def get_coverage(self, who: Principal, req: planning_pb2.GetCoverageRequest) -> planning_pb2.Coverage:
        project = self._readable_project(who, req.project_id, "GetCoverage")
        hours = _hours(req.hours, "hours", P.MAX_HORIZON_HOURS)
        start = codec.from_timestamp(req.start) if req.HasField("start") else self._now()
        required = planning_queries.required_skills(self.store, project.project_id)
        workers = planning_queries.workers(self.store, project.project_id)
        out = planning_pb2.Coverage(project_id=project.project_id, required_skills=sorted(required))
        rows = P.coverage(workers, required, start, hours)
        if rows:
            out.start.CopyFrom(codec.timestamp(rows[0].hour_start))
        for row in rows:
            hour = out.hours.add(
                people=row.people,
                capacity=row.capacity,
                skills_covered=row.skills_covered,
                skills_missing=row.skills_missing,
            )
            hour.hour_start.CopyFrom(codec.timestamp(row.hour_start))
            for zone in row.zones:
                hour.zones.add(
                    time_zone=zone.time_zone,
                    person_ids=zone.person_ids,
                    capacity=zone.capacity,
                    skills_covered=zone.skills_covered,
                )
        return out

    # ------------------------------------------------------------------ SLA risk

    def list_sla_risks(
        self, who: Principal, req: planning_pb2.ListSlaRisksRequest
    ) -> planning_pb2.ListSlaRisksResponse:
        project = self._readable_project(who, req.project_id, "ListSlaRisks")
        limit = _hours(req.limit, "limit", MAX_LIMIT, DEFAULT_LIMIT)
        after: tuple[int, str] | None = None
        if req.page_token:
            ms, sep, task_id = req.page_token.partition("|")
            if not sep or not ms.isdigit() or not task_id:
                raise InvalidArgument("not a page token of ListSlaRisks", field="page_token")
            after = (int(ms), task_id)
        now = self._now()
        assessed = planning_queries.sla_assessments(self.store, project.project_id, now)
        shown = [a for a in assessed if a.at_risk or req.include_safe]
        if after is not None:
            shown = [a for a in shown if (planning_queries.ms_of(a.deadline), a.task_id) > after]
        page = shown[:limit]
        out = planning_pb2.ListSlaRisksResponse(
            at_risk_total=sum(1 for a in assessed if a.at_risk), tasks_planned=len(assessed)
        )
        out.now.CopyFrom(codec.timestamp(now))
        for a in page:
            risk = out.risks.add(
                task_id=a.task_id,
                remaining_slots=a.remaining,
                needed_hours=a.needed_hours,
                available_hours=a.available_hours,
                at_risk=a.at_risk,
            )
            risk.deadline.CopyFrom(codec.timestamp(a.deadline))
            if a.completion is not None:
                risk.earliest_completion.CopyFrom(codec.timestamp(a.completion))
        if len(shown) > limit:
            last = page[-1]
            out.next_page_token = f"{planning_queries.ms_of(last.deadline)}|{last.task_id}"
        return out

    # ------------------------------------------------------------------ dashboards

    def get_dashboard(self, who: Principal, req: planning_pb2.GetDashboardRequest) -> planning_pb2.Dashboard:
        project = self.service.project_state(req.project_id)
        pid = project.project_id
        team = req.team if req.WhichOneof("subject") == "team" else ""
        if req.WhichOneof("subject") == "team" and not team:
            raise InvalidArgument("required (or ask for a person_id)", field="team")
        person_id = "" if team else (req.person_id or who.person_id)
        if team or person_id != who.person_id:
            who.require(READERS, "GetDashboard of other people or of a team")
            self.service.require_member_or_admin(who, project)
        elif not who.sees_everything and who.person_id not in project.members:
            raise PermissionDenied(f"{who.person_id} is not a member of project {pid}")
        window = _hours(req.window_hours, "window_hours", MAX_WINDOW_HOURS)
        end = self._now()
        # whole UTC hours: the current one and the `window - 1` before it
        start = end.replace(minute=0, second=0, microsecond=0) - timedelta(hours=window - 1)
        out = planning_pb2.Dashboard(project_id=pid, person_id=person_id, team=team, window_hours=window)
        out.window_start.CopyFrom(codec.timestamp(start))
        out.window_end.CopyFrom(codec.timestamp(end))
        if team:
            ids = planning_queries.teams(self.store, pid).get(team)
            if not ids:
                raise NotFound(f"no member of project {pid} is in team {team!r}", field="team")
        else:
            if planning_queries.person(self.store, person_id) is None:
                self.service.person_state(person_id)  # NotFound naming person_id when unknown
            ids = [person_id]
        boards = [self._annotator(pid, p, start, end, window) for p in sorted(ids)]
        if team:
            out.members.extend(boards)
            out.totals.CopyFrom(self._team_totals(pid, sorted(ids), start, end, window))
        else:
            out.totals.CopyFrom(boards[0])
        summary = planning_queries.agreement_summary(self.store, pid)
        if summary is not None:
            people = summary.pop("annotators", None) or {}
            out.agreement_known = True
            out.agreement_json = json.dumps(summary, sort_keys=True, default=str)
            for board in [out.totals, *out.members]:
                _agreement(board, people.get(board.person_id) if board.person_id else None)
        return out

    def _board(
        self, person_id: str, time_zone: str, buckets: list[P.Bucket], start: datetime, window: int
    ) -> planning_pb2.AnnotatorDashboard:
        totals = P.total(buckets, start)
        board = planning_pb2.AnnotatorDashboard(
            person_id=person_id,
            time_zone=time_zone,
            submitted=totals.submitted,
            accepted=totals.accepted,
            reviewed=totals.reviewed,
            submitted_per_hour=totals.submitted / window,
            accepted_per_hour=totals.accepted / window,
            verdicts=totals.verdicts,
            rejected=totals.rejected,
            overturned=totals.overturned,
            rejection_rate=totals.rejected / totals.verdicts if totals.verdicts else 0.0,
            window_time_on_task_ms=totals.time_on_task_ms,
        )
        for code, rate in P.rejection_rates(totals).items():
            board.rejections.add(code=code, count=totals.reasons[code], rate=rate)
        for b in P.hourly_series(buckets, start, window):
            hour = board.hourly.add(submitted=b.submitted, accepted=b.accepted, reviewed=b.reviewed)
            hour.hour_start.CopyFrom(codec.timestamp(b.hour_start))
        return board

    def _annotator(
        self, project_id: str, person_id: str, start: datetime, end: datetime, window: int
    ) -> planning_pb2.AnnotatorDashboard:
        doc = planning_queries.person(self.store, person_id) or {}
        buckets = planning_queries.buckets(self.store, project_id, person_id, start, end)
        board = self._board(person_id, str(doc.get("time_zone", "")), buckets, start, window)
        gold = gold_queries.accuracy(self.store, project_id, person_id)
        if gold is not None and int(gold.get("results", 0)) > 0:
            board.accuracy_known = True
            board.gold_accuracy = float(gold.get("accuracy", 0.0))
            board.gold_results = int(gold["results"])
        (metrics,) = queries.annotator_metrics(self.store, project_id, person_id)
        board.time_on_task_ms = int(metrics["time_on_task_ms"])
        if metrics["submitted"]:
            board.mean_seconds_on_task = metrics["time_on_task_ms"] / 1000 / metrics["submitted"]
        return board

    def _team_totals(
        self, project_id: str, ids: list[str], start: datetime, end: datetime, window: int
    ) -> planning_pb2.AnnotatorDashboard:
        buckets = [b for p in ids for b in planning_queries.buckets(self.store, project_id, p, start, end)]
        board = self._board("", "", buckets, start, window)
        passed = results = 0
        time_ms = submitted = 0
        for p in ids:
            gold = gold_queries.accuracy(self.store, project_id, p)
            if gold is not None:
                passed += int(gold.get("passed", 0))
                results += int(gold.get("results", 0))
            (metrics,) = queries.annotator_metrics(self.store, project_id, p)
            time_ms += int(metrics["time_on_task_ms"])
            submitted += int(metrics["submitted"])
        if results:
            board.accuracy_known = True
            board.gold_accuracy = passed / results
            board.gold_results = results
        board.time_on_task_ms = time_ms
        if submitted:
            board.mean_seconds_on_task = time_ms / 1000 / submitted
        return board

    # ------------------------------------------------------------------ bottlenecks

    def stage_statuses(self, project: ProjectState, start: datetime, end: datetime) -> list[P.StageStatus]:
        """Annotate, then the review stages in pipeline order (the expert stage's depth is its
        open disputes), with their flows over [start, end)."""
        pid = project.project_id
        backlog = {b.stage: b for b in review_queries.stage_backlog(self.store, pid)}
        order = [stage_name(s) for s in resolve_pipeline(pid, project.settings).stages]
        order += sorted(set(backlog) - set(order))
        flows = planning_queries.stage_flows(self.store, pid, start, end)
        inflow, outflow = flows.get(ANNOTATE, (0, 0))
        out = [
            P.StageStatus(
                ANNOTATE,
                queries.queue_depth(self.store, pid),
                planning_queries.annotate_oldest(self.store, pid),
                inflow,
                outflow,
            )
        ]
        for stage in order:
            b = backlog.get(stage)
            oldest = planning_queries._dt(b.oldest_ms) if b is not None and b.oldest_ms and b.depth else None
            inflow, outflow = flows.get(stage, (0, 0))
            out.append(P.StageStatus(stage, b.depth if b is not None else 0, oldest, inflow, outflow))
        return out

    def get_bottlenecks(
        self, who: Principal, req: planning_pb2.GetBottlenecksRequest
    ) -> planning_pb2.BottleneckReport:
        project = self._readable_project(who, req.project_id, "GetBottlenecks")
        window = _hours(req.window_hours, "window_hours", MAX_WINDOW_HOURS)
        now = self._now()
        stages = self.stage_statuses(project, now - timedelta(hours=window), now)
        worst = P.bottleneck(stages)
        out = planning_pb2.BottleneckReport(
            project_id=project.project_id, window_hours=window, bottleneck=worst
        )
        out.now.CopyFrom(codec.timestamp(now))
        for s in stages:
            row = out.stages.add(
                stage=s.stage, depth=s.depth, inflow=s.inflow, outflow=s.outflow, bottleneck=s.stage == worst
            )
            if s.oldest is not None:
                row.oldest.CopyFrom(codec.timestamp(s.oldest))
                row.oldest_age_seconds = max((now - s.oldest).total_seconds(), 0.0)
        return out

    # ------------------------------------------------------------------ forecast

    def forecast_completion(
        self, who: Principal, req: planning_pb2.ForecastCompletionRequest
    ) -> planning_pb2.Forecast:
        project = self._readable_project(who, req.project_id, "ForecastCompletion")
        pid = project.project_id
        window = _hours(req.window_hours, "window_hours", MAX_WINDOW_HOURS)
        horizon = _hours(req.horizon_hours, "horizon_hours", P.MAX_HORIZON_HOURS, P.DEFAULT_HORIZON_HOURS)
        now = self._now()
        start = now - timedelta(hours=window)
        docs = [
            d
            for d in planning_queries.members(self.store, pid)
            if FORECAST_ROLES & set(d.get("roles", ())) and pid not in d.get("suspended", ())
        ]
        workers = [planning_queries.worker_of(d) for d in docs]
        done, hourly = planning_queries.done_by_person(
            self.store, pid, [w.person_id for w in workers], start, now
        )
        open_slots = planning_queries.remaining_slots(self.store, pid)
        backlog = sum(review_queries.stage_depths(self.store, pid).values())
        submitted = reviewed = 0
        for w in workers:
            for b in planning_queries.buckets(self.store, pid, w.person_id, start, now):
                submitted += b.submitted
                reviewed += b.reviewed
        pipeline = resolve_pipeline(pid, project.settings)
        routable = sum(1 for s in pipeline.stages if s.kind != R.REVIEW_STAGE_KIND_EXPERT_RESOLUTION)
        passes = reviewed / submitted if submitted else float(min(routable, 1))
        future = open_slots * passes
        forecast = P.forecast_completion(
            open_slots + backlog + future, workers, done, hourly, now, window, horizon
        )
        out = planning_pb2.Forecast(
            project_id=pid,
            remaining_work=forecast.remaining_work,
            open_slots=open_slots,
            review_backlog=backlog,
            future_reviews=future,
            basis=forecast.basis,
            within_horizon=forecast.expected is not None,
            spread=forecast.spread,
            window_hours=window,
            horizon_hours=horizon,
        )
        out.now.CopyFrom(codec.timestamp(now))
        for z in forecast.zones:
            out.zones.add(
                time_zone=z.time_zone,
                workers=z.workers,
                done=z.done,
                on_shift_hours=z.on_shift_hours,
                rate_per_hour=z.rate,
            )
        for name, when in (
            ("expected", forecast.expected),
            ("optimistic", forecast.optimistic),
            ("pessimistic", forecast.pessimistic),
        ):
            if when is not None:
                getattr(out, name).CopyFrom(codec.timestamp(when))
        return out
