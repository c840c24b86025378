"""The project aggregate: settings, the versioned label schema and guideline, and membership.

Schema and guideline versions are assigned here, by counting publications, so every annotation
can record exactly which rules it was made under and exports can group by them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
from coordinator.domain import controls
from coordinator.domain.commands import (
    AddProjectMember,
    CreateProject,
    PauseProject,
    ProjectCommand,
    PublishGuideline,
    PublishLabelSchema,
    RemoveProjectMember,
    ResumeProject,
    UpdateProjectSettings,
)
from coordinator.domain.consensus import check_consensus
from coordinator.domain.gold import check_quality
from coordinator.domain.guidance import (
    GUIDANCE_PROJECT_COMMANDS,
    GUIDANCE_PROJECT_EVENTS,
    NO_GUIDANCE,
    GuidanceState,
    decide_guidance,
    evolve_guidance,
)
from coordinator.domain.guidance import publish as publish_guideline
from coordinator.domain.ids import check_id
from coordinator.domain.review import check_settings, normalize_pipeline, reason_codes_of
from coordinator.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

DEFAULT_OVERLAP: Final = 1
DEFAULT_LEASE_SECONDS: Final = 1800
MAX_OVERLAP: Final = 100
MIN_LEASE_SECONDS: Final = 10
MAX_LEASE_SECONDS: Final = 7 * 24 * 3600
MAX_NAME_LENGTH: Final = 200

PROJECT_EVENTS: Final[tuple[type[Message], ...]] = (
    events_pb2.ProjectCreated,
    events_pb2.ProjectSettingsChanged,
    events_pb2.LabelSchemaPublished,
    events_pb2.GuidelinePublished,
    events_pb2.ProjectMemberAdded,
    events_pb2.ProjectMemberRemoved,
    *controls.PROJECT_CONTROL_EVENTS,
    *GUIDANCE_PROJECT_EVENTS,
)


@dataclass(frozen=True)
class ProjectState:
    project_id: str
    name: str
    description: str
    settings: model_pb2.ProjectSettings
    label_schema: model_pb2.LabelSchema | None = None
    guideline: model_pb2.Guideline | None = None
    members: frozenset[str] = frozenset()
    guidance: GuidanceState = NO_GUIDANCE  # questions, answers, promotions (domain/guidance.py)
    pause: controls.Pause | None = None  # manager controls: paused projects lease nothing

    @property
    def schema_version(self) -> int:
        return self.label_schema.version if self.label_schema is not None else 0

    @property
    def guideline_version(self) -> int:
        return self.guideline.version if self.guideline is not None else 0

    @property
    def reject_reasons(self) -> frozenset[str]:
        """Reason codes reviews may cite: the settings' list, else the label schema's (empty: any)."""
        return reason_codes_of(self.settings, self.label_schema)

    def reason_description(self, code: str) -> str:
        for reason in self.settings.reason_codes:
            if reason.code == code:
                return reason.description
        return ""


def normalize_settings(settings: model_pb2.ProjectSettings) -> model_pb2.ProjectSettings:
    """Zero values mean "default" on the wire; events store the resolved values so readers never guess."""
    out = model_pb2.ProjectSettings()
    out.CopyFrom(settings)
    if out.default_overlap == 0:
        out.default_overlap = DEFAULT_OVERLAP
    if out.lease_seconds == 0:
        out.lease_seconds = DEFAULT_LEASE_SECONDS
    if out.review_policy == model_pb2.REVIEW_POLICY_UNSPECIFIED:
        out.review_policy = model_pb2.REVIEW_POLICY_FULL
    if out.pipeline.stages:
        out.pipeline.CopyFrom(normalize_pipeline(out.pipeline))
    return out


def _checked_settings(settings: model_pb2.ProjectSettings) -> model_pb2.ProjectSettings:
    check_settings(settings)
    check_quality(settings.quality)
    check_consensus(settings.consensus)
    out = normalize_settings(settings)
    if out.default_overlap > MAX_OVERLAP:
        raise InvalidArgument(
            f"default overlap {out.default_overlap} exceeds the maximum of {MAX_OVERLAP}",
            field="settings.default_overlap",
        )
    if not MIN_LEASE_SECONDS <= out.lease_seconds <= MAX_LEASE_SECONDS:
        raise InvalidArgument(
            f"lease length must be between {MIN_LEASE_SECONDS} s and {MAX_LEASE_SECONDS} s (7 days),"
            f" got {out.lease_seconds}",
            field="settings.lease_seconds",
        )
    if out.review_policy not in model_pb2.ReviewPolicy.values():
        raise InvalidArgument(f"unknown review policy {out.review_policy}", field="settings.review_policy")
    return out


def decide_project(state: ProjectState | None, cmd: ProjectCommand) -> list[Message]:
    if isinstance(cmd, CreateProject):
        if state is not None:
            raise AlreadyExists(f"project {cmd.project_id!r} exists already", field="project_id")
        check_id(cmd.project_id, "project_id")
        if not cmd.name.strip():
            raise InvalidArgument("required", field="name")
        if len(cmd.name) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"at most {MAX_NAME_LENGTH} characters", field="name")
        return [
            events_pb2.ProjectCreated(
                project_id=cmd.project_id,
                name=cmd.name,
                description=cmd.description,
                settings=_checked_settings(cmd.settings),
            )
        ]
    if state is None:
        raise NotFound(f"no project {cmd.project_id!r}", field="project_id")
    if isinstance(cmd, UpdateProjectSettings):
        return [
            events_pb2.ProjectSettingsChanged(
                project_id=state.project_id, settings=_checked_settings(cmd.settings)
            )
        ]
    if isinstance(cmd, PublishLabelSchema):
        # Imported lazily: validation pulls in jsonschema, which the rest of the domain does not need.
        from coordinator.domain.validation import validate_label_schema

        validate_label_schema(cmd.schema, field="schema")
        schema = model_pb2.LabelSchema()
        schema.CopyFrom(cmd.schema)
        schema.version = state.schema_version + 1
        return [events_pb2.LabelSchemaPublished(project_id=state.project_id, schema=schema)]
    if isinstance(cmd, PublishGuideline):
        return publish_guideline(state, cmd)  # sections checked, promoted answers folded in
    if isinstance(cmd, GUIDANCE_PROJECT_COMMANDS):
        return decide_guidance(state, cmd)
    if isinstance(cmd, AddProjectMember):
        check_id(cmd.person_id, "person_id")
        if cmd.person_id in state.members:
            raise FailedPrecondition(f"{cmd.person_id} is already a member of project {state.project_id}")
        return [events_pb2.ProjectMemberAdded(project_id=state.project_id, person_id=cmd.person_id)]
    if isinstance(cmd, RemoveProjectMember):
        if cmd.person_id not in state.members:
            raise FailedPrecondition(f"{cmd.person_id} is not a member of project {state.project_id}")
        return [events_pb2.ProjectMemberRemoved(project_id=state.project_id, person_id=cmd.person_id)]
    if isinstance(cmd, PauseProject):
        return controls.decide_pause(state, cmd)
    if isinstance(cmd, ResumeProject):
        return controls.decide_resume(state, cmd)
    raise TypeError(f"not a project command: {type(cmd).__name__}")


def evolve_project(state: ProjectState | None, event: Message) -> ProjectState:
    if isinstance(event, events_pb2.ProjectCreated):
        if state is not None:
            raise ValueError(f"project {state.project_id} created twice")
        return ProjectState(
            project_id=event.project_id,
            name=event.name,
            description=event.description,
            settings=normalize_settings(event.settings),
        )
    if state is None:
        raise ValueError(f"{type(event).__name__} before ProjectCreated")
    if isinstance(event, events_pb2.ProjectSettingsChanged):
        return replace(state, settings=normalize_settings(event.settings))
    if isinstance(event, events_pb2.LabelSchemaPublished):
        schema = model_pb2.LabelSchema()
        schema.CopyFrom(event.schema)
        return replace(state, label_schema=schema)
    if isinstance(event, events_pb2.GuidelinePublished):
        guideline = model_pb2.Guideline()
        guideline.CopyFrom(event.guideline)
        return replace(state, guideline=guideline, guidance=evolve_guidance(state.guidance, event))
    if isinstance(event, GUIDANCE_PROJECT_EVENTS):
        return replace(state, guidance=evolve_guidance(state.guidance, event))
    if isinstance(event, events_pb2.ProjectMemberAdded):
        return replace(state, members=state.members | {event.person_id})
    if isinstance(event, events_pb2.ProjectMemberRemoved):
        return replace(state, members=state.members - {event.person_id})
    if isinstance(event, controls.PROJECT_CONTROL_EVENTS):
        return controls.evolve_project_control(state, event)
    raise TypeError(f"not a project event: {type(event).__name__}")
