"""NextTask respects the caller's shift: no work that cannot be finished before it ends, none off shift."""

from __future__ import annotations

import time

import grpc
import pytest

from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import model_pb2 as M

from .conftest import Env, Stubs, image_task, trailers


@pytest.fixture
def env(both_env: Env) -> Env:
    """Every rule in this module is checked on both backends (embedded; Kafka + Cassandra)."""
    return both_env


# ManualClock starts Monday 2026-01-05 09:00 UTC = 10:00 in Warsaw (CET, UTC+1).
WEEKDAYS_9_TO_17 = M.WorkScheduleSpec(
    shifts=[M.ShiftSpec(weekday=d, start="09:00", end="17:00") for d in range(5)], capacity_per_hour=6
)


def register(env: Env, person_id: str, schedule: M.WorkScheduleSpec) -> Stubs:
    env.admin.admin.RegisterPerson(
        api_pb2.RegisterPersonRequest(
            command_id=f"reg-{person_id}",
            person=M.PersonSpec(
                person_id=person_id, roles=[M.ROLE_ANNOTATOR], time_zone="Europe/Warsaw", schedule=schedule
            ),
        ),
        metadata=env.admin.md,
    )
    tok = env.admin.admin.CreateToken(
        api_pb2.CreateTokenRequest(command_id=f"tok-{person_id}", person_id=person_id), metadata=env.admin.md
    )
    return env.as_(tok.token)


def timed(task_id: str, seconds: int, priority: int) -> M.TaskSpec:
    spec = image_task(task_id, priority=priority)
    spec.expected_seconds = seconds
    return spec


def next_id(who: Stubs, cid: str) -> str:
    res = who.tasks.NextTask(api_pb2.NextTaskRequest(command_id=cid, project_id="p1"), metadata=who.md)
    return res.task.task_id if res.HasField("task") else ""


def test_work_that_outlasts_the_shift_is_not_leased_and_nothing_is_leased_off_shift(env: Env) -> None:
    ola = register(env, "ola", WEEKDAYS_9_TO_17)
    env.project("p1", members=("ola",))
    env.admin.tasks.ImportTasks(
        api_pb2.ImportTasksRequest(
            command_id="imp",
            project_id="p1",
            tasks=[
                timed("eight-hours", 8 * 3600, 9),
                timed("quarter", 900, 5),
                timed("quarter-2", 900, 4),
                timed("quarter-3", 900, 3),
            ],
        ),
        metadata=env.admin.md,
    )
    env.server.app.runner.catch_up()
    # 10:00 local: 7 h left, so the 8 h task (highest priority) is passed over
    assert next_id(ola, "a") == "quarter"
    # 16:50 local: 10 minutes left, a 15-minute task would overrun the shift
    env.clock.advance(6 * 3600 + 50 * 60)
    assert next_id(ola, "b") == ""
    # 18:00 local, off shift: nothing at all
    env.clock.advance(70 * 60)
    assert next_id(ola, "c") == ""
    # Tuesday 09:05 local: back on shift with 7 h 55 min left. Yesterday's lease on "quarter" ran
    # out unfinished; once the lease sweep has expired it, it is the best task again
    env.clock.advance(15 * 3600 + 5 * 60)
    deadline = time.monotonic() + 30
    while not any(e.type == "lease_expired" for e in env.server.app.log.read_stream("task:quarter")):
        assert time.monotonic() < deadline, "the lease sweep did not expire yesterday's lease"
        time.sleep(0.05)
    env.settle()
    assert next_id(ola, "d") == "quarter"
    assert next_id(ola, "e") == "quarter-2"


def test_people_without_a_schedule_are_always_available(env: Env) -> None:
    free = register(env, "free", M.WorkScheduleSpec())
    env.project("p1", members=("free",))
    env.admin.tasks.ImportTasks(
        api_pb2.ImportTasksRequest(command_id="imp", project_id="p1", tasks=[timed("long", 8 * 3600, 1)]),
        metadata=env.admin.md,
    )
    env.server.app.runner.catch_up()
    assert next_id(free, "a") == "long"


@pytest.mark.parametrize(
    ("shift", "field"),
    [
        (M.ShiftSpec(weekday=0, start="25:00", end="17:00"), "person.schedule.shifts[0].start"),
        (M.ShiftSpec(weekday=7, start="09:00", end="17:00"), "person.schedule.shifts[0].weekday"),
        (M.ShiftSpec(weekday=0, start="09:00", end="09:00"), "person.schedule.shifts[0].end"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field(env: Env, shift: M.ShiftSpec, field: str) -> None:
    head = env.server.app.log.head()
    with pytest.raises(grpc.RpcError) as err:
        register(env, "bad", M.WorkScheduleSpec(shifts=[shift]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err.value)["labelweave-field"] == field
    assert env.server.app.log.head() == head
