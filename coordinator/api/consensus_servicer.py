"""gRPC servicer of the ConsensusService: a thin adapter to `coordinator.consensus` (role and
object checks live there, next to the use cases)."""

from __future__ import annotations

import grpc

from coordinator._pb.labelweave.api.v1 import consensus_pb2, consensus_pb2_grpc
from coordinator.api.servicers import _Base
from coordinator.consensus import ConsensusUseCases
from coordinator.service import Service


class ConsensusServicer(_Base, consensus_pb2_grpc.ConsensusServiceServicer):
    def __init__(self, service: Service) -> None:
        super().__init__(service)
        self.cases = ConsensusUseCases(service)

    def GetConsensus(
        self, request: consensus_pb2.GetConsensusRequest, context: grpc.ServicerContext
    ) -> consensus_pb2.ConsensusReport:
        return self._call(
            "GetConsensus",
            context,
            lambda w: self.cases.get_consensus(w, request),
            consensus_pb2.ConsensusReport(),
        )

    def GetAgreement(
        self, request: consensus_pb2.GetAgreementRequest, context: grpc.ServicerContext
    ) -> consensus_pb2.AgreementReport:
        return self._call(
            "GetAgreement",
            context,
            lambda w: self.cases.get_agreement(w, request),
            consensus_pb2.AgreementReport(),
        )

    def EstimateDawidSkene(
        self, request: consensus_pb2.EstimateDawidSkeneRequest, context: grpc.ServicerContext
    ) -> consensus_pb2.DawidSkeneReport:
        return self._call(
            "EstimateDawidSkene",
            context,
            lambda w: self.cases.estimate_dawid_skene(w, request),
            consensus_pb2.DawidSkeneReport(),
        )


def add_consensus_servicer(server: grpc.Server, service: Service) -> list[str]:
    """Register the ConsensusService; returns its full name (for health and reflection)."""
    consensus_pb2_grpc.add_ConsensusServiceServicer_to_server(ConsensusServicer(service), server)
    return [s.full_name for s in consensus_pb2.DESCRIPTOR.services_by_name.values()]
