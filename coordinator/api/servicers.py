"""gRPC servicers: thin adapters from the generated stubs to `Service`.

Every method goes through `_call`, which authenticates the bearer token, times the call,
counts it by method and status code, and maps errors to status codes (the offending field
goes in the message and in the `labelweave-field` trailing metadata). Role and object checks
live in `Service`, next to the use case they protect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from coordinator._pb.labelweave.api.v1 import api_pb2, api_pb2_grpc
from coordinator.api.errors import FIELD_METADATA_KEY, status_of
from coordinator.auth import Principal
from coordinator.errors import LabelweaveError
from coordinator.service import Service

log = logging.getLogger(__name__)
T = TypeVar("T")


def _token(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


class _Base:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = service.metrics

    def _fail(self, context: grpc.ServicerContext, method: str, exc: LabelweaveError) -> grpc.StatusCode:
        code = status_of(exc)
        if exc.field:
            context.set_trailing_metadata(((FIELD_METADATA_KEY, exc.field),))
        context.set_code(code)
        context.set_details(str(exc))
        return code

    def _call(self, method: str, context: grpc.ServicerContext, fn: Callable[[Principal], T], empty: T) -> T:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            who = self.service.authenticate(_token(context))
            return fn(who)
        except LabelweaveError as exc:
            code = self._fail(context, method, exc)
            return empty
        except Exception:
            log.exception("%s failed", method)
            code = grpc.StatusCode.INTERNAL
            context.set_code(code)
            context.set_details("internal error; see server log")
            return empty
        finally:
            self.metrics.rpc_total.labels(method, code.name).inc()
            self.metrics.rpc_latency.labels(method).observe(time.perf_counter() - started)

    def _stream(
        self, method: str, context: grpc.ServicerContext, fn: Callable[[Principal], Iterator[T]]
    ) -> Iterator[T]:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            who = self.service.authenticate(_token(context))
            yield from fn(who)
        except LabelweaveError as exc:
            code = self._fail(context, method, exc)
        except Exception:
            log.exception("%s failed", method)
            code = grpc.StatusCode.INTERNAL
            context.set_code(code)
            context.set_details("internal error; see server log")
        finally:
            self.metrics.rpc_total.labels(method, code.name).inc()
            self.metrics.rpc_latency.labels(method).observe(time.perf_counter() - started)


class AdminServicer(_Base, api_pb2_grpc.AdminServiceServicer):
    def CreateProject(
        self, request: api_pb2.CreateProjectRequest, context: grpc.ServicerContext
    ) -> api_pb2.Project:
        return self._call(
            "CreateProject", context, lambda w: self.service.create_project(w, request), api_pb2.Project()
        )

    def GetProject(
        self, request: api_pb2.GetProjectRequest, context: grpc.ServicerContext
    ) -> api_pb2.Project:
        return self._call(
            "GetProject", context, lambda w: self.service.get_project(w, request), api_pb2.Project()
        )

    def ListProjects(
        self, request: api_pb2.ListProjectsRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListProjectsResponse:
        return self._call(
            "ListProjects",
            context,
            lambda w: self.service.list_projects(w, request),
            api_pb2.ListProjectsResponse(),
        )

    def UpdateProjectSettings(
        self, request: api_pb2.UpdateProjectSettingsRequest, context: grpc.ServicerContext
    ) -> api_pb2.Project:
        return self._call(
            "UpdateProjectSettings",
            context,
            lambda w: self.service.update_project_settings(w, request),
            api_pb2.Project(),
        )

    def PublishLabelSchema(
        self, request: api_pb2.PublishLabelSchemaRequest, context: grpc.ServicerContext
    ) -> api_pb2.Project:
        return self._call(
            "PublishLabelSchema",
            context,
            lambda w: self.service.publish_label_schema(w, request),
            api_pb2.Project(),
        )

    def PublishGuideline(
        self, request: api_pb2.PublishGuidelineRequest, context: grpc.ServicerContext
    ) -> api_pb2.Project:
        return self._call(
            "PublishGuideline",
            context,
            lambda w: self.service.publish_guideline(w, request),
            api_pb2.Project(),
        )

    def RegisterPerson(
        self, request: api_pb2.RegisterPersonRequest, context: grpc.ServicerContext
    ) -> api_pb2.Person:
        return self._call(
            "RegisterPerson", context, lambda w: self.service.register_person(w, request), api_pb2.Person()
        )

    def UpdatePerson(
        self, request: api_pb2.UpdatePersonRequest, context: grpc.ServicerContext
    ) -> api_pb2.Person:
        return self._call(
            "UpdatePerson", context, lambda w: self.service.update_person(w, request), api_pb2.Person()
        )

    def GetPerson(self, request: api_pb2.GetPersonRequest, context: grpc.ServicerContext) -> api_pb2.Person:
        return self._call(
            "GetPerson", context, lambda w: self.service.get_person(w, request), api_pb2.Person()
        )

    def AddProjectMember(
        self, request: api_pb2.ProjectMemberRequest, context: grpc.ServicerContext
    ) -> api_pb2.Project:
        return self._call(
            "AddProjectMember",
            context,
            lambda w: self.service.add_project_member(w, request),
            api_pb2.Project(),
        )

    def RemoveProjectMember(
        self, request: api_pb2.ProjectMemberRequest, context: grpc.ServicerContext
    ) -> api_pb2.Project:
        return self._call(
            "RemoveProjectMember",
            context,
            lambda w: self.service.remove_project_member(w, request),
            api_pb2.Project(),
        )

    def CreateToken(
        self, request: api_pb2.CreateTokenRequest, context: grpc.ServicerContext
    ) -> api_pb2.CreateTokenResponse:
        return self._call(
            "CreateToken",
            context,
            lambda w: self.service.create_token(w, request),
            api_pb2.CreateTokenResponse(),
        )

    def RevokeToken(
        self, request: api_pb2.RevokeTokenRequest, context: grpc.ServicerContext
    ) -> api_pb2.RevokeTokenResponse:
        return self._call(
            "RevokeToken",
            context,
            lambda w: self.service.revoke_token(w, request),
            api_pb2.RevokeTokenResponse(),
        )

    def WhoAmI(self, request: api_pb2.WhoAmIRequest, context: grpc.ServicerContext) -> api_pb2.Person:
        return self._call("WhoAmI", context, self.service.who_am_i, api_pb2.Person())


class TaskServicer(_Base, api_pb2_grpc.TaskServiceServicer):
    def ImportTasks(
        self, request: api_pb2.ImportTasksRequest, context: grpc.ServicerContext
    ) -> api_pb2.ImportTasksResponse:
        return self._call(
            "ImportTasks",
            context,
            lambda w: self.service.import_tasks(w, request),
            api_pb2.ImportTasksResponse(),
        )

    def IngestPrelabel(
        self, request: api_pb2.IngestPrelabelRequest, context: grpc.ServicerContext
    ) -> api_pb2.Task:
        return self._call(
            "IngestPrelabel", context, lambda w: self.service.ingest_prelabel(w, request), api_pb2.Task()
        )

    def NextTask(
        self, request: api_pb2.NextTaskRequest, context: grpc.ServicerContext
    ) -> api_pb2.NextTaskResponse:
        return self._call(
            "NextTask", context, lambda w: self.service.next_task(w, request), api_pb2.NextTaskResponse()
        )

    def ReleaseTask(self, request: api_pb2.ReleaseTaskRequest, context: grpc.ServicerContext) -> api_pb2.Task:
        return self._call(
            "ReleaseTask", context, lambda w: self.service.release_task(w, request), api_pb2.Task()
        )

    def AbandonAnnotation(
        self, request: api_pb2.AbandonAnnotationRequest, context: grpc.ServicerContext
    ) -> api_pb2.Task:
        return self._call(
            "AbandonAnnotation",
            context,
            lambda w: self.service.abandon_annotation(w, request),
            api_pb2.Task(),
        )

    def Submit(self, request: api_pb2.SubmitRequest, context: grpc.ServicerContext) -> api_pb2.SubmitResponse:
        return self._call(
            "Submit", context, lambda w: self.service.submit(w, request), api_pb2.SubmitResponse()
        )

    def EditAnnotation(
        self, request: api_pb2.EditAnnotationRequest, context: grpc.ServicerContext
    ) -> api_pb2.SubmitResponse:
        return self._call(
            "EditAnnotation",
            context,
            lambda w: self.service.edit_annotation(w, request),
            api_pb2.SubmitResponse(),
        )

    def Review(self, request: api_pb2.ReviewRequest, context: grpc.ServicerContext) -> api_pb2.ReviewResponse:
        return self._call(
            "Review", context, lambda w: self.service.review(w, request), api_pb2.ReviewResponse()
        )

    def ReopenTask(self, request: api_pb2.ReopenTaskRequest, context: grpc.ServicerContext) -> api_pb2.Task:
        return self._call(
            "ReopenTask", context, lambda w: self.service.reopen_task(w, request), api_pb2.Task()
        )

    def GetTask(self, request: api_pb2.GetTaskRequest, context: grpc.ServicerContext) -> api_pb2.Task:
        return self._call("GetTask", context, lambda w: self.service.get_task(w, request), api_pb2.Task())

    def ListTasks(
        self, request: api_pb2.ListTasksRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListTasksResponse:
        return self._call(
            "ListTasks", context, lambda w: self.service.list_tasks(w, request), api_pb2.ListTasksResponse()
        )

    def History(
        self, request: api_pb2.HistoryRequest, context: grpc.ServicerContext
    ) -> api_pb2.HistoryResponse:
        return self._call(
            "History", context, lambda w: self.service.history(w, request), api_pb2.HistoryResponse()
        )

    def GetMetrics(
        self, request: api_pb2.GetMetricsRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetMetricsResponse:
        return self._call(
            "GetMetrics",
            context,
            lambda w: self.service.get_metrics(w, request),
            api_pb2.GetMetricsResponse(),
        )


class ReviewServicer(_Base, api_pb2_grpc.ReviewServiceServicer):
    def ListReviewQueue(
        self, request: api_pb2.ListReviewQueueRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListReviewQueueResponse:
        return self._call(
            "ListReviewQueue",
            context,
            lambda w: self.service.list_review_queue(w, request),
            api_pb2.ListReviewQueueResponse(),
        )

    def GetReviewState(
        self, request: api_pb2.GetReviewStateRequest, context: grpc.ServicerContext
    ) -> api_pb2.ReviewState:
        return self._call(
            "GetReviewState",
            context,
            lambda w: self.service.get_review_state(w, request),
            api_pb2.ReviewState(),
        )

    def OpenDispute(
        self, request: api_pb2.OpenDisputeRequest, context: grpc.ServicerContext
    ) -> api_pb2.Dispute:
        return self._call(
            "OpenDispute", context, lambda w: self.service.open_dispute(w, request), api_pb2.Dispute()
        )

    def ResolveDispute(
        self, request: api_pb2.ResolveDisputeRequest, context: grpc.ServicerContext
    ) -> api_pb2.Dispute:
        return self._call(
            "ResolveDispute", context, lambda w: self.service.resolve_dispute(w, request), api_pb2.Dispute()
        )

    def ListDisputes(
        self, request: api_pb2.ListDisputesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListDisputesResponse:
        return self._call(
            "ListDisputes",
            context,
            lambda w: self.service.list_disputes(w, request),
            api_pb2.ListDisputesResponse(),
        )

    def ListFeedback(
        self, request: api_pb2.ListFeedbackRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListFeedbackResponse:
        return self._call(
            "ListFeedback",
            context,
            lambda w: self.service.list_feedback(w, request),
            api_pb2.ListFeedbackResponse(),
        )


class QualityServicer(_Base, api_pb2_grpc.QualityServiceServicer):
    def GetAccuracy(
        self, request: api_pb2.GetAccuracyRequest, context: grpc.ServicerContext
    ) -> api_pb2.AccuracyReport:
        return self._call(
            "GetAccuracy", context, lambda w: self.service.get_accuracy(w, request), api_pb2.AccuracyReport()
        )

    def ListAccuracy(
        self, request: api_pb2.ListAccuracyRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListAccuracyResponse:
        return self._call(
            "ListAccuracy",
            context,
            lambda w: self.service.list_accuracy(w, request),
            api_pb2.ListAccuracyResponse(),
        )

    def ListSuspensions(
        self, request: api_pb2.ListSuspensionsRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListSuspensionsResponse:
        return self._call(
            "ListSuspensions",
            context,
            lambda w: self.service.list_suspensions(w, request),
            api_pb2.ListSuspensionsResponse(),
        )

    def ReinstatePerson(
        self, request: api_pb2.ReinstatePersonRequest, context: grpc.ServicerContext
    ) -> api_pb2.AccuracyReport:
        return self._call(
            "ReinstatePerson",
            context,
            lambda w: self.service.reinstate_person(w, request),
            api_pb2.AccuracyReport(),
        )

    def StartQualification(
        self, request: api_pb2.StartQualificationRequest, context: grpc.ServicerContext
    ) -> api_pb2.QualificationStatus:
        return self._call(
            "StartQualification",
            context,
            lambda w: self.service.start_qualification(w, request),
            api_pb2.QualificationStatus(),
        )

    def GetQualification(
        self, request: api_pb2.GetQualificationRequest, context: grpc.ServicerContext
    ) -> api_pb2.QualificationStatus:
        return self._call(
            "GetQualification",
            context,
            lambda w: self.service.get_qualification(w, request),
            api_pb2.QualificationStatus(),
        )


class LabelStreamServicer(_Base, api_pb2_grpc.LabelStreamServiceServicer):
    def SubscribeLabels(
        self, request: api_pb2.SubscribeLabelsRequest, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.LabelEvent]:
        return self._stream(
            "SubscribeLabels", context, lambda w: self.service.subscribe_labels(w, request, context.is_active)
        )

    def ReadEvents(
        self, request: api_pb2.ReadEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.HistoryEntry]:
        return self._stream(
            "ReadEvents", context, lambda w: self.service.read_events(w, request, context.is_active)
        )

    def ExportLabels(
        self, request: api_pb2.ExportLabelsRequest, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ExportedLabel]:
        return self._stream(
            "ExportLabels", context, lambda w: self.service.export_labels(w, request, context.is_active)
        )


def add_servicers(server: grpc.Server, service: Service) -> list[str]:
    """Register every servicer; returns the full service names (for health and reflection)."""
    api_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(service), server)
    api_pb2_grpc.add_TaskServiceServicer_to_server(TaskServicer(service), server)
    api_pb2_grpc.add_LabelStreamServiceServicer_to_server(LabelStreamServicer(service), server)
    api_pb2_grpc.add_ReviewServiceServicer_to_server(ReviewServicer(service), server)
    api_pb2_grpc.add_QualityServiceServicer_to_server(QualityServicer(service), server)
    from coordinator.api.consensus_servicer import add_consensus_servicer  # it imports this module
    from coordinator.api.planning_servicer import add_planning_servicer  # it imports this module

    planning = add_planning_servicer(server, service)
    consensus = add_consensus_servicer(server, service)
    return [s.full_name for s in api_pb2.DESCRIPTOR.services_by_name.values()] + planning + consensus
