"""Guidelines and communication over real gRPC, on both backends: structured guidelines,
acknowledgement gating NextTask, questions and answers, promotion into the next guideline
version, announcements and the per-person inbox in local time; role checks and refusals that
name the field and append nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator import cli
from coordinator._pb.labelweave.api.v1 import api_pb2, guidance_pb2_grpc
from coordinator._pb.labelweave.api.v1 import guidance_pb2 as G
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import guidance_pb2 as GE
from coordinator._pb.labelweave.events.v1 import model_pb2 as M

from .conftest import Env, Stubs, assert_rebuild_matches, image_task, refused


@pytest.fixture
def env(both_env: Env) -> Env:
    """Every rule in this module is checked on both backends (embedded; Kafka + Cassandra)."""
    return both_env


def guideline(title: str = "Cars v1", *sections: GE.GuidelineSection) -> M.Guideline:
    return M.Guideline(
        title=title,
        body="# Boxes\nTight boxes around every car.",
        sections=list(sections)
        or [
            GE.GuidelineSection(
                section_id="boxes",
                title="Boxes",
                body="Tight around the visible part.",
                examples=["A car behind a tree: box the visible part."],
                edge_cases=["Reflections are not cars."],
            ),
            GE.GuidelineSection(section_id="occlusion", title="Occlusion", body="Over 80 %: skip it."),
        ],
    )


def box(x: float = 10) -> A.Annotation:
    return A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=x, y=10, width=30, height=20))])


@dataclass
class Crew:
    env: Env
    ann: Stubs  # annotator, Asia/Tokyo
    bob: Stubs  # annotator, America/New_York
    rev: Stubs  # reviewer
    exp: Stubs  # expert
    mgr: Stubs  # manager
    out: Stubs  # annotator, member of no project

    def stub(self) -> guidance_pb2_grpc.GuidanceServiceStub:
        return guidance_pb2_grpc.GuidanceServiceStub(self.env.channel)

    def call(self, who: Stubs, method: str, request: Any) -> Any:
        return getattr(self.stub(), method)(request, metadata=who.md)

    def head(self) -> dict[int, int]:
        return dict(self.env.server.app.log.head())

    def settle(self) -> None:
        self.env.settle()

    def publish(self, g: M.Guideline, tag: str, project_id: str = "p1") -> api_pb2.Project:
        out = self.mgr.admin.PublishGuideline(
            api_pb2.PublishGuidelineRequest(command_id=f"pg-{tag}", project_id=project_id, guideline=g),
            metadata=self.mgr.md,
        )
        self.settle()
        return out

    def imp(self, *task_ids: str, project_id: str = "p1") -> None:
        self.env.admin.tasks.ImportTasks(
            api_pb2.ImportTasksRequest(
                command_id=f"imp-{project_id}-{'-'.join(task_ids)}",
                project_id=project_id,
                tasks=[image_task(t) for t in task_ids],
            ),
            metadata=self.env.admin.md,
        )
        self.settle()

    def next(self, who: Stubs, tag: str, project_id: str = "p1") -> api_pb2.NextTaskResponse:
        out = who.tasks.NextTask(
            api_pb2.NextTaskRequest(command_id=f"n-{tag}", project_id=project_id), metadata=who.md
        )
        self.settle()
        return out

    def ack(self, who: Stubs, version: int, tag: str, project_id: str = "p1") -> G.GuidelineView:
        out = self.stub().AcknowledgeGuideline(
            G.AcknowledgeGuidelineRequest(command_id=f"ack-{tag}", project_id=project_id, version=version),
            metadata=who.md,
        )
        self.settle()
        return out

    def ask(self, who: Stubs, tag: str, text: str = "Is a van a car?", **kw: Any) -> G.Question:
        kw.setdefault("project_id", "p1")
        out = self.stub().AskQuestion(
            G.AskQuestionRequest(command_id=f"ask-{tag}", text=text, **kw), metadata=who.md
        )
        self.settle()
        return out

    def answer(
        self, who: Stubs, question_id: str, tag: str, text: str = "Yes: label vans as car."
    ) -> G.Question:
        out = self.stub().AnswerQuestion(
            G.AnswerQuestionRequest(
                command_id=f"ans-{tag}", project_id="p1", question_id=question_id, text=text
            ),
            metadata=who.md,
        )
        self.settle()
        return out

    def inbox(self, who: Stubs, token: str = "", limit: int = 0, project_id: str = "") -> G.ListInboxResponse:
        return self.stub().ListInbox(
            G.ListInboxRequest(resume_token=token, limit=limit, project_id=project_id), metadata=who.md
        )


@pytest.fixture
def crew(env: Env) -> Crew:
    ann = env.person("ann", M.ROLE_ANNOTATOR, tz="Asia/Tokyo")
    bob = env.person("bob", M.ROLE_ANNOTATOR, tz="America/New_York")
    rev = env.person("rev", M.ROLE_REVIEWER)
    exp = env.person("exp", M.ROLE_EXPERT)
    mgr = env.person("mgr", M.ROLE_MANAGER)
    out = env.person("out", M.ROLE_ANNOTATOR)
    env.project("p1", members=("ann", "bob", "rev", "exp", "mgr"))
    env.settle()
    return Crew(env, ann, bob, rev, exp, mgr, out)


# ---------------------------------------------------------------------- guidelines and gating


def test_next_task_waits_for_the_current_guideline_to_be_acknowledged(crew: Crew) -> None:
    c = crew
    c.imp("t1", "t2", "t3")
    first = c.next(c.ann, "1")  # no guideline yet: nothing to acknowledge
    assert first.task.task_id == "t1" and first.guideline_version == 0
    c.publish(guideline(), "v1")

    # named project: FAILED_PRECONDITION naming the version; nothing leased or appended
    why = refused(
        c,
        lambda: c.ann.tasks.NextTask(
            api_pb2.NextTaskRequest(command_id="n-2", project_id="p1"), metadata=c.ann.md
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "project_id",
        "guideline version 1 of project p1",
    )
    assert "AcknowledgeGuideline" in why
    # any project: the only project is gated, so it says why
    refused(
        c,
        lambda: c.ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n-3"), metadata=c.ann.md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "project_id",
        "guideline version 1",
    )

    # acknowledging: versions must exist, the caller must be a member
    def ack(v: int, who: Stubs = c.ann) -> Callable[[], G.GuidelineView]:
        return lambda: c.call(
            who,
            "AcknowledgeGuideline",
            G.AcknowledgeGuidelineRequest(command_id=f"a-{v}", project_id="p1", version=v),
        )

    refused(c, ack(0), grpc.StatusCode.INVALID_ARGUMENT, "version", "required")
    refused(c, ack(2), grpc.StatusCode.INVALID_ARGUMENT, "version", "version 2 is unknown")
    refused(c, ack(1, c.out), grpc.StatusCode.PERMISSION_DENIED, "", "not a member of project p1")
    view = c.call(c.ann, "GetGuideline", G.GetGuidelineRequest(project_id="p1"))
    assert (view.current_version, view.acknowledged_version, view.acknowledgement_required) == (1, 0, True)

    acked = c.ack(c.ann, 1, "ann-1")
    assert (acked.acknowledged_version, acked.acknowledgement_required) == (1, False)
    assert acked.position
    head = c.head()
    assert c.ack(c.ann, 1, "ann-1") == acked  # a retry: the same answer, nothing appended
    assert c.head() == head
    refused(c, ack(1), grpc.StatusCode.FAILED_PRECONDITION, "version", "already")

    leased = c.next(c.ann, "4")
    assert leased.task.task_id == "t2" and leased.guideline_version == 1
    s = c.ann.tasks.Submit(
        api_pb2.SubmitRequest(
            command_id="s-t2", task_id="t2", lease_id=leased.lease.lease_id, annotation=box()
        ),
        metadata=c.ann.md,
    )
    c.settle()

    # a new version gates again, naming it; reviewers' verdicts are not gated
    c.publish(guideline("Cars v2"), "v2")
    refused(
        c,
        lambda: c.ann.tasks.NextTask(
            api_pb2.NextTaskRequest(command_id="n-5", project_id="p1"), metadata=c.ann.md
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "project_id",
        "guideline version 2",
    )
    verdict = c.rev.tasks.Review(
        api_pb2.ReviewRequest(
            command_id="r-t2",
            task_id="t2",
            annotation_id=s.annotation_id,
            version=1,
            verdict=M.VERDICT_ACCEPT,
        ),
        metadata=c.rev.md,
    )
    assert verdict.annotation_status == api_pb2.ANNOTATION_STATUS_ACCEPTED
    # acknowledging an old version does not open the gate
    assert c.ack(c.bob, 1, "bob-1").acknowledgement_required
    refused(
        c,
        lambda: c.bob.tasks.NextTask(
            api_pb2.NextTaskRequest(command_id="n-b", project_id="p1"), metadata=c.bob.md
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "project_id",
        "version 2",
    )
    c.ack(c.ann, 2, "ann-2")
    assert c.next(c.ann, "6").task.task_id == "t3"
    assert_rebuild_matches(c.env)


def test_without_a_project_next_task_skips_gated_projects(crew: Crew) -> None:
    c = crew
    c.env.project("p2", members=("ann",))
    c.settle()
    c.imp("a1", project_id="p1")
    c.imp("b1", project_id="p2")
    c.publish(guideline(), "v1", project_id="p1")
    got = c.ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="any-1"), metadata=c.ann.md)
    assert got.task.task_id == "b1"  # p1 is gated: p2's work
    c.settle()
    refused(
        c,
        lambda: c.ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="any-2"), metadata=c.ann.md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "project_id",
        "guideline version 1 of project p1",
    )
    c.ack(c.ann, 1, "p1")
    got = c.ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="any-3"), metadata=c.ann.md)
    assert got.task.task_id == "a1"


def test_guideline_sections_are_validated_and_versions_kept(crew: Crew) -> None:
    c = crew

    def publish(g: M.Guideline) -> Callable[[], api_pb2.Project]:
        return lambda: c.mgr.admin.PublishGuideline(
            api_pb2.PublishGuidelineRequest(command_id="pg-bad", project_id="p1", guideline=g),
            metadata=c.mgr.md,
        )

    s = GE.GuidelineSection
    refused(
        c,
        publish(guideline("T", s(section_id="a", title="A"), s(section_id="a", title="B"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "guideline.sections[1].section_id",
        "duplicate section id 'a'",
    )
    refused(
        c,
        publish(guideline("T", s(section_id="no spaces", title="A"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "guideline.sections[0].section_id",
    )
    refused(
        c,
        publish(guideline("T", s(section_id="a"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "guideline.sections[0].title",
    )
    refused(c, publish(guideline("  ")), grpc.StatusCode.INVALID_ARGUMENT, "guideline.title")
    refused(
        c,
        lambda: c.ann.admin.PublishGuideline(
            api_pb2.PublishGuidelineRequest(command_id="pg-ann", project_id="p1", guideline=guideline()),
            metadata=c.ann.md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert c.publish(guideline(), "v1").guideline.sections[0].edge_cases == ["Reflections are not cars."]
    c.publish(guideline("Cars v2", s(section_id="boxes", title="Boxes, revised")), "v2")
    current = c.call(c.ann, "GetGuideline", G.GetGuidelineRequest(project_id="p1"))
    assert current.guideline.version == 2 and [x.title for x in current.guideline.sections] == [
        "Boxes, revised"
    ]
    old = c.call(c.ann, "GetGuideline", G.GetGuidelineRequest(project_id="p1", version=1))
    assert old.guideline.version == 1 and [x.section_id for x in old.guideline.sections] == [
        "boxes",
        "occlusion",
    ]
    assert old.guideline.sections[0].examples == ["A car behind a tree: box the visible part."]
    refused(
        c,
        lambda: c.call(c.ann, "GetGuideline", G.GetGuidelineRequest(project_id="p1", version=3)),
        grpc.StatusCode.NOT_FOUND,
        "version",
    )
    refused(
        c,
        lambda: c.call(c.out, "GetGuideline", G.GetGuidelineRequest(project_id="p1")),
        grpc.StatusCode.PERMISSION_DENIED,
    )


# ---------------------------------------------------------------------- questions and answers


def test_questions_answers_and_promotion_into_the_next_version(crew: Crew) -> None:
    c = crew
    c.publish(guideline(), "v1")
    c.ack(c.ann, 1, "ann")
    c.imp("t1", "t2")
    leased = c.next(c.ann, "1")
    assert leased.task.task_id == "t1"

    q1 = c.ask(c.ann, "q1", "Is a van a car?", section_id="boxes")
    assert (q1.status, q1.section_id, q1.guideline_version, q1.asker_id) == (
        G.QUESTION_STATUS_OPEN,
        "boxes",
        1,
        "ann",
    )
    q2 = c.ask(c.ann, "q2", "The car is cut by the frame: box it?", task_id="t1")
    q3 = c.ask(c.rev, "q3", "Mirrors?", section_id="occlusion")

    # bad input and role checks: the field is named, nothing is appended
    def ask(who: Stubs, **kw: Any) -> Callable[[], G.Question]:
        return lambda: c.call(
            who, "AskQuestion", G.AskQuestionRequest(command_id="ask-bad", **{"project_id": "p1", **kw})
        )

    refused(
        c, ask(c.ann, text="  ", section_id="boxes"), grpc.StatusCode.INVALID_ARGUMENT, "text", "required"
    )
    refused(
        c,
        ask(c.ann, text="?", section_id="wheels"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "section_id",
        "no section 'wheels'",
    )
    refused(c, ask(c.ann, text="?"), grpc.StatusCode.INVALID_ARGUMENT, "section_id", "task")
    refused(c, ask(c.ann, text="?", task_id="nope"), grpc.StatusCode.NOT_FOUND, "task_id")
    refused(c, ask(c.bob, text="?", task_id="t1"), grpc.StatusCode.PERMISSION_DENIED, "", "t1")
    refused(
        c, ask(c.out, text="?", section_id="boxes"), grpc.StatusCode.PERMISSION_DENIED, "", "not a member"
    )
    refused(c, ask(c.mgr, text="?", section_id="boxes"), grpc.StatusCode.PERMISSION_DENIED, "", "AskQuestion")
    refused(
        c,
        ask(c.ann, text="?", project_id="nope", section_id="boxes"),
        grpc.StatusCode.NOT_FOUND,
        "project_id",
    )

    def answer(who: Stubs, qid: str, text: str = "Yes.") -> Callable[[], G.Question]:
        return lambda: c.call(
            who,
            "AnswerQuestion",
            G.AnswerQuestionRequest(command_id="ans-bad", project_id="p1", question_id=qid, text=text),
        )

    refused(c, answer(c.exp, "missing"), grpc.StatusCode.NOT_FOUND, "question_id", "no question 'missing'")
    refused(c, answer(c.exp, q1.question_id, " "), grpc.StatusCode.INVALID_ARGUMENT, "text", "required")
    refused(c, answer(c.ann, q1.question_id), grpc.StatusCode.PERMISSION_DENIED, "", "AnswerQuestion")
    refused(c, answer(c.rev, q1.question_id), grpc.StatusCode.PERMISSION_DENIED)

    a1 = c.answer(c.exp, q1.question_id, "a1", "Yes: vans are cars here.")
    assert a1.status == G.QUESTION_STATUS_ANSWERED
    assert [(a.answerer_id, a.text) for a in a1.answers] == [("exp", "Yes: vans are cars here.")]
    a2 = c.answer(c.mgr, q2.question_id, "a2", "Box the visible part.")
    head = c.head()
    assert c.answer(c.mgr, q2.question_id, "a2", "Box the visible part.") == a2  # retry: same answer
    assert c.head() == head

    listing: Callable[..., G.ListQuestionsResponse] = lambda **kw: c.call(  # noqa: E731
        c.ann, "ListQuestions", G.ListQuestionsRequest(project_id="p1", **kw)
    )
    ids: Callable[[G.ListQuestionsResponse], list[str]] = lambda page: [  # noqa: E731
        q.question_id for q in page.questions
    ]
    assert ids(listing()) == [q1.question_id, q2.question_id, q3.question_id]
    assert ids(listing(status=G.QUESTION_STATUS_OPEN)) == [q3.question_id]
    assert ids(listing(status=G.QUESTION_STATUS_ANSWERED)) == [q1.question_id, q2.question_id]
    assert ids(listing(section_id="boxes")) == [q1.question_id]
    assert ids(listing(task_id="t1")) == [q2.question_id]
    seen, token = [], ""
    while True:
        page = listing(limit=1, page_token=token)
        seen += ids(page)
        token = page.next_page_token
        if not token:
            break
    assert seen == [q1.question_id, q2.question_id, q3.question_id]
    refused(c, lambda: listing(page_token="not a token"), grpc.StatusCode.INVALID_ARGUMENT, "page_token")
    refused(
        c,
        lambda: c.call(c.out, "ListQuestions", G.ListQuestionsRequest(project_id="p1")),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    # promotion: managers only, once; the next version folds it in and says so
    answer_id = a1.answers[0].answer_id

    def promote(who: Stubs, aid: str, **kw: Any) -> Callable[[], G.Question]:
        return lambda: c.call(
            who,
            "PromoteAnswer",
            G.PromoteAnswerRequest(command_id=f"pr-{aid}", project_id="p1", answer_id=aid, **kw),
        )

    refused(c, promote(c.exp, answer_id), grpc.StatusCode.PERMISSION_DENIED)
    refused(c, promote(c.ann, answer_id), grpc.StatusCode.PERMISSION_DENIED)
    refused(c, promote(c.mgr, "missing"), grpc.StatusCode.NOT_FOUND, "answer_id")
    refused(c, promote(c.mgr, answer_id, section_id="wheels"), grpc.StatusCode.INVALID_ARGUMENT, "section_id")
    promoted = promote(c.mgr, answer_id)()
    c.settle()
    assert promoted.answers[0].promoted and promoted.answers[0].promoted_section_id == "boxes"
    refused(
        c,
        lambda: c.call(
            c.mgr,
            "PromoteAnswer",
            G.PromoteAnswerRequest(command_id="pr-again", project_id="p1", answer_id=answer_id),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "answer_id",
        "promoted already",
    )
    pending = c.call(c.ann, "GetGuideline", G.GetGuidelineRequest(project_id="p1")).pending_promotions
    assert [(p.answer_id, p.question, p.answer, p.section_id, p.promoted_by) for p in pending] == [
        (answer_id, "Is a van a car?", "Yes: vans are cars here.", "boxes", "mgr")
    ]

    c.publish(guideline("Cars v2"), "v2")
    v2 = c.call(c.ann, "GetGuideline", G.GetGuidelineRequest(project_id="p1"))
    assert list(v2.included_answer_ids) == [answer_id] and not v2.pending_promotions
    events = [
        e for e in c.env.server.app.log.read_stream("project:p1") if e.envelope.type == "guideline_published"
    ]
    assert list(events[-1].envelope.guideline_published.included_answer_ids) == [answer_id]
    assert list(events[0].envelope.guideline_published.included_answer_ids) == []
    q = listing(section_id="boxes").questions[0]
    assert q.answers[0].included_in_version == 2
    refused(
        c,
        lambda: c.call(
            c.mgr,
            "PromoteAnswer",
            G.PromoteAnswerRequest(command_id="pr-3", project_id="p1", answer_id=answer_id),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "answer_id",
        "guideline version 2",
    )
    assert_rebuild_matches(c.env)


# ---------------------------------------------------------------------- announcements and inbox


def test_inbox_merges_announcements_answers_and_guidelines_in_local_time(crew: Crew) -> None:
    c = crew
    # the manual clock starts at 2026-01-05 09:00 UTC
    c.publish(guideline(), "v1")
    post: Callable[..., G.Announcement] = lambda who, title="Holiday schedule", tag="a1": c.call(  # noqa: E731
        who,
        "PostAnnouncement",
        G.PostAnnouncementRequest(
            command_id=f"post-{tag}", project_id="p1", title=title, body="Office closed Friday."
        ),
    )
    refused(c, lambda: post(c.ann), grpc.StatusCode.PERMISSION_DENIED)
    refused(c, lambda: post(c.exp), grpc.StatusCode.PERMISSION_DENIED)
    refused(c, lambda: post(c.mgr, title=" "), grpc.StatusCode.INVALID_ARGUMENT, "title", "required")
    announced = post(c.mgr)
    c.settle()
    assert announced.title == "Holiday schedule" and announced.author_id == "mgr" and announced.position
    q_ann = c.ask(c.ann, "qa", "Vans?", section_id="boxes")
    q_bob = c.ask(c.bob, "qb", "Trucks?", section_id="boxes")
    c.env.clock.advance(3600)  # 10:00 UTC
    c.answer(c.exp, q_ann.question_id, "a", "Vans are cars.")
    c.answer(c.exp, q_bob.question_id, "b", "Trucks are not.")

    inbox = c.inbox(c.ann)
    assert inbox.time_zone == "Asia/Tokyo" and not inbox.more
    kinds = [(i.kind, i.project_id) for i in inbox.items]
    assert kinds == [
        (G.INBOX_KIND_GUIDELINE, "p1"),
        (G.INBOX_KIND_ANNOUNCEMENT, "p1"),
        (G.INBOX_KIND_ANSWER, "p1"),  # her own question's answer only, not bob's
    ]
    guide, news, answered = inbox.items
    assert (guide.guideline_version, guide.guideline_title, guide.current) == (1, "Cars v1", True)
    assert news.announcement.title == "Holiday schedule" and news.announcement.body == "Office closed Friday."
    assert news.local_time == "2026-01-05T18:00:00+09:00"
    assert news.at.ToJsonString() == "2026-01-05T09:00:00Z"
    assert answered.question.text == "Vans?" and answered.question.answers[0].text == "Vans are cars."
    assert answered.local_time == "2026-01-05T19:00:00+09:00"
    positions = [i.position for i in inbox.items]
    assert positions == sorted(positions, key=lambda p: tuple(int(x) for x in p.split(":")))

    bobs = c.inbox(c.bob)
    assert bobs.time_zone == "America/New_York"
    assert [i.kind for i in bobs.items] == [
        G.INBOX_KIND_GUIDELINE,
        G.INBOX_KIND_ANNOUNCEMENT,
        G.INBOX_KIND_ANSWER,
    ]
    assert bobs.items[1].local_time == "2026-01-05T04:00:00-05:00"
    assert bobs.items[2].question.answers[0].text == "Trucks are not."

    # resume: nothing new, then only what is new; paging by one gives the same sequence
    again = c.inbox(c.ann, inbox.resume_token)
    assert not again.items and again.resume_token == inbox.resume_token
    later = post(c.mgr, "New batch", "a2")
    c.settle()
    fresh = c.inbox(c.ann, inbox.resume_token)
    assert [i.announcement.announcement_id for i in fresh.items] == [later.announcement_id]
    walked, token = [], ""
    while True:
        page = c.inbox(c.ann, token, limit=1)
        walked += [i.event_id for i in page.items]
        token = page.resume_token
        if not page.more:
            break
    assert walked == [i.event_id for i in inbox.items] + [fresh.items[0].event_id]

    # an acknowledged version is no longer waiting
    c.ack(c.ann, 1, "ann")
    assert [i.kind for i in c.inbox(c.ann).items] == [
        G.INBOX_KIND_ANNOUNCEMENT,
        G.INBOX_KIND_ANSWER,
        G.INBOX_KIND_ANNOUNCEMENT,
    ]
    # filters and bad input
    assert len(c.inbox(c.ann, project_id="p1").items) == 3
    refused(c, lambda: c.inbox(c.out, project_id="p1"), grpc.StatusCode.PERMISSION_DENIED)
    refused(c, lambda: c.inbox(c.ann, "garbage"), grpc.StatusCode.INVALID_ARGUMENT, "resume_token")
    assert not c.inbox(c.out).items  # a member of nothing: an empty inbox
    assert_rebuild_matches(c.env)


# ---------------------------------------------------------------------- CLI


def test_cli_guideline_question_announce_inbox(
    crew: Crew, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = crew

    def run(who: Stubs, *argv: str) -> str:
        capsys.readouterr()
        code = cli.main([*argv, "--target", c.env.target, "--token", who.token])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    def fails(who: Stubs, *argv: str) -> str:
        capsys.readouterr()
        assert cli.main([*argv, "--target", c.env.target, "--token", who.token]) == 2
        return capsys.readouterr().err

    spec = tmp_path / "guideline.json"
    spec.write_text(
        '{"title": "Cars", "body": "Box every car.", "sections": [{"sectionId": "boxes", "title": "Boxes",'
        ' "body": "Tight.", "examples": ["A van"], "edgeCases": ["Reflections"]}]}'
    )
    assert "guideline version 1 published (1 sections)" in run(c.mgr, "guideline", "publish", "p1", str(spec))
    c.settle()
    shown = run(c.ann, "guideline", "show", "p1")
    assert "# Cars (version 1 of 1, project p1)" in shown and "## Boxes  [boxes]" in shown
    assert "labelweave guideline ack p1" in shown and "- Reflections" in shown
    c.imp("t1")
    assert "version: project p1 has guideline versions 1 to 1" in fails(
        c.ann, "guideline", "ack", "p1", "--version", "7"
    )
    assert "acknowledged" in run(c.ann, "guideline", "ack", "p1")
    c.settle()

    asked = json.loads(run(c.ann, "question", "ask", "p1", "--section", "boxes", "--text", "Vans?"))
    assert asked["status"] == "open" and asked["section_id"] == "boxes"
    assert "section_id: " in fails(c.ann, "question", "ask", "p1", "--section", "nope", "--text", "?")
    c.settle()
    answered = json.loads(run(c.exp, "question", "answer", "p1", asked["question_id"], "--text", "Yes."))
    answer_id = answered["answers"][0]["answer_id"]
    c.settle()
    promoted = json.loads(run(c.mgr, "question", "promote", "p1", answer_id))
    assert promoted["answers"][0]["promoted"] is True
    c.settle()
    listed = [json.loads(line) for line in run(c.ann, "question", "list", "p1", "--answered").splitlines()]
    assert [q["question_id"] for q in listed] == [asked["question_id"]]
    assert run(c.ann, "question", "list", "p1", "--open") == ""
    assert "Vans?" in run(c.ann, "guideline", "show", "p1")  # the pending promotion

    assert "posted" in run(c.mgr, "announce", "p1", "--title", "Welcome", "--body", "Hello")
    c.settle()
    capsys.readouterr()
    assert cli.main(["inbox", "--target", c.env.target, "--token", c.ann.token]) == 0
    out, err = capsys.readouterr()
    items = [json.loads(line) for line in out.splitlines()]
    assert [i["kind"] for i in items] == ["answer", "announcement"]  # guideline v1 is acknowledged
    assert items[1]["local_time"].endswith("+09:00") and items[1]["title"] == "Welcome"
    token = err.split("--resume-token ")[1].strip()
    assert run(c.ann, "inbox", "--resume-token", token) == ""
