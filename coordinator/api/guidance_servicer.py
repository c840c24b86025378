"""gRPC servicer of `GuidanceService`: thin adapters to `coordinator.guidance.Guidance`.

Authentication, timing, metrics and error mapping are the shared `_Base._call` of the other
servicers; role and object checks live in the use cases.
"""

from __future__ import annotations

import grpc

from coordinator._pb.labelweave.api.v1 import guidance_pb2 as G
from coordinator._pb.labelweave.api.v1 import guidance_pb2_grpc
from coordinator.api.servicers import _Base
from coordinator.guidance import Guidance
from coordinator.service import Service


class GuidanceServicer(_Base, guidance_pb2_grpc.GuidanceServiceServicer):
    def __init__(self, service: Service) -> None:
        super().__init__(service)
        self.guidance = Guidance(service)

    def GetGuideline(self, request: G.GetGuidelineRequest, context: grpc.ServicerContext) -> G.GuidelineView:
        return self._call(
            "GetGuideline", context, lambda w: self.guidance.get_guideline(w, request), G.GuidelineView()
        )

    def AcknowledgeGuideline(
        self, request: G.AcknowledgeGuidelineRequest, context: grpc.ServicerContext
    ) -> G.GuidelineView:
        return self._call(
            "AcknowledgeGuideline",
            context,
            lambda w: self.guidance.acknowledge_guideline(w, request),
            G.GuidelineView(),
        )

    def AskQuestion(self, request: G.AskQuestionRequest, context: grpc.ServicerContext) -> G.Question:
        return self._call(
            "AskQuestion", context, lambda w: self.guidance.ask_question(w, request), G.Question()
        )

    def AnswerQuestion(self, request: G.AnswerQuestionRequest, context: grpc.ServicerContext) -> G.Question:
        return self._call(
            "AnswerQuestion", context, lambda w: self.guidance.answer_question(w, request), G.Question()
        )

    def PromoteAnswer(self, request: G.PromoteAnswerRequest, context: grpc.ServicerContext) -> G.Question:
        return self._call(
            "PromoteAnswer", context, lambda w: self.guidance.promote_answer(w, request), G.Question()
        )

    def ListQuestions(
        self, request: G.ListQuestionsRequest, context: grpc.ServicerContext
    ) -> G.ListQuestionsResponse:
        return self._call(
            "ListQuestions",
            context,
            lambda w: self.guidance.list_questions(w, request),
            G.ListQuestionsResponse(),
        )

    def PostAnnouncement(
        self, request: G.PostAnnouncementRequest, context: grpc.ServicerContext
    ) -> G.Announcement:
        return self._call(
            "PostAnnouncement",
            context,
            lambda w: self.guidance.post_announcement(w, request),
            G.Announcement(),
        )

    def ListInbox(self, request: G.ListInboxRequest, context: grpc.ServicerContext) -> G.ListInboxResponse:
        return self._call(
            "ListInbox", context, lambda w: self.guidance.list_inbox(w, request), G.ListInboxResponse()
        )


def add_guidance_servicer(server: grpc.Server, service: Service) -> list[str]:
    """Register the servicer; returns its full service name (for health and reflection)."""
    guidance_pb2_grpc.add_GuidanceServiceServicer_to_server(GuidanceServicer(service), server)
    return [s.full_name for s in G.DESCRIPTOR.services_by_name.values()]
