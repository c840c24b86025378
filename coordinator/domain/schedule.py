"""Work schedules in a person's local time, and the real (UTC) time they cover.

Pure: nothing here reads the clock; every `now` is passed in and must be timezone-aware.

Local wall-clock policy (all conversions go through `_local_to_utc`):

* A shift occurrence starts on a local date `d` with `d.weekday() == shift.weekday` at
  `shift.start`, and ends at `shift.end` on `d` (or on `d + 1` when `end <= start`, i.e. it
  crosses midnight). Real durations are the difference of the UTC instants, so a local 01:00-05:00
  shift lasts 3 real hours on a spring-forward night and 5 on a fall-back night.
* Ambiguous wall times (the repeated hour when clocks go back) use `fold=0`, the first
  occurrence, for both start and end: the shift starts/ends the first time the clock shows it.
* Non-existent wall times (the skipped hour when clocks go forward) map to the first valid
  instant after the gap, i.e. the transition itself: a 02:30 start in Warsaw on 2026-03-29 starts
  at 03:00 CEST. An end inside the gap likewise ends at the transition.
* Both mappings are monotone, so shifts that do not overlap on the local weekly clock never
  overlap in real time.
* A day off cancels every shift *starting* on that local date; a shift that started the evening
  before and runs into a day off is still worked.
* Touching windows (back-to-back shifts) are merged: the person works continuously, so
  `shift_remaining` spans both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.domain.ids import require_aware
from coordinator.errors import InvalidArgument

SEARCH_HORIZON: Final = timedelta(days=14)
_DAY: Final = timedelta(days=1)
_WEEK: Final = timedelta(days=7)
_HOUR: Final = timedelta(hours=1)
_SECOND: Final = timedelta(seconds=1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

Window = tuple[datetime, datetime]


@dataclass(frozen=True)
class Shift:
    """A weekly shift in local wall-clock time.

    `end < start` crosses midnight into the next local day; `end == start` is rejected (zero length).
    """

    weekday: int  # 0 = Monday
    start: time
    end: time


@dataclass(frozen=True)
class WorkSchedule:
    time_zone: str  # IANA, e.g. Europe/Warsaw
    shifts: tuple[Shift, ...]
    days_off: frozenset[date]  # local dates
    capacity_per_hour: float  # tasks per hour while on shift


@dataclass(frozen=True)
class HourCoverage:
    hour_start: datetime  # UTC
    people: int  # people on shift for any part of the hour
    capacity: float  # sum of capacity_per_hour x fraction of the hour on shift
    by_time_zone: Mapping[str, int]  # time zone -> people on shift for any part of the hour


@dataclass(frozen=True)
class SlaAssessment:
    meets: bool
    expected_completion: datetime | None  # None: not finished within the search horizon


# ---------------------------------------------------------------------------------------------
# Validation


def _shift_length(s: Shift) -> timedelta:
    length = datetime.combine(date.min, s.end) - datetime.combine(date.min, s.start)
    return length if length > timedelta(0) else length + _DAY


def _week_offset(s: Shift) -> timedelta:
    return s.weekday * _DAY + datetime.combine(date.min, s.start) - datetime.min


def validate_schedule(s: WorkSchedule, field: str = "schedule") -> None:
    """Raise `InvalidArgument` naming the offending field (`schedule.shifts[2].end`, ...)."""
    if not s.time_zone:
        raise InvalidArgument(
            "required (an IANA time zone such as Europe/Warsaw)", field=f"{field}.time_zone"
        )
    try:
        ZoneInfo(s.time_zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArgument(
            f"{s.time_zone!r} is not an IANA time zone", field=f"{field}.time_zone"
        ) from None
    cap = s.capacity_per_hour
    if isinstance(cap, bool) or not isinstance(cap, int | float) or not math.isfinite(cap) or cap < 0:
        raise InvalidArgument(
            f"must be a finite number >= 0, got {cap!r}", field=f"{field}.capacity_per_hour"
        )
    for d in s.days_off:
        if isinstance(d, datetime) or not isinstance(d, date):
            raise InvalidArgument(f"must hold local dates, got {d!r}", field=f"{field}.days_off")
    for i, sh in enumerate(s.shifts):
        f = f"{field}.shifts[{i}]"
        if isinstance(sh.weekday, bool) or not isinstance(sh.weekday, int) or not 0 <= sh.weekday <= 6:
            raise InvalidArgument(
                f"must be 0 (Monday) .. 6 (Sunday), got {sh.weekday!r}", field=f"{f}.weekday"
            )
        for name, t in (("start", sh.start), ("end", sh.end)):
            if not isinstance(t, time) or t.tzinfo is not None:
                raise InvalidArgument("must be a naive local wall-clock time", field=f"{f}.{name}")
        if sh.end.replace(fold=0) == sh.start.replace(fold=0):
            raise InvalidArgument("zero-length shift (end == start)", field=f"{f}.end")
    for i, a in enumerate(s.shifts):
        for j in range(i):
            b = s.shifts[j]
            oa, ob = _week_offset(a), _week_offset(b)
            if (oa - ob) % _WEEK < _shift_length(b) or (ob - oa) % _WEEK < _shift_length(a):
                raise InvalidArgument(f"overlaps shifts[{j}]", field=f"{field}.shifts[{i}]")


# ---------------------------------------------------------------------------------------------
# Local wall clock -> UTC


def _local_to_utc(naive: datetime, zone: ZoneInfo) -> datetime:
    """fold=0 for ambiguous times; a time in a gap maps to the transition (first valid instant after)."""
    utc = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if utc.astimezone(zone).replace(tzinfo=None) == naive:
        return utc
    # In a gap fold=0 uses the offset before the transition (a later instant) and fold=1 the offset
    # after it (an earlier instant); the transition lies between. Bisect on whole seconds (tzdata
    # transitions are whole seconds).
    after = utc.astimezone(zone).utcoffset()
    lo = (naive.replace(tzinfo=zone, fold=1).astimezone(UTC) - _EPOCH) // _SECOND
    hi = -((_EPOCH - utc) // _SECOND)  # ceil
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (_EPOCH + mid * _SECOND).astimezone(zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return _EPOCH + hi * _SECOND


def _merge(windows: Iterable[Window]) -> list[Window]:
    out: list[Window] = []
    for s, e in sorted(windows):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _windows(s: WorkSchedule, start: datetime, end: datetime) -> list[Window]:
    if end <= start:
        return []
    zone = ZoneInfo(s.time_zone)
    first = start.astimezone(zone).date() - 2 * _DAY
    last = end.astimezone(zone).date() + _DAY
    raw: list[Window] = []
    d = first
    while d <= last:
        if d not in s.days_off:
            for sh in s.shifts:
                if sh.weekday != d.weekday():
                    continue
                end_date = d if sh.end > sh.start else d + _DAY
                ws = _local_to_utc(datetime.combine(d, sh.start.replace(fold=0)), zone)
                we = _local_to_utc(datetime.combine(end_date, sh.end.replace(fold=0)), zone)
                ws, we = max(ws, start), min(we, end)
                if ws < we:
                    raw.append((ws, we))
        d += _DAY
    return _merge(raw)


def _check_range(start_utc: datetime, end_utc: datetime) -> None:
    require_aware(start_utc, "start_utc")
    require_aware(end_utc, "end_utc")


# ---------------------------------------------------------------------------------------------
# Public API


def on_shift_windows(schedule: WorkSchedule, start_utc: datetime, end_utc: datetime) -> list[Window]:
    """UTC intervals within [start_utc, end_utc) when the person works: sorted, disjoint, merged."""
    validate_schedule(schedule)
    _check_range(start_utc, end_utc)
    return _windows(schedule, start_utc.astimezone(UTC), end_utc.astimezone(UTC))


def shift_remaining(schedule: WorkSchedule, now_utc: datetime) -> timedelta:
    """Continuous on-shift time left from `now_utc` (0 off shift), capped at `SEARCH_HORIZON`."""
    validate_schedule(schedule)
    require_aware(now_utc, "now_utc")
    now = now_utc.astimezone(UTC)
    windows = _windows(schedule, now, now + SEARCH_HORIZON)
    if windows and windows[0][0] == now:
        return windows[0][1] - now
    return timedelta(0)


def can_finish(schedule: WorkSchedule, now_utc: datetime, expected: timedelta) -> bool:
    """On shift now, and `expected` work fits in what is left of the shift (boundary inclusive)."""
    if expected < timedelta(0):
        raise InvalidArgument("must be >= 0", field="expected")
    remaining = shift_remaining(schedule, now_utc)
    return remaining > timedelta(0) and expected <= remaining


def next_shift_start(schedule: WorkSchedule, now_utc: datetime) -> datetime | None:
    """Earliest instant >= now_utc at which the person is on shift (`now_utc` itself if on shift now),
    or None if there is none within `SEARCH_HORIZON`."""
    validate_schedule(schedule)
    require_aware(now_utc, "now_utc")
    now = now_utc.astimezone(UTC)
    windows = _windows(schedule, now, now + SEARCH_HORIZON)
    return windows[0][0] if windows else None


def coverage_by_hour(
    schedules: Mapping[str, WorkSchedule], day_start_utc: datetime, hours: int = 24
) -> list[HourCoverage]:
    """Per UTC hour from `day_start_utc`: who is on shift (any part of the hour) and the capacity
    (capacity_per_hour x on-shift fraction of the hour, summed). `schedules` is keyed by person id."""
    require_aware(day_start_utc, "day_start_utc")
    if hours < 0:
        raise InvalidArgument("must be >= 0", field="hours")
    for pid, s in schedules.items():
        validate_schedule(s, field=f"schedules[{pid}]")
    start = day_start_utc.astimezone(UTC)
    end = start + hours * _HOUR
    per_person = [(s, _windows(s, start, end)) for s in schedules.values()]
    out: list[HourCoverage] = []
    for h in range(hours):
        hs = start + h * _HOUR
        he = hs + _HOUR
        people = 0
        capacity = 0.0
        by_tz: dict[str, int] = {}
        for s, windows in per_person:
            on = sum((min(e, he) - max(b, hs) for b, e in windows if b < he and e > hs), timedelta(0))
            if on > timedelta(0):
                people += 1
                capacity += s.capacity_per_hour * (on / _HOUR)
                by_tz[s.time_zone] = by_tz.get(s.time_zone, 0) + 1
        out.append(HourCoverage(hs, people, capacity, MappingProxyType(dict(sorted(by_tz.items())))))
    return out


def assess_sla(
    deadline_utc: datetime,
    remaining_tasks: float,
    schedules: Mapping[str, WorkSchedule],
    now_utc: datetime,
) -> SlaAssessment:
    """When would `remaining_tasks` be done if everyone in `schedules` works at capacity_per_hour
    while on shift, starting at `now_utc`? Simulated until done or `SEARCH_HORIZON` past
    max(now, deadline); `meets` iff completion <= deadline."""
    require_aware(deadline_utc, "deadline_utc")
    require_aware(now_utc, "now_utc")
    if not math.isfinite(remaining_tasks) or remaining_tasks < 0:
        raise InvalidArgument("must be a finite number >= 0", field="remaining_tasks")
    for pid, s in schedules.items():
        validate_schedule(s, field=f"schedules[{pid}]")
    now = now_utc.astimezone(UTC)
    deadline = deadline_utc.astimezone(UTC)
    if remaining_tasks == 0:
        return SlaAssessment(meets=True, expected_completion=now)
    limit = max(now, deadline) + SEARCH_HORIZON
    done = 0.0
    chunk_start = now
    while chunk_start < limit:
        chunk_end = min(chunk_start + _DAY, limit)
        events: list[tuple[datetime, float]] = []
        for s in schedules.values():
            if s.capacity_per_hour > 0:
                for b, e in _windows(s, chunk_start, chunk_end):
                    events += [(b, s.capacity_per_hour), (e, -s.capacity_per_hour)]
        events.sort()
        rate = 0.0
        t = chunk_start
        for at, delta in events:
            if at > t and rate > 0:
                gained = rate * ((at - t) / _HOUR)
                if done + gained >= remaining_tasks:
                    finish = t + _HOUR * ((remaining_tasks - done) / rate)
                    finish = min(finish, at)
                    return SlaAssessment(meets=finish <= deadline, expected_completion=finish)
                done += gained
            t = max(t, at)
            rate += delta
        chunk_start = chunk_end
    return SlaAssessment(meets=False, expected_completion=None)


def sla_risk(
    deadline_utc: datetime,
    remaining_tasks: float,
    schedules: Mapping[str, WorkSchedule],
    now_utc: datetime,
) -> bool:
    """True when the deadline cannot be met by the capacity on shift between now and the deadline."""
    return not assess_sla(deadline_utc, remaining_tasks, schedules, now_utc).meets


def _parse_time(text: str, field: str) -> time:
    try:
        hours, minutes = text.split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise InvalidArgument(f"{text!r} is not a local time HH:MM", field=field) from None


def schedule_from_spec(
    time_zone: str, spec: model_pb2.WorkScheduleSpec, *, field: str = "person.schedule"
) -> WorkSchedule | None:
    """The validated schedule of a person's `WorkScheduleSpec`; None when it has no shifts
    (the person is always available)."""
    if not spec.shifts:
        if spec.days_off:
            raise InvalidArgument("days off without any shift", field=f"{field}.days_off")
        return None
    shifts = tuple(
        Shift(
            weekday=int(sh.weekday),
            start=_parse_time(sh.start, f"{field}.shifts[{i}].start"),
            end=_parse_time(sh.end, f"{field}.shifts[{i}].end"),
        )
        for i, sh in enumerate(spec.shifts)
    )
    days: set[date] = set()
    for i, text in enumerate(spec.days_off):
        try:
            days.add(date.fromisoformat(text))
        except ValueError:
            message = f"{text!r} is not a date YYYY-MM-DD"
            raise InvalidArgument(message, field=f"{field}.days_off[{i}]") from None
    schedule = WorkSchedule(time_zone, shifts, frozenset(days), float(spec.capacity_per_hour))
    validate_schedule(schedule, field)
    return schedule
