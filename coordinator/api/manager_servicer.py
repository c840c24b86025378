"""gRPC adapter of ManagerService (docs/manager-controls.md): every method goes through the shared
`_call` (authentication, metrics, error mapping); the use cases live in `coordinator.manager`."""

from __future__ import annotations

import grpc

from coordinator import manager
from coordinator._pb.labelweave.api.v1 import api_pb2, manager_pb2, manager_pb2_grpc
from coordinator.api.servicers import _Base
from coordinator.service import Service


class ManagerServicer(_Base, manager_pb2_grpc.ManagerServiceServicer):
    def AssignTask(
        self, request: manager_pb2.AssignTaskRequest, context: grpc.ServicerContext
    ) -> api_pb2.Task:
        return self._call(
            "AssignTask", context, lambda w: manager.assign_task(self.service, w, request), api_pb2.Task()
        )

    def UnassignTask(
        self, request: manager_pb2.UnassignTaskRequest, context: grpc.ServicerContext
    ) -> api_pb2.Task:
        return self._call(
            "UnassignTask", context, lambda w: manager.unassign_task(self.service, w, request), api_pb2.Task()
        )

    def PauseProject(
        self, request: manager_pb2.PauseProjectRequest, context: grpc.ServicerContext
    ) -> api_pb2.Project:
        return self._call(
            "PauseProject",
            context,
            lambda w: manager.pause_project(self.service, w, request),
            api_pb2.Project(),
        )

    def ResumeProject(
        self, request: manager_pb2.ResumeProjectRequest, context: grpc.ServicerContext
    ) -> api_pb2.Project:
        return self._call(
            "ResumeProject",
            context,
            lambda w: manager.resume_project(self.service, w, request),
            api_pb2.Project(),
        )

    def ReprioritiseTasks(
        self, request: manager_pb2.ReprioritiseTasksRequest, context: grpc.ServicerContext
    ) -> manager_pb2.ReprioritiseTasksResponse:
        return self._call(
            "ReprioritiseTasks",
            context,
            lambda w: manager.reprioritise_tasks(self.service, w, request),
            manager_pb2.ReprioritiseTasksResponse(),
        )

    def ListAssigned(
        self, request: manager_pb2.ListAssignedRequest, context: grpc.ServicerContext
    ) -> manager_pb2.ListAssignedResponse:
        return self._call(
            "ListAssigned",
            context,
            lambda w: manager.list_assigned(self.service, w, request),
            manager_pb2.ListAssignedResponse(),
        )


def add_manager_servicer(server: grpc.Server, service: Service) -> list[str]:
    """Register ManagerService; returns its full name (for health and reflection)."""
    manager_pb2_grpc.add_ManagerServiceServicer_to_server(ManagerServicer(service), server)
    return [s.full_name for s in manager_pb2.DESCRIPTOR.services_by_name.values()]
