"""Guidelines and communication, the pure rules (coordinator/domain/guidance.py): sections,
acknowledgement and the NextTask gate, questions, answers, promotions and announcements, and
the guidance view applied to the same events."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
from coordinator._pb.labelweave.events.v1 import guidance_pb2 as GE
from coordinator.domain import aggregates
from coordinator.domain.commands import (
    AcknowledgeGuideline,
    AddProjectMember,
    AnswerQuestion,
    AskQuestion,
    CreateProject,
    PostAnnouncement,
    PromoteAnswer,
    PublishGuideline,
    RegisterPerson,
)
from coordinator.domain.guidance import acknowledgement_needed
from coordinator.domain.person import PersonState
from coordinator.domain.project import ProjectState
from coordinator.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from coordinator.eventlog import codec
from coordinator.eventlog.base import Position, RecordedEvent
from projections import guidance_queries
from projections.base import StagedTx
from projections.memory import MemoryStore
from projections.views.guidance import GuidanceView
from tests.unit.test_domain_project_person import refused, run


def section(section_id: str, title: str = "T", **kw: object) -> GE.GuidelineSection:
    return GE.GuidelineSection(section_id=section_id, title=title, **kw)  # type: ignore[arg-type]


def guide(*sections: GE.GuidelineSection, title: str = "Cars") -> model_pb2.Guideline:
    return model_pb2.Guideline(
        title=title, sections=list(sections) or [section("boxes"), section("occlusion")]
    )


def project(*members: str, guideline: model_pb2.Guideline | None = None) -> ProjectState:
    state: aggregates.State | None = None
    _, state = run(state, CreateProject("p1", "Cars", "", model_pb2.ProjectSettings()))
    for m in members:
        _, state = run(state, AddProjectMember("p1", m))
    if guideline is not None:
        _, state = run(state, PublishGuideline("p1", guideline))
    assert isinstance(state, ProjectState)
    return state


def person(person_id: str = "ann") -> PersonState:
    spec = model_pb2.PersonSpec(person_id=person_id, roles=[model_pb2.ROLE_ANNOTATOR], time_zone="UTC")
    state = run(None, RegisterPerson(spec))[1]
    assert isinstance(state, PersonState)
    return state


# ---------------------------------------------------------------------- guideline documents


def test_sections_are_validated_and_old_guidelines_still_publish() -> None:
    p = project()
    refused(
        p,
        PublishGuideline("p1", guide(section("a"), section("a"))),
        InvalidArgument,
        "guideline.sections[1].section_id",
    )
    refused(
        p,
        PublishGuideline("p1", guide(section("bad id"))),
        InvalidArgument,
        "guideline.sections[0].section_id",
    )
    refused(
        p,
        PublishGuideline("p1", guide(section("", "T"))),
        InvalidArgument,
        "guideline.sections[0].section_id",
    )
    refused(
        p, PublishGuideline("p1", guide(section("a", " "))), InvalidArgument, "guideline.sections[0].title"
    )
    refused(
        p,
        PublishGuideline("p1", guide(section("a", examples=[""]))),
        InvalidArgument,
        "guideline.sections[0].examples[0]",
    )
    refused(p, PublishGuideline("p1", guide(title=" ")), InvalidArgument, "guideline.title")
    # a guideline without sections (as before sections existed) is still fine
    (ev,), p2 = run(p, PublishGuideline("p1", model_pb2.Guideline(title="Plain", body="text")))
    assert isinstance(ev, events_pb2.GuidelinePublished) and ev.guideline.version == 1
    assert isinstance(p2, ProjectState) and p2.guideline_version == 1 and not ev.included_answer_ids


def test_an_event_written_before_sections_decodes_and_folds() -> None:
    """Old GuidelinePublished bytes (fields 1-2 only) decode with empty sections and no promotions."""
    old = events_pb2.GuidelinePublished(
        project_id="p1", guideline=model_pb2.Guideline(version=1, title="Old")
    )
    decoded = events_pb2.GuidelinePublished.FromString(old.SerializeToString())
    assert list(decoded.guideline.sections) == [] and list(decoded.included_answer_ids) == []
    state = aggregates.evolve(project(), decoded)
    assert isinstance(state, ProjectState) and state.guideline_version == 1 and state.guidance.pending == ()


# ---------------------------------------------------------------------- acknowledgement


def test_acknowledgement_gates_until_the_current_version() -> None:
    p = project("ann", guideline=guide())
    ann = person()
    assert "guideline version 1 of project p1" in acknowledgement_needed(ann, p)
    assert acknowledgement_needed(ann, project("ann")) == ""  # no guideline: no gate
    refused(ann, AcknowledgeGuideline("ann", "p1", 0, 1), InvalidArgument, "version")
    refused(ann, AcknowledgeGuideline("ann", "p1", 2, 1), InvalidArgument, "version")
    refused(ann, AcknowledgeGuideline("ann", "p1", 1, 0), FailedPrecondition, "project_id")
    refused(ann, AcknowledgeGuideline("ann", "bad id", 1, 1), InvalidArgument, "project_id")
    (ev,), ann2 = run(ann, AcknowledgeGuideline("ann", "p1", 1, 1))
    assert ev == GE.GuidelineAcknowledged(person_id="ann", project_id="p1", version=1)
    assert aggregates.stream_of(AcknowledgeGuideline("ann", "p1", 1, 1)) == "person:ann"
    assert isinstance(ann2, PersonState) and ann2.acknowledged == {"p1": 1}
    assert acknowledgement_needed(ann2, p) == ""
    refused(ann2, AcknowledgeGuideline("ann", "p1", 1, 1), FailedPrecondition, "version")
    _, p2 = run(p, PublishGuideline("p1", guide(title="v2")))
    assert isinstance(p2, ProjectState)
    assert "version 2" in acknowledgement_needed(ann2, p2)
    _, ann3 = run(ann2, AcknowledgeGuideline("ann", "p1", 2, 2))
    assert isinstance(ann3, PersonState) and acknowledgement_needed(ann3, p2) == ""


# ---------------------------------------------------------------------- Q&A


def test_questions_answers_and_promotions() -> None:
    p: aggregates.State = project("ann", "exp", guideline=guide())
    refused(p, AskQuestion("p1", "q1", "ann", " ", section_id="boxes"), InvalidArgument, "text")
    refused(p, AskQuestion("p1", "q1", "ann", "x" * 10_001, section_id="boxes"), InvalidArgument, "text")
    refused(p, AskQuestion("p1", "q1", "ann", "?"), InvalidArgument, "section_id")
    assert "no section 'wheels'" in refused(
        p, AskQuestion("p1", "q1", "ann", "?", section_id="wheels"), InvalidArgument, "section_id"
    )
    refused(p, AskQuestion("p1", "q1", "zed", "?", section_id="boxes"), PermissionDenied)
    refused(None, AskQuestion("p1", "q1", "ann", "?", section_id="boxes"), NotFound, "project_id")
    (asked,), p = run(p, AskQuestion("p1", "q1", "ann", "Vans?", section_id="boxes"))
    assert isinstance(asked, GE.QuestionAsked) and asked.guideline_version == 1
    refused(p, AskQuestion("p1", "q1", "ann", "again", task_id="t1"), AlreadyExists, "question_id")
    _, p = run(p, AskQuestion("p1", "q2", "ann", "This one?", task_id="t1"))

    refused(p, AnswerQuestion("p1", "nope", "a1", "exp", "Yes."), NotFound, "question_id")
    refused(p, AnswerQuestion("p1", "", "a1", "exp", "Yes."), InvalidArgument, "question_id")
    refused(p, AnswerQuestion("p1", "q1", "a1", "exp", ""), InvalidArgument, "text")
    (answered,), p = run(p, AnswerQuestion("p1", "q1", "a1", "exp", "Yes."))
    assert isinstance(answered, GE.QuestionAnswered)
    assert (answered.asker_id, answered.section_id) == ("ann", "boxes")
    refused(p, AnswerQuestion("p1", "q2", "a1", "exp", "dup"), AlreadyExists, "answer_id")
    _, p = run(p, AnswerQuestion("p1", "q2", "a2", "exp", "Box it."))
    assert isinstance(p, ProjectState) and p.guidance.questions["q1"].answers == ("a1",)

    refused(p, PromoteAnswer("p1", "nope", "mgr"), NotFound, "answer_id")
    refused(p, PromoteAnswer("p1", "a1", "mgr", section_id="wheels"), InvalidArgument, "section_id")
    (promoted,), p = run(p, PromoteAnswer("p1", "a1", "mgr"))
    assert isinstance(promoted, GE.AnswerPromoted) and promoted.section_id == "boxes"
    refused(p, PromoteAnswer("p1", "a1", "mgr"), FailedPrecondition, "answer_id")
    (promoted2,), p = run(p, PromoteAnswer("p1", "a2", "mgr", section_id="occlusion"))
    assert isinstance(promoted2, GE.AnswerPromoted) and promoted2.section_id == "occlusion"
    assert isinstance(p, ProjectState) and p.guidance.pending == ("a1", "a2")

    (published,), p = run(p, PublishGuideline("p1", guide(title="v2")))
    assert isinstance(published, events_pb2.GuidelinePublished)
    assert list(published.included_answer_ids) == ["a1", "a2"] and published.guideline.version == 2
    assert isinstance(p, ProjectState) and p.guidance.pending == ()
    assert p.guidance.answers["a1"].included_in == 2
    assert "version 2" in refused(p, PromoteAnswer("p1", "a1", "mgr"), FailedPrecondition, "answer_id")
    (again,), _ = run(p, PublishGuideline("p1", guide(title="v3")))
    assert isinstance(again, events_pb2.GuidelinePublished) and not again.included_answer_ids


def test_announcements() -> None:
    p = project("ann")
    refused(p, PostAnnouncement("p1", "n1", "mgr", " ", "body"), InvalidArgument, "title")
    refused(p, PostAnnouncement("p1", "n1", "mgr", "t" * 201, ""), InvalidArgument, "title")
    refused(p, PostAnnouncement("p1", "bad id", "mgr", "Hi", ""), InvalidArgument, "announcement_id")
    (ev,), p2 = run(p, PostAnnouncement("p1", "n1", "mgr", "Hi", "Welcome"))
    assert ev == GE.AnnouncementPosted(
        project_id="p1", announcement_id="n1", author_id="mgr", title="Hi", body="Welcome"
    )
    assert p2 == p  # nothing to decide later depends on it


# ---------------------------------------------------------------------- view


def _recorded(payload: Message, offset: int, minute: int, partition: int = 0) -> RecordedEvent:
    env = codec.make_envelope(
        payload,
        stream_id="project:" + str(getattr(payload, "project_id", "")),
        actor_id="x",
        actor_role=model_pb2.ROLE_MANAGER,
        command_id=f"c{offset}",
        occurred_at=datetime(2026, 1, 5, 9, minute, tzinfo=UTC),
    )
    return RecordedEvent(Position(partition, offset), env, codec.encode(env))


def test_view_questions_and_inbox_merge_partitions_in_log_order() -> None:
    store = MemoryStore()
    view = GuidanceView()
    events = [
        _recorded(
            events_pb2.GuidelinePublished(
                project_id="p1", guideline=model_pb2.Guideline(version=1, title="Cars")
            ),
            1,
            0,
        ),
        _recorded(
            GE.QuestionAsked(
                project_id="p1", question_id="q1", asker_id="ann", section_id="boxes", text="Vans?"
            ),
            2,
            1,
        ),
        _recorded(
            GE.AnnouncementPosted(project_id="p2", announcement_id="n1", title="Hi"), 1, 2, partition=1
        ),
        _recorded(
            GE.QuestionAnswered(
                project_id="p1",
                question_id="q1",
                answer_id="a1",
                answerer_id="exp",
                text="Yes",
                asker_id="ann",
            ),
            3,
            3,
        ),
        _recorded(
            GE.AnswerPromoted(project_id="p1", question_id="q1", answer_id="a1", promoted_by="mgr"), 4, 4
        ),
        _recorded(
            events_pb2.GuidelinePublished(
                project_id="p1",
                guideline=model_pb2.Guideline(version=2, title="v2"),
                included_answer_ids=["a1"],
            ),
            5,
            5,
        ),
    ]
    for ev in events:
        tx = StagedTx(store)
        view.apply(ev, tx)
        store.commit("test", tx.changes(), {ev.position.partition: ev.position.offset})
    q = guidance_queries.question(store, "p1", "q1")
    assert q is not None and q["status"] == "answered"
    assert q["answers"][0]["promoted"] and q["answers"][0]["included_in"] == 2
    assert guidance_queries.question_of_answer(store, "p1", "a1") == q
    assert guidance_queries.guideline(store, "p1", 2)["included_answer_ids"] == ["a1"]  # type: ignore[index]
    docs, token = guidance_queries.questions(store, "p1", status="open")
    assert docs == [] and token == ""

    page = guidance_queries.inbox(store, ["p1", "p2"], "ann", {}, 10)
    assert [(d["kind"], d["position"]) for d in page.rows] == [
        ("guideline", "0:1"),
        ("announcement", "1:1"),  # partition 1's row happened between them
        ("answer", "0:3"),
        ("guideline", "0:5"),
    ]
    assert page.checkpoint == {0: 5, 1: 1} and not page.more
    assert [d["kind"] for d in guidance_queries.inbox(store, ["p1", "p2"], "bob", {}, 10).rows] == [
        "guideline",
        "announcement",
        "guideline",
    ]
    first = guidance_queries.inbox(store, ["p1", "p2"], "ann", {}, 2)
    assert first.more and first.checkpoint == {0: 1, 1: 1}
    rest = guidance_queries.inbox(store, ["p1", "p2"], "ann", first.checkpoint, 10)
    assert [d["position"] for d in rest.rows] == ["0:3", "0:5"] and not rest.more
