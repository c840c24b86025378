"""Pure planning: coverage per UTC hour (DST-correct), SLA risk by EDF allocation, forecasts,
bottlenecks and dashboard arithmetic (`coordinator.domain.planning`)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from coordinator.domain import planning as P
from coordinator.domain.schedule import Shift, WorkSchedule
from coordinator.errors import InvalidArgument

H = timedelta(hours=1)
MONDAY_9 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday


def worker(
    person_id: str,
    tz: str = "UTC",
    shifts: tuple[Shift, ...] = (),
    *,
    capacity: float = 2.0,
    skills: tuple[str, ...] = (),
) -> P.Worker:
    schedule = WorkSchedule(tz, shifts, frozenset(), capacity) if shifts else None
    return P.Worker(person_id, tz, frozenset(skills), schedule, capacity)


def weekdays(start: str, end: str) -> tuple[Shift, ...]:
    return tuple(Shift(d, time.fromisoformat(start), time.fromisoformat(end)) for d in range(5))


# ---------------------------------------------------------------------------- coverage


def test_coverage_groups_people_by_time_zone_with_fractional_capacity_and_skills() -> None:
    people = [
        worker("ola", "Europe/Warsaw", weekdays("10:00", "18:00"), skills=("lidar",)),  # 09-17 UTC
        worker("ken", "Asia/Tokyo", weekdays("09:30", "17:30"), capacity=4),  # 00:30-08:30 UTC
        worker("max", "Europe/Warsaw", weekdays("11:00", "12:30")),  # 10:00-11:30 UTC
    ]
    hours = P.coverage(people, {"lidar", "text"}, datetime(2026, 1, 5, 0, 20, tzinfo=UTC), 24)
    assert len(hours) == 24 and hours[0].hour_start == datetime(2026, 1, 5, tzinfo=UTC)
    first = hours[0]  # 00:00-01:00 UTC: Ken from 00:30, half the hour
    assert [(z.time_zone, z.person_ids, z.capacity) for z in first.zones] == [("Asia/Tokyo", ("ken",), 2.0)]
    assert first.skills_missing == ("lidar", "text")
    ten = hours[10]
    assert [(z.time_zone, z.person_ids) for z in ten.zones] == [("Europe/Warsaw", ("max", "ola"))]
    assert ten.people == 2 and ten.capacity == 4.0
    assert ten.skills_covered == ("lidar",) and ten.skills_missing == ("text",)
    assert hours[11].capacity == pytest.approx(3.0)  # Max until 11:30: 2 + 2 x 0.5
    assert hours[8].zones[0].capacity == pytest.approx(2.0)  # Ken until 08:30, 4 x 0.5
    assert hours[20].people == 0 and hours[20].zones == ()


def test_coverage_of_a_night_shift_over_the_warsaw_fall_back_counts_the_extra_hour() -> None:
    # Saturday 22:00 -> Sunday 06:00 local; 2026-10-25 03:00 CEST becomes 02:00 CET: 9 real hours
    night = worker("ola", "Europe/Warsaw", (Shift(5, time(22), time(6)),), capacity=2)
    hours = P.coverage([night], (), datetime(2026, 10, 24, 18, tzinfo=UTC), 14)
    on = [h.hour_start.hour for h in hours if h.people]
    assert on == [20, 21, 22, 23, 0, 1, 2, 3, 4]  # 22:00 CEST = 20:00 UTC .. 06:00 CET = 05:00 UTC
    assert sum(h.capacity for h in hours) == pytest.approx(18.0)
    # the same shift a week earlier (no clock change) is 8 real hours
    earlier = P.coverage([night], (), datetime(2026, 10, 17, 18, tzinfo=UTC), 14)
    assert sum(h.capacity for h in earlier) == pytest.approx(16.0)


def test_coverage_over_the_new_york_fall_back_and_spring_forward() -> None:
    # Sunday 00:00-04:00 local on 2026-11-01: 00:00 EDT = 04:00 UTC .. 04:00 EST = 09:00 UTC
    early = worker("sam", "America/New_York", (Shift(6, time(0), time(4)),), capacity=1)
    hours = P.coverage([early], (), datetime(2026, 11, 1, 0, tzinfo=UTC), 24)
    assert [h.hour_start.hour for h in hours if h.people] == [4, 5, 6, 7, 8]
    # 2026-03-08, clocks go forward at 02:00: the same shift lasts 3 real hours (05:00-08:00 UTC)
    spring = P.coverage([early], (), datetime(2026, 3, 8, 0, tzinfo=UTC), 24)
    assert [h.hour_start.hour for h in spring if h.people] == [5, 6, 7]


def test_coverage_refuses_bad_input_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        P.coverage([], (), MONDAY_9, 0)
    assert err.value.field == "hours"
    with pytest.raises(InvalidArgument):
        P.coverage([], (), datetime(2026, 1, 5), 24)  # naive


# ---------------------------------------------------------------------------- SLA risk


def task(
    task_id: str, deadline: datetime, remaining: int, expected: int = 0, skills: tuple[str, ...] = ()
) -> P.OpenTask:
    return P.OpenTask(task_id, deadline, remaining, expected, frozenset(skills))


def test_sla_risk_allocates_capacity_earliest_deadline_first() -> None:
    ola = worker("ola", shifts=weekdays("09:00", "17:00"), capacity=2)
    tasks = [
        task("c", MONDAY_9 + 8 * H, 4),  # no expected time: 4 slots at 2/h = 2 h
        task("b", MONDAY_9 + 3 * H, 2, 3600),  # 2 h, but "a" takes 09-11
        task("a", MONDAY_9 + 2 * H, 2, 3600),  # 2 h: done exactly at 11:00
        task("d", MONDAY_9 + 8 * H, 1, 600, skills=("lidar",)),  # nobody has the skill
    ]
    got = {a.task_id: a for a in P.sla_risks(tasks, [ola], MONDAY_9)}
    assert [a.task_id for a in P.sla_risks(tasks, [ola], MONDAY_9)] == ["a", "b", "c", "d"]
    assert not got["a"].at_risk and got["a"].completion == MONDAY_9 + 2 * H
    assert got["a"].needed_hours == 2.0 and got["a"].available_hours == 2.0
    b = got["b"]
    assert b.at_risk and b.needed_hours == 2.0 and b.available_hours == pytest.approx(1.0)
    assert b.completion == MONDAY_9 + 4 * H  # 11:00-13:00
    c = got["c"]
    assert not c.at_risk and c.needed_hours == 2.0 and c.completion == MONDAY_9 + 6 * H
    assert c.available_hours == pytest.approx(4.0)  # 13:00-17:00 left for it
    d = got["d"]
    assert d.at_risk and d.completion is None and d.available_hours == 0.0


def test_sla_risk_shares_a_task_between_workers_and_waits_for_the_next_shift() -> None:
    ola = worker("ola", shifts=weekdays("09:00", "17:00"), capacity=1)
    ken = worker("ken", "Asia/Tokyo", weekdays("09:00", "17:00"), capacity=1)  # 00:00-08:00 UTC
    # 20 one-hour slots from Monday 09:00 UTC: Ola 8 h Monday, Ken 8 h Tuesday 00-08, Ola 4 h Tuesday
    [a] = P.sla_risks([task("big", MONDAY_9 + 30 * H, 20, 3600)], [ola, ken], MONDAY_9)
    assert a.completion == MONDAY_9 + 28 * H  # Tuesday 13:00 UTC
    assert not a.at_risk and a.available_hours == pytest.approx(8 + 8 + 6)  # to Tue 15:00
    [late] = P.sla_risks([task("big", MONDAY_9 + 20 * H, 20, 3600)], [ola, ken], MONDAY_9)
    assert late.at_risk and late.available_hours == pytest.approx(8 + 5)  # to Tue 05:00


def test_sla_risk_of_an_overdue_task_and_of_no_work_left() -> None:
    always = worker("ola")
    overdue, done = P.sla_risks(
        [task("late", MONDAY_9 - H, 1, 60), task("done", MONDAY_9 + H, 0, 60)], [always], MONDAY_9
    )
    assert overdue.at_risk and overdue.available_hours == 0.0
    assert not done.at_risk and done.completion == MONDAY_9


# ---------------------------------------------------------------------------- forecast


def test_forecast_from_known_throughput_with_a_band() -> None:
    always = worker("ola", capacity=99)  # the declared capacity is ignored when there is throughput
    f = P.forecast_completion(10, [always], {"ola": 24}, [1] * 24, MONDAY_9, 24)
    assert f.basis == "throughput"
    assert [(z.time_zone, z.done, z.on_shift_hours, z.rate) for z in f.zones] == [("UTC", 24, 24.0, 1.0)]
    assert f.expected == MONDAY_9 + 10 * H
    assert f.spread == pytest.approx(0.1)  # constant throughput: the minimum band
    assert f.optimistic is not None and f.pessimistic is not None
    assert (f.optimistic - MONDAY_9) / H == pytest.approx(10 / 1.1)
    assert (f.pessimistic - MONDAY_9) / H == pytest.approx(10 / 0.9)


def test_forecast_follows_the_coming_shifts_per_time_zone() -> None:
    ola = worker("ola", shifts=weekdays("09:00", "17:00"))  # UTC, on shift 8 h a weekday
    # last 24 h (Sunday 09:00 .. Monday 09:00): no shift, but Ola worked 8 units anyway
    f = P.forecast_completion(12, [ola], {"ola": 8}, [1] * 8, MONDAY_9, 24)
    z = f.zones[0]
    assert z.on_shift_hours == 24.0 and z.rate == pytest.approx(8 / 24)  # off-shift work: whole window
    # 12 units at 1/3 per on-shift hour = 36 on-shift hours: Mon 8, Tue 8, Wed 8, Thu 8, Fri 4
    assert f.expected == datetime(2026, 1, 9, 13, 0, tzinfo=UTC)


def test_forecast_without_history_uses_declared_capacity_and_reports_the_horizon() -> None:
    ola = worker("ola", shifts=weekdays("09:00", "17:00"), capacity=2)
    f = P.forecast_completion(8, [ola], {}, [], MONDAY_9, 24)
    assert f.basis == "capacity" and f.expected == MONDAY_9 + 4 * H
    never = P.forecast_completion(10_000, [ola], {}, [], MONDAY_9, 24, horizon_hours=48)
    assert never.expected is None and never.pessimistic is None
    assert P.forecast_completion(0, [], {}, [], MONDAY_9, 24).expected == MONDAY_9
    with pytest.raises(InvalidArgument) as err:
        P.forecast_completion(1, [ola], {}, [], MONDAY_9, -1)
    assert err.value.field == "window_hours"


# ---------------------------------------------------------------------------- bottlenecks and dashboards


def test_bottleneck_is_the_stage_that_grows_most() -> None:
    stages = [
        P.StageStatus("annotate", 40, None, 10, 30),
        P.StageStatus("peer", 12, MONDAY_9, 30, 18),
        P.StageStatus("qa", 3, MONDAY_9, 18, 6),
        P.StageStatus("expert", 1, None, 1, 1),
    ]
    assert P.bottleneck(stages) == "peer"  # 12 grows like qa, but peer is deeper
    assert P.bottleneck([P.StageStatus("annotate", 5, None, 2, 2)]) == ""


def test_hourly_series_totals_and_rejection_rates() -> None:
    buckets = [
        P.Bucket(MONDAY_9, submitted=3, verdicts=4, rejected=2, reasons={"blurry": 2, "wrong-class": 1}),
        P.Bucket(MONDAY_9, submitted=1),  # another shard of the same hour
        P.Bucket(MONDAY_9 + 2 * H, accepted=5, verdicts=6),
        P.Bucket(MONDAY_9 + 9 * H, submitted=7),  # outside the series
    ]
    series = P.hourly_series(buckets, MONDAY_9 + timedelta(minutes=10), 3)
    assert [(b.hour_start, b.submitted, b.accepted) for b in series] == [
        (MONDAY_9, 4, 0),
        (MONDAY_9 + H, 0, 0),
        (MONDAY_9 + 2 * H, 0, 5),
    ]
    totals = P.total(buckets[:3], MONDAY_9)
    assert (totals.submitted, totals.accepted, totals.verdicts, totals.rejected) == (4, 5, 10, 2)
    assert P.rejection_rates(totals) == {"blurry": 0.2, "wrong-class": 0.1}
    assert P.rejection_rates(P.Bucket(MONDAY_9)) == {}


def test_agreement_figures_are_copied_only_when_known() -> None:
    from coordinator._pb.labelweave.api.v1 import planning_pb2
    from coordinator.planning import _agreement

    board = planning_pb2.AnnotatorDashboard(person_id="ola")
    _agreement(board, None)
    assert not board.agreement_known
    _agreement(board, {"percent_agreement": 0.75, "cohen_kappa": None, "mean_iou": 0.5, "pairs": 2})
    assert board.agreement_known and board.percent_agreement == 0.75 and board.mean_iou == 0.5
    assert not board.HasField("cohen_kappa")  # undefined stays unset, not 0
