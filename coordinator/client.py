"""Typed Python client for Labelweave's gRPC API.

Every call carries the bearer token, a deadline and a retry policy: UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED are retried with exponential backoff and
jitter, re-sending the very same request (so the same `command_id`, which makes mutations
idempotent on the server). Any other status, or the last failed attempt, raises the matching
`coordinator.errors` exception.

    with LabelweaveClient("127.0.0.1:50051", token) as lw:
        lw.create_project("cars", "Cars")
        for event in lw.subscribe_labels_resilient("cars"):
            ...
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf import timestamp_pb2

from coordinator._pb.labelweave.api.v1 import (
    api_pb2,
    api_pb2_grpc,
    consensus_pb2,
    consensus_pb2_grpc,
    guidance_pb2,
    guidance_pb2_grpc,
    manager_pb2,
    manager_pb2_grpc,
    planning_pb2,
    planning_pb2_grpc,
)
from coordinator._pb.labelweave.events.v1 import annotation_pb2, model_pb2
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

__all__ = [
    "RETRYABLE",
    "LabelweaveClient",
    "RpcFailure",
    "error_code",
    "translate_error",
]

Req = TypeVar("Req")
Resp = TypeVar("Resp")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
FIELD_METADATA_KEY = "labelweave-field"

RETRYABLE: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
# A broken label stream is resumed from the last delivered token on these as well: a proxy or
# a dying server can end a stream with INTERNAL / UNKNOWN / CANCELLED.
_STREAM_RECONNECTABLE: frozenset[grpc.StatusCode] = RETRYABLE | {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}

_ERRORS: dict[grpc.StatusCode, type[LabelweaveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Unavailable,
}
_CODE_OF_CLASS: dict[type[LabelweaveError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    FailedPrecondition: "FAILED_PRECONDITION",
    PermissionDenied: "PERMISSION_DENIED",
    Unauthenticated: "UNAUTHENTICATED",
    Conflict: "ABORTED",
    Unavailable: "UNAVAILABLE",
}


class RpcFailure(LabelweaveError):
    """A status with no dedicated error type (INTERNAL, UNKNOWN, UNIMPLEMENTED, CANCELLED, ...)."""


def translate_error(exc: grpc.RpcError) -> LabelweaveError:
    """Map a failed call to the `coordinator.errors` type of its status code.

    The field path comes from the `labelweave-field` trailing metadata when the server sent it.
    The original status name is kept in `error_code(err)`.
    """
    code = _code_of(exc)
    details = _details_of(exc) or code.name.lower().replace("_", " ")
    field = ""
    for key, value in _trailers_of(exc):
        if key == FIELD_METADATA_KEY:
            field = value.decode() if isinstance(value, bytes) else value
            break
    if field and details.startswith(f"{field}: "):
        details = details[len(field) + 2 :]  # the server names the field in its message too
    cls = _ERRORS.get(code, RpcFailure)
    message = details if cls is not RpcFailure else f"{code.name}: {details}"
    err = cls(message, field=field)
    setattr(err, "grpc_code", code.name)  # noqa: B010 - LabelweaveError has no slot for it
    return err


def error_code(err: BaseException) -> str:
    """The gRPC status name behind an error raised by this client (e.g. "FAILED_PRECONDITION")."""
    code = getattr(err, "grpc_code", None)
    if isinstance(code, str):
        return code
    if isinstance(err, LabelweaveError):
        for cls in type(err).__mro__:
            if cls in _CODE_OF_CLASS:
                return _CODE_OF_CLASS[cls]
        return "UNKNOWN"
    return type(err).__name__


def _code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    try:
        code = exc.code()
    except Exception:  # a bare RpcError (no call attached) has no usable code()
        return grpc.StatusCode.UNKNOWN
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details_of(exc: grpc.RpcError) -> str:
    try:
        details = exc.details()
    except Exception:
        return str(exc)
    return details or ""


def _trailers_of(exc: grpc.RpcError) -> Sequence[tuple[str, str | bytes]]:
    try:
        trailers = exc.trailing_metadata()
    except Exception:
        return ()
    out: list[tuple[str, str | bytes]] = []
    for item in trailers or ():
        # grpc hands back `_Metadatum(key, value)` namedtuples; fakes may use plain tuples
        key, value = tuple(item)[:2] if isinstance(item, tuple) else (item.key, item.value)
        out.append((str(key), value if isinstance(value, bytes) else str(value)))
    return out


def _timestamp(value: datetime | timestamp_pb2.Timestamp | None) -> timestamp_pb2.Timestamp | None:
    if value is None or isinstance(value, timestamp_pb2.Timestamp):
        return value
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _new_id(command_id: str | None) -> str:
    return command_id if command_id is not None else str(uuid.uuid4())


class LabelweaveClient:
    """One channel, five stubs, bearer auth, deadlines and retries. Thread-safe (as gRPC channels are)."""

    def __init__(
        self,
        target: str,
        token: str,
        *,
        tls_ca: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        keepalive_seconds: float = 300.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        """`channel` overrides target/TLS (tests, custom interceptors).

        `keepalive_seconds` is the HTTP/2 ping interval while calls are open. It defaults to the
        gRPC server's default minimum (5 min) so a default server never answers "too many pings";
        lower it only against a server configured to allow faster pings.
        """
        if (client_cert is None) != (client_key is None):
            raise InvalidArgument("client certificate and key must be given together", field="client_cert")
        self.target = target
        self.timeout = timeout
        self.retries = max(0, retries)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),)
        self._sleep: Callable[[float], None] = time.sleep
        self._rng = random.Random()
        if channel is None:
            options: list[tuple[str, int]] = [
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 0),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.enable_retries", 0),  # our own policy below; never both
            ]
            if tls_ca is not None or client_cert is not None:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=tls_ca.read_bytes() if tls_ca is not None else None,
                    private_key=client_key.read_bytes() if client_key is not None else None,
                    certificate_chain=client_cert.read_bytes() if client_cert is not None else None,
                )
                channel = grpc.secure_channel(target, credentials, options=options)
            else:
                channel = grpc.insecure_channel(target, options=options)
        self._channel = channel
        self._admin = api_pb2_grpc.AdminServiceStub(channel)
        self._tasks = api_pb2_grpc.TaskServiceStub(channel)
        self._streams = api_pb2_grpc.LabelStreamServiceStub(channel)
        self._reviews = api_pb2_grpc.ReviewServiceStub(channel)
        self._quality = api_pb2_grpc.QualityServiceStub(channel)
        self._planning = planning_pb2_grpc.PlanningServiceStub(channel)
        self._manager = manager_pb2_grpc.ManagerServiceStub(channel)
        self._guidance = guidance_pb2_grpc.GuidanceServiceStub(channel)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LabelweaveClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ call machinery

    def _backoff(self, attempt: int) -> float:
        """Delay before retry `attempt` (1-based): 0.05 s doubling up to 2 s, with jitter in [½, 1]."""
        base = min(0.05 * 2.0 ** max(attempt - 1, 0), 2.0)
        return base * (0.5 + 0.5 * self._rng.random())

    def _call(self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                if _code_of(exc) in RETRYABLE and attempt < self.retries:
                    attempt += 1
                    self._sleep(self._backoff(attempt))
                    continue
                raise translate_error(exc) from None

    def _stream(
        self, method: grpc.UnaryStreamMultiCallable[Req, Resp], request: Req, timeout: float | None
    ) -> Iterator[Resp]:
        """Server stream; failures before the first message are retried, later ones raised."""
        attempt = 0
        while True:
            delivered = False
            call = method(request, timeout=timeout, metadata=self._metadata)
            try:
                for item in call:
                    delivered = True
                    yield item
                return
            except grpc.RpcError as exc:
                if not delivered and _code_of(exc) in RETRYABLE and attempt < self.retries:
                    attempt += 1
                    self._sleep(self._backoff(attempt))
                    continue
                raise translate_error(exc) from None
            finally:
                call.cancel()

    # ------------------------------------------------------------------ AdminService

    def create_project(
        self,
        project_id: str,
        name: str,
        description: str = "",
        settings: model_pb2.ProjectSettings | None = None,
        *,
        command_id: str | None = None,
    ) -> api_pb2.Project:
        req = api_pb2.CreateProjectRequest(
            command_id=_new_id(command_id), project_id=project_id, name=name, description=description
        )
        if settings is not None:
            req.settings.CopyFrom(settings)
        return self._call(self._admin.CreateProject, req)

    def get_project(self, project_id: str) -> api_pb2.Project:
        return self._call(self._admin.GetProject, api_pb2.GetProjectRequest(project_id=project_id))

    def list_projects(self) -> api_pb2.ListProjectsResponse:
        return self._call(self._admin.ListProjects, api_pb2.ListProjectsRequest())

    def update_project_settings(
        self, project_id: str, settings: model_pb2.ProjectSettings, *, command_id: str | None = None
    ) -> api_pb2.Project:
        req = api_pb2.UpdateProjectSettingsRequest(
            command_id=_new_id(command_id), project_id=project_id, settings=settings
        )
        return self._call(self._admin.UpdateProjectSettings, req)

    def publish_label_schema(
        self, project_id: str, schema: model_pb2.LabelSchema, *, command_id: str | None = None
    ) -> api_pb2.Project:
        req = api_pb2.PublishLabelSchemaRequest(
            command_id=_new_id(command_id), project_id=project_id, schema=schema
        )
        return self._call(self._admin.PublishLabelSchema, req)

    def publish_guideline(
        self, project_id: str, guideline: model_pb2.Guideline, *, command_id: str | None = None
    ) -> api_pb2.Project:
        req = api_pb2.PublishGuidelineRequest(
            command_id=_new_id(command_id), project_id=project_id, guideline=guideline
        )
        return self._call(self._admin.PublishGuideline, req)

    def register_person(
        self, person: model_pb2.PersonSpec, *, command_id: str | None = None
    ) -> api_pb2.Person:
        req = api_pb2.RegisterPersonRequest(command_id=_new_id(command_id), person=person)
        return self._call(self._admin.RegisterPerson, req)

    def update_person(self, person: model_pb2.PersonSpec, *, command_id: str | None = None) -> api_pb2.Person:
        req = api_pb2.UpdatePersonRequest(command_id=_new_id(command_id), person=person)
        return self._call(self._admin.UpdatePerson, req)

    def get_person(self, person_id: str) -> api_pb2.Person:
        return self._call(self._admin.GetPerson, api_pb2.GetPersonRequest(person_id=person_id))

    def add_project_member(
        self, project_id: str, person_id: str, *, command_id: str | None = None
    ) -> api_pb2.Project:
        req = api_pb2.ProjectMemberRequest(
            command_id=_new_id(command_id), project_id=project_id, person_id=person_id
        )
        return self._call(self._admin.AddProjectMember, req)

    def remove_project_member(
        self, project_id: str, person_id: str, *, command_id: str | None = None
    ) -> api_pb2.Project:
        req = api_pb2.ProjectMemberRequest(
            command_id=_new_id(command_id), project_id=project_id, person_id=person_id
        )
        return self._call(self._admin.RemoveProjectMember, req)

    def create_token(
        self, person_id: str, description: str = "", ttl_seconds: int = 0, *, command_id: str | None = None
    ) -> api_pb2.CreateTokenResponse:
        """The secret is in `.token`; the server shows it once (a retry whose first attempt did
        succeed gets FailedPrecondition: revoke that token and create another)."""
        req = api_pb2.CreateTokenRequest(
            command_id=_new_id(command_id),
            person_id=person_id,
            description=description,
            ttl_seconds=ttl_seconds,
        )
        return self._call(self._admin.CreateToken, req)

    def revoke_token(
        self, person_id: str, token_id: str, *, command_id: str | None = None
    ) -> api_pb2.RevokeTokenResponse:
        req = api_pb2.RevokeTokenRequest(
            command_id=_new_id(command_id), person_id=person_id, token_id=token_id
        )
        return self._call(self._admin.RevokeToken, req)

    def who_am_i(self) -> api_pb2.Person:
        return self._call(self._admin.WhoAmI, api_pb2.WhoAmIRequest())

    # ------------------------------------------------------------------ TaskService

    def import_tasks(
        self,
        project_id: str,
        tasks: Iterable[model_pb2.TaskSpec],
        batch_id: str = "",
        *,
        command_id: str | None = None,
    ) -> api_pb2.ImportTasksResponse:
        req = api_pb2.ImportTasksRequest(
            command_id=_new_id(command_id), project_id=project_id, batch_id=batch_id, tasks=list(tasks)
        )
        return self._call(self._tasks.ImportTasks, req)

    def ingest_prelabel(
        self, task_id: str, annotation: annotation_pb2.Annotation, *, command_id: str | None = None
    ) -> api_pb2.Task:
        req = api_pb2.IngestPrelabelRequest(
            command_id=_new_id(command_id), task_id=task_id, annotation=annotation
        )
        return self._call(self._tasks.IngestPrelabel, req)

    def next_task(self, project_id: str = "", *, command_id: str | None = None) -> api_pb2.NextTaskResponse:
        """Lease the next task; `response.HasField("task")` is False when nothing is available."""
        req = api_pb2.NextTaskRequest(command_id=_new_id(command_id), project_id=project_id)
        return self._call(self._tasks.NextTask, req)

    def release_task(
        self, task_id: str, lease_id: str, reason: str = "", *, command_id: str | None = None
    ) -> api_pb2.Task:
        req = api_pb2.ReleaseTaskRequest(
            command_id=_new_id(command_id), task_id=task_id, lease_id=lease_id, reason=reason
        )
        return self._call(self._tasks.ReleaseTask, req)

    def abandon_annotation(
        self, task_id: str, annotation_id: str, reason: str = "", *, command_id: str | None = None
    ) -> api_pb2.Task:
        """Give up your rejected annotation (frees its slot); refused while it is disputed."""
        req = api_pb2.AbandonAnnotationRequest(
            command_id=_new_id(command_id), task_id=task_id, annotation_id=annotation_id, reason=reason
        )
        return self._call(self._tasks.AbandonAnnotation, req)

    def submit(
        self,
        task_id: str,
        lease_id: str,
        annotation: annotation_pb2.Annotation,
        time_on_task_ms: int = 0,
        *,
        command_id: str | None = None,
    ) -> api_pb2.SubmitResponse:
        req = api_pb2.SubmitRequest(
            command_id=_new_id(command_id),
            task_id=task_id,
            lease_id=lease_id,
            annotation=annotation,
            time_on_task_ms=time_on_task_ms,
        )
        return self._call(self._tasks.Submit, req)

    def edit_annotation(
        self,
        task_id: str,
        annotation_id: str,
        expected_version: int,
        annotation: annotation_pb2.Annotation,
        *,
        command_id: str | None = None,
    ) -> api_pb2.SubmitResponse:
        req = api_pb2.EditAnnotationRequest(
            command_id=_new_id(command_id),
            task_id=task_id,
            annotation_id=annotation_id,
            expected_version=expected_version,
            annotation=annotation,
        )
        return self._call(self._tasks.EditAnnotation, req)

    def review(
        self,
        task_id: str,
        annotation_id: str,
        version: int,
        verdict: model_pb2.Verdict.ValueType,
        reason_codes: Sequence[str] = (),
        comment: str = "",
        correction: annotation_pb2.Annotation | None = None,
        *,
        stage: str = "",
        command_id: str | None = None,
    ) -> api_pb2.ReviewResponse:
        """A verdict at the stage the work waits at (`stage`, if given, must be that stage)."""
        req = api_pb2.ReviewRequest(
            command_id=_new_id(command_id),
            task_id=task_id,
            annotation_id=annotation_id,
            version=version,
            verdict=verdict,
            reason_codes=list(reason_codes),
            comment=comment,
            stage=stage,
        )
        if correction is not None:
            req.correction.CopyFrom(correction)
        return self._call(self._tasks.Review, req)

    def reopen_task(self, task_id: str, reason: str = "", *, command_id: str | None = None) -> api_pb2.Task:
        req = api_pb2.ReopenTaskRequest(command_id=_new_id(command_id), task_id=task_id, reason=reason)
        return self._call(self._tasks.ReopenTask, req)

    def get_task(self, task_id: str) -> api_pb2.Task:
        return self._call(self._tasks.GetTask, api_pb2.GetTaskRequest(task_id=task_id))

    def list_tasks(
        self,
        project_id: str,
        status: api_pb2.TaskStatus.ValueType = api_pb2.TASK_STATUS_UNSPECIFIED,
        limit: int = 0,
        page_token: str = "",
    ) -> api_pb2.ListTasksResponse:
        req = api_pb2.ListTasksRequest(
            project_id=project_id, status=status, limit=limit, page_token=page_token
        )
        return self._call(self._tasks.ListTasks, req)

    def iter_tasks(
        self,
        project_id: str,
        status: api_pb2.TaskStatus.ValueType = api_pb2.TASK_STATUS_UNSPECIFIED,
        page_size: int = 500,
    ) -> Iterator[api_pb2.Task]:
        """Every task of a project (optionally of one status), following page tokens."""
        token = ""
        while True:
            page = self.list_tasks(project_id, status, page_size, token)
            yield from page.tasks
            if not page.next_page_token or not page.tasks:
                return
            token = page.next_page_token

    def history(
        self,
        task_id: str,
        as_of_position: str = "",
        as_of_time: datetime | timestamp_pb2.Timestamp | None = None,
    ) -> api_pb2.HistoryResponse:
        req = api_pb2.HistoryRequest(task_id=task_id, as_of_position=as_of_position)
        ts = _timestamp(as_of_time)
        if ts is not None:
            req.as_of_time.CopyFrom(ts)
        return self._call(self._tasks.History, req)

    def get_metrics(self, project_id: str = "", person_id: str = "") -> api_pb2.GetMetricsResponse:
        req = api_pb2.GetMetricsRequest(project_id=project_id, person_id=person_id)
        return self._call(self._tasks.GetMetrics, req)

    # ------------------------------------------------------------------ ReviewService

    def list_review_queue(
        self, project_id: str, stage: str = "", limit: int = 0, page_token: str = ""
    ) -> api_pb2.ListReviewQueueResponse:
        req = api_pb2.ListReviewQueueRequest(
            project_id=project_id, stage=stage, limit=limit, page_token=page_token
        )
        return self._call(self._reviews.ListReviewQueue, req)

    def get_review_state(self, task_id: str) -> api_pb2.ReviewState:
        return self._call(self._reviews.GetReviewState, api_pb2.GetReviewStateRequest(task_id=task_id))

    def open_dispute(
        self, task_id: str, annotation_id: str, comment: str, *, command_id: str | None = None
    ) -> api_pb2.Dispute:
        req = api_pb2.OpenDisputeRequest(
            command_id=_new_id(command_id), task_id=task_id, annotation_id=annotation_id, comment=comment
        )
        return self._call(self._reviews.OpenDispute, req)

    def resolve_dispute(
        self,
        task_id: str,
        dispute_id: str,
        decision: model_pb2.DisputeDecision.ValueType,
        comment: str = "",
        *,
        command_id: str | None = None,
    ) -> api_pb2.Dispute:
        req = api_pb2.ResolveDisputeRequest(
            command_id=_new_id(command_id),
            task_id=task_id,
            dispute_id=dispute_id,
            decision=decision,
            comment=comment,
        )
        return self._call(self._reviews.ResolveDispute, req)

    def list_disputes(
        self,
        project_id: str,
        status: api_pb2.DisputeStatus.ValueType = api_pb2.DISPUTE_STATUS_OPEN,
        limit: int = 0,
        page_token: str = "",
    ) -> api_pb2.ListDisputesResponse:
        req = api_pb2.ListDisputesRequest(
            project_id=project_id, status=status, limit=limit, page_token=page_token
        )
        return self._call(self._reviews.ListDisputes, req)

    def list_feedback(
        self, person_id: str = "", project_id: str = "", limit: int = 0, page_token: str = ""
    ) -> api_pb2.ListFeedbackResponse:
        req = api_pb2.ListFeedbackRequest(
            person_id=person_id, project_id=project_id, limit=limit, page_token=page_token
        )
        return self._call(self._reviews.ListFeedback, req)

    def iter_feedback(
        self, person_id: str = "", project_id: str = "", page_size: int = 200
    ) -> Iterator[api_pb2.FeedbackItem]:
        """A person's whole feed, newest first, following page tokens."""
        token = ""
        while True:
            page = self.list_feedback(person_id, project_id, page_size, token)
            yield from page.items
            if not page.next_page_token:
                return
            token = page.next_page_token

    # ------------------------------------------------------------------ QualityService

    def get_accuracy(self, project_id: str, person_id: str = "") -> api_pb2.AccuracyReport:
        """Rolling gold accuracy of a person (default: the caller) in a project."""
        req = api_pb2.GetAccuracyRequest(project_id=project_id, person_id=person_id)
        return self._call(self._quality.GetAccuracy, req)

    def list_accuracy(self, project_id: str) -> api_pb2.ListAccuracyResponse:
        return self._call(self._quality.ListAccuracy, api_pb2.ListAccuracyRequest(project_id=project_id))

    def list_suspensions(self, project_id: str) -> api_pb2.ListSuspensionsResponse:
        req = api_pb2.ListSuspensionsRequest(project_id=project_id)
        return self._call(self._quality.ListSuspensions, req)

    def reinstate_person(
        self, project_id: str, person_id: str, reason: str = "", *, command_id: str | None = None
    ) -> api_pb2.AccuracyReport:
        req = api_pb2.ReinstatePersonRequest(
            command_id=_new_id(command_id), project_id=project_id, person_id=person_id, reason=reason
        )
        return self._call(self._quality.ReinstatePerson, req)

    def start_qualification(
        self, project_id: str, skill: str, *, command_id: str | None = None
    ) -> api_pb2.QualificationStatus:
        """Take a project's qualification for `skill`; NextTask then serves its items."""
        req = api_pb2.StartQualificationRequest(
            command_id=_new_id(command_id), project_id=project_id, skill=skill
        )
        return self._call(self._quality.StartQualification, req)

    def get_qualification(
        self, project_id: str, skill: str, person_id: str = ""
    ) -> api_pb2.QualificationStatus:
        req = api_pb2.GetQualificationRequest(project_id=project_id, skill=skill, person_id=person_id)
        return self._call(self._quality.GetQualification, req)

    # ------------------------------------------------------------------ LabelStreamService

    def subscribe_labels(
        self, project_id: str, resume_token: str = "", follow: bool = True
    ) -> Iterator[api_pb2.LabelEvent]:
        """Accepted labels in log order (then live when `follow`). No deadline: the stream is
        long-lived. Failures before the first message are retried; a break later raises (use
        `subscribe_labels_resilient` to resume automatically)."""
        req = api_pb2.SubscribeLabelsRequest(project_id=project_id, resume_token=resume_token, follow=follow)
        return self._stream(self._streams.SubscribeLabels, req, None)

    def export_labels(self, project_id: str, cursor: str = "") -> Iterator[api_pb2.ExportedLabel]:
        """The latest accepted label of every (task, annotation), superseded ones excluded, in
        task order. Resume an interrupted export with the `cursor` of the last label received."""
        req = api_pb2.ExportLabelsRequest(project_id=project_id, cursor=cursor)
        return self._stream(self._streams.ExportLabels, req, None)

    def subscribe_labels_resilient(
        self,
        project_id: str,
        resume_token: str = "",
        *,
        follow: bool = True,
        max_reconnects: int | None = 50,
    ) -> Iterator[api_pb2.LabelEvent]:
        """`subscribe_labels` that survives server restarts and broken connections.

        After a break it reconnects with the `resume_token` of the last label it yielded, so
        nothing is delivered twice or skipped. `max_reconnects` bounds consecutive failed
        attempts (the count resets whenever a label arrives); None retries forever. With
        `follow=True` a stream the server ends cleanly (e.g. on shutdown) is reconnected too.
        Errors that a retry cannot fix (auth, permission, not found, bad token) are raised.
        """
        token = resume_token
        failures = 0
        while True:
            req = api_pb2.SubscribeLabelsRequest(project_id=project_id, resume_token=token, follow=follow)
            call = self._streams.SubscribeLabels(req, metadata=self._metadata)
            try:
                for event in call:
                    failures = 0
                    token = event.resume_token or token
                    yield event
            except grpc.RpcError as exc:
                code = _code_of(exc)
                if code not in _STREAM_RECONNECTABLE or (
                    max_reconnects is not None and failures >= max_reconnects
                ):
                    raise translate_error(exc) from None
            else:
                if not follow:
                    return
                if max_reconnects is not None and failures >= max_reconnects:
                    raise Unavailable("the label stream keeps ending; giving up", field="project_id")
            finally:
                call.cancel()
            failures += 1
            self._sleep(self._backoff(min(failures, 7)))

    def read_events(
        self,
        from_position: str = "",
        to_position: str = "",
        to_time: datetime | timestamp_pb2.Timestamp | None = None,
        stream_id: str = "",
        limit: int = 0,
    ) -> Iterator[api_pb2.HistoryEntry]:
        """Audit feed: every event after `from_position` (exclusive) up to a position or time."""
        req = api_pb2.ReadEventsRequest(
            from_position=from_position, to_position=to_position, stream_id=stream_id, limit=limit
        )
        ts = _timestamp(to_time)
        if ts is not None:
            req.to_time.CopyFrom(ts)
        return self._stream(self._streams.ReadEvents, req, None)

    # ------------------------------------------------------------------ ManagerService

    def assign_task(
        self,
        task_id: str,
        *,
        person_id: str = "",
        team: str = "",
        reason: str = "",
        force: bool = False,
        command_id: str | None = None,
    ) -> api_pb2.Task:
        """Reserve a task for a person or a team (exactly one); `force` overrides missing skills."""
        req = manager_pb2.AssignTaskRequest(
            command_id=_new_id(command_id),
            task_id=task_id,
            person_id=person_id,
            team=team,
            reason=reason,
            force=force,
        )
        return self._call(self._manager.AssignTask, req)

    def unassign_task(self, task_id: str, reason: str = "", *, command_id: str | None = None) -> api_pb2.Task:
        req = manager_pb2.UnassignTaskRequest(command_id=_new_id(command_id), task_id=task_id, reason=reason)
        return self._call(self._manager.UnassignTask, req)

    def pause_project(
        self, project_id: str, reason: str, *, command_id: str | None = None
    ) -> api_pb2.Project:
        req = manager_pb2.PauseProjectRequest(
            command_id=_new_id(command_id), project_id=project_id, reason=reason
        )
        return self._call(self._manager.PauseProject, req)

    def resume_project(
        self, project_id: str, reason: str = "", *, command_id: str | None = None
    ) -> api_pb2.Project:
        req = manager_pb2.ResumeProjectRequest(
            command_id=_new_id(command_id), project_id=project_id, reason=reason
        )
        return self._call(self._manager.ResumeProject, req)

    def reprioritise_tasks(
        self,
        project_id: str,
        priority: int,
        task_ids: Sequence[str] = (),
        *,
        batch_id: str = "",
        priority_range: tuple[int, int] | None = None,
        reason: str = "",
        command_id: str | None = None,
    ) -> manager_pb2.ReprioritiseTasksResponse:
        """All or nothing: listed tasks (at most 10,000), every task of an import batch, or every
        open task whose priority is in `priority_range` (min, max; inclusive)."""
        req = manager_pb2.ReprioritiseTasksRequest(
            command_id=_new_id(command_id),
            project_id=project_id,
            task_ids=list(task_ids),
            batch_id=batch_id,
            priority=priority,
            reason=reason,
        )
        if priority_range is not None:
            low, high = priority_range
            req.priority_range.CopyFrom(manager_pb2.PriorityRange(min=low, max=high))
        return self._call(self._manager.ReprioritiseTasks, req)

    def list_assigned(
        self, project_id: str, *, person_id: str = "", team: str = "", limit: int = 0
    ) -> manager_pb2.ListAssignedResponse:
        req = manager_pb2.ListAssignedRequest(
            project_id=project_id, person_id=person_id, team=team, limit=limit
        )
        return self._call(self._manager.ListAssigned, req)

    # ------------------------------------------------------------------ PlanningService

    def get_coverage(
        self, project_id: str, *, start: datetime | timestamp_pb2.Timestamp | None = None, hours: int = 0
    ) -> planning_pb2.Coverage:
        """Who is on shift per UTC hour (from the hour of `start`, default now) and time zone."""
        req = planning_pb2.GetCoverageRequest(project_id=project_id, hours=hours)
        ts = _timestamp(start)
        if ts is not None:
            req.start.CopyFrom(ts)
        return self._call(self._planning.GetCoverage, req)

    def list_sla_risks(
        self, project_id: str, *, limit: int = 0, page_token: str = "", include_safe: bool = False
    ) -> planning_pb2.ListSlaRisksResponse:
        req = planning_pb2.ListSlaRisksRequest(
            project_id=project_id, limit=limit, page_token=page_token, include_safe=include_safe
        )
        return self._call(self._planning.ListSlaRisks, req)

    def get_dashboard(
        self, project_id: str, *, person_id: str = "", team: str = "", window_hours: int = 0
    ) -> planning_pb2.Dashboard:
        """A person's dashboard (default: the caller's) or, with `team`, a team's."""
        req = planning_pb2.GetDashboardRequest(project_id=project_id, window_hours=window_hours)
        if team:
            req.team = team
        else:
            req.person_id = person_id
        return self._call(self._planning.GetDashboard, req)

    def get_bottlenecks(self, project_id: str, *, window_hours: int = 0) -> planning_pb2.BottleneckReport:
        req = planning_pb2.GetBottlenecksRequest(project_id=project_id, window_hours=window_hours)
        return self._call(self._planning.GetBottlenecks, req)

    def forecast_completion(
        self, project_id: str, *, window_hours: int = 0, horizon_hours: int = 0
    ) -> planning_pb2.Forecast:
        req = planning_pb2.ForecastCompletionRequest(
            project_id=project_id, window_hours=window_hours, horizon_hours=horizon_hours
        )
        return self._call(self._planning.ForecastCompletion, req)

    # ------------------------------------------------------------------ GuidanceService

    def get_guideline(self, project_id: str, version: int = 0) -> guidance_pb2.GuidelineView:
        """A project's guideline (current, or `version`), your acknowledged version, and the
        promoted answers waiting for the next version."""
        req = guidance_pb2.GetGuidelineRequest(project_id=project_id, version=version)
        return self._call(self._guidance.GetGuideline, req)

    def acknowledge_guideline(
        self, project_id: str, version: int, *, command_id: str | None = None
    ) -> guidance_pb2.GuidelineView:
        """Record that you have read guideline `version`; NextTask serves the project's work once
        you have acknowledged its current version."""
        req = guidance_pb2.AcknowledgeGuidelineRequest(
            command_id=_new_id(command_id), project_id=project_id, version=version
        )
        return self._call(self._guidance.AcknowledgeGuideline, req)

    def acknowledge_current_guideline(self, project_id: str) -> guidance_pb2.GuidelineView:
        """Acknowledge the project's current guideline if you have not yet (a no-op otherwise)."""
        view = self.get_guideline(project_id)
        if not view.acknowledgement_required:
            return view
        return self.acknowledge_guideline(project_id, view.current_version)

    def ask_question(
        self,
        project_id: str,
        text: str,
        *,
        task_id: str = "",
        section_id: str = "",
        command_id: str | None = None,
    ) -> guidance_pb2.Question:
        req = guidance_pb2.AskQuestionRequest(
            command_id=_new_id(command_id),
            project_id=project_id,
            task_id=task_id,
            section_id=section_id,
            text=text,
        )
        return self._call(self._guidance.AskQuestion, req)

    def answer_question(
        self, project_id: str, question_id: str, text: str, *, command_id: str | None = None
    ) -> guidance_pb2.Question:
        req = guidance_pb2.AnswerQuestionRequest(
            command_id=_new_id(command_id), project_id=project_id, question_id=question_id, text=text
        )
        return self._call(self._guidance.AnswerQuestion, req)

    def promote_answer(
        self, project_id: str, answer_id: str, *, section_id: str = "", command_id: str | None = None
    ) -> guidance_pb2.Question:
        """Mark an answer to be folded into the next published guideline version."""
        req = guidance_pb2.PromoteAnswerRequest(
            command_id=_new_id(command_id), project_id=project_id, answer_id=answer_id, section_id=section_id
        )
        return self._call(self._guidance.PromoteAnswer, req)

    def list_questions(
        self,
        project_id: str,
        *,
        status: guidance_pb2.QuestionStatus.ValueType = guidance_pb2.QUESTION_STATUS_UNSPECIFIED,
        section_id: str = "",
        task_id: str = "",
        limit: int = 0,
        page_token: str = "",
    ) -> guidance_pb2.ListQuestionsResponse:
        req = guidance_pb2.ListQuestionsRequest(
            project_id=project_id,
            status=status,
            section_id=section_id,
            task_id=task_id,
            limit=limit,
            page_token=page_token,
        )
        return self._call(self._guidance.ListQuestions, req)

    def iter_questions(
        self,
        project_id: str,
        *,
        status: guidance_pb2.QuestionStatus.ValueType = guidance_pb2.QUESTION_STATUS_UNSPECIFIED,
        section_id: str = "",
        task_id: str = "",
        page_size: int = 200,
    ) -> Iterator[guidance_pb2.Question]:
        """Every matching question in ask order, following page tokens."""
        token = ""
        while True:
            page = self.list_questions(
                project_id,
                status=status,
                section_id=section_id,
                task_id=task_id,
                limit=page_size,
                page_token=token,
            )
            yield from page.questions
            if not page.next_page_token:
                return
            token = page.next_page_token

    def post_announcement(
        self, project_id: str, title: str, body: str = "", *, command_id: str | None = None
    ) -> guidance_pb2.Announcement:
        req = guidance_pb2.PostAnnouncementRequest(
            command_id=_new_id(command_id), project_id=project_id, title=title, body=body
        )
        return self._call(self._guidance.PostAnnouncement, req)

    def list_inbox(
        self, resume_token: str = "", *, project_id: str = "", limit: int = 0
    ) -> guidance_pb2.ListInboxResponse:
        """Your inbox after `resume_token` (announcements, answers to your questions, guideline
        versions to acknowledge), in log order; keep the response's token to resume."""
        req = guidance_pb2.ListInboxRequest(project_id=project_id, resume_token=resume_token, limit=limit)
        return self._call(self._guidance.ListInbox, req)

    # ------------------------------------------------------------------ ConsensusService

    @property
    def _consensus(self) -> consensus_pb2_grpc.ConsensusServiceStub:
        return consensus_pb2_grpc.ConsensusServiceStub(self._channel)

    def get_consensus(self, task_id: str) -> consensus_pb2.ConsensusReport:
        """The consensus of every round of a task (ConsensusComputed, oldest first)."""
        req = consensus_pb2.GetConsensusRequest(task_id=task_id)
        return self._call(self._consensus.GetConsensus, req)

    def get_agreement(
        self, project_id: str, *, label: str = "", person_id: str = "", other_person_id: str = ""
    ) -> consensus_pb2.AgreementReport:
        """Live agreement of a project, or one class, one annotator, one pair of annotators."""
        req = consensus_pb2.GetAgreementRequest(
            project_id=project_id, label=label, person_id=person_id, other_person_id=other_person_id
        )
        return self._call(self._consensus.GetAgreement, req)

    def estimate_dawid_skene(
        self, project_id: str, max_iterations: int = 0
    ) -> consensus_pb2.DawidSkeneReport:
        """Dawid-Skene estimates of the project's categorical labels and annotator confusions."""
        req = consensus_pb2.EstimateDawidSkeneRequest(project_id=project_id, max_iterations=max_iterations)
        return self._call(self._consensus.EstimateDawidSkene, req)
