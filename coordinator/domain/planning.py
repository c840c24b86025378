"""Follow-the-sun planning: coverage per UTC hour, SLA risk, completion forecasts, bottlenecks and
dashboard arithmetic.

Pure: no I/O, no clock; every instant is passed in and must be timezone-aware. Shifts are
converted to UTC by `coordinator.domain.schedule` (DST-correct: a shift spanning a clock change
has its real length). Inputs are plain dataclasses that `projections.planning_queries` builds
from the projections, so the same functions serve the API, the CLI and the Prometheus gauges.

Capacity model (docs/planning-and-dashboards.md):
* A worker is a project member with the annotator or expert role who is not suspended from the
  project. Without a schedule they are always available.
* `capacity_per_hour` (tasks per hour while on shift) weighted by the fraction of the hour on
  shift is a worker's capacity in that hour.
* A slot of a task with `expected_seconds` takes that long; a slot of a task without it takes
  `1 / capacity_per_hour` hours of the worker doing it (a worker with no declared capacity
  cannot be planned on such tasks).
* A task needs workers holding all of its required skills. Slots of one task are fungible work
  (two workers may share one task's remaining slots).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final

from coordinator.domain.ids import require_aware
from coordinator.domain.schedule import Window, WorkSchedule, on_shift_windows
from coordinator.errors import InvalidArgument

HOUR: Final = timedelta(hours=1)
DEFAULT_HORIZON_HOURS: Final = 14 * 24
MAX_HORIZON_HOURS: Final = 60 * 24
MIN_SPREAD: Final = 0.1
MAX_SPREAD: Final = 0.5
_EPS: Final = 1e-9


@dataclass(frozen=True)
class Worker:
    person_id: str
    time_zone: str
    skills: frozenset[str]
    schedule: WorkSchedule | None  # None: always available
    capacity_per_hour: float  # tasks per hour while on shift (0: not declared)
    teams: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpenTask:
    task_id: str
    deadline: datetime
    remaining: int  # annotation slots still to do
    expected_seconds: int  # 0: unknown (use the worker's capacity)
    skills: frozenset[str]


def on_shift(worker: Worker, start: datetime, end: datetime) -> list[Window]:
    """UTC windows within [start, end) when the worker works (all of it without a schedule)."""
    if end <= start:
        return []
    if worker.schedule is None:
        return [(start.astimezone(UTC), end.astimezone(UTC))]
    return on_shift_windows(worker.schedule, start, end)


def _overlap(windows: Sequence[Window], start: datetime, end: datetime) -> timedelta:
    return sum((min(e, end) - max(b, start) for b, e in windows if b < end and e > start), timedelta(0))


def _check_hours(value: int, field_name: str, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidArgument(f"must be 1 .. {maximum}, got {value!r}", field=field_name)


# ---------------------------------------------------------------------------------------------
# Coverage


@dataclass(frozen=True)
class ZoneCoverage:
    time_zone: str
    person_ids: tuple[str, ...]  # on shift for any part of the hour
    capacity: float  # sum of capacity_per_hour x fraction of the hour on shift
    skills_covered: tuple[str, ...]  # required skills someone on shift here holds


@dataclass(frozen=True)
class CoverageHour:
    hour_start: datetime  # UTC
    zones: tuple[ZoneCoverage, ...]  # by time zone name; zones with nobody on shift left out
    people: int
    capacity: float
    skills_covered: tuple[str, ...]
    skills_missing: tuple[str, ...]  # required skills nobody on shift holds


def coverage(
    workers: Iterable[Worker], required_skills: Iterable[str], start: datetime, hours: int = 24
) -> list[CoverageHour]:
    """Per UTC hour from the hour containing `start`: who is on shift in which time zone, their
    capacity, and which of `required_skills` are covered."""
    require_aware(start, "start")
    _check_hours(hours, "hours", MAX_HORIZON_HOURS)
    first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    end = first + hours * HOUR
    required = sorted(set(required_skills))
    shifts = [(w, on_shift(w, first, end)) for w in sorted(workers, key=lambda w: w.person_id)]
    out: list[CoverageHour] = []
    for h in range(hours):
        hs = first + h * HOUR
        he = hs + HOUR
        zones: dict[str, tuple[list[str], list[float], set[str]]] = {}
        for w, windows in shifts:
            on = _overlap(windows, hs, he)
            if on <= timedelta(0):
                continue
            ids, caps, skills = zones.setdefault(w.time_zone, ([], [], set()))
            ids.append(w.person_id)
            caps.append(w.capacity_per_hour * (on / HOUR))
            skills.update(w.skills)
        zone_list = tuple(
            ZoneCoverage(tz, tuple(ids), math.fsum(caps), tuple(s for s in required if s in skills))
            for tz, (ids, caps, skills) in sorted(zones.items())
        )
        covered = {s for z in zone_list for s in z.skills_covered}
        out.append(
            CoverageHour(
                hour_start=hs,
                zones=zone_list,
                people=sum(len(z.person_ids) for z in zone_list),
                capacity=math.fsum(z.capacity for z in zone_list),
                skills_covered=tuple(s for s in required if s in covered),
                skills_missing=tuple(s for s in required if s not in covered),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# SLA risk: earliest-deadline-first allocation of the capacity on shift


@dataclass(frozen=True)
class SlaAssessment:
    task_id: str
    deadline: datetime
    remaining: int
    needed_hours: float  # person-hours the remaining slots take
    available_hours: float  # eligible on-shift person-hours before the deadline left after
    # the tasks with earlier deadlines took theirs
    completion: datetime | None  # earliest feasible completion; None: not within the horizon
    at_risk: bool


class _Ledger:
    """Per worker: on-shift hours per slice from `now` (prefix sums) and hours consumed so far.
    Consumption is always a worker's earliest free time, so free time before an instant is
    `on-shift hours before it - consumed`."""

    def __init__(self, workers: Sequence[Worker], now: datetime, slices: int) -> None:
        self.now = now
        self.slices = slices
        self.windows: list[list[Window]] = []
        self.prefix: list[list[float]] = []
        end = now + slices * HOUR
        for w in workers:
            windows = on_shift(w, now, end)
            self.windows.append(windows)
            acc = [0.0]
            for i in range(slices):
                hs = now + i * HOUR
                acc.append(acc[-1] + _overlap(windows, hs, hs + HOUR) / HOUR)
            self.prefix.append(acc)
        self.consumed = [0.0] * len(workers)

    def free_before(self, k: int, instant: datetime) -> float:
        if instant <= self.now:
            return 0.0
        on = _overlap(self.windows[k], self.now, instant) / HOUR
        return max(on - self.consumed[k], 0.0)

    def first_slice(self, k: int) -> int:
        return max(bisect.bisect_right(self.prefix[k], self.consumed[k] + _EPS) - 1, 0)

    def free_in(self, k: int, i: int) -> float:
        p = self.prefix[k]
        return max(p[i + 1] - max(p[i], self.consumed[k]), 0.0)


def _rate(worker: Worker, task: OpenTask) -> float:
    """Slots per on-shift hour the worker does on the task (0: cannot)."""
    if not task.skills <= worker.skills:
        return 0.0
    if task.expected_seconds > 0:
        return 3600.0 / task.expected_seconds
    return max(worker.capacity_per_hour, 0.0)


def sla_risks(
    tasks: Iterable[OpenTask],
    workers: Sequence[Worker],
    now: datetime,
    horizon_hours: int = DEFAULT_HORIZON_HOURS,
) -> list[SlaAssessment]:
    """Every task assessed, earliest deadline first (ties by task id). Capacity on shift is given
    to tasks in that order; a task is at risk when its remaining slots are not done by its
    deadline (or not within `horizon_hours` of `now`)."""
    require_aware(now, "now")
    _check_hours(horizon_hours, "horizon_hours", MAX_HORIZON_HOURS)
    now = now.astimezone(UTC)
    ordered = sorted(tasks, key=lambda t: (t.deadline, t.task_id))
    ledger = _Ledger(workers, now, horizon_hours)
    out: list[SlaAssessment] = []
    for task in ordered:
        deadline = task.deadline.astimezone(UTC)
        rates = [(k, r) for k, w in enumerate(workers) if (r := _rate(w, task)) > 0]
        if task.expected_seconds > 0:
            needed = task.remaining * task.expected_seconds / 3600.0
        else:
            caps = [r for _, r in rates]
            needed = task.remaining / statistics.fmean(caps) if caps else float(task.remaining)
        available = math.fsum(ledger.free_before(k, deadline) for k, _ in rates)
        completion = _allocate(ledger, rates, float(task.remaining), now)
        at_risk = task.remaining > 0 and (completion is None or completion > deadline)
        out.append(
            SlaAssessment(task.task_id, deadline, task.remaining, needed, available, completion, at_risk)
        )
    return out


def _allocate(
    ledger: _Ledger, rates: Sequence[tuple[int, float]], work: float, now: datetime
) -> datetime | None:
    """Consume the eligible workers' earliest free time until `work` slots are done; the instant
    they are (None: not within the ledger's horizon)."""
    if work <= _EPS:
        return now
    if not rates:
        return None
    i = min(ledger.first_slice(k) for k, _ in rates)
    while i < ledger.slices:
        free = [(k, r, ledger.free_in(k, i)) for k, r in rates]
        slots = math.fsum(f * r for _, r, f in free)
        if slots > _EPS:
            share = min(work / slots, 1.0)
            for k, _, f in free:
                ledger.consumed[k] = max(ledger.consumed[k], ledger.prefix[k][i]) + f * share
            work -= slots * share
            if work <= _EPS:
                return now + (i + share) * HOUR
        i += 1
    return None


# ---------------------------------------------------------------------------------------------
# Completion forecast


@dataclass(frozen=True)
class ZoneRate:
    time_zone: str
    workers: int
    done: int  # work units (submissions + review verdicts) in the window
    on_shift_hours: float  # the zone's workers' on-shift hours in the window
    rate: float  # work units per on-shift person-hour used for the forecast


@dataclass(frozen=True)
class Forecast:
    remaining_work: float
    basis: str  # "throughput" (observed in the window) or "capacity" (declared; no history)
    zones: tuple[ZoneRate, ...]
    spread: float  # the band: rates x (1 +- spread)
    expected: datetime | None  # None: not within the horizon
    optimistic: datetime | None
    pessimistic: datetime | None
    hourly_capacity: tuple[float, ...] = field(default=())  # expected units per coming hour


def forecast_completion(
    remaining_work: float,
    workers: Sequence[Worker],
    done_by_person: Mapping[str, int],
    hourly_done: Sequence[int],
    now: datetime,
    window_hours: int,
    horizon_hours: int = DEFAULT_HORIZON_HOURS,
) -> Forecast:
    """When `remaining_work` units are done if each time zone keeps the throughput per on-shift
    hour it had over the last `window_hours` (`done_by_person`), working the coming shifts.
    Simulated hour by hour up to `horizon_hours`. Without any throughput in the window the
    workers' declared capacity is used instead. The band scales the rates by 1 +- the
    coefficient of variation of the window's busy hours (`hourly_done`), clamped to
    [0.1, 0.5]."""
    require_aware(now, "now")
    _check_hours(window_hours, "window_hours", MAX_HORIZON_HOURS)
    _check_hours(horizon_hours, "horizon_hours", MAX_HORIZON_HOURS)
    if not math.isfinite(remaining_work) or remaining_work < 0:
        raise InvalidArgument("must be a finite number >= 0", field="remaining_work")
    now = now.astimezone(UTC)
    since = now - window_hours * HOUR
    by_zone: dict[str, list[Worker]] = {}
    for w in workers:
        by_zone.setdefault(w.time_zone, []).append(w)
    observed = any(done_by_person.get(w.person_id, 0) > 0 for w in workers)
    zones: list[ZoneRate] = []
    rate_of: dict[str, float] = {}
    for tz, members in sorted(by_zone.items()):
        done = sum(int(done_by_person.get(w.person_id, 0)) for w in members)
        hours = math.fsum(_overlap(on_shift(w, since, now), since, now) / HOUR for w in members)
        if observed:
            if hours <= _EPS and done > 0:  # worked off their declared shifts
                hours = window_hours * sum(1 for w in members if done_by_person.get(w.person_id, 0) > 0)
            rate = done / hours if hours > _EPS else 0.0
        else:
            caps = [w.capacity_per_hour for w in members]
            rate = statistics.fmean(caps) if caps else 0.0
        rate_of[tz] = rate
        zones.append(ZoneRate(tz, len(members), done, hours, rate))
    busy = [float(n) for n in hourly_done if n > 0]
    cv = statistics.pstdev(busy) / statistics.fmean(busy) if len(busy) > 1 else 0.0
    spread = min(max(cv, MIN_SPREAD), MAX_SPREAD)
    end = now + horizon_hours * HOUR
    shifts = [(w, on_shift(w, now, end)) for w in workers]
    capacity: list[float] = []
    for h in range(horizon_hours):
        hs = now + h * HOUR
        capacity.append(
            math.fsum(rate_of[w.time_zone] * (_overlap(ws, hs, hs + HOUR) / HOUR) for w, ws in shifts)
        )

    def finish(scale: float) -> datetime | None:
        if remaining_work <= _EPS:
            return now
        left = remaining_work
        for h, cap in enumerate(capacity):
            got = cap * scale
            if got > _EPS and got >= left - _EPS:
                return now + (h + min(left / got, 1.0)) * HOUR
            left -= got
        return None

    return Forecast(
        remaining_work=remaining_work,
        basis="throughput" if observed else "capacity",
        zones=tuple(zones),
        spread=spread,
        expected=finish(1.0),
        optimistic=finish(1.0 + spread),
        pessimistic=finish(1.0 - spread),
        hourly_capacity=tuple(capacity),
    )


# ---------------------------------------------------------------------------------------------
# Bottlenecks


@dataclass(frozen=True)
class StageStatus:
    stage: str
    depth: int
    oldest: datetime | None  # when the longest-waiting item arrived (None: nothing waiting)
    inflow: int  # arrivals in the window
    outflow: int  # departures in the window


def bottleneck(stages: Sequence[StageStatus]) -> str:
    """The stage whose inflow exceeds its outflow the most over the window ("" if none does);
    ties go to the deeper stage, then the earlier one in pipeline order."""
    best = ""
    key: tuple[int, int, int] | None = None
    for order, s in enumerate(stages):
        growth = s.inflow - s.outflow
        if growth <= 0:
            continue
        k = (growth, s.depth, -order)
        if key is None or k > key:
            best, key = s.stage, k
    return best


# ---------------------------------------------------------------------------------------------
# Dashboards


@dataclass(frozen=True)
class Bucket:
    """Work of one person (or a sum over people) in one UTC hour (or a window)."""

    hour_start: datetime
    submitted: int = 0
    accepted: int = 0
    verdicts: int = 0  # verdicts on the person's work
    rejected: int = 0
    overturned: int = 0  # rejections an expert overturned
    reviewed: int = 0  # verdicts the person gave as a reviewer
    time_on_task_ms: int = 0
    reasons: Mapping[str, int] = field(default_factory=dict)


def add(a: Bucket, b: Bucket) -> Bucket:
    reasons = dict(a.reasons)
    for code, n in b.reasons.items():
        reasons[code] = reasons.get(code, 0) + n
    return Bucket(
        hour_start=min(a.hour_start, b.hour_start),
        submitted=a.submitted + b.submitted,
        accepted=a.accepted + b.accepted,
        verdicts=a.verdicts + b.verdicts,
        rejected=a.rejected + b.rejected,
        overturned=a.overturned + b.overturned,
        reviewed=a.reviewed + b.reviewed,
        time_on_task_ms=a.time_on_task_ms + b.time_on_task_ms,
        reasons=dict(sorted(reasons.items())),
    )


def hourly_series(buckets: Iterable[Bucket], start: datetime, hours: int) -> list[Bucket]:
    """One bucket per UTC hour from the hour of `start`, zeros where nothing happened; buckets
    of the same hour are summed, buckets outside the range dropped."""
    require_aware(start, "start")
    first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    series = [Bucket(first + h * HOUR) for h in range(hours)]
    for b in buckets:
        h = int((b.hour_start.astimezone(UTC) - first) // HOUR)
        if 0 <= h < hours:
            series[h] = replace(add(series[h], b), hour_start=series[h].hour_start)
    return series


def total(buckets: Iterable[Bucket], start: datetime) -> Bucket:
    out = Bucket(start)
    for b in buckets:
        out = add(out, b)
    return replace(out, hour_start=start)


def rejection_rates(totals: Bucket) -> dict[str, float]:
    """Per reason code: rejections citing it / verdicts on the person's work (0 verdicts: {})."""
    if totals.verdicts <= 0:
        return {}
    return {code: n / totals.verdicts for code, n in sorted(totals.reasons.items())}
