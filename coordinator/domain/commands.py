"""Commands: what a caller asks for. Ids and the current time are chosen by the caller
(the application service), so `decide` stays deterministic."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from coordinator._pb.labelweave.events.v1 import annotation_pb2, events_pb2, model_pb2
from coordinator.domain.consensus import Consensus
from coordinator.domain.gold import Scoring
from coordinator.domain.review import NO_HISTORY, AuthorRecord

# ------------------------------------------------------------------ projects


@dataclass(frozen=True)
class CreateProject:
    project_id: str
    name: str
    description: str
    settings: model_pb2.ProjectSettings


@dataclass(frozen=True)
class UpdateProjectSettings:
    project_id: str
    settings: model_pb2.ProjectSettings


@dataclass(frozen=True)
class PublishLabelSchema:
    project_id: str
    schema: model_pb2.LabelSchema  # version is assigned by decide: previous + 1


@dataclass(frozen=True)
class PublishGuideline:
    project_id: str
    guideline: model_pb2.Guideline  # version is assigned by decide: previous + 1


@dataclass(frozen=True)
class AddProjectMember:
    project_id: str
    person_id: str


@dataclass(frozen=True)
class RemoveProjectMember:
    project_id: str
    person_id: str


# Guidelines and communication (coordinator/domain/guidance.py): project stream.


@dataclass(frozen=True)
class AskQuestion:
    project_id: str
    question_id: str
    asker_id: str
    text: str
    task_id: str = ""  # checked by the service: a task of the project the asker may see
    section_id: str = ""


@dataclass(frozen=True)
class AnswerQuestion:
    project_id: str
    question_id: str
    answer_id: str
    answerer_id: str
    text: str


@dataclass(frozen=True)
class PromoteAnswer:
    project_id: str
    answer_id: str
    promoted_by: str
    section_id: str = ""


@dataclass(frozen=True)
class PostAnnouncement:
    project_id: str
    announcement_id: str
    author_id: str
    title: str
    body: str


# Manager controls (coordinator/domain/controls.py, docs/manager-controls.md): project stream.


@dataclass(frozen=True)
class PauseProject:
    project_id: str
    paused_by: str
    reason: str
    now: datetime


@dataclass(frozen=True)
class ResumeProject:
    project_id: str
    resumed_by: str
    reason: str
    now: datetime


ProjectCommand = (
    CreateProject
    | UpdateProjectSettings
    | PublishLabelSchema
    | PublishGuideline
    | AddProjectMember
    | RemoveProjectMember
    | PauseProject
    | ResumeProject
    | AskQuestion
    | AnswerQuestion
    | PromoteAnswer
    | PostAnnouncement
)

# ------------------------------------------------------------------ people


@dataclass(frozen=True)
class RegisterPerson:
    spec: model_pb2.PersonSpec


@dataclass(frozen=True)
class UpdatePerson:
    spec: model_pb2.PersonSpec


@dataclass(frozen=True)
class IssueToken:
    person_id: str
    token_id: str
    token_sha256: str
    description: str
    expires_at: datetime | None


@dataclass(frozen=True)
class RevokeToken:
    person_id: str
    token_id: str


@dataclass(frozen=True)
class RecordGoldResult:
    """Enter a scored gold (or training) submission into the person's record; decides the
    suspension rule (gold) or the qualification attempt's outcome (training)."""

    person_id: str
    result: events_pb2.GoldScored
    gold_event_id: str  # the GoldScored event; the command id is derived from it
    policy: model_pb2.QualityPolicy  # the project's, now
    now: datetime


@dataclass(frozen=True)
class StartQualification:
    person_id: str
    project_id: str
    skill: str
    qualification: model_pb2.Qualification | None  # resolved (gold.qualification_of); None: none
    task_ids: tuple[str, ...]  # the training items chosen for this attempt
    now: datetime


@dataclass(frozen=True)
class ReinstatePerson:
    person_id: str
    project_id: str
    reinstated_by: str
    reason: str


@dataclass(frozen=True)
class AcknowledgeGuideline:
    person_id: str
    project_id: str
    version: int
    current_version: int  # the project's guideline version now (the service reads the project)


PersonCommand = (
    AcknowledgeGuideline
    | RegisterPerson
    | UpdatePerson
    | IssueToken
    | RevokeToken
    | RecordGoldResult
    | StartQualification
    | ReinstatePerson
)

# ------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class ImportTask:
    project_id: str
    batch_id: str
    spec: model_pb2.TaskSpec  # overlap already resolved (>= 1)
    review_policy: model_pb2.ReviewPolicy.ValueType
    lease_seconds: int
    pipeline: model_pb2.ReviewPipeline | None = None  # resolved; None: derived from review_policy


