"""A real Labelweave server on a loopback port, with a manual clock, per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator._pb.labelweave.api.v1 import api_pb2, api_pb2_grpc
from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.server import RunningServer, start
from coordinator.settings import Settings
from coordinator.testing import ManualClock, sample_schema
from tests.backends.cassandra_util import cassandra_admin_fixture, cassandra_hosts_fixture  # noqa: F401
from tests.backends.kafka_util import kafka_broker  # noqa: F401 - fixtures for `both_env`


class Stubs:
    """Raw stubs with a bearer token, for tests that need exact status codes and metadata."""

    def __init__(self, channel: grpc.Channel, token: str) -> None:
        self.token = token
        self.admin = api_pb2_grpc.AdminServiceStub(channel)
        self.tasks = api_pb2_grpc.TaskServiceStub(channel)
        self.streams = api_pb2_grpc.LabelStreamServiceStub(channel)
        self.reviews = api_pb2_grpc.ReviewServiceStub(channel)
        self.quality = api_pb2_grpc.QualityServiceStub(channel)

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


@dataclass
class Env:
    server: RunningServer
    clock: ManualClock
    target: str
    channel: grpc.Channel
    admin: Stubs
    data_dir: Path

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the projections include every event in the log now (queues, lists and
        metrics are eventually consistent; on the distributed backend the lag is visible)."""
        app = self.server.app
        assert app.runner.wait_for(app.log.head(), timeout=timeout), "projections did not catch up"

    def as_(self, token: str) -> Stubs:
        return Stubs(self.channel, token)

    def person(
        self, person_id: str, *roles: model_pb2.Role.ValueType, skills: tuple[str, ...] = (), tz: str = "UTC"
    ) -> Stubs:
        self.admin.admin.RegisterPerson(
            api_pb2.RegisterPersonRequest(
                command_id=f"reg-{person_id}",
                person=model_pb2.PersonSpec(
                    person_id=person_id,
                    display_name=person_id.title(),
                    roles=list(roles),
                    skills=[model_pb2.Skill(name=s, level=1) for s in skills],
                    time_zone=tz,
                ),
            ),
            metadata=self.admin.md,
        )
        tok = self.admin.admin.CreateToken(
            api_pb2.CreateTokenRequest(command_id=f"tok-{person_id}", person_id=person_id),
            metadata=self.admin.md,
        )
        return self.as_(tok.token)

    def project(
        self,
        project_id: str = "p1",
        *,
        overlap: int = 1,
        review: model_pb2.ReviewPolicy.ValueType = model_pb2.REVIEW_POLICY_FULL,
        members: tuple[str, ...] = (),
    ) -> None:
        md = self.admin.md
        self.admin.admin.CreateProject(
            api_pb2.CreateProjectRequest(
                command_id=f"cp-{project_id}",
                project_id=project_id,
                name=project_id.upper(),
                settings=model_pb2.ProjectSettings(
                    default_overlap=overlap, lease_seconds=600, review_policy=review
                ),
            ),
            metadata=md,
        )
        self.admin.admin.PublishLabelSchema(
            api_pb2.PublishLabelSchemaRequest(
                command_id=f"schema-{project_id}", project_id=project_id, schema=sample_schema()
            ),
            metadata=md,
        )
        for m in members:
            self.admin.admin.AddProjectMember(
                api_pb2.ProjectMemberRequest(
                    command_id=f"m-{project_id}-{m}", project_id=project_id, person_id=m
                ),
                metadata=md,
            )


def image_task(
    task_id: str, *, priority: int = 0, skills: tuple[str, ...] = (), overlap: int = 0
) -> model_pb2.TaskSpec:
    return model_pb2.TaskSpec(
        task_id=task_id,
        data_uri=f"s3://bucket/{task_id}.jpg",
        media_type=model_pb2.MEDIA_TYPE_IMAGE,
        media=model_pb2.MediaInfo(width=640, height=480),
        priority=priority,
        required_skills=list(skills),
        overlap=overlap,
    )


def _serve(settings: Settings) -> Iterator[Env]:
    clock = ManualClock()
    running = start(settings, clock=clock)
    target = f"127.0.0.1:{running.port}"
    channel = grpc.insecure_channel(target)
    token = settings.admin_token_file.read_text().strip()
    try:
        yield Env(running, clock, target, channel, Stubs(channel, token), settings.data_dir)
    finally:
        channel.close()
        running.stop(grace=1.0)


def _embedded(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        listen="127.0.0.1:0",
        metrics_port=0,
        lease_sweep_seconds=0.05,
        shutdown_grace_seconds=1.0,
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """The embedded default: SQLite event log and projections under a temporary data directory."""
    yield from _serve(_embedded(tmp_path))


@pytest.fixture(params=["embedded", "distributed"])
def both_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """The same server on each backend: the embedded default, and the distributed one (a real Kafka
    event log under a fresh topic prefix, a real Cassandra keyspace, projections applied in process
    so a test's reads follow its writes as on the embedded backend). Fails, never skips, when Kafka
    or Cassandra is not running (`ops/services.sh start`)."""
    if request.param == "embedded":
        yield from _serve(_embedded(tmp_path))
        return
    from tests.api.distributed_env import distributed_settings

    with distributed_settings(request, tmp_path) as settings:
        yield from _serve(settings)


def _env_of(where: object) -> Env:
    env = where if isinstance(where, Env) else getattr(where, "env", None)
    assert isinstance(env, Env), f"not an Env and has no .env: {where!r}"
    return env


def trailers(err: grpc.RpcError) -> dict[str, str]:
    """A failed call's trailing metadata as a dict, like `dict(err.trailing_metadata())`. grpc hands
    back `_Metadatum(key, value)` pairs; types-grpcio declares `value` as bytes, but for text keys
    (every key Labelweave sends) it is a str."""
    out: dict[str, str] = {}
    for item in err.trailing_metadata() or ():
        value: str | bytes = item.value
        assert isinstance(value, str), f"binary trailer {item.key!r}: {value!r}"
        out[item.key] = value
    return out


def refused(
    where: object, call: Callable[[], Any], code: grpc.StatusCode, field: str = "", words: str = ""
) -> str:
    """The call fails with `code`, naming `field` in the trailing metadata and saying `words`, and
    the log is exactly as before. `where`: an Env, or a test's crew with an `.env`."""
    app = _env_of(where).server.app
    head = dict(app.log.head())
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    assert trailers(err.value).get("labelweave-field", "") == field, err.value.details()
    details = err.value.details() or ""
    assert words in details, details
    assert dict(app.log.head()) == head, "a refused command appended something"
    return details


def assert_rebuild_matches(where: object, timeout: float = 30.0) -> None:
    """Projections caught up with the log equal a rebuild of the log from position 0."""
    from consumers.rebuild import rebuild
    from projections.memory import MemoryStore

    app = _env_of(where).server.app
    assert app.runner.wait_for(app.log.head(), timeout=timeout), "projections did not catch up"
    assert rebuild(app.log, MemoryStore()).checksum == app.store.checksum()
