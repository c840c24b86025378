"""PlanningService over real gRPC on both backends: coverage across a DST change, SLA risks with
paging, dashboards (person and team), bottlenecks, the completion forecast, the Prometheus
gauges, role checks, refusals naming the field (appending nothing), and the CLI."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from consumers.gauges import ProjectionGauges
from coordinator import cli
from coordinator._pb.labelweave.api.v1 import api_pb2, planning_pb2, planning_pb2_grpc
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.eventlog import codec

from .conftest import Env, Stubs, image_task, trailers

H = timedelta(hours=1)


@pytest.fixture
def env(both_env: Env) -> Env:
    """Every rule in this module is checked on both backends (embedded; Kafka + Cassandra)."""
    # Events carry the log's wall-clock time; the views' windows end at the service clock's
    # "now". Put the manual clock two minutes past the real time so this test's events fall in.
    ahead = datetime.now(UTC) + timedelta(minutes=2) - both_env.clock()
    both_env.clock.advance(ahead.total_seconds())
    return both_env


def plan(env: Env) -> planning_pb2_grpc.PlanningServiceStub:
    return planning_pb2_grpc.PlanningServiceStub(env.channel)


def register(
    env: Env,
    person_id: str,
    role: int,
    tz: str = "UTC",
    *,
    skills: tuple[str, ...] = (),
    schedule: M.WorkScheduleSpec | None = None,
    teams: tuple[str, ...] = (),
) -> Stubs:
    spec = M.PersonSpec(
        person_id=person_id,
        roles=[role],  # type: ignore[list-item]
        time_zone=tz,
        skills=[M.Skill(name=s, level=1) for s in skills],
        teams=list(teams),
    )
    if schedule is not None:
        spec.schedule.CopyFrom(schedule)
    md = env.admin.md
    env.admin.admin.RegisterPerson(
        api_pb2.RegisterPersonRequest(command_id=f"reg-{person_id}", person=spec), metadata=md
    )
    tok = env.admin.admin.CreateToken(
        api_pb2.CreateTokenRequest(command_id=f"tok-{person_id}", person_id=person_id), metadata=md
    )
    return env.as_(tok.token)


def field_of(err: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    return str(trailers(err.value)["labelweave-field"])


def ts(dt: datetime) -> Timestamp:
    return codec.timestamp(dt)


def timed(task_id: str, deadline: datetime, seconds: int, skills: tuple[str, ...] = ()) -> M.TaskSpec:
    spec = image_task(task_id, skills=skills)
    spec.deadline.CopyFrom(ts(deadline))
    spec.expected_seconds = seconds
    return spec


def box() -> A.Annotation:
    return A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=10, y=10, width=30, height=20))])


NIGHT = M.WorkScheduleSpec(shifts=[M.ShiftSpec(weekday=5, start="22:00", end="06:00")], capacity_per_hour=2)


def test_coverage_across_a_dst_change_and_sla_risks(env: Env) -> None:
    register(env, "ola", M.ROLE_ANNOTATOR, "Europe/Warsaw", skills=("lidar",), schedule=NIGHT)
    ken = register(env, "ken", M.ROLE_ANNOTATOR, "Asia/Tokyo", skills=("text",))  # no schedule: always
    register(env, "rita", M.ROLE_REVIEWER)  # reviewers are not annotation capacity
    mgr = register(env, "mgr", M.ROLE_MANAGER)
    aud = register(env, "aud", M.ROLE_AUDITOR)  # not a member: auditors read every project
    env.project("p1", members=("ola", "ken", "rita", "mgr"))
    now = env.clock()
    env.admin.tasks.ImportTasks(
        api_pb2.ImportTasksRequest(
            command_id="imp",
            project_id="p1",
            tasks=[
                timed("fine", now + 10 * H, 600, ("text",)),
                timed("urgent", now + H, 7200, ("text",)),  # 2 h of work, 1 h left
                timed("nobody", now + 5 * H, 600, ("lidar", "text")),  # nobody holds both skills
                image_task("free"),
            ],
        ),
        metadata=env.admin.md,
    )
    env.settle()

    # Saturday 22:00 -> Sunday 06:00 in Warsaw over the 2026-10-25 fall-back: 9 real hours
    cov = plan(env).GetCoverage(
        planning_pb2.GetCoverageRequest(
            project_id="p1", start=ts(datetime(2026, 10, 24, 18, tzinfo=UTC)), hours=14
        ),
        metadata=mgr.md,
    )
    assert list(cov.required_skills) == ["lidar", "text"]
    assert len(cov.hours) == 14
    warsaw = [
        (h.hour_start.ToDatetime().hour, z.capacity)
        for h in cov.hours
        for z in h.zones
        if z.time_zone == "Europe/Warsaw"
    ]
    assert [hour for hour, _ in warsaw] == [20, 21, 22, 23, 0, 1, 2, 3, 4]
    assert sum(c for _, c in warsaw) == pytest.approx(18.0)
    first = cov.hours[0]
    assert [(z.time_zone, list(z.person_ids)) for z in first.zones] == [("Asia/Tokyo", ["ken"])]
    assert list(first.skills_missing) == ["lidar"]
    assert list(cov.hours[3].skills_missing) == []  # 21:00 UTC: Ola (lidar) and Ken (text)

    risks = plan(env).ListSlaRisks(
        planning_pb2.ListSlaRisksRequest(project_id="p1", limit=1), metadata=mgr.md
    )
    assert (risks.at_risk_total, risks.tasks_planned) == (2, 3)
    (urgent,) = risks.risks
    assert urgent.task_id == "urgent" and urgent.at_risk
    assert urgent.needed_hours == pytest.approx(2.0) and urgent.available_hours == pytest.approx(1.0)
    assert urgent.earliest_completion.ToDatetime(tzinfo=UTC) == now + 2 * H
    page2 = plan(env).ListSlaRisks(
        planning_pb2.ListSlaRisksRequest(project_id="p1", limit=1, page_token=risks.next_page_token),
        metadata=aud.md,
    )
    assert [r.task_id for r in page2.risks] == ["nobody"] and not page2.next_page_token
    assert not page2.risks[0].HasField("earliest_completion")
    everything = plan(env).ListSlaRisks(
        planning_pb2.ListSlaRisksRequest(project_id="p1", include_safe=True), metadata=mgr.md
    )
    assert [(r.task_id, r.at_risk) for r in everything.risks] == [
        ("urgent", True),
        ("nobody", True),
        ("fine", False),
    ]

    # the gauges: SLA risk per project, depth per stage (annotate included)
    app = env.server.app
    ProjectionGauges(app.metrics).refresh(app.store)
    samples = {
        (s.name, s.labels.get("stage", "")): s.value
        for family in app.metrics.registry.collect()
        for s in family.samples
        if s.labels.get("project") == "p1"
    }
    assert samples[("labelweave_sla_at_risk_tasks", "")] == 2
    assert samples[("labelweave_stage_depth", "annotate")] == 4
    assert samples[("labelweave_stage_oldest_seconds", "annotate")] >= 0
    assert all("person" not in s.labels for f in app.metrics.registry.collect() for s in f.samples)

    # roles: annotators read no coverage or SLA risks
    with pytest.raises(grpc.RpcError) as err:
        plan(env).GetCoverage(planning_pb2.GetCoverageRequest(project_id="p1"), metadata=ken.md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        plan(env).ListSlaRisks(planning_pb2.ListSlaRisksRequest(project_id="p1"), metadata=ken.md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def work(env: Env, who: Stubs, tag: str) -> tuple[str, str]:
    n = who.tasks.NextTask(api_pb2.NextTaskRequest(command_id=f"n-{tag}", project_id="p1"), metadata=who.md)
    assert n.HasField("task")
    s = who.tasks.Submit(
        api_pb2.SubmitRequest(
            command_id=f"s-{tag}",
            task_id=n.task.task_id,
            lease_id=n.lease.lease_id,
            annotation=box(),
            time_on_task_ms=30_000,
        ),
        metadata=who.md,
    )
    return n.task.task_id, s.annotation_id


def verdict(who: Stubs, task_id: str, ann: str, v: int, reasons: tuple[str, ...] = ()) -> None:
    who.tasks.Review(
        api_pb2.ReviewRequest(
            command_id=f"r-{task_id}",
            task_id=task_id,
            annotation_id=ann,
            version=1,
            verdict=v,  # type: ignore[arg-type]
            reason_codes=list(reasons),
        ),
        metadata=who.md,
    )


def test_dashboards_bottlenecks_and_forecast(env: Env) -> None:
    ola = register(env, "ola", M.ROLE_ANNOTATOR, "Europe/Warsaw", teams=("night",))
    rev = register(env, "rev", M.ROLE_REVIEWER)
    mgr = register(env, "mgr", M.ROLE_MANAGER)
    env.project("p1", members=("ola", "rev", "mgr"))
    env.admin.tasks.ImportTasks(
        api_pb2.ImportTasksRequest(
            command_id="imp", project_id="p1", tasks=[image_task(f"t{i}") for i in range(4)]
        ),
        metadata=env.admin.md,
    )
    env.settle()
    done = [work(env, ola, str(i)) for i in range(4)]
    env.settle()
    verdict(rev, *done[0], M.VERDICT_REJECT, ("wrong_class",))
    verdict(rev, *done[1], M.VERDICT_ACCEPT)
    env.settle()

    board = plan(env).GetDashboard(
        planning_pb2.GetDashboardRequest(project_id="p1", person_id="ola"), metadata=mgr.md
    )
    t = board.totals
    assert (t.person_id, t.time_zone, t.submitted, t.accepted, t.verdicts, t.rejected) == (
        "ola",
        "Europe/Warsaw",
        4,
        1,
        2,
        1,
    )
    assert [(r.code, r.count, r.rate) for r in t.rejections] == [("wrong_class", 1, 0.5)]
    assert t.rejection_rate == 0.5 and t.submitted_per_hour == pytest.approx(4 / 24)
    assert len(t.hourly) == 24 and sum(h.submitted for h in t.hourly) == 4
    assert t.time_on_task_ms == 120_000 and t.mean_seconds_on_task == pytest.approx(30.0)
    assert not t.accuracy_known  # no gold results
    # agreement comes from the agreement view when it is installed (overlap 1 here: no shared items)
    has_agreement = importlib.util.find_spec("projections.agreement_queries") is not None
    assert board.agreement_known == has_agreement and not t.agreement_known
    if has_agreement:
        assert json.loads(board.agreement_json)["project_id"] == "p1"
    mine = plan(env).GetDashboard(planning_pb2.GetDashboardRequest(project_id="p1"), metadata=ola.md)
    assert mine.person_id == "ola" and mine.totals.submitted == 4
    reviewer = plan(env).GetDashboard(
        planning_pb2.GetDashboardRequest(project_id="p1", person_id="rev"), metadata=mgr.md
    )
    assert reviewer.totals.reviewed == 2 and reviewer.totals.submitted == 0
    team = plan(env).GetDashboard(
        planning_pb2.GetDashboardRequest(project_id="p1", team="night"), metadata=mgr.md
    )
    assert [m.person_id for m in team.members] == ["ola"] and team.totals.submitted == 4
    with pytest.raises(grpc.RpcError) as err:
        plan(env).GetDashboard(
            planning_pb2.GetDashboardRequest(project_id="p1", person_id="rev"), metadata=ola.md
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        plan(env).GetDashboard(
            planning_pb2.GetDashboardRequest(project_id="p1", team="night"), metadata=ola.md
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        plan(env).GetDashboard(planning_pb2.GetDashboardRequest(project_id="p1", team="day"), metadata=mgr.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and field_of(err) == "team"

    report = plan(env).GetBottlenecks(planning_pb2.GetBottlenecksRequest(project_id="p1"), metadata=mgr.md)
    stages = {s.stage: s for s in report.stages}
    assert report.stages[0].stage == "annotate" and report.bottleneck != "annotate"
    review = stages[report.bottleneck]
    # 4 submissions arrived at the review stage, 2 were reviewed: 2 wait
    assert (review.inflow, review.outflow, review.depth, review.bottleneck) == (4, 2, 2, True)
    assert review.HasField("oldest") and review.oldest_age_seconds >= 0
    annotate = stages["annotate"]
    assert (annotate.inflow, annotate.outflow, annotate.depth) == (5, 4, 0)  # the rejection is rework

    fc = plan(env).ForecastCompletion(
        planning_pb2.ForecastCompletionRequest(project_id="p1"), metadata=mgr.md
    )
    # 1 slot of rework + 2 awaiting review + 0.5 reviews the rework will need (2 verdicts / 4 submissions)
    assert (fc.open_slots, fc.review_backlog, fc.future_reviews, fc.remaining_work) == (1, 2, 0.5, 3.5)
    assert fc.basis == "throughput" and fc.within_horizon
    zones = {z.time_zone: (z.workers, z.done, z.on_shift_hours) for z in fc.zones}
    assert zones == {"Europe/Warsaw": (1, 4, 24.0), "UTC": (1, 2, 24.0)}
    # both always available: 4/24 + 2/24 = 0.25 units an hour, so 14 hours
    now = env.clock()
    assert abs(fc.expected.ToDatetime(tzinfo=UTC) - (now + 14 * H)) < timedelta(seconds=1)
    assert fc.optimistic.ToDatetime(tzinfo=UTC) < now + 14 * H < fc.pessimistic.ToDatetime(tzinfo=UTC)


def test_bad_input_is_refused_naming_the_field_and_appends_nothing(env: Env) -> None:
    mgr = register(env, "mgr", M.ROLE_MANAGER)
    env.project("p1", members=("mgr",))
    env.settle()
    head = dict(env.server.app.log.head())
    p = plan(env)
    cases: list[tuple[Callable[..., object], Message, grpc.StatusCode, str]] = [
        (
            p.GetCoverage,
            planning_pb2.GetCoverageRequest(project_id="nope"),
            grpc.StatusCode.NOT_FOUND,
            "project_id",
        ),
        (p.GetCoverage, planning_pb2.GetCoverageRequest(), grpc.StatusCode.INVALID_ARGUMENT, "project_id"),
        (
            p.GetCoverage,
            planning_pb2.GetCoverageRequest(project_id="p1", hours=-3),
            grpc.StatusCode.INVALID_ARGUMENT,
            "hours",
        ),
        (
            p.GetCoverage,
            planning_pb2.GetCoverageRequest(project_id="p1", hours=5000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "hours",
        ),
        (
            p.ListSlaRisks,
            planning_pb2.ListSlaRisksRequest(project_id="p1", page_token="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        ),
        (
            p.ListSlaRisks,
            planning_pb2.ListSlaRisksRequest(project_id="p1", limit=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit",
        ),
        (
            p.GetDashboard,
            planning_pb2.GetDashboardRequest(project_id="p1", window_hours=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "window_hours",
        ),
        (
            p.GetDashboard,
            planning_pb2.GetDashboardRequest(project_id="p1", person_id="ghost"),
            grpc.StatusCode.NOT_FOUND,
            "person_id",
        ),
        (
            p.GetBottlenecks,
            planning_pb2.GetBottlenecksRequest(project_id="p1", window_hours=-24),
            grpc.StatusCode.INVALID_ARGUMENT,
            "window_hours",
        ),
        (
            p.GetBottlenecks,
            planning_pb2.GetBottlenecksRequest(project_id="p1", window_hours=10_000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "window_hours",
        ),
        (
            p.ForecastCompletion,
            planning_pb2.ForecastCompletionRequest(project_id="p1", horizon_hours=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "horizon_hours",
        ),
        (
            p.ForecastCompletion,
            planning_pb2.ForecastCompletionRequest(project_id="nope"),
            grpc.StatusCode.NOT_FOUND,
            "project_id",
        ),
    ]
    for method, request, code, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            method(request, metadata=mgr.md)
        assert (err.value.code(), field_of(err)) == (code, field), request
    with pytest.raises(grpc.RpcError) as err:
        p.GetCoverage(planning_pb2.GetCoverageRequest(project_id="p1"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert dict(env.server.app.log.head()) == head


def test_cli_prints_tables(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    register(env, "ola", M.ROLE_ANNOTATOR, "Europe/Warsaw", schedule=NIGHT)
    mgr = register(env, "mgr", M.ROLE_MANAGER)
    env.project("p1", members=("ola", "mgr"))
    env.admin.tasks.ImportTasks(
        api_pb2.ImportTasksRequest(
            command_id="imp", project_id="p1", tasks=[timed("t1", env.clock() + H, 7200)]
        ),
        metadata=env.admin.md,
    )
    env.settle()
    flags = ["--target", env.target, "--token", mgr.token]
    assert cli.main(["coverage", "p1", "--start", "2026-10-24T18:00:00Z", "--hours", "3", *flags]) == 0
    out = capsys.readouterr().out
    assert "hour (UTC)" in out and "2026-10-24 20:00" in out and "Europe/Warsaw 1 (2.0/h)" in out
    assert cli.main(["sla", "p1", *flags]) == 0
    assert "t1" in capsys.readouterr().out
    assert cli.main(["dashboard", "p1", "--person", "ola", *flags]) == 0
    assert "agreement:" in capsys.readouterr().out
    assert cli.main(["bottlenecks", "p1", *flags]) == 0
    assert "annotate" in capsys.readouterr().out
    assert cli.main(["forecast", "p1", *flags]) == 0
    assert "remaining work 2.0" in capsys.readouterr().out
    assert cli.main(["dashboard", "p1", "--window", "-2", *flags]) == 2
    assert "window_hours" in capsys.readouterr().err


def test_role_matrix(env: Env) -> None:
    """Managers (members), admins and auditors read everything; every member their own dashboard."""
    roles = {
        "adm": M.ROLE_ADMIN,
        "mgr": M.ROLE_MANAGER,
        "aud": M.ROLE_AUDITOR,
        "ann": M.ROLE_ANNOTATOR,
        "rev": M.ROLE_REVIEWER,
        "qa": M.ROLE_QA,
        "exp": M.ROLE_EXPERT,
        "ml": M.ROLE_ML_CLIENT,
    }
    people = {pid: register(env, pid, role) for pid, role in roles.items()}
    outsider = register(env, "mgr2", M.ROLE_MANAGER)  # a manager of no project of theirs
    env.project("p1", members=tuple(roles))
    env.settle()
    p = plan(env)
    readers = {"adm", "mgr", "aud"}
    calls: dict[str, Callable[[tuple[tuple[str, str], ...]], object]] = {
        "GetCoverage": lambda md: p.GetCoverage(
            planning_pb2.GetCoverageRequest(project_id="p1"), metadata=md
        ),
        "ListSlaRisks": lambda md: p.ListSlaRisks(
            planning_pb2.ListSlaRisksRequest(project_id="p1"), metadata=md
        ),
        "GetBottlenecks": lambda md: p.GetBottlenecks(
            planning_pb2.GetBottlenecksRequest(project_id="p1"), metadata=md
        ),
        "ForecastCompletion": lambda md: p.ForecastCompletion(
            planning_pb2.ForecastCompletionRequest(project_id="p1"), metadata=md
        ),
        "GetDashboard(ann)": lambda md: p.GetDashboard(
            planning_pb2.GetDashboardRequest(project_id="p1", person_id="ann"), metadata=md
        ),
    }
    for name, call in calls.items():
        for pid, who in [*people.items(), ("mgr2", outsider)]:
            allowed = pid in readers or (name == "GetDashboard(ann)" and pid == "ann")
            try:
                call(who.md)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            assert (code == grpc.StatusCode.OK) == allowed, (name, pid, code)
            if not allowed:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (name, pid, code)
    for pid, who in people.items():  # everyone in the project reads their own
        own = p.GetDashboard(planning_pb2.GetDashboardRequest(project_id="p1"), metadata=who.md)
        assert own.person_id == pid
