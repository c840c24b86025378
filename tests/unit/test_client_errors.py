"""LabelweaveClient: status code → error mapping, retry policy, resumable label stream.

A tiny real gRPC server on a loopback port implements the few methods under test with
scripted failures, so retries go through the real channel and metadata machinery.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from dataclasses import field as dc_field

import grpc
import pytest

from coordinator._pb.labelweave.api.v1 import api_pb2, api_pb2_grpc
from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator.client import LabelweaveClient, RpcFailure, error_code, translate_error
from coordinator.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    LabelweaveError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

TOKEN = "lw_test-token"


@dataclass
class Script:
    """What the fake server does: fail with `code` for the first `failures` calls, then succeed."""

    failures: int = 0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    message: str = "try again"
    field: str = ""
    requests: list[object] = dc_field(default_factory=list)
    auth: list[str] = dc_field(default_factory=list)
    lock: threading.Lock = dc_field(default_factory=threading.Lock)

    def record(self, request: object, context: grpc.ServicerContext) -> bool:
        """Record the call; True when this call should fail."""
        with self.lock:
            self.requests.append(request)
            self.auth.append(dict(context.invocation_metadata()).get("authorization", ""))  # type: ignore[arg-type]
            return len(self.requests) <= self.failures

    def fail(self, context: grpc.ServicerContext) -> None:
        if self.field:
            context.set_trailing_metadata((("labelweave-field", self.field),))
        context.abort(self.code, self.message)


class Admin(api_pb2_grpc.AdminServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def CreateProject(
        self, request: api_pb2.CreateProjectRequest, context: grpc.ServicerContext
    ) -> api_pb2.Project:
        if self.script.record(request, context):
            self.script.fail(context)
        return api_pb2.Project(project_id=request.project_id, name=request.name)

    def GetProject(
        self, request: api_pb2.GetProjectRequest, context: grpc.ServicerContext
    ) -> api_pb2.Project:
        if self.script.record(request, context):
            self.script.fail(context)
        return api_pb2.Project(project_id=request.project_id)


def _label(n: int) -> api_pb2.LabelEvent:
    return api_pb2.LabelEvent(
        resume_token=f"0:{n}",
        label=events_pb2.AnnotationAccepted(task_id=f"t{n}", annotation_id=f"a{n}", version=1),
        envelope=events_pb2.EventEnvelope(event_id=f"e{n}"),
    )


class Streams(api_pb2_grpc.LabelStreamServiceServicer):
    """Labels 1..total; the first connection breaks after `break_after` labels."""

    def __init__(self, script: Script, total: int = 5, break_after: int = 3) -> None:
        self.script = script
        self.total = total
        self.break_after = break_after

    def SubscribeLabels(
        self, request: api_pb2.SubscribeLabelsRequest, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.LabelEvent]:
        first = len(self.script.requests) == 0
        self.script.record(request, context)
        if self.script.code != grpc.StatusCode.UNAVAILABLE:
            self.script.fail(context)
        start = int(request.resume_token.split(":")[1]) if request.resume_token else 0
        for n in range(start + 1, self.total + 1):
            if first and n > self.break_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "server going away")
            yield _label(n)


@dataclass
class Fake:
    script: Script
    client: LabelweaveClient
    sleeps: list[float]


@pytest.fixture
def fake() -> Iterator[Fake]:
    script = Script()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    api_pb2_grpc.add_AdminServiceServicer_to_server(Admin(script), server)  # type: ignore[abstract]
    api_pb2_grpc.add_LabelStreamServiceServicer_to_server(Streams(script), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = LabelweaveClient(f"127.0.0.1:{port}", TOKEN, timeout=5.0, retries=5)
    sleeps: list[float] = []
    client._sleep = sleeps.append  # no real waiting in unit tests
    try:
        yield Fake(script, client, sleeps)
    finally:
        client.close()
        server.stop(grace=None)


def test_unavailable_is_retried_with_the_same_command_id(fake: Fake) -> None:
    fake.script.failures = 3
    project = fake.client.create_project("p1", "P1")
    assert project.project_id == "p1"
    ids = [r.command_id for r in fake.script.requests]  # type: ignore[attr-defined]
    assert len(ids) == 4
    assert len(set(ids)) == 1 and ids[0]
    assert fake.script.auth == [f"Bearer {TOKEN}"] * 4
    assert len(fake.sleeps) == 3


def test_explicit_command_id_is_sent_on_every_attempt(fake: Fake) -> None:
    fake.script.failures = 2
    fake.client.create_project("p1", "P1", command_id="cmd-42")
    assert [r.command_id for r in fake.script.requests] == ["cmd-42"] * 3  # type: ignore[attr-defined]


def test_fresh_command_id_per_logical_call(fake: Fake) -> None:
    fake.client.create_project("p1", "P1")
    fake.client.create_project("p2", "P2")
    a, b = (r.command_id for r in fake.script.requests)  # type: ignore[attr-defined]
    assert a != b


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    ],
)
def test_retryable_codes_retry_until_exhausted(fake: Fake, code: grpc.StatusCode) -> None:
    fake.script.failures = 100
    fake.script.code = code
    expected = Conflict if code == grpc.StatusCode.ABORTED else Unavailable
    with pytest.raises(expected) as info:
        fake.client.create_project("p1", "P1")
    assert len(fake.script.requests) == 6  # first attempt + retries=5
    assert len({r.command_id for r in fake.script.requests}) == 1  # type: ignore[attr-defined]
    assert error_code(info.value) == code.name


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.INTERNAL, RpcFailure),
        (grpc.StatusCode.UNIMPLEMENTED, RpcFailure),
    ],
)
def test_other_codes_are_never_retried(
    fake: Fake, code: grpc.StatusCode, error: type[LabelweaveError]
) -> None:
    fake.script.failures = 100
    fake.script.code = code
    fake.script.message = "nope"
    with pytest.raises(error) as info:
        fake.client.create_project("p1", "P1")
    assert type(info.value) is error
    assert len(fake.script.requests) == 1
    assert fake.sleeps == []
    assert "nope" in info.value.message
    assert error_code(info.value) == code.name


def test_invalid_argument_carries_the_field_from_trailing_metadata(fake: Fake) -> None:
    fake.script.failures = 1
    fake.script.code = grpc.StatusCode.INVALID_ARGUMENT
    fake.script.message = "settings.lease_seconds: must be at most 86400"
    fake.script.field = "settings.lease_seconds"
    with pytest.raises(InvalidArgument) as info:
        fake.client.create_project("p1", "P1")
    assert info.value.field == "settings.lease_seconds"
    assert str(info.value).startswith("settings.lease_seconds: ")


def test_queries_retry_too(fake: Fake) -> None:
    fake.script.failures = 2
    assert fake.client.get_project("p9").project_id == "p9"
    assert len(fake.script.requests) == 3


def test_backoff_doubles_from_50ms_up_to_2s_with_jitter(fake: Fake) -> None:
    fake.client.retries = 9
    fake.script.failures = 100
    with pytest.raises(Unavailable):
        fake.client.get_project("p1")
    bases = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert len(fake.sleeps) == len(bases)
    for slept, base in zip(fake.sleeps, bases, strict=True):
        assert base * 0.5 <= slept <= base


def test_no_retries_when_disabled(fake: Fake) -> None:
    fake.client.retries = 0
    fake.script.failures = 1
    with pytest.raises(Unavailable):
        fake.client.get_project("p1")
    assert len(fake.script.requests) == 1


def test_resilient_subscription_resumes_without_duplicates_or_gaps(fake: Fake) -> None:
    got = list(fake.client.subscribe_labels_resilient("p1", follow=False))
    assert [e.resume_token for e in got] == ["0:1", "0:2", "0:3", "0:4", "0:5"]
    sent = [r.resume_token for r in fake.script.requests]  # type: ignore[attr-defined]
    assert sent == ["", "0:3"]
    assert all(not r.follow for r in fake.script.requests)  # type: ignore[attr-defined]


def test_resilient_subscription_starts_from_the_given_token(fake: Fake) -> None:
    fake.script.failures = 0
    stream = fake.client.subscribe_labels_resilient("p1", "0:1", follow=False)
    assert [e.label.task_id for e in stream] == ["t2", "t3", "t4", "t5"]
    assert [r.resume_token for r in fake.script.requests] == ["0:1", "0:3"]  # type: ignore[attr-defined]


def test_resilient_subscription_raises_what_a_retry_cannot_fix(fake: Fake) -> None:
    fake.script.code = grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(PermissionDenied):
        list(fake.client.subscribe_labels_resilient("p1", follow=False))
    assert len(fake.script.requests) == 1


def test_plain_subscription_raises_on_a_break_after_delivery(fake: Fake) -> None:
    got: list[str] = []
    with pytest.raises(Unavailable):
        for event in fake.client.subscribe_labels("p1", follow=False):
            got.append(event.resume_token)
    assert got == ["0:1", "0:2", "0:3"]


class _FakeRpcError(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return self._trailers


def test_translate_error_without_a_server() -> None:
    err = translate_error(
        _FakeRpcError(grpc.StatusCode.NOT_FOUND, "no task 't1'", (("labelweave-field", "task_id"),))
    )
    assert isinstance(err, NotFound)
    assert (err.field, err.message) == ("task_id", "no task 't1'")
    bare = translate_error(grpc.RpcError())
    assert isinstance(bare, RpcFailure)
    assert error_code(bare) == "UNKNOWN"
    assert error_code(Conflict("x")) == "ABORTED"
