"""Guidelines and communication, the pure part (docs/guidelines-and-communication.md).

- Structured guidelines: `Guideline.sections` with stable, unique section ids.
- Acknowledgement (person stream): `GuidelineAcknowledged` records the version a person has read;
  `acknowledgement_needed` is NextTask's gate. The person aggregate cannot read the project, so
  the service passes the project's current version in the command and decide checks against it.
- Questions, answers, promotions and announcements (project stream): the project aggregate keeps
  only what decisions need (which questions and answers exist, who asked, what is promoted and
  not yet published); texts live in the events and the guidance view.
- Promotion: `PromoteAnswer` queues an answer; the next `PublishGuideline` folds in every queued
  answer and lists them in `GuidelinePublished.included_answer_ids`.

Project and person `decide`/`evolve` call into this module; it imports their states for typing
only, so there is no import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import events_pb2, guidance_pb2, model_pb2
from coordinator.domain.commands import (
    AcknowledgeGuideline,
    AnswerQuestion,
    AskQuestion,
    PostAnnouncement,
    PromoteAnswer,
    PublishGuideline,
)
from coordinator.domain.ids import check_id
from coordinator.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

if TYPE_CHECKING:
    from coordinator.domain.person import PersonState
    from coordinator.domain.project import ProjectState

MAX_TEXT: Final = 10_000
"""Characters in a question or an answer."""
MAX_TITLE: Final = 200
MAX_BODY: Final = 100_000
"""Characters in an announcement's body or a section's body, example or edge case."""
MAX_SECTIONS: Final = 500

GUIDANCE_PROJECT_EVENTS: Final[tuple[type[Message], ...]] = (
    guidance_pb2.QuestionAsked,
    guidance_pb2.QuestionAnswered,
    guidance_pb2.AnswerPromoted,
    guidance_pb2.AnnouncementPosted,
)
GUIDANCE_PROJECT_COMMANDS: Final = (AskQuestion, AnswerQuestion, PromoteAnswer, PostAnnouncement)


@dataclass(frozen=True)
class QuestionRef:
    asker_id: str
    task_id: str
    section_id: str
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnswerRef:
    question_id: str
    promoted: bool = False
    included_in: int = 0  # the guideline version that folded it in (0: not yet)


def _no_questions() -> Mapping[str, QuestionRef]:
    return MappingProxyType({})


def _no_answers() -> Mapping[str, AnswerRef]:
    return MappingProxyType({})


@dataclass(frozen=True)
class GuidanceState:
    """What the project aggregate needs to decide Q&A commands."""

    questions: Mapping[str, QuestionRef] = field(default_factory=_no_questions)
    answers: Mapping[str, AnswerRef] = field(default_factory=_no_answers)
    pending: tuple[str, ...] = ()  # promoted answers the next published guideline folds in


NO_GUIDANCE: Final = GuidanceState()


# ------------------------------------------------------------------ guideline documents


def _check_text(value: str, limit: int, field_: str, *, required: bool = False) -> None:
    if required and not value.strip():
        raise InvalidArgument("required", field=field_)
    if len(value) > limit:
        raise InvalidArgument(f"at most {limit} characters, got {len(value)}", field=field_)


def check_guideline(guideline: model_pb2.Guideline, field_: str = "guideline") -> None:
    """A publishable guideline: a title, and sections with valid, unique ids and titles."""
    _check_text(guideline.title, MAX_TITLE, f"{field_}.title", required=True)
    if len(guideline.sections) > MAX_SECTIONS:
        raise InvalidArgument(f"at most {MAX_SECTIONS} sections", field=f"{field_}.sections")
    seen: set[str] = set()
    for i, section in enumerate(guideline.sections):
        where = f"{field_}.sections[{i}]"
        check_id(section.section_id, f"{where}.section_id")
        if section.section_id in seen:
            raise InvalidArgument(f"duplicate section id {section.section_id!r}", field=f"{where}.section_id")
        seen.add(section.section_id)
        _check_text(section.title, MAX_TITLE, f"{where}.title", required=True)
        _check_text(section.body, MAX_BODY, f"{where}.body")
        for j, text in enumerate(section.examples):
            _check_text(text, MAX_BODY, f"{where}.examples[{j}]", required=True)
        for j, text in enumerate(section.edge_cases):
            _check_text(text, MAX_BODY, f"{where}.edge_cases[{j}]", required=True)


def section_ids(guideline: model_pb2.Guideline | None) -> tuple[str, ...]:
    return tuple(s.section_id for s in guideline.sections) if guideline is not None else ()


def publish(state: ProjectState, cmd: PublishGuideline) -> list[Message]:
    """The next guideline version; it folds in every promoted answer not yet published."""
    check_guideline(cmd.guideline)
    guideline = model_pb2.Guideline()
    guideline.CopyFrom(cmd.guideline)
    guideline.version = state.guideline_version + 1
    return [
        events_pb2.GuidelinePublished(
            project_id=state.project_id,
            guideline=guideline,
            included_answer_ids=list(state.guidance.pending),
        )
    ]


def _check_section(state: ProjectState, section_id: str) -> None:
    if not section_id:
        return
    known = section_ids(state.guideline)
    if section_id not in known:
        listed = ", ".join(known) or "none"
        raise InvalidArgument(
            f"guideline version {state.guideline_version} of project {state.project_id} has no section"
            f" {section_id!r} (sections: {listed})",
            field="section_id",
        )


# ------------------------------------------------------------------ Q&A and announcements: decide


def decide_guidance(
    state: ProjectState, cmd: AskQuestion | AnswerQuestion | PromoteAnswer | PostAnnouncement
) -> list[Message]:
    g = state.guidance
    if isinstance(cmd, AskQuestion):
        check_id(cmd.question_id, "question_id")
        if cmd.question_id in g.questions:
            raise AlreadyExists(f"question {cmd.question_id} exists already", field="question_id")
        if cmd.asker_id not in state.members:
            raise PermissionDenied(f"{cmd.asker_id} is not a member of project {state.project_id}")
        _check_text(cmd.text, MAX_TEXT, "text", required=True)
        if not cmd.task_id and not cmd.section_id:
            raise InvalidArgument(
                "ask about a task (task_id) or a guideline section (section_id)", field="section_id"
            )
        _check_section(state, cmd.section_id)
        return [
            guidance_pb2.QuestionAsked(
                project_id=state.project_id,
                question_id=cmd.question_id,
                asker_id=cmd.asker_id,
                task_id=cmd.task_id,
                section_id=cmd.section_id,
                guideline_version=state.guideline_version,
                text=cmd.text,
            )
        ]
    if isinstance(cmd, AnswerQuestion):
        if not cmd.question_id:
            raise InvalidArgument("required", field="question_id")
        question = g.questions.get(cmd.question_id)
        if question is None:
            raise NotFound(
                f"no question {cmd.question_id!r} in project {state.project_id}", field="question_id"
            )
        check_id(cmd.answer_id, "answer_id")
        if cmd.answer_id in g.answers:
            raise AlreadyExists(f"answer {cmd.answer_id} exists already", field="answer_id")
        _check_text(cmd.text, MAX_TEXT, "text", required=True)
        return [
            guidance_pb2.QuestionAnswered(
                project_id=state.project_id,
                question_id=cmd.question_id,
                answer_id=cmd.answer_id,
                answerer_id=cmd.answerer_id,
                text=cmd.text,
                asker_id=question.asker_id,
                task_id=question.task_id,
                section_id=question.section_id,
            )
        ]
    if isinstance(cmd, PromoteAnswer):
        if not cmd.answer_id:
            raise InvalidArgument("required", field="answer_id")
        answer = g.answers.get(cmd.answer_id)
        if answer is None:
            raise NotFound(f"no answer {cmd.answer_id!r} in project {state.project_id}", field="answer_id")
        if answer.included_in:
            raise FailedPrecondition(
                f"answer {cmd.answer_id} is part of guideline version {answer.included_in} already",
                field="answer_id",
            )
        if answer.promoted:
            raise FailedPrecondition(
                f"answer {cmd.answer_id} is promoted already: the next guideline version includes it",
                field="answer_id",
            )
        _check_section(state, cmd.section_id)
        question = g.questions[answer.question_id]
        return [
            guidance_pb2.AnswerPromoted(
                project_id=state.project_id,
                question_id=answer.question_id,
                answer_id=cmd.answer_id,
                promoted_by=cmd.promoted_by,
                section_id=cmd.section_id or question.section_id,
            )
        ]
    if isinstance(cmd, PostAnnouncement):
        check_id(cmd.announcement_id, "announcement_id")
        _check_text(cmd.title, MAX_TITLE, "title", required=True)
        _check_text(cmd.body, MAX_BODY, "body")
        return [
            guidance_pb2.AnnouncementPosted(
                project_id=state.project_id,
                announcement_id=cmd.announcement_id,
                author_id=cmd.author_id,
                title=cmd.title,
                body=cmd.body,
            )
        ]
    raise TypeError(f"not a guidance command: {type(cmd).__name__}")


# ------------------------------------------------------------------ project: evolve


def evolve_guidance(g: GuidanceState, event: Message) -> GuidanceState:
    """The guidance part of the project state after `event` (a guidance event or a publication)."""
    if isinstance(event, guidance_pb2.QuestionAsked):
        questions = dict(g.questions)
        questions[event.question_id] = QuestionRef(event.asker_id, event.task_id, event.section_id)
        return replace(g, questions=MappingProxyType(questions))
    if isinstance(event, guidance_pb2.QuestionAnswered):
        questions = dict(g.questions)
        asked = questions.get(event.question_id) or QuestionRef(
            event.asker_id, event.task_id, event.section_id
        )
        questions[event.question_id] = replace(asked, answers=(*asked.answers, event.answer_id))
        answers = dict(g.answers)
        answers[event.answer_id] = AnswerRef(event.question_id)
        return replace(g, questions=MappingProxyType(questions), answers=MappingProxyType(answers))
    if isinstance(event, guidance_pb2.AnswerPromoted):
        answers = dict(g.answers)
        answers[event.answer_id] = replace(
            answers.get(event.answer_id) or AnswerRef(event.question_id), promoted=True
        )
        return replace(g, answers=MappingProxyType(answers), pending=(*g.pending, event.answer_id))
    if isinstance(event, events_pb2.GuidelinePublished):
        if not event.included_answer_ids:
            return g
        answers = dict(g.answers)
        for answer_id in event.included_answer_ids:
            ref = answers.get(answer_id)
            if ref is not None:
                answers[answer_id] = replace(ref, included_in=event.guideline.version)
        included = set(event.included_answer_ids)
        pending = tuple(a for a in g.pending if a not in included)
        return replace(g, answers=MappingProxyType(answers), pending=pending)
    if isinstance(event, guidance_pb2.AnnouncementPosted):
        return g  # nothing to decide later depends on it
    raise TypeError(f"not a guidance event: {type(event).__name__}")


# ------------------------------------------------------------------ person: acknowledgement


def decide_acknowledge(state: PersonState, cmd: AcknowledgeGuideline) -> list[Message]:
    check_id(cmd.project_id, "project_id")
    if cmd.version <= 0:
        raise InvalidArgument("required: the guideline version you have read", field="version")
    if cmd.current_version <= 0:
        raise FailedPrecondition(
            f"project {cmd.project_id} has no guideline to acknowledge", field="project_id"
        )
    if cmd.version > cmd.current_version:
        raise InvalidArgument(
            f"project {cmd.project_id} has guideline versions 1 to {cmd.current_version}; version"
            f" {cmd.version} is unknown",
            field="version",
        )
    acknowledged = state.acknowledged.get(cmd.project_id, 0)
    if cmd.version <= acknowledged:
        raise FailedPrecondition(
            f"{state.person_id} has acknowledged version {acknowledged} of project {cmd.project_id}'s"
            " guideline already",
            field="version",
        )
    return [
        guidance_pb2.GuidelineAcknowledged(
            person_id=state.person_id, project_id=cmd.project_id, version=cmd.version
        )
    ]


def acknowledged(state: PersonState, event: guidance_pb2.GuidelineAcknowledged) -> PersonState:
    versions = dict(state.acknowledged)
    versions[event.project_id] = max(versions.get(event.project_id, 0), int(event.version))
    return replace(state, acknowledged=MappingProxyType(versions))


def acknowledgement_needed(person: PersonState, project: ProjectState) -> str:
    """Why NextTask may not lease the project's work to the person ("" : it may). Only a
    project with a guideline gates; the person must have acknowledged its current version."""
    current = project.guideline_version
    if current == 0 or person.acknowledged.get(project.project_id, 0) >= current:
        return ""
    pid = project.project_id
    return (
        f"{person.person_id} has not acknowledged guideline version {current} of project {pid}:"
        f" read it (GetGuideline; `labelweave guideline show {pid}`), then acknowledge version"
        f" {current} (AcknowledgeGuideline; `labelweave guideline ack {pid}`) to receive its tasks"
    )