@dataclass(frozen=True)
class ImportGoldTask:
    project_id: str
    batch_id: str
    spec: model_pb2.TaskSpec  # without `gold`
    gold: model_pb2.GoldSpec  # validated at the boundary
    lease_seconds: int


@dataclass(frozen=True)
class IngestPrelabel:
    task_id: str
    prelabel_id: str
    annotation: annotation_pb2.Annotation


@dataclass(frozen=True)
class LeaseTask:
    task_id: str
    lease_id: str
    person_id: str
    person_skills: frozenset[str]
    now: datetime
    serve_gold: bool = False  # the gold mix chose a gold task (gold tasks refuse other leases)
    attempt: int = 0  # a training item: the caller's open qualification attempt
    teams: frozenset[str] = frozenset()  # the person's teams (a task assigned to a team)


@dataclass(frozen=True)
class ReleaseLease:
    task_id: str
    lease_id: str
    person_id: str
    reason: str


@dataclass(frozen=True)
class ExpireLease:
    task_id: str
    lease_id: str
    now: datetime


@dataclass(frozen=True)
class SubmitAnnotation:
    task_id: str
    lease_id: str
    person_id: str
    annotation_id: str
    annotation: annotation_pb2.Annotation  # validated at the boundary
    label_schema_version: int
    guideline_version: int
    time_on_task_ms: int
    now: datetime
    author: AuthorRecord = NO_HISTORY  # the author's recent acceptance, for stratified sampling
    scoring: Scoring | None = None  # gold tasks: thresholds (and schema) to score with
    consensus: Consensus | None = None  # the project's consensus policy (None: no consensus)


@dataclass(frozen=True)
class EditAnnotation:
    task_id: str
    annotation_id: str
    expected_version: int
    person_id: str
    annotation: annotation_pb2.Annotation
    label_schema_version: int
    guideline_version: int
    author: AuthorRecord = NO_HISTORY


@dataclass(frozen=True)
class ReviewAnnotation:
    task_id: str
    annotation_id: str
    version: int
    reviewer_id: str
    verdict: model_pb2.Verdict.ValueType
    reason_codes: tuple[str, ...]
    comment: str
    correction: annotation_pb2.Annotation | None
    allowed_reasons: frozenset[str]
    label_schema_version: int
    guideline_version: int
    stage: str = ""  # the stage the reviewer means ("" : wherever the work waits)
    # The reviewer's roles, checked against the stage's reviewer roles. None: the caller has
    # checked them (internal callers, tests); the API always passes the principal's roles.
    reviewer_roles: frozenset[int] | None = None
    author: AuthorRecord = NO_HISTORY  # for sampling the stages after this one


@dataclass(frozen=True)
class OpenDispute:
    task_id: str
    annotation_id: str
    dispute_id: str
    person_id: str
    comment: str


@dataclass(frozen=True)
class ResolveDispute:
    task_id: str
    dispute_id: str
    expert_id: str
    decision: model_pb2.DisputeDecision.ValueType
    comment: str
    expert_roles: frozenset[int] | None = None  # as ReviewAnnotation.reviewer_roles
    author: AuthorRecord = NO_HISTORY  # for sampling the stages after an overturn


@dataclass(frozen=True)
class ReopenTask:
    task_id: str
    reason: str


@dataclass(frozen=True)
class AbandonAnnotation:
    task_id: str
    annotation_id: str
    person_id: str
    reason: str


# Manager controls (coordinator/domain/controls.py): task stream.


@dataclass(frozen=True)
class Candidate:
    """A project member who would work on an assigned task, as the service found them."""

    person_id: str
    skills: frozenset[str]
    suspended: bool = False


@dataclass(frozen=True)
class AssignTask:
    task_id: str
    person_id: str  # exactly one of person_id and team
    team: str
    assigned_by: str
    reason: str
    force: bool
    # The person (if a member of the task's project), or the project's members in the team.
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class UnassignTask:
    task_id: str
    unassigned_by: str
    reason: str


@dataclass(frozen=True)
class ReprioritiseTask:
    task_id: str
    priority: int
    reprioritised_by: str
    reason: str


TaskCommand = (
    ImportTask
    | ImportGoldTask
    | IngestPrelabel
    | LeaseTask
    | ReleaseLease
    | ExpireLease
    | SubmitAnnotation
    | EditAnnotation
    | ReviewAnnotation
    | ReopenTask
    | AbandonAnnotation
    | OpenDispute
    | ResolveDispute
    | AssignTask
    | UnassignTask
    | ReprioritiseTask
)


@dataclass(frozen=True)
class Actor:
    user_id: str
    role: model_pb2.Role.ValueType = model_pb2.ROLE_UNSPECIFIED
    roles: frozenset[int] = field(default_factory=frozenset)
