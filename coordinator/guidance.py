"""Use cases of guidelines and communication (docs/guidelines-and-communication.md): guideline
documents and their acknowledgement, questions and answers, promotions, announcements and each
person's inbox. Behind `GuidanceService` (coordinator/api/guidance_servicer.py).

Same rules as `Service`: authorise, validate, decide (coordinator/domain/guidance.py), append;
every mutation is idempotent by `command_id` (a retry answers from the first outcome and appends
nothing); a refusal appends nothing. Events carry the domain clock as `occurred_at`, which the
inbox renders in each person's own time zone.

Roles:
- GetGuideline, ListQuestions: the project's members, admins and auditors.
- AcknowledgeGuideline: the project's members (for themselves).
- AskQuestion: annotators, reviewers and QA who are members (a task question: a task of the
  project the asker may see, i.e. for an annotator one they work on).
- AnswerQuestion: experts and managers who are members, admins.
- PromoteAnswer, PostAnnouncement: the project's managers, admins.
- ListInbox: anyone, over the projects they are a member of.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from google.protobuf import json_format
from google.protobuf.message import Message

from coordinator._pb.labelweave.api.v1 import guidance_pb2 as G
from coordinator._pb.labelweave.events.v1 import guidance_pb2 as E
from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.auth import Principal
from coordinator.commandbus import Outcome
from coordinator.domain import commands as C
from coordinator.domain.aggregates import Command
from coordinator.domain.ids import is_valid_id
from coordinator.domain.project import ProjectState
from coordinator.errors import InvalidArgument, NotFound, PermissionDenied
from coordinator.eventlog import codec
from coordinator.eventlog.base import format_checkpoint, parse_checkpoint
from coordinator.service import EVERYONE, MAX_PAGE, Service, event_of, request_fingerprint
from projections import guidance_queries, queries
from projections.base import Doc

R = model_pb2
ASK = (R.ROLE_ANNOTATOR, R.ROLE_REVIEWER, R.ROLE_QA)
ANSWER = (R.ROLE_EXPERT, R.ROLE_MANAGER, R.ROLE_ADMIN)
QUESTION_STATUS = {"open": G.QUESTION_STATUS_OPEN, "answered": G.QUESTION_STATUS_ANSWERED}
STATUS_FILTER = {G.QUESTION_STATUS_OPEN: "open", G.QUESTION_STATUS_ANSWERED: "answered"}
INBOX_KIND = {
    "announcement": G.INBOX_KIND_ANNOUNCEMENT,
    "answer": G.INBOX_KIND_ANSWER,
    "guideline": G.INBOX_KIND_GUIDELINE,
}


def local_time(at_ms: int, zone: ZoneInfo) -> str:
    """Epoch milliseconds as ISO 8601 in `zone`, with its UTC offset (DST included)."""
    return datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(zone).isoformat(timespec="seconds")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ValueError, OSError):  # validated on registration; never expected
        return ZoneInfo("UTC")


def question_view(doc: Doc, *, only_answer: str = "") -> G.Question:
    out = G.Question(
        question_id=doc["question_id"],
        project_id=doc["project_id"],
        asker_id=doc["asker_id"],
        task_id=doc["task_id"],
        section_id=doc["section_id"],
        guideline_version=doc["guideline_version"],
        text=doc["text"],
        status=QUESTION_STATUS.get(doc["status"], G.QUESTION_STATUS_UNSPECIFIED),
        position=doc["position"],
    )
    out.asked_at.FromMilliseconds(int(doc["asked_ms"]))
    for a in doc["answers"]:
        if only_answer and a["answer_id"] != only_answer:
            continue
        answer = G.Answer(
            answer_id=a["answer_id"],
            answerer_id=a["answerer_id"],
            text=a["text"],
            position=a["position"],
            promoted=a["promoted"],
            promoted_by=a["promoted_by"],
            promoted_section_id=a["promoted_section_id"],
            included_in_version=a["included_in"],
        )
        answer.at.FromMilliseconds(int(a["at_ms"]))
        out.answers.append(answer)
    return out


class Guidance:
    """The use cases; `service` supplies authentication helpers, the bus, the store and the clock."""

    def __init__(self, service: Service) -> None:
        self.s = service

    # ------------------------------------------------------------------ helpers

    def _run(self, who: Principal, cmd: Command, method: str, req: Message, command_id: str) -> Outcome:
        """Decide and append with the domain clock as `occurred_at` (prior already looked up)."""
        return self.s.bus.execute(
            cmd,
            actor=self.s.actor(who),
            command_id=command_id,
            fingerprint=request_fingerprint(method, req),
            occurred_at=self.s.clock(),
            prior_checked=True,
        )

    def _prior(self, method: str, req: Message, command_id: str) -> Outcome | None:
        return self.s.bus.prior(command_id, request_fingerprint(method, req))

    def _member(self, who: Principal, project: ProjectState) -> None:
        if who.person_id not in project.members:
            raise PermissionDenied(f"{who.person_id} is not a member of project {project.project_id}")

    def _question(self, outcome: Outcome, project_id: str, question_id: str) -> G.Question:
        """The question as the view has it once it includes `outcome` (read-your-writes)."""
        self.s.wait_for_projections(outcome)
        doc = guidance_queries.question(self.s.store, project_id, question_id)
        if doc is None:  # the projection is late (it was waited for): what the outcome says
            return G.Question(question_id=question_id, project_id=project_id, position=outcome.position)
        return question_view(doc)

    # ------------------------------------------------------------------ guidelines

    def _guideline_view(self, who: Principal, project: ProjectState, version: int = 0) -> G.GuidelineView:
        pid = project.project_id
        current = project.guideline_version
        person = self.s.fresh_person(who.person_id)
        acked = person.acknowledged.get(pid, 0)
        out = G.GuidelineView(
            project_id=pid,
            current_version=current,
            acknowledged_version=acked,
            acknowledgement_required=current > acked and who.person_id in project.members,
        )
        version = version or current
        if version > current:
            raise NotFound(f"project {pid} has guideline versions 1 to {current}", field="version")
        doc = guidance_queries.guideline(self.s.store, pid, version) if version else None
        if version and version == current and project.guideline is not None:
            out.guideline.CopyFrom(project.guideline)  # the aggregate: consistent with the log
        elif doc is not None:
            json_format.ParseDict(doc["guideline"], out.guideline, ignore_unknown_fields=True)
        elif version:
            raise NotFound(
                f"guideline version {version} of project {pid} is not available yet", field="version"
            )
        if doc is not None:
            out.included_answer_ids.extend(doc["included_answer_ids"])
        for answer_id in project.guidance.pending:
            q = guidance_queries.question_of_answer(self.s.store, pid, answer_id)
            promotion = G.PendingPromotion(answer_id=answer_id)
            if q is not None:
                answer = next((a for a in q["answers"] if a["answer_id"] == answer_id), None)
                promotion.question_id = q["question_id"]
                promotion.question = q["text"]
                if answer is not None:
                    promotion.answer = answer["text"]
                    promotion.promoted_by = answer["promoted_by"]
                    promotion.section_id = answer["promoted_section_id"]
            out.pending_promotions.append(promotion)
        return out

    def get_guideline(self, who: Principal, req: G.GetGuidelineRequest) -> G.GuidelineView:
        who.require(EVERYONE, "GetGuideline")
        project = self.s.project_state(req.project_id)
        self.s.require_member_or_admin(who, project)
        return self._guideline_view(who, project, req.version)

    def acknowledge_guideline(self, who: Principal, req: G.AcknowledgeGuidelineRequest) -> G.GuidelineView:
        who.require(EVERYONE, "AcknowledgeGuideline")
        prior = self._prior("AcknowledgeGuideline", req, req.command_id)
        if prior is None:
            project = self.s.project_state(req.project_id)
            self._member(who, project)
            prior = self._run(
                who,
                C.AcknowledgeGuideline(who.person_id, req.project_id, req.version, project.guideline_version),
                "AcknowledgeGuideline",
                req,
                req.command_id,
            )
        acked = event_of(prior, E.GuidelineAcknowledged)
        out = self._guideline_view(who, self.s.project_state(acked.project_id))
        out.position = prior.position
        return out

    # ------------------------------------------------------------------ questions and answers

    def ask_question(self, who: Principal, req: G.AskQuestionRequest) -> G.Question:
        who.require(ASK, "AskQuestion")
        prior = self._prior("AskQuestion", req, req.command_id)
        if prior is None:
            project = self.s.project_state(req.project_id)
            self._member(who, project)
            if req.task_id:
                task = self.s.task_state(req.task_id)
                if task.project_id != project.project_id:
                    raise InvalidArgument(
                        f"task {task.task_id} belongs to project {task.project_id}, not {project.project_id}",
                        field="task_id",
                    )
                self.s.may_see_task(who, task, project)
            prior = self._run(
                who,
                C.AskQuestion(
                    project.project_id, codec.uuid7(), who.person_id, req.text, req.task_id, req.section_id
                ),
                "AskQuestion",
                req,
                req.command_id,
            )
        asked = event_of(prior, E.QuestionAsked)
        return self._question(prior, asked.project_id, asked.question_id)

    def answer_question(self, who: Principal, req: G.AnswerQuestionRequest) -> G.Question:
        who.require(ANSWER, "AnswerQuestion")
        prior = self._prior("AnswerQuestion", req, req.command_id)
        if prior is None:
            project = self.s.project_state(req.project_id)
            self.s.require_member_or_admin(who, project)
            prior = self._run(
                who,
                C.AnswerQuestion(project.project_id, req.question_id, codec.uuid7(), who.person_id, req.text),
                "AnswerQuestion",
                req,
                req.command_id,
            )
        answered = event_of(prior, E.QuestionAnswered)
        return self._question(prior, answered.project_id, answered.question_id)

    def promote_answer(self, who: Principal, req: G.PromoteAnswerRequest) -> G.Question:
        prior = self._prior("PromoteAnswer", req, req.command_id)
        if prior is None:
            project = self.s.managed_project(who, req.project_id, "PromoteAnswer")
            prior = self._run(
                who,
                C.PromoteAnswer(project.project_id, req.answer_id, who.person_id, req.section_id),
                "PromoteAnswer",
                req,
                req.command_id,
            )
        promoted = event_of(prior, E.AnswerPromoted)
        return self._question(prior, promoted.project_id, promoted.question_id)

    def list_questions(self, who: Principal, req: G.ListQuestionsRequest) -> G.ListQuestionsResponse:
        who.require(EVERYONE, "ListQuestions")
        project = self.s.project_state(req.project_id)
        self.s.require_member_or_admin(who, project)
        if req.page_token and not is_valid_id(req.page_token):
            raise InvalidArgument("not a question page token", field="page_token")
        if req.status not in (G.QUESTION_STATUS_UNSPECIFIED, *STATUS_FILTER):
            raise InvalidArgument(f"unknown question status {req.status}", field="status")
        docs, token = guidance_queries.questions(
            self.s.store,
            project.project_id,
            status=STATUS_FILTER.get(req.status, ""),
            section_id=req.section_id,
            task_id=req.task_id,
            limit=min(req.limit or 50, MAX_PAGE),
            page_token=req.page_token,
        )
        return G.ListQuestionsResponse(questions=[question_view(d) for d in docs], next_page_token=token)

    # ------------------------------------------------------------------ announcements and inbox

    def post_announcement(self, who: Principal, req: G.PostAnnouncementRequest) -> G.Announcement:
        prior = self._prior("PostAnnouncement", req, req.command_id)
        if prior is None:
            project = self.s.managed_project(who, req.project_id, "PostAnnouncement")
            prior = self._run(
                who,
                C.PostAnnouncement(project.project_id, codec.uuid7(), who.person_id, req.title, req.body),
                "PostAnnouncement",
                req,
                req.command_id,
            )
        posted = event_of(prior, E.AnnouncementPosted)
        self.s.wait_for_projections(prior)
        out = G.Announcement(
            announcement_id=posted.announcement_id,
            project_id=posted.project_id,
            author_id=posted.author_id,
            title=posted.title,
            body=posted.body,
            position=prior.position,
        )
        out.at.CopyFrom(prior.events[-1].envelope.occurred_at)
        return out

    def list_inbox(self, who: Principal, req: G.ListInboxRequest) -> G.ListInboxResponse:
        """The caller's inbox in log order after `resume_token`. Guideline versions already
        acknowledged are passed over (the token still moves past them)."""
        who.require(EVERYONE, "ListInbox")
        after = parse_checkpoint(req.resume_token, field_name="resume_token")
        mine = queries.projects_of(self.s.store, who.person_id)
        if req.project_id:
            project = self.s.project_state(req.project_id)
            self._member(who, project)
            mine = [project.project_id]
        person = self.s.fresh_person(who.person_id)
        zone = _zone(person.spec.time_zone)
        page = guidance_queries.inbox(
            self.s.store, mine, who.person_id, after, min(req.limit or 50, MAX_PAGE)
        )
        current: dict[str, int] = {}
        out = G.ListInboxResponse(
            resume_token=format_checkpoint(page.checkpoint), time_zone=zone.key, more=page.more
        )
        for row in page.rows:
            pid = row["project_id"]
            item = G.InboxItem(
                kind=INBOX_KIND.get(row["kind"], G.INBOX_KIND_UNSPECIFIED),
                project_id=pid,
                position=row["position"],
                event_id=row["event_id"],
                local_time=local_time(int(row["at_ms"]), zone),
            )
            item.at.FromMilliseconds(int(row["at_ms"]))
            if row["kind"] == "guideline":
                if pid not in current:
                    try:
                        current[pid] = self.s.project_state(pid).guideline_version
                    except NotFound:
                        current[pid] = 0
                if row["version"] <= person.acknowledged.get(pid, 0):
                    continue  # acknowledged already: nothing to do
                item.guideline_version = row["version"]
                item.guideline_title = row["title"]
                item.current = row["version"] == current[pid]
            elif row["kind"] == "announcement":
                item.announcement.CopyFrom(
                    G.Announcement(
                        announcement_id=row["announcement_id"],
                        project_id=pid,
                        author_id=row["author_id"],
                        title=row["title"],
                        body=row["body"],
                        at=item.at,
                        position=row["position"],
                    )
                )
            elif row["kind"] == "answer":
                question = G.Question(
                    question_id=row["question_id"],
                    project_id=pid,
                    asker_id=who.person_id,
                    task_id=row["task_id"],
                    section_id=row["section_id"],
                    text=row["question_text"],
                    status=G.QUESTION_STATUS_ANSWERED,
                )
                question.answers.append(
                    G.Answer(
                        answer_id=row["answer_id"],
                        answerer_id=row["answerer_id"],
                        text=row["text"],
                        at=item.at,
                        position=row["position"],
                    )
                )
                item.question.CopyFrom(question)
            out.items.append(item)
        return out
