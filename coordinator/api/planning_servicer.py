"""gRPC servicer of `PlanningService`: a thin adapter to `coordinator.planning.Planning` through
the shared `_call` (authentication, metrics, error mapping)."""

from __future__ import annotations

import grpc

from coordinator._pb.labelweave.api.v1 import planning_pb2, planning_pb2_grpc
from coordinator.api.servicers import _Base
from coordinator.planning import Planning
from coordinator.service import Service


class PlanningServicer(_Base, planning_pb2_grpc.PlanningServiceServicer):
    def __init__(self, service: Service) -> None:
        super().__init__(service)
        self.planning = Planning(service)

    def GetCoverage(
        self, request: planning_pb2.GetCoverageRequest, context: grpc.ServicerContext
    ) -> planning_pb2.Coverage:
        return self._call(
            "GetCoverage", context, lambda w: self.planning.get_coverage(w, request), planning_pb2.Coverage()
        )

    def ListSlaRisks(
        self, request: planning_pb2.ListSlaRisksRequest, context: grpc.ServicerContext
    ) -> planning_pb2.ListSlaRisksResponse:
        return self._call(
            "ListSlaRisks",
            context,
            lambda w: self.planning.list_sla_risks(w, request),
            planning_pb2.ListSlaRisksResponse(),
        )

    def GetDashboard(
        self, request: planning_pb2.GetDashboardRequest, context: grpc.ServicerContext
    ) -> planning_pb2.Dashboard:
        return self._call(
            "GetDashboard",
            context,
            lambda w: self.planning.get_dashboard(w, request),
            planning_pb2.Dashboard(),
        )

    def GetBottlenecks(
        self, request: planning_pb2.GetBottlenecksRequest, context: grpc.ServicerContext
    ) -> planning_pb2.BottleneckReport:
        return self._call(
            "GetBottlenecks",
            context,
            lambda w: self.planning.get_bottlenecks(w, request),
            planning_pb2.BottleneckReport(),
        )

    def ForecastCompletion(
        self, request: planning_pb2.ForecastCompletionRequest, context: grpc.ServicerContext
    ) -> planning_pb2.Forecast:
        return self._call(
            "ForecastCompletion",
            context,
            lambda w: self.planning.forecast_completion(w, request),
            planning_pb2.Forecast(),
        )


def add_planning_servicer(server: grpc.Server, service: Service) -> list[str]:
    """Register `PlanningService`; returns its full service name (for health and reflection)."""
    planning_pb2_grpc.add_PlanningServiceServicer_to_server(PlanningServicer(service), server)
    return [s.full_name for s in planning_pb2.DESCRIPTOR.services_by_name.values()]
