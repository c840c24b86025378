"""Work schedules: DST-correct on-shift windows, remaining time, follow-the-sun coverage, SLA risk."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.domain.schedule import (
    Shift,
    WorkSchedule,
    assess_sla,
    can_finish,
    coverage_by_hour,
    next_shift_start,
    on_shift_windows,
    shift_remaining,
    sla_risk,
    validate_schedule,
)
from coordinator.errors import InvalidArgument

MON, TUE, WED, THU, FRI, SAT, SUN = range(7)
H = timedelta(hours=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def sched(
    tz: str, *shifts: Shift, days_off: frozenset[date] = frozenset(), cap: float = 10.0
) -> WorkSchedule:
    return WorkSchedule(time_zone=tz, shifts=shifts, days_off=days_off, capacity_per_hour=cap)


def sh(weekday: int, start: str, end: str) -> Shift:
    return Shift(weekday, time.fromisoformat(start), time.fromisoformat(end))


def weekdays(start: str, end: str) -> tuple[Shift, ...]:
    return tuple(sh(d, start, end) for d in range(5))


def total(windows: list[tuple[datetime, datetime]]) -> timedelta:
    return sum((e - s for s, e in windows), timedelta(0))


def windows_on(s: WorkSchedule, local_day: date, days: int = 2) -> list[tuple[datetime, datetime]]:
    zone = ZoneInfo(s.time_zone)
    start = datetime.combine(local_day, time(0), tzinfo=zone).astimezone(UTC) - 12 * H
    return on_shift_windows(s, start, start + timedelta(days=days))


# --- DST: real durations of local shifts --------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "shift", "real_hours"),
    [
        # Warsaw: 2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00 (both Sundays)
        ("Europe/Warsaw", date(2026, 3, 29), sh(SUN, "01:00", "05:00"), 3),
        ("Europe/Warsaw", date(2026, 10, 25), sh(SUN, "01:00", "05:00"), 5),
        ("Europe/Warsaw", date(2026, 3, 22), sh(SUN, "01:00", "05:00"), 4),
        # Los Angeles: 2026-03-08 forward, 2026-11-01 back
        ("America/Los_Angeles", date(2026, 3, 8), sh(SUN, "01:00", "05:00"), 3),
        ("America/Los_Angeles", date(2026, 11, 1), sh(SUN, "00:30", "04:30"), 5),
        # Sydney (southern hemisphere): 2026-04-05 back 03:00 -> 02:00, 2026-10-04 forward 02:00 -> 03:00
        ("Australia/Sydney", date(2026, 4, 5), sh(SUN, "01:00", "05:00"), 5),
        ("Australia/Sydney", date(2026, 10, 4), sh(SUN, "01:00", "05:00"), 3),
        # Kolkata: no DST
        ("Asia/Kolkata", date(2026, 3, 29), sh(SUN, "01:00", "05:00"), 4),
        # Overnight shifts spanning the change night
        ("Europe/Warsaw", date(2026, 3, 28), sh(SAT, "22:00", "06:00"), 7),
        ("Europe/Warsaw", date(2026, 10, 24), sh(SAT, "22:00", "06:00"), 9),
        ("America/Los_Angeles", date(2026, 3, 7), sh(SAT, "22:00", "06:00"), 7),
        ("America/Los_Angeles", date(2026, 10, 31), sh(SAT, "22:00", "06:00"), 9),
        ("Australia/Sydney", date(2026, 4, 4), sh(SAT, "22:00", "06:00"), 9),
        ("Australia/Sydney", date(2026, 10, 3), sh(SAT, "22:00", "06:00"), 7),
    ],
)
def test_real_duration_across_dst(tz: str, day: date, shift: Shift, real_hours: int) -> None:
    windows = windows_on(sched(tz, shift), day)
    assert len(windows) == 1
    assert total(windows) == real_hours * H


def test_exact_instants_warsaw_spring_and_fall() -> None:
    s = sched("Europe/Warsaw", sh(SUN, "01:00", "05:00"))
    # 01:00 CET = 00:00 UTC; 05:00 CEST = 03:00 UTC
    assert windows_on(s, date(2026, 3, 29)) == [(utc(2026, 3, 29, 0), utc(2026, 3, 29, 3))]
    # 01:00 CEST = 23:00 UTC (Sat); 05:00 CET = 04:00 UTC
    assert windows_on(s, date(2026, 10, 25)) == [(utc(2026, 10, 24, 23), utc(2026, 10, 25, 4))]


def test_start_in_spring_gap_starts_at_first_valid_instant() -> None:
    # 02:30 does not exist in Warsaw on 2026-03-29: starts at 03:00 CEST = 01:00 UTC
    s = sched("Europe/Warsaw", sh(SUN, "02:30", "06:00"))
    assert windows_on(s, date(2026, 3, 29)) == [(utc(2026, 3, 29, 1), utc(2026, 3, 29, 4))]
    # LA: 02:15 does not exist on 2026-03-08: starts at 03:00 PDT = 10:00 UTC
    la = sched("America/Los_Angeles", sh(SUN, "02:15", "04:00"))
    assert windows_on(la, date(2026, 3, 8)) == [(utc(2026, 3, 8, 10), utc(2026, 3, 8, 11))]


def test_end_in_spring_gap_ends_at_transition() -> None:
    s = sched("Europe/Warsaw", sh(SAT, "22:00", "02:30"))
    # 22:00 CET = 21:00 UTC; 02:30 is in the gap -> transition 01:00 UTC
    assert windows_on(s, date(2026, 3, 28)) == [(utc(2026, 3, 28, 21), utc(2026, 3, 29, 1))]


def test_shift_entirely_in_gap_is_empty() -> None:
    s = sched("Europe/Warsaw", sh(SUN, "02:10", "02:50"))
    assert windows_on(s, date(2026, 3, 29)) == []
    assert total(windows_on(s, date(2026, 3, 22))) == timedelta(minutes=40)


def test_ambiguous_start_uses_fold_0() -> None:
    # 02:30 happens twice in Warsaw on 2026-10-25; fold=0 is the first (CEST, 00:30 UTC)
    s = sched("Europe/Warsaw", sh(SUN, "02:30", "04:00"))
    assert windows_on(s, date(2026, 10, 25)) == [(utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 3))]


def test_kolkata_half_hour_offset() -> None:
    s = sched("Asia/Kolkata", sh(MON, "09:00", "17:00"))
    assert windows_on(s, date(2026, 6, 1)) == [(utc(2026, 6, 1, 3, 30), utc(2026, 6, 1, 11, 30))]


def test_shift_crossing_midnight() -> None:
    s = sched("Asia/Kolkata", sh(FRI, "20:00", "04:00"))
    # Fri 2026-06-05 20:00 IST = 14:30 UTC; Sat 04:00 IST = 22:30 UTC
    assert windows_on(s, date(2026, 6, 5)) == [(utc(2026, 6, 5, 14, 30), utc(2026, 6, 5, 22, 30))]
    # the Sunday-night shift wraps into Monday and into the next week
    s2 = sched("UTC", sh(SUN, "22:00", "06:00"))
    assert on_shift_windows(s2, utc(2026, 6, 8), utc(2026, 6, 9)) == [(utc(2026, 6, 8), utc(2026, 6, 8, 6))]


def test_windows_clipped_to_query_range() -> None:
    s = sched("UTC", sh(MON, "09:00", "17:00"))
    assert on_shift_windows(s, utc(2026, 6, 1, 10), utc(2026, 6, 1, 12)) == [
        (utc(2026, 6, 1, 10), utc(2026, 6, 1, 12))
    ]
    assert on_shift_windows(s, utc(2026, 6, 1, 17), utc(2026, 6, 1, 18)) == []
    assert on_shift_windows(s, utc(2026, 6, 1, 12), utc(2026, 6, 1, 12)) == []


def test_back_to_back_shifts_merge() -> None:
    s = sched("UTC", sh(MON, "09:00", "13:00"), sh(MON, "13:00", "17:00"))
    assert on_shift_windows(s, utc(2026, 6, 1), utc(2026, 6, 2)) == [
        (utc(2026, 6, 1, 9), utc(2026, 6, 1, 17))
    ]
    assert shift_remaining(s, utc(2026, 6, 1, 12)) == 5 * H


# --- days off ------------------------------------------------------------------------------------


def test_days_off_skip_shifts_starting_that_local_day() -> None:
    off = frozenset({date(2026, 6, 2)})  # Tuesday
    s = sched("Europe/Warsaw", *weekdays("09:00", "17:00"), days_off=off)
    windows = on_shift_windows(s, utc(2026, 6, 1), utc(2026, 6, 6))
    assert [w[0].astimezone(ZoneInfo("Europe/Warsaw")).date() for w in windows] == [
        date(2026, 6, 1),
        date(2026, 6, 3),
        date(2026, 6, 4),
        date(2026, 6, 5),
    ]


def test_day_off_is_local_date_not_utc_date() -> None:
    # Tokyo Monday 2026-06-01 09:00 JST = Sunday 2026-05-31 24:00 UTC
    s = sched("Asia/Tokyo", sh(MON, "08:00", "10:00"), days_off=frozenset({date(2026, 6, 1)}))
    assert on_shift_windows(s, utc(2026, 5, 30), utc(2026, 6, 3)) == []


def test_overnight_shift_into_day_off_still_worked() -> None:
    s = sched("UTC", sh(SUN, "22:00", "06:00"), days_off=frozenset({date(2026, 6, 8)}))
    assert total(on_shift_windows(s, utc(2026, 6, 7), utc(2026, 6, 9))) == 8 * H


# --- shift_remaining / can_finish / next_shift_start --------------------------------------------


WARSAW_DAY = sched("Europe/Warsaw", *weekdays("09:00", "17:00"))  # summer: 07:00-15:00 UTC


def test_shift_remaining_boundaries() -> None:
    assert shift_remaining(WARSAW_DAY, utc(2026, 6, 1, 7)) == 8 * H  # exactly at start
    assert shift_remaining(WARSAW_DAY, utc(2026, 6, 1, 14, 59)) == timedelta(minutes=1)
    assert shift_remaining(WARSAW_DAY, utc(2026, 6, 1, 15)) == timedelta(0)  # end is exclusive
    assert shift_remaining(WARSAW_DAY, utc(2026, 6, 1, 6, 59)) == timedelta(0)
    assert shift_remaining(WARSAW_DAY, utc(2026, 6, 6, 10)) == timedelta(0)  # Saturday


def test_shift_remaining_accepts_non_utc_aware_now() -> None:
    now = datetime(2026, 6, 1, 16, 0, tzinfo=ZoneInfo("Europe/Warsaw"))
    assert shift_remaining(WARSAW_DAY, now) == H


def test_shift_remaining_across_fall_back() -> None:
    s = sched("Europe/Warsaw", sh(SUN, "01:00", "05:00"))
    # 02:30 CET (second occurrence) = 01:30 UTC; shift ends 04:00 UTC
    assert shift_remaining(s, utc(2026, 10, 25, 1, 30)) == timedelta(hours=2, minutes=30)


def test_can_finish() -> None:
    now = utc(2026, 6, 1, 14)  # one hour left
    assert can_finish(WARSAW_DAY, now, H)
    assert can_finish(WARSAW_DAY, now, timedelta(minutes=30))
    assert not can_finish(WARSAW_DAY, now, H + timedelta(seconds=1))
    assert not can_finish(WARSAW_DAY, utc(2026, 6, 1, 15), timedelta(0))  # off shift: never
    with pytest.raises(InvalidArgument) as exc:
        can_finish(WARSAW_DAY, now, -H)
    assert exc.value.field == "expected"


def test_next_shift_start() -> None:
    assert next_shift_start(WARSAW_DAY, utc(2026, 6, 1, 3)) == utc(2026, 6, 1, 7)
    assert next_shift_start(WARSAW_DAY, utc(2026, 6, 1, 10)) == utc(2026, 6, 1, 10)  # on shift now
    assert next_shift_start(WARSAW_DAY, utc(2026, 6, 5, 15)) == utc(2026, 6, 8, 7)  # Fri -> Mon
    assert next_shift_start(sched("UTC"), utc(2026, 6, 1)) is None
    two_weeks_off = frozenset(date(2026, 6, 1) + timedelta(days=i) for i in range(20))
    assert (
        next_shift_start(sched("UTC", *weekdays("09:00", "17:00"), days_off=two_weeks_off), utc(2026, 6, 1))
        is None
    )
    # after the spring gap, the start is the transition
    gap = sched("Europe/Warsaw", sh(SUN, "02:30", "06:00"))
    assert next_shift_start(gap, utc(2026, 3, 28)) == utc(2026, 3, 29, 1)


def test_naive_now_rejected() -> None:
    with pytest.raises(InvalidArgument):
        shift_remaining(WARSAW_DAY, datetime(2026, 6, 1, 10))


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        (sched(""), "schedule.time_zone"),
        (sched("Mars/Olympus"), "schedule.time_zone"),
        (sched("UTC", cap=-1), "schedule.capacity_per_hour"),
        (sched("UTC", cap=float("nan")), "schedule.capacity_per_hour"),
        (sched("UTC", sh(MON, "09:00", "10:00"), sh(7, "09:00", "10:00")), "schedule.shifts[1].weekday"),
        (sched("UTC", sh(MON, "09:00", "10:00"), sh(TUE, "09:00", "09:00")), "schedule.shifts[1].end"),
        (
            sched("UTC", sh(MON, "09:00", "10:00"), sh(TUE, "09:00", "10:00"), sh(MON, "09:30", "11:00")),
            "schedule.shifts[2]",
        ),
        # overnight Sunday shift wraps into Monday morning
        (sched("UTC", sh(SUN, "22:00", "06:00"), sh(MON, "05:00", "07:00")), "schedule.shifts[1]"),
        (sched("UTC", Shift(MON, time(9, tzinfo=UTC), time(10))), "schedule.shifts[0].start"),
        (WorkSchedule("UTC", (), frozenset({datetime(2026, 1, 1)}), 1.0), "schedule.days_off"),
    ],
)
def test_validation_names_field(schedule: WorkSchedule, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validate_schedule(schedule)
    assert exc.value.field == field


def test_validation_accepts_touching_and_wrapping_shifts() -> None:
    validate_schedule(
        sched("UTC", sh(SUN, "22:00", "06:00"), sh(MON, "06:00", "07:00"), sh(SAT, "12:00", "22:00"))
    )
    validate_schedule(sched("UTC", cap=0))


def test_coverage_validation_names_person() -> None:
    with pytest.raises(InvalidArgument) as exc:
        coverage_by_hour({"ann": sched("Nowhere/Land")}, utc(2026, 6, 1))
    assert exc.value.field == "schedules[ann].time_zone"


# --- follow-the-sun coverage --------------------------------------------------------------------

TEAM = {
    "tokyo": sched("Asia/Tokyo", *weekdays("09:00", "17:00"), cap=10),  # 00:00-08:00 UTC
    "warsaw": sched("Europe/Warsaw", *weekdays("09:00", "17:00"), cap=20),  # 07:00-15:00 UTC (CEST)
    "la": sched("America/Los_Angeles", *weekdays("09:00", "17:00"), cap=30),  # 16:00-24:00 UTC (PDT)
}


def test_follow_the_sun_coverage() -> None:
    cov = coverage_by_hour(TEAM, utc(2026, 6, 2))  # Tuesday
    assert [c.hour_start for c in cov] == [utc(2026, 6, 2) + i * H for i in range(24)]
    by_hour = {c.hour_start.hour: c for c in cov}
    assert dict(by_hour[0].by_time_zone) == {"Asia/Tokyo": 1}  # Monday's LA shift ended at 24:00 UTC
    assert by_hour[0].people == 1
    assert by_hour[0].capacity == pytest.approx(10)
    assert dict(by_hour[3].by_time_zone) == {"Asia/Tokyo": 1}
    assert dict(by_hour[7].by_time_zone) == {"Asia/Tokyo": 1, "Europe/Warsaw": 1}
    assert by_hour[7].capacity == pytest.approx(30)
    assert dict(by_hour[10].by_time_zone) == {"Europe/Warsaw": 1}
    assert by_hour[15].people == 0 and by_hour[15].capacity == 0
    assert dict(by_hour[20].by_time_zone) == {"America/Los_Angeles": 1}
    assert by_hour[23].capacity == pytest.approx(30)
    assert all(c.people >= 1 for c in cov if c.hour_start.hour != 15)  # only 15:00 UTC is uncovered
    assert sum(c.capacity for c in cov) == pytest.approx(10 * 8 + 20 * 8 + 30 * 8)


def test_coverage_partial_hours() -> None:
    team = {"a": sched("Asia/Kolkata", sh(TUE, "09:00", "17:00"), cap=10)}  # 03:30-11:30 UTC
    cov = coverage_by_hour(team, utc(2026, 6, 2), hours=12)
    assert cov[3].people == 1 and cov[3].capacity == pytest.approx(5)
    assert cov[4].capacity == pytest.approx(10)
    assert cov[11].capacity == pytest.approx(5)
    assert cov[2].people == 0
    assert coverage_by_hour(team, utc(2026, 6, 2), hours=0) == []


# --- SLA risk -----------------------------------------------------------------------------------


def test_sla_met_by_current_shift() -> None:
    now = utc(2026, 6, 2, 8)  # Tokyo (10/h) and Warsaw on shift... Tokyo ends 08:00
    # Warsaw alone 08:00-15:00 at 20/h = 140 tasks
    a = assess_sla(utc(2026, 6, 2, 15), 140, TEAM, now)
    assert a.meets and a.expected_completion == utc(2026, 6, 2, 15)
    assert not sla_risk(utc(2026, 6, 2, 15), 140, TEAM, now)
    assert assess_sla(utc(2026, 6, 2, 15), 30, TEAM, now).expected_completion == utc(2026, 6, 2, 9, 30)


def test_sla_at_risk_then_completed_by_next_zone() -> None:
    now = utc(2026, 6, 2, 8)
    # 140 by Warsaw, then nobody 15:00-16:00, then LA at 30/h: 170 done at 17:00
    a = assess_sla(utc(2026, 6, 2, 15), 170, TEAM, now)
    assert not a.meets
    assert a.expected_completion == utc(2026, 6, 2, 17)
    assert sla_risk(utc(2026, 6, 2, 15), 170, TEAM, now)


def test_sla_overlapping_capacity_adds_up() -> None:
    # 07:00-08:00 Tokyo (10) + Warsaw (20) both on shift
    a = assess_sla(utc(2026, 6, 2, 8), 30, TEAM, utc(2026, 6, 2, 7))
    assert a.meets and a.expected_completion == utc(2026, 6, 2, 8)


def test_sla_edge_cases() -> None:
    now = utc(2026, 6, 2, 10)
    assert assess_sla(now, 0, TEAM, now).meets
    assert sla_risk(now - H, 1, TEAM, now)  # deadline already passed
    nobody = assess_sla(now + 24 * H, 1, {"x": sched("UTC")}, now)
    assert not nobody.meets and nobody.expected_completion is None
    assert sla_risk(now + 24 * H, 1, {}, now)
    with pytest.raises(InvalidArgument):
        assess_sla(now, -1, TEAM, now)


# --- properties ---------------------------------------------------------------------------------

ZONES = ["Europe/Warsaw", "America/Los_Angeles", "Australia/Sydney", "Asia/Kolkata", "Asia/Tokyo", "UTC"]
FIXED_ZONES = ["Asia/Kolkata", "Asia/Tokyo", "UTC", "Etc/GMT+5"]


@st.composite
def schedules(draw: st.DrawFn, zones: list[str] = ZONES, with_days_off: bool = True) -> WorkSchedule:
    tz = draw(st.sampled_from(zones))
    shifts: list[Shift] = []
    for _ in range(draw(st.integers(0, 8))):
        start_min = draw(st.integers(0, 24 * 4 - 1)) * 15
        length = draw(st.integers(1, 24 * 4 - 1)) * 15
        end_min = (start_min + length) % (24 * 60)
        cand = Shift(
            draw(st.integers(0, 6)), time(start_min // 60, start_min % 60), time(end_min // 60, end_min % 60)
        )
        try:
            validate_schedule(sched(tz, *shifts, cand))
        except InvalidArgument:
            continue
        shifts.append(cand)
    days_off: frozenset[date] = frozenset()
    if with_days_off:
        days_off = frozenset(draw(st.lists(st.dates(date(2026, 1, 1), date(2026, 12, 31)), max_size=20)))
    return sched(tz, *shifts, days_off=days_off)


instants = st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31)).map(lambda d: d.replace(tzinfo=UTC))


@settings(max_examples=200, deadline=None)
@given(schedules(), instants, st.timedeltas(timedelta(0), timedelta(days=10)))
def test_windows_sorted_disjoint_within_range(s: WorkSchedule, start: datetime, span: timedelta) -> None:
    end = start + span
    windows = on_shift_windows(s, start, end)
    for b, e in windows:
        assert start <= b < e <= end
    for (_, e1), (b2, _) in itertools.pairwise(windows):
        assert e1 < b2  # merged: never touching or overlapping


@settings(max_examples=200, deadline=None)
@given(schedules(FIXED_ZONES, with_days_off=False), instants)
def test_week_total_equals_sum_of_shift_lengths_without_dst(s: WorkSchedule, start: datetime) -> None:
    expected = timedelta(0)
    for shift in s.shifts:
        length = datetime.combine(date.min, shift.end) - datetime.combine(date.min, shift.start)
        expected += length if length > timedelta(0) else length + timedelta(days=1)
    assert total(on_shift_windows(s, start, start + timedelta(days=7))) == expected


@settings(max_examples=200, deadline=None)
@given(
    schedules(),
    instants,
    st.timedeltas(timedelta(0), timedelta(days=5)),
    st.timedeltas(timedelta(0), timedelta(days=5)),
)
def test_split_invariance(s: WorkSchedule, a: datetime, ab: timedelta, bc: timedelta) -> None:
    b, c = a + ab, a + ab + bc
    joined = on_shift_windows(s, a, b) + on_shift_windows(s, b, c)
    merged: list[tuple[datetime, datetime]] = []
    for w in joined:
        if merged and merged[-1][1] == w[0]:
            merged[-1] = (merged[-1][0], w[1])
        else:
            merged.append(w)
    assert on_shift_windows(s, a, c) == merged


@settings(max_examples=100, deadline=None)
@given(schedules(), instants)
def test_remaining_and_next_start_agree_with_windows(s: WorkSchedule, now: datetime) -> None:
    remaining = shift_remaining(s, now)
    nxt = next_shift_start(s, now)
    if remaining > timedelta(0):
        assert nxt == now
        assert can_finish(s, now, remaining) and not can_finish(s, now, remaining + timedelta(microseconds=1))
    elif nxt is not None:
        assert nxt > now
        assert on_shift_windows(s, now, nxt) == []
        assert shift_remaining(s, nxt) > timedelta(0)
