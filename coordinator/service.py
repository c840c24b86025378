"""Use cases behind the gRPC API: authorise, validate, decide, append, answer.

Each mutation is idempotent by `command_id`: the first thing it does is look for a prior
outcome of that id and, if there is one, rebuild the answer from those events, so a client
retrying after a lost response gets the very same answer and nothing new is appended.
Reads of one aggregate (project, person, task) come from the command bus and are therefore
consistent with the log; lists and queues come from projections (eventually consistent).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from coordinator import manager
from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import annotation_pb2, events_pb2, model_pb2
from coordinator.auth import SYSTEM, Principal, TtlCache, expired, hash_token, new_token
from coordinator.commandbus import Clock, CommandBus, Outcome, fingerprint
from coordinator.domain import aggregates
from coordinator.domain import commands as C
from coordinator.domain.consensus import resolve_consensus
from coordinator.domain.gold import (
    Scoring,
    check_scoreable,
    choose_items,
    gold_order,
    gold_turn,
    qualification_of,
    resolve_policy,
)
from coordinator.domain.guidance import acknowledgement_needed
from coordinator.domain.person import AttemptState, PersonState, Standing
from coordinator.domain.project import ProjectState
from coordinator.domain.review import (
    DEFAULT_ACCURACY_WINDOW,
    EXPERT,
    NO_HISTORY,
    AuthorRecord,
    may_review,
    next_stage,
    resolve_pipeline,
    role_list,
    stage_name,
)
from coordinator.domain.schedule import schedule_from_spec, shift_remaining
from coordinator.domain.task import DisputeState, TaskState
from coordinator.domain.validation import validate_annotation, validate_id, validate_task_spec
from coordinator.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LabelweaveError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from coordinator.eventlog import codec
from coordinator.eventlog.base import EventLog, Position, format_checkpoint, parse_checkpoint
from coordinator.gold_reconcile import GoldReconciler, gold_command_id
from coordinator.metrics import Metrics
from projections import gold_queries, queries, review_queries
from projections.base import Doc, ProjectionStore

log = logging.getLogger(__name__)
R = model_pb2
S = TypeVar("S", ProjectState, PersonState, TaskState)

MANAGE = (R.ROLE_ADMIN, R.ROLE_MANAGER)
ANNOTATE = (R.ROLE_ANNOTATOR, R.ROLE_EXPERT)
REVIEW = (R.ROLE_REVIEWER, R.ROLE_QA, R.ROLE_EXPERT)
READ_ALL = (R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_AUDITOR, R.ROLE_REVIEWER, R.ROLE_QA, R.ROLE_EXPERT)
EVERYONE = tuple(r for r in R.Role.values() if r != R.ROLE_UNSPECIFIED)

STATUS = {
    "queued": api_pb2.TASK_STATUS_QUEUED,
    "in_progress": api_pb2.TASK_STATUS_IN_PROGRESS,
    "in_review": api_pb2.TASK_STATUS_IN_REVIEW,
    "done": api_pb2.TASK_STATUS_DONE,
}
STATUS_NAME = {v: k for k, v in STATUS.items()}
ANN_STATUS = {
    "submitted": api_pb2.ANNOTATION_STATUS_SUBMITTED,
    "accepted": api_pb2.ANNOTATION_STATUS_ACCEPTED,
    "rejected": api_pb2.ANNOTATION_STATUS_REJECTED,
    "abandoned": api_pb2.ANNOTATION_STATUS_ABANDONED,
    "superseded": api_pb2.ANNOTATION_STATUS_SUPERSEDED,
    "scored": api_pb2.ANNOTATION_STATUS_SCORED,
}
MAX_IMPORT = 10_000
MAX_PAGE = 500
DISPUTE_STATUS = {
    "open": api_pb2.DISPUTE_STATUS_OPEN,
    "upheld": api_pb2.DISPUTE_STATUS_UPHELD,
    "overturned": api_pb2.DISPUTE_STATUS_OVERTURNED,
    "withdrawn": api_pb2.DISPUTE_STATUS_WITHDRAWN,
}
STAGE_STATE = {
    "pending": api_pb2.STAGE_STATE_PENDING,
    "skipped": api_pb2.STAGE_STATE_SKIPPED,
    "accepted": api_pb2.STAGE_STATE_ACCEPTED,
    "rejected": api_pb2.STAGE_STATE_REJECTED,
    "corrected": api_pb2.STAGE_STATE_CORRECTED,
    "overturned": api_pb2.STAGE_STATE_OVERTURNED,
}
FEEDBACK_KIND = {
    "review": api_pb2.FEEDBACK_KIND_REVIEW,
    "accepted": api_pb2.FEEDBACK_KIND_ACCEPTED,
    "dispute_opened": api_pb2.FEEDBACK_KIND_DISPUTE_OPENED,
    "dispute_resolved": api_pb2.FEEDBACK_KIND_DISPUTE_RESOLVED,
    "qualification": api_pb2.FEEDBACK_KIND_QUALIFICATION,
    "suspended": api_pb2.FEEDBACK_KIND_SUSPENDED,
    "reinstated": api_pb2.FEEDBACK_KIND_REINSTATED,
}
QUALITY_READERS = (R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_QA, R.ROLE_AUDITOR)
"""Who may read other people's gold accuracy, suspensions and qualifications (in their projects)."""


E = TypeVar("E", bound=Message)


def event_of(outcome: Outcome, kind: type[E]) -> E:
    """The event of `kind` in a (possibly replayed) outcome: the answer to rebuild. Refused
    (FailedPrecondition on `command_id`) when the command id belongs to another kind of command."""
    event = outcome.first(kind)
    if not isinstance(event, kind):
        raise FailedPrecondition("command_id belongs to another kind of command", field="command_id")
    return event


def request_fingerprint(method: str, request: Message) -> str:
    """What a retried `command_id` must match: the method and the request without its command id."""
    clone = type(request)()
    clone.CopyFrom(request)
    if "command_id" in clone.DESCRIPTOR.fields_by_name:
        clone.ClearField("command_id")
    return fingerprint(method, clone.SerializeToString(deterministic=True))


class Service:
    def __init__(
        self,
        log_: EventLog,
        store: ProjectionStore,
        bus: CommandBus,
        *,
        clock: Clock,
        metrics: Metrics,
        wait_for_projection: object = None,
    ) -> None:
        self.log = log_
        self.store = store
        self.bus = bus
        self.clock = clock
        self.metrics = metrics
        # callable(Position-string) -> None: blocks until projections applied that position
        self._wait = wait_for_projection
        self._principals = TtlCache(ttl=2.0)
        self._claims: set[str] = set()
        self._claims_lock = threading.Lock()
        self._gold_reconciler = GoldReconciler(self)

    # ------------------------------------------------------------------ helpers

    def authenticate(self, token: str) -> Principal:
        if not token:
            raise Unauthenticated("missing bearer token (metadata 'authorization: Bearer <token>')")
        digest = hash_token(token)
        cached = self._principals.get(digest)
        if cached is not None:
            return cached
        ref = queries.find_token(self.store, digest)
        if ref is None or ref.revoked or expired(ref.expires_at, self.clock()):
            raise Unauthenticated("invalid, expired or revoked token")
        person = self.person_state(ref.person_id)
        principal = Principal(person.person_id, person.roles, person.skills, ref.token_id)
        self._principals.put(digest, principal)
        return principal

    # The public helpers below (and `event_of`, `request_fingerprint`, `could_lease`) are the API
    # of the feature modules (coordinator/manager.py, guidance.py, planning.py, consensus.py):
    # they load, authorise, append and wait exactly as the service's own use cases do. Each keeps
    # a private alias for the service's own callers.

    def actor(self, who: Principal) -> C.Actor:
        """Feature API: the caller as the actor of a command."""
        return C.Actor(who.person_id, model_pb2.Role.ValueType(who.primary_role), who.roles)

    def _load(self, kind: str, ident: str, cls: type[S], field: str) -> S:
        if not ident:
            raise InvalidArgument("required", field=field)
        # The bus cache is authoritative for this process's own appends; a state made stale by
        # another writer is caught by the version check when a command is decided on it.
        # (On a cache miss the bus reads the log.)
        _, state = self.bus.load(f"{kind}:{ident}", fresh=False)
        if not isinstance(state, cls):
            raise NotFound(f"no {kind} {ident!r}", field=field)
        return state

    def project_state(self, project_id: str, field: str = "project_id") -> ProjectState:
        """Feature API: the project from the bus (InvalidArgument when empty, NotFound naming `field`)."""
        return self._load("project", project_id, ProjectState, field)

    def person_state(self, person_id: str, field: str = "person_id") -> PersonState:
        """Feature API: the person from the bus (InvalidArgument when empty, NotFound naming `field`)."""
        return self._load("person", person_id, PersonState, field)

    def task_state(self, task_id: str, field: str = "task_id") -> TaskState:
        """Feature API: the task from the bus (InvalidArgument when empty, NotFound naming `field`)."""
        return self._load("task", task_id, TaskState, field)

    def require_member_or_admin(self, who: Principal, project: ProjectState) -> None:
        """Feature API: PermissionDenied unless the caller is a member of the project or sees
        everything (admins, auditors)."""
        if who.sees_everything or who.person_id in project.members:
            return
        raise PermissionDenied(f"{who.person_id} is not a member of project {project.project_id}")

    def _sees_gold(self, who: Principal, project: ProjectState) -> bool:
        """Known answers (and which tasks are gold) are for admins, auditors and the project's
        managers only; everyone else sees gold tasks as ordinary ones."""
        return who.sees_everything or (who.has(R.ROLE_MANAGER) and who.person_id in project.members)

    def may_see_task(self, who: Principal, task: TaskState, project: ProjectState) -> bool:
        """Feature API: raise unless the caller may see the task; True if it sees all of it,
        False if only its own part. Annotators see their own leases and annotations only, so work
        on a task with overlap stays independent (nobody copies the first answer). Gold tasks:
        only those who may see the known answer see all of it."""
        if task.gold is not None and not self._sees_gold(who, project):
            if who.person_id in project.members and _works_on(task, who.person_id):
                return False
            raise PermissionDenied(f"task {task.task_id} is not leased to or annotated by {who.person_id}")
        if who.sees_everything:
            return True
        if who.has(R.ROLE_MANAGER, R.ROLE_REVIEWER, R.ROLE_QA, R.ROLE_EXPERT, R.ROLE_ML_CLIENT) and (
            who.person_id in project.members
        ):
            return True
        mine = any(lease.person_id == who.person_id for lease in task.leases.values()) or any(
            a.author_id == who.person_id for a in task.annotations.values()
        )
        if mine and who.person_id in project.members:
            return False
        raise PermissionDenied(f"task {task.task_id} is not leased to or annotated by {who.person_id}")

    def execute(
        self,
        who: Principal,
        cmd: C.ProjectCommand | C.PersonCommand | C.TaskCommand,
        command_id: str,
        fp: str,
        *,
        prior_checked: bool = False,
    ) -> Outcome:
        """Feature API: decide and append as the caller, idempotent by `command_id` (with `fp`, the
        `request_fingerprint`). `prior_checked`: the caller has already looked `command_id` up
        (and would have answered from the prior outcome), so the bus need not look again."""
        return self.bus.execute(
            cmd, actor=self.actor(who), command_id=command_id, fingerprint=fp, prior_checked=prior_checked
        )

    def wait_for_projections(self, outcome: Outcome) -> None:
        """Feature API: read-your-writes for rare admin changes: wait until projections include them."""
        if self._wait is not None and outcome.events:
            self._wait(outcome.events[-1].position)  # type: ignore[operator]

    # ------------------------------------------------------------------ projects

    def project_view(self, state: ProjectState, who: Principal | None = None) -> api_pb2.Project:
        """`who` given: the view for that caller (the gold mix seed only for who sees gold)."""
        out = api_pb2.Project(
            project_id=state.project_id,
            name=state.name,
            description=state.description,
            settings=state.settings,
            members=sorted(state.members),
            queue_depth=queries.queue_depth(self.store, state.project_id),
        )
        if state.label_schema is not None:
            out.label_schema.CopyFrom(state.label_schema)
        if state.guideline is not None:
            out.guideline.CopyFrom(state.guideline)
        if who is not None and out.settings.HasField("quality") and not self._sees_gold(who, state):
            out.settings.quality.ClearField("seed")  # with it, anyone could tell gold turns ahead
        manager.show_pause(out, state)
        return out

    @staticmethod
    def _seeded(
        settings: model_pb2.ProjectSettings, current: ProjectState | None
    ) -> model_pb2.ProjectSettings:
        """Settings whose quality policy has a secret seed: the given one, the project's current
        one, or a new random one (recorded in the event, so replays and retries keep it). The
        project id, the default, is no secret, and the seed decides which leases are gold."""
        if not settings.HasField("quality") or settings.quality.seed:
            return settings
        out = model_pb2.ProjectSettings()
        out.CopyFrom(settings)
        kept = current.settings.quality.seed if current is not None else ""
        out.quality.seed = kept or secrets.token_hex(16)
        return out

    def mutate_project(
        self, who: Principal, method: str, request: Message, cmd: C.ProjectCommand, command_id: str
    ) -> api_pb2.Project:
        """Feature API: append a project command (idempotent by `command_id`), wait for the
        projections, answer with the project's view."""
        outcome = self.execute(who, cmd, command_id, request_fingerprint(method, request))
        self.wait_for_projections(outcome)
        return self.project_view(self.project_state(cmd.project_id))

    def create_project(self, who: Principal, req: api_pb2.CreateProjectRequest) -> api_pb2.Project:
        who.require(MANAGE, "CreateProject")
        validate_id(req.project_id, field="project_id")
        fp = request_fingerprint("CreateProject", req)
        prior = self.bus.prior(req.command_id, fp)
        if prior is None:
            outcome = self.execute(
                who,
                C.CreateProject(req.project_id, req.name, req.description, self._seeded(req.settings, None)),
                req.command_id,
                fp,
                prior_checked=True,
            )
            if not who.is_admin:  # the creating manager manages the project it made
                self.execute(
                    who,
                    C.AddProjectMember(req.project_id, who.person_id),
                    f"{req.command_id}/creator" if req.command_id else "",
                    "",
                )
            self.wait_for_projections(outcome)
        return self.project_view(self.project_state(req.project_id))

    def get_project(self, who: Principal, req: api_pb2.GetProjectRequest) -> api_pb2.Project:
        who.require(EVERYONE, "GetProject")
        project = self.project_state(req.project_id)
        self.require_member_or_admin(who, project)
        return self.project_view(project, who)

    def list_projects(self, who: Principal, req: api_pb2.ListProjectsRequest) -> api_pb2.ListProjectsResponse:
        who.require(EVERYONE, "ListProjects")
        ids = (
            queries.list_projects(self.store)
            if who.sees_everything
            else queries.projects_of(self.store, who.person_id)
        )
        out = api_pb2.ListProjectsResponse()
        for pid in ids:
            try:
                out.projects.append(self.project_view(self.project_state(pid), who))
            except NotFound:
                continue
        return out

    def managed_project(self, who: Principal, project_id: str, what: str) -> ProjectState:
        """Feature API: the project, for admins and the project's managers only (`what` names the
        refused operation)."""
        who.require(MANAGE, what)
        project = self.project_state(project_id)
        self.require_member_or_admin(who, project)
        return project

    def update_project_settings(
        self, who: Principal, req: api_pb2.UpdateProjectSettingsRequest
    ) -> api_pb2.Project:
        project = self.managed_project(who, req.project_id, "UpdateProjectSettings")
        return self.mutate_project(
            who,
            "UpdateProjectSettings",
            req,
            C.UpdateProjectSettings(req.project_id, self._seeded(req.settings, project)),
            req.command_id,
        )

    def publish_label_schema(self, who: Principal, req: api_pb2.PublishLabelSchemaRequest) -> api_pb2.Project:
        self.managed_project(who, req.project_id, "PublishLabelSchema")
        return self.mutate_project(
            who, "PublishLabelSchema", req, C.PublishLabelSchema(req.project_id, req.schema), req.command_id
        )

    def publish_guideline(self, who: Principal, req: api_pb2.PublishGuidelineRequest) -> api_pb2.Project:
        self.managed_project(who, req.project_id, "PublishGuideline")
        return self.mutate_project(
            who, "PublishGuideline", req, C.PublishGuideline(req.project_id, req.guideline), req.command_id
        )

    def add_project_member(self, who: Principal, req: api_pb2.ProjectMemberRequest) -> api_pb2.Project:
        self.managed_project(who, req.project_id, "AddProjectMember")
        if self.bus.prior(req.command_id, request_fingerprint("AddProjectMember", req)) is None:
            self.person_state(req.person_id)
        return self.mutate_project(
            who, "AddProjectMember", req, C.AddProjectMember(req.project_id, req.person_id), req.command_id
        )

    def remove_project_member(self, who: Principal, req: api_pb2.ProjectMemberRequest) -> api_pb2.Project:
        self.managed_project(who, req.project_id, "RemoveProjectMember")
        return self.mutate_project(
            who,
            "RemoveProjectMember",
            req,
            C.RemoveProjectMember(req.project_id, req.person_id),
            req.command_id,
        )

    # ------------------------------------------------------------------ people and tokens

    def person_view(self, state: PersonState) -> api_pb2.Person:
        return api_pb2.Person(spec=state.spec, projects=queries.projects_of(self.store, state.person_id))

    def _check_grant(self, who: Principal, spec: model_pb2.PersonSpec) -> None:
        if R.ROLE_ADMIN in spec.roles and not who.is_admin:
            raise PermissionDenied("only admins may grant the admin role", field="person.roles")

    def register_person(self, who: Principal, req: api_pb2.RegisterPersonRequest) -> api_pb2.Person:
        who.require(MANAGE, "RegisterPerson")
        self._check_grant(who, req.person)
        outcome = self.execute(
            who, C.RegisterPerson(req.person), req.command_id, request_fingerprint("RegisterPerson", req)
        )
        self.wait_for_projections(outcome)
        return self.person_view(self.person_state(req.person.person_id, field="person.person_id"))

    def update_person(self, who: Principal, req: api_pb2.UpdatePersonRequest) -> api_pb2.Person:
        who.require(MANAGE, "UpdatePerson")
        self._check_grant(who, req.person)
        current = self.person_state(req.person.person_id, field="person.person_id")
        if R.ROLE_ADMIN in current.roles and not who.is_admin:
            raise PermissionDenied("only admins may change an admin", field="person.person_id")
        outcome = self.execute(
            who, C.UpdatePerson(req.person), req.command_id, request_fingerprint("UpdatePerson", req)
        )
        self.wait_for_projections(outcome)
        self._principals.clear()
        return self.person_view(self.person_state(req.person.person_id, field="person.person_id"))

    def get_person(self, who: Principal, req: api_pb2.GetPersonRequest) -> api_pb2.Person:
        if req.person_id != who.person_id:
            who.require((R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_AUDITOR), "GetPerson of someone else")
        return self.person_view(self.person_state(req.person_id))

    def who_am_i(self, who: Principal) -> api_pb2.Person:
        return self.person_view(self.person_state(who.person_id))

    def _may_manage_tokens_of(self, who: Principal, person_id: str) -> PersonState:
        target = self.person_state(person_id)
        if person_id == who.person_id:
            return target
        who.require(MANAGE, "managing another person's tokens")
        if R.ROLE_ADMIN in target.roles and not who.is_admin:
            raise PermissionDenied("only admins manage admin tokens", field="person_id")
        return target

    def create_token(self, who: Principal, req: api_pb2.CreateTokenRequest) -> api_pb2.CreateTokenResponse:
        # The secret is never stored, so a retried CreateToken cannot return it again: a retry
        # of an id that already succeeded is refused rather than silently minting a second token.
        if self.bus.prior(req.command_id) is not None:
            raise FailedPrecondition(
                "this command_id already created a token; its secret is shown only once. "
                "Revoke it and create another",
                field="command_id",
            )
        self._may_manage_tokens_of(who, req.person_id)
        token_id, secret = self.issue_token(
            req.person_id, req.description, req.ttl_seconds, actor=who, command_id=req.command_id
        )
        return api_pb2.CreateTokenResponse(token_id=token_id, token=secret)

    def issue_token(
        self,
        person_id: str,
        description: str = "",
        ttl_seconds: int = 0,
        *,
        actor: Principal = SYSTEM,
        command_id: str = "",
    ) -> tuple[str, str]:
        secret, digest = new_token()
        token_id = codec.uuid7()
        expires = self.clock() + timedelta(seconds=ttl_seconds) if ttl_seconds else None
        outcome = self.execute(
            actor,
            C.IssueToken(person_id, token_id, digest, description, expires),
            command_id or codec.uuid7(),
            "",
        )
        self.wait_for_projections(outcome)
        return token_id, secret

    def revoke_token(self, who: Principal, req: api_pb2.RevokeTokenRequest) -> api_pb2.RevokeTokenResponse:
        self._may_manage_tokens_of(who, req.person_id)
        outcome = self.execute(
            who,
            C.RevokeToken(req.person_id, req.token_id),
            req.command_id,
            request_fingerprint("RevokeToken", req),
        )
        self.wait_for_projections(outcome)
        self._principals.clear()
        return api_pb2.RevokeTokenResponse()

    # ------------------------------------------------------------------ tasks: views

    def task_view(
        self, task: TaskState, position: str = "", *, only: str = "", gold_answer: bool = False
    ) -> api_pb2.Task:
        """The API view of a task; `only` limits leases and annotations to that person's (and
        shows a gold task as an ordinary one); `gold_answer` adds a gold task's known answer."""
        out = api_pb2.Task(
            task_id=task.task_id,
            project_id=task.project_id,
            batch_id=task.batch_id,
            spec=task.spec,
            status=STATUS[task.status],
            round=task.round,
            position=position,
        )
        for lease in task.leases.values():
            if only and lease.person_id != only:
                continue
            out.leases.append(
                api_pb2.Lease(
                    lease_id=lease.lease_id,
                    person_id=lease.person_id,
                    expires_at=codec.timestamp(lease.expires_at),
                )
            )
        latest: dict[str, DisputeState] = {d.annotation_id: d for d in task.disputes.values()}
        for a in task.annotations.values():
            if only and a.author_id != only:
                continue
            summary = api_pb2.AnnotationSummary(
                annotation_id=a.annotation_id,
                author_id=a.author_id,
                version=a.version,
                status=ANN_STATUS[a.status],
                round=a.round,
                reason_codes=list(a.reason_codes),
                stage=task.stage_name(a.stage) if a.status == "submitted" else "",
            )
            dispute = latest.get(a.annotation_id)
            if dispute is not None:
                summary.dispute_id = dispute.dispute_id
                summary.dispute_status = DISPUTE_STATUS[dispute.status]
            out.annotations.append(summary)
        if task.prelabel is not None:
            out.prelabel.CopyFrom(task.prelabel)
        manager.show_assignment(out, task)
        if task.gold is not None:
            if gold_answer:
                out.spec.gold.CopyFrom(task.gold.spec())
            if only:
                self._disguise(out, task, only)
        return out

    def _first_stage(self, project_id: str) -> str:
        """Where the project's ordinary work waits after submission ("" : no review)."""
        project = self.project_state(project_id)
        pipeline = resolve_pipeline(project_id, project.settings)
        index = next_stage(pipeline, 0)
        return stage_name(pipeline.stages[index]) if index >= 0 else ""

    def _disguise(self, out: api_pb2.Task, task: TaskState, person_id: str) -> None:
        """Show a gold task to one of its annotators as an ordinary task with one slot would look:
        their answer waits for review (or is accepted where the project does not review)."""
        stage = self._first_stage(task.project_id)
        answered = False
        for summary in out.annotations:
            if summary.status == api_pb2.ANNOTATION_STATUS_SCORED:
                answered = True
                summary.status = (
                    api_pb2.ANNOTATION_STATUS_SUBMITTED if stage else api_pb2.ANNOTATION_STATUS_ACCEPTED
                )
                summary.stage = stage
        if any(lease.person_id == person_id for lease in task.leases.values()):
            out.status = api_pb2.TASK_STATUS_IN_PROGRESS
        elif answered:
            out.status = api_pb2.TASK_STATUS_IN_REVIEW if stage else api_pb2.TASK_STATUS_DONE
        else:
            out.status = api_pb2.TASK_STATUS_QUEUED

    def _view_for(self, who: Principal, task: TaskState, position: str = "") -> api_pb2.Task:
        """The view of a task its caller may see (a gold task: disguised unless privileged)."""
        if task.gold is None:
            return self.task_view(task, position)
        project = self.project_state(task.project_id)
        if self._sees_gold(who, project):
            return self.task_view(task, position, gold_answer=True)
        return self.task_view(task, position, only=who.person_id)

    def get_task(self, who: Principal, req: api_pb2.GetTaskRequest) -> api_pb2.Task:
        who.require(EVERYONE, "GetTask")
        task = self.task_state(req.task_id)
        full = self.may_see_task(who, task, self.project_state(task.project_id))
        return self.task_view(task, only="" if full else who.person_id, gold_answer=full)

    def list_tasks(self, who: Principal, req: api_pb2.ListTasksRequest) -> api_pb2.ListTasksResponse:
        who.require(READ_ALL, "ListTasks")
        project = self.project_state(req.project_id)
        self.require_member_or_admin(who, project)
        limit = min(req.limit or 50, 500)
        status = STATUS_NAME.get(req.status) if req.status else None
        ids, token = queries.list_tasks(self.store, req.project_id, status, limit, req.page_token)
        out = api_pb2.ListTasksResponse(next_page_token=token)
        for tid in ids:
            try:
                out.tasks.append(self.task_view(self.task_state(tid)))
            except NotFound:
                continue
        return out

    # ------------------------------------------------------------------ tasks: import

    def import_tasks(self, who: Principal, req: api_pb2.ImportTasksRequest) -> api_pb2.ImportTasksResponse:
        who.require((R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_ML_CLIENT), "ImportTasks")
        project = self.project_state(req.project_id)
        self.require_member_or_admin(who, project)
        if not req.tasks:
            raise InvalidArgument("at least one task is required", field="tasks")
        if len(req.tasks) > MAX_IMPORT:
            raise InvalidArgument(
                f"at most {MAX_IMPORT} tasks per request, got {len(req.tasks)}", field="tasks"
            )
        if not req.command_id:
            raise InvalidArgument(
                "required for imports so a retried batch is not imported twice", field="command_id"
            )
        batch_id = req.batch_id or req.command_id
        validate_id(batch_id, field="batch_id")
        # Validate the whole batch before appending anything: a bad task names its index and
        # nothing of the batch is written.
        specs: list[model_pb2.TaskSpec] = []
        seen: set[str] = set()
        for i, raw in enumerate(req.tasks):
            spec = model_pb2.TaskSpec()
            spec.CopyFrom(raw)
            if not spec.task_id:
                spec.task_id = f"{batch_id}-{i:06d}"
            if not spec.overlap:
                spec.overlap = project.settings.default_overlap or 1
            if spec.task_id in seen:
                raise InvalidArgument(
                    f"duplicate task_id {spec.task_id!r} in batch", field=f"tasks[{i}].task_id"
                )
            seen.add(spec.task_id)
            validate_task_spec(spec, schema=project.label_schema, field=f"tasks[{i}]")
            if spec.HasField("gold"):
                self._check_gold(project, spec, f"tasks[{i}]")
            specs.append(spec)
        for i, spec in enumerate(specs):
            if (
                self.bus.prior(f"{req.command_id}/{spec.task_id}") is None
                and self.bus.load(f"task:{spec.task_id}")[1]
            ):
                raise AlreadyExists(f"task {spec.task_id!r} exists already", field=f"tasks[{i}].task_id")
        pipeline = resolve_pipeline(req.project_id, project.settings)
        policy = R.REVIEW_POLICY_FULL if next_stage(pipeline, 0) >= 0 else R.REVIEW_POLICY_NONE
        cmds: list[tuple[aggregates.Command, str]] = [
            (
                _gold_import(req.project_id, batch_id, spec, project.settings.lease_seconds)
                if spec.HasField("gold")
                else C.ImportTask(
                    req.project_id,
                    batch_id,
                    spec,
                    policy,
                    project.settings.lease_seconds,
                    pipeline,
                ),
                f"{req.command_id}/{spec.task_id}",
            )
            for spec in specs
        ]
        results = self.bus.execute_many(cmds, actor=self.actor(who), correlation_id=req.command_id)
        out = api_pb2.ImportTasksResponse()
        last: Position | None = None
        for (cmd, _), result in zip(cmds, results, strict=True):
            assert isinstance(cmd, C.ImportTask | C.ImportGoldTask)
            if isinstance(result, LabelweaveError):
                raise result
            out.task_ids.append(cmd.spec.task_id)
            if result.events:
                pos = result.events[-1].position
                last = pos if last is None or pos > last else last
        out.position = str(last) if last else ""
        return out

    def _check_gold(self, project: ProjectState, spec: model_pb2.TaskSpec, field: str) -> None:
        """A known answer must be valid for the task and scoreable; a training item must belong
        to one of the project's qualifications."""
        gold = spec.gold
        if project.label_schema is None:
            raise FailedPrecondition(
                "gold tasks need the project's label schema first (known answers are checked against it)",
                field="project_id",
            )
        validate_annotation(
            gold.answer,
            schema=project.label_schema,
            media_type=spec.media_type,
            media=spec.media,
            field=f"{field}.gold.answer",
        )
        check_scoreable(gold.answer, f"{field}.gold.answer")
        if gold.training:
            if not gold.skill:
                raise InvalidArgument(
                    "a training item names the skill of its qualification", field=f"{field}.gold.skill"
                )
            if qualification_of(project.settings.quality, gold.skill) is None:
                known = ", ".join(q.skill for q in project.settings.quality.qualifications) or "none"
                raise InvalidArgument(
                    f"project {project.project_id} has no qualification for {gold.skill!r}"
                    f" (qualifications: {known})",
                    field=f"{field}.gold.skill",
                )
        elif gold.skill:
            raise InvalidArgument(
                "only training items name a qualification skill", field=f"{field}.gold.skill"
            )

    def ingest_prelabel(self, who: Principal, req: api_pb2.IngestPrelabelRequest) -> api_pb2.Task:
        who.require((R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_ML_CLIENT), "IngestPrelabel")
        task = self.task_state(req.task_id)
        project = self.project_state(task.project_id)
        self.require_member_or_admin(who, project)
        fp = request_fingerprint("IngestPrelabel", req)
        if self.bus.prior(req.command_id, fp) is None:
            if project.label_schema is None:
                raise FailedPrecondition("the project has no label schema yet", field="project_id")
            validate_annotation(
                req.annotation,
                schema=project.label_schema,
                media_type=task.spec.media_type,
                media=task.spec.media,
                field="annotation",
            )
            self.execute(
                who,
                C.IngestPrelabel(req.task_id, codec.uuid7(), req.annotation),
                req.command_id,
                fp,
                prior_checked=True,
            )
        return self._view_for(who, self.task_state(req.task_id))

    # ------------------------------------------------------------------ tasks: work

    def _leased(self, outcome: Outcome, schema_of: ProjectState | None = None) -> api_pb2.NextTaskResponse:
        leased = outcome.first(events_pb2.TaskLeased)
        assert isinstance(leased, events_pb2.TaskLeased)
        task = self.task_state(leased.task_id)
        project = schema_of or self.project_state(task.project_id)
        # a gold task looks like an ordinary one with one slot: the caller's lease only
        only = leased.person_id if task.gold is not None else ""
        out = api_pb2.NextTaskResponse(
            task=self.task_view(task, outcome.position, only=only),
            lease=api_pb2.Lease(
                lease_id=leased.lease_id, person_id=leased.person_id, expires_at=leased.expires_at
            ),
            guideline_version=project.guideline_version,
        )
        if project.label_schema is not None:
            out.label_schema.CopyFrom(project.label_schema)
        return out

    def next_task(self, who: Principal, req: api_pb2.NextTaskRequest) -> api_pb2.NextTaskResponse:
        who.require(ANNOTATE, "NextTask")
        fp = request_fingerprint("NextTask", req)
        prior = self.bus.prior(req.command_id, fp)
        if prior is not None:
            return self._leased(prior)
        if req.project_id:
            project = self.project_state(req.project_id)
            if who.person_id not in project.members:
                raise PermissionDenied(f"{who.person_id} is not a member of project {req.project_id}")
            project_ids = [req.project_id]
        else:
            project_ids = queries.projects_of(self.store, who.person_id)
        person = self.fresh_person(who.person_id)
        if person.skills != who.skills:  # granted (or removed) since the token was cached, maybe
            who = dataclasses.replace(who, skills=person.skills)  # by another coordinator process
        refused: list[str] = []
        for pid in project_ids:
            project = self.project_state(pid)
            if project.label_schema is None or who.person_id not in project.members:
                continue
            if manager.skip_paused(self, pid, named=bool(req.project_id)):
                continue
            if why := acknowledgement_needed(person, project):  # the current guideline is unread
                if req.project_id:
                    raise FailedPrecondition(why, field="project_id")
                refused.append(why)
                continue
            standing = person.standing(pid)
            taking = standing.open_attempt()
            if taking is not None:  # a qualification in progress: its items come first
                outcome = self._lease_training(who, pid, taking[1], req.command_id, fp)
                if outcome is not None:
                    return self._leased(outcome, project)
                continue
            if standing.suspension is not None:
                why = _suspended_message(who.person_id, pid, standing)
                if req.project_id:
                    raise FailedPrecondition(why, field="project_id")
                refused.append(why)
                continue
            outcome = manager.lease_assigned(self, who, person, pid, req.command_id, fp)  # assigned first
            if outcome is None:
                outcome = self._lease_next(who, project, standing, req.command_id, fp)
            if outcome is not None:
                return self._leased(outcome, project)
        if refused:
            raise FailedPrecondition("; ".join(refused), field="project_id")
        return api_pb2.NextTaskResponse()

    def fresh_person(self, person_id: str) -> PersonState:
        """Feature API: the person as the log says now (suspensions may come from another process)."""
        _, state = self.bus.load(f"person:{person_id}")
        if not isinstance(state, PersonState):
            raise NotFound(f"no person {person_id!r}", field="person_id")
        return state

    def shift_seconds_left(self, person_id: str, now: datetime) -> float | None:
        """Feature API: seconds left of the person's current shift (None: no schedule; <= 0: off shift)."""
        person = self.person_state(person_id)
        schedule = schedule_from_spec(person.spec.time_zone, person.spec.schedule)
        return None if schedule is None else shift_remaining(schedule, now).total_seconds()

    def _lease_next(
        self, who: Principal, project: ProjectState, standing: Standing, command_id: str, fp: str
    ) -> Outcome | None:
        """The gold mix: the person's lease number n in the project is a gold one when
        `gold_turn(seed, project, person, n, rate)`; then the first gold task they have not
        answered (in their own hash order) is leased, else (and otherwise) the queue's best.
        n is the person's lease count from the metrics projection, which the service waits for
        after each lease in a project with gold, so consecutive calls see it move on."""
        pid = project.project_id
        policy = resolve_policy(pid, project.settings.quality)
        if policy.gold_rate <= 0:
            return self._lease_first(who, pid, command_id, fp)
        leased = int(queries.annotator_metrics(self.store, pid, who.person_id)[0].get("leased", 0))
        outcome: Outcome | None = None
        if gold_turn(policy.seed, pid, who.person_id, leased, policy.gold_rate):
            outcome = self._lease_gold(who, pid, policy.seed, standing, command_id, fp)
        if outcome is None:
            outcome = self._lease_first(who, pid, command_id, fp)
        if outcome is not None:
            self.wait_for_projections(outcome)
        return outcome

    def _lease_gold(
        self, who: Principal, project_id: str, seed: str, standing: Standing, command_id: str, fp: str
    ) -> Outcome | None:
        now = self.clock()
        left = self.shift_seconds_left(who.person_id, now)
        if left is not None and left <= 0:
            return None
        candidates = [
            doc
            for doc in gold_queries.gold_tasks(self.store, project_id)
            if doc["task_id"] not in standing.answered
            and set(doc["required_skills"]) <= who.skills
            and (left is None or int(doc["expected_seconds"]) <= left)
        ]
        candidates.sort(key=lambda doc: (gold_order(seed, who.person_id, doc["task_id"]), doc["task_id"]))
        return self.lease_first_allowed(
            who,
            [doc["task_id"] for doc in candidates[:64]],
            command_id,
            fp,
            lambda task_id: C.LeaseTask(
                task_id, codec.uuid7(), who.person_id, who.skills, now, serve_gold=True
            ),
        )

    def _lease_training(
        self, who: Principal, project_id: str, attempt: AttemptState, command_id: str, fp: str
    ) -> Outcome | None:
        now = self.clock()
        left = self.shift_seconds_left(who.person_id, now)
        if left is not None and left <= 0:
            return None
        return self.lease_first_allowed(
            who,
            list(attempt.pending),
            command_id,
            fp,
            lambda task_id: C.LeaseTask(
                task_id, codec.uuid7(), who.person_id, who.skills, now, attempt=attempt.number
            ),
        )

    def lease_first_allowed(
        self,
        who: Principal,
        task_ids: list[str],
        command_id: str,
        fp: str,
        lease: Callable[[str], C.LeaseTask],
    ) -> Outcome | None:
        """Feature API: lease the first of `task_ids` the domain allows (a refusal moves on)."""
        cid = command_id or codec.uuid7()
        for task_id in task_ids:
            try:
                return self.bus.execute(
                    lease(task_id), actor=self.actor(who), command_id=cid, fingerprint=fp, prior_checked=True
                )
            except (FailedPrecondition, NotFound, PermissionDenied):
                continue
        return None

    def _lease_first(self, who: Principal, project_id: str, command_id: str, fp: str) -> Outcome | None:
        """Lease the best candidate from the (eventually consistent) queue projection.

        Concurrent callers all see the same best-first list; without care they would all race
        for its head and all but one would lose an append. So a candidate another request of
        this process is already trying is skipped (an in-process claim), and candidates the
        bus already knows to be full are skipped without I/O. A refused lease just moves on.
        """
        cid = command_id or codec.uuid7()
        now = self.clock()
        person = self.person_state(who.person_id)
        schedule = schedule_from_spec(person.spec.time_zone, person.spec.schedule)
        left: float | None = None  # seconds of shift left; None: no schedule, always available
        if schedule is not None:
            left = shift_remaining(schedule, now).total_seconds()
            if left <= 0:
                return None  # off shift: no work is leased outside working hours
        limit = 16
        for attempt in range(4):
            candidates = queries.queue_candidates(self.store, project_id, who.skills, limit=limit)
            contended = passed = 0
            for task_id in candidates:
                cached = self.bus.peek(f"task:{task_id}")
                if isinstance(cached, TaskState) and not could_lease(cached, who.person_id, now):
                    contended += 1  # full or ours already; the queue projection has not caught up yet
                    continue
                if left is not None:
                    task = cached if isinstance(cached, TaskState) else self.task_state(task_id)
                    if task.spec.expected_seconds > left:
                        passed += 1  # cannot be finished before this shift ends
                        continue
                with self._claims_lock:
                    if task_id in self._claims:
                        contended += 1
                        continue
                    self._claims.add(task_id)
                try:
                    return self.bus.execute(
                        C.LeaseTask(task_id, codec.uuid7(), who.person_id, who.skills, now),
                        actor=self.actor(who),
                        command_id=cid,
                        fingerprint=fp,
                        prior_checked=True,
                    )
                except (FailedPrecondition, NotFound, PermissionDenied):
                    continue
                finally:
                    with self._claims_lock:
                        self._claims.discard(task_id)
            if not (contended or passed):
                return None  # every candidate was really refused: nothing for this person
            if len(candidates) == limit:
                limit *= 4  # the head of the queue is taken or too long: look further down
            elif contended:
                time.sleep(0.002 * (attempt + 1))  # others are mid-lease on what is left
            else:
                return None
        return None

    def release_task(self, who: Principal, req: api_pb2.ReleaseTaskRequest) -> api_pb2.Task:
        who.require(ANNOTATE, "ReleaseTask")
        self.execute(
            who,
            C.ReleaseLease(req.task_id, req.lease_id, who.person_id, req.reason),
            req.command_id,
            request_fingerprint("ReleaseTask", req),
        )
        return self._view_for(who, self.task_state(req.task_id))

    def abandon_annotation(self, who: Principal, req: api_pb2.AbandonAnnotationRequest) -> api_pb2.Task:
        """The author gives up their rejected work; the domain refuses it for anyone else, for work
        that is not rejected, and while a dispute of it is open."""
        who.require(ANNOTATE, "AbandonAnnotation")
        self.execute(
            who,
            C.AbandonAnnotation(req.task_id, req.annotation_id, who.person_id, req.reason),
            req.command_id,
            request_fingerprint("AbandonAnnotation", req),
        )
        return self._view_for(who, self.task_state(req.task_id))

    def _validate_for_task(
        self, task: TaskState, annotation: annotation_pb2.Annotation, field: str
    ) -> tuple[ProjectState, annotation_pb2.Annotation]:
        project = self.project_state(task.project_id)
        if project.label_schema is None:
            raise FailedPrecondition("the project has no label schema yet", field="task_id")
        ann = annotation_pb2.Annotation()
        ann.CopyFrom(annotation)
        if ann.source == annotation_pb2.ANNOTATION_SOURCE_UNSPECIFIED:
            ann.source = annotation_pb2.ANNOTATION_SOURCE_HUMAN
        validate_annotation(
            ann,
            schema=project.label_schema,
            media_type=task.spec.media_type,
            media=task.spec.media,
            field=field,
        )
        return project, ann

    def submit(self, who: Principal, req: api_pb2.SubmitRequest) -> api_pb2.SubmitResponse:
        who.require(ANNOTATE, "Submit")
        fp = request_fingerprint("Submit", req)
        prior = self.bus.prior(req.command_id, fp)
        if prior is None:
            task = self.task_state(req.task_id)
            lease = task.leases.get(req.lease_id)
            if lease is not None and lease.person_id != who.person_id:
                raise PermissionDenied(f"lease {req.lease_id} belongs to someone else", field="lease_id")
            if lease is None and not req.lease_id:
                raise InvalidArgument("required", field="lease_id")
            project, ann = self._validate_for_task(task, req.annotation, "annotation")
            scoring: Scoring | None = None
            if task.gold is not None:
                policy = resolve_policy(project.project_id, project.settings.quality)
                scoring = Scoring(
                    policy.iou_threshold, policy.oks_threshold, policy.pass_score, project.label_schema
                )
            prior = self.execute(
                who,
                C.SubmitAnnotation(
                    req.task_id,
                    req.lease_id,
                    who.person_id,
                    codec.uuid7(),
                    ann,
                    project.schema_version,
                    project.guideline_version,
                    req.time_on_task_ms,
                    self.clock(),
                    self._author_record(task, who.person_id),
                    scoring=scoring,
                    consensus=resolve_consensus(project.settings.consensus, project.label_schema)
                    if project.settings.HasField("consensus")
                    else None,
                ),
                req.command_id,
                fp,
                prior_checked=True,
            )
        # also on a retry: a crash between the two appends is healed by the client's retry
        self._record_gold(prior)
        submitted = event_of(prior, events_pb2.AnnotationSubmitted)
        return api_pb2.SubmitResponse(
            annotation_id=submitted.annotation_id, version=submitted.version, position=prior.position
        )

    def _record_gold(self, outcome: Outcome) -> None:
        """Enter every scored gold answer of `outcome` into its author's record."""
        for ev in outcome.events:
            if ev.envelope.type == "gold_scored":
                self.record_gold_scored(ev.envelope)

    def record_gold_scored(self, env: events_pb2.EventEnvelope) -> Outcome | None:
        """Enter one scored gold answer (a `GoldScored` envelope) into its author's record: a
        command on the person's stream whose id derives from the task and annotation
        (`gold/<task>/<annotation>`), so it runs once however often, and by whom, it is sent
        (the submission, its retries, the gold reconcile sweep). The person aggregate decides the
        suspension rule (or the qualification attempt's outcome) against the results before it,
        in stream order. None: refused (recorded already, or no longer counts)."""
        scored = env.gold_scored
        project = self.project_state(scored.project_id)
        try:
            result = self.bus.execute(
                C.RecordGoldResult(
                    scored.person_id, scored, env.event_id, project.settings.quality, self.clock()
                ),
                actor=self.actor(SYSTEM),
                command_id=gold_command_id(scored.task_id, scored.annotation_id),
                correlation_id=env.correlation_id,
                causation_id=env.event_id,
            )
        except (AlreadyExists, FailedPrecondition) as exc:
            # e.g. a late answer of an attempt that is over: the task keeps its score
            log.info("gold result %s not recorded for %s: %s", env.event_id, scored.person_id, exc)
            return None
        if result.first(events_pb2.SkillGranted) is not None:
            self._principals.clear()  # routing uses the new skill at once
        return result

    def reconcile_gold(self) -> int:
        """Timer body: record scored gold answers whose result a crash lost (gold_reconcile.py)."""
        return self._gold_reconciler.sweep()

    def edit_annotation(self, who: Principal, req: api_pb2.EditAnnotationRequest) -> api_pb2.SubmitResponse:
        who.require(ANNOTATE, "EditAnnotation")
        fp = request_fingerprint("EditAnnotation", req)
        prior = self.bus.prior(req.command_id, fp)
        if prior is None:
            task = self.task_state(req.task_id)
            if not req.annotation_id:
                raise InvalidArgument("required", field="annotation_id")
            project, ann = self._validate_for_task(task, req.annotation, "annotation")
            prior = self.execute(
                who,
                C.EditAnnotation(
                    req.task_id,
                    req.annotation_id,
                    req.expected_version,
                    who.person_id,
                    ann,
                    project.schema_version,
                    project.guideline_version,
                    self._author_record(task, who.person_id),
                ),
                req.command_id,
                fp,
                prior_checked=True,
            )
        edited = event_of(prior, events_pb2.AnnotationEdited)
        return api_pb2.SubmitResponse(
            annotation_id=edited.annotation_id, version=edited.version, position=prior.position
        )

    def review(self, who: Principal, req: api_pb2.ReviewRequest) -> api_pb2.ReviewResponse:
        who.require(REVIEW, "Review")
        fp = request_fingerprint("Review", req)
        prior = self.bus.prior(req.command_id, fp)
        if prior is None:
            task = self.task_state(req.task_id)
            project = self.project_state(task.project_id)
            self.require_member_or_admin(who, project)
            correction: annotation_pb2.Annotation | None = None
            if req.verdict == R.VERDICT_CORRECT:
                if not req.HasField("correction"):
                    raise InvalidArgument("a correction is required for VERDICT_CORRECT", field="correction")
                _, correction = self._validate_for_task(task, req.correction, "correction")
            reviewed = task.annotations.get(req.annotation_id)
            prior = self.execute(
                who,
                C.ReviewAnnotation(
                    req.task_id,
                    req.annotation_id,
                    req.version,
                    who.person_id,
                    req.verdict,
                    tuple(req.reason_codes),
                    req.comment,
                    correction,
                    project.reject_reasons,
                    project.schema_version,
                    project.guideline_version,
                    stage=req.stage,
                    reviewer_roles=who.roles,
                    author=self._author_record(task, reviewed.author_id) if reviewed else NO_HISTORY,
                ),
                req.command_id,
                fp,
                prior_checked=True,
            )
        recorded = event_of(prior, events_pb2.ReviewRecorded)
        task_now = self.task_state(recorded.task_id)
        ann_status: api_pb2.AnnotationStatus.ValueType = api_pb2.ANNOTATION_STATUS_REJECTED
        where = ""
        if recorded.verdict != R.VERDICT_REJECT:
            ann_status, where = _sent_on(task_now, prior, recorded.stage_index)
        return api_pb2.ReviewResponse(
            task_status=STATUS[task_now.status],
            version=recorded.version,
            position=prior.position,
            stage=recorded.stage,
            next_stage=where,
            annotation_status=ann_status,
        )

    def _author_record(self, task: TaskState, person_id: str) -> AuthorRecord:
        """The author's recent acceptance rate, read only when a stage of the task stratifies."""
        if not any(stage.strata for stage in task.pipeline.stages):
            return NO_HISTORY
        window = task.pipeline.accuracy_window or DEFAULT_ACCURACY_WINDOW
        acceptance, verdicts = review_queries.recent_acceptance(
            self.store, task.project_id, person_id, window
        )
        return AuthorRecord(acceptance, verdicts)

    def reopen_task(self, who: Principal, req: api_pb2.ReopenTaskRequest) -> api_pb2.Task:
        who.require((R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_QA, R.ROLE_EXPERT), "ReopenTask")
        task = self.task_state(req.task_id)
        self.require_member_or_admin(who, self.project_state(task.project_id))
        self.execute(
            who,
            C.ReopenTask(req.task_id, req.reason),
            req.command_id,
            request_fingerprint("ReopenTask", req),
        )
        return self.task_view(self.task_state(req.task_id))

    def expire_leases(self, limit: int = 500) -> int:
        """Timer body: expire leases past their deadline (idempotent per lease)."""
        now = self.clock()
        count = 0
        for task_id, lease_id in queries.expired_leases(self.store, now, limit):
            try:
                self.bus.execute(
                    C.ExpireLease(task_id, lease_id, now),
                    actor=self.actor(SYSTEM),
                    command_id=f"expire/{lease_id}",
                )
                count += 1
            except (FailedPrecondition, NotFound):
                continue
        if count:
            self.metrics.leases_expired.inc(count)
        return count

    # ------------------------------------------------------------------ review pipeline

    def _dispute_view(self, task_id: str, dispute_id: str) -> api_pb2.Dispute:
        """A dispute as the task stream says (consistent with the log, unlike the projection)."""
        out = api_pb2.Dispute()
        for ev in self.log.read_stream(f"task:{task_id}"):
            env = ev.envelope
            if env.type == "dispute_opened" and env.dispute_opened.dispute_id == dispute_id:
                o = env.dispute_opened
                out = api_pb2.Dispute(
                    dispute_id=o.dispute_id,
                    task_id=o.task_id,
                    project_id=o.project_id,
                    annotation_id=o.annotation_id,
                    version=o.version,
                    author_id=o.author_id,
                    stage=o.stage,
                    reviewer_id=o.reviewer_id,
                    reason_codes=list(o.reason_codes),
                    rejection_comment=o.rejection_comment,
                    comment=o.comment,
                    status=api_pb2.DISPUTE_STATUS_OPEN,
                    opened_at=env.recorded_at,
                    position=str(ev.position),
                )
            elif env.type == "dispute_resolved" and env.dispute_resolved.dispute_id == dispute_id:
                r = env.dispute_resolved
                overturned = r.decision == R.DISPUTE_DECISION_OVERTURN
                out.status = (
                    api_pb2.DISPUTE_STATUS_OVERTURNED if overturned else api_pb2.DISPUTE_STATUS_UPHELD
                )
                out.expert_id = r.expert_id
                out.resolution_comment = r.comment
                out.resolved_at.CopyFrom(env.recorded_at)
                out.position = str(ev.position)
            elif env.type == "task_reopened" and out.status == api_pb2.DISPUTE_STATUS_OPEN:
                out.status = api_pb2.DISPUTE_STATUS_WITHDRAWN
                out.resolved_at.CopyFrom(env.recorded_at)
                out.position = str(ev.position)
        if not out.dispute_id:
            raise NotFound(f"no dispute {dispute_id!r} on task {task_id}", field="dispute_id")
        return out

    def open_dispute(self, who: Principal, req: api_pb2.OpenDisputeRequest) -> api_pb2.Dispute:
        who.require(ANNOTATE, "OpenDispute")
        fp = request_fingerprint("OpenDispute", req)
        prior = self.bus.prior(req.command_id, fp)
        if prior is None:
            task = self.task_state(req.task_id)
            self.require_member_or_admin(who, self.project_state(task.project_id))
            if not req.annotation_id:
                raise InvalidArgument("required", field="annotation_id")
            prior = self.execute(
                who,
                C.OpenDispute(req.task_id, req.annotation_id, codec.uuid7(), who.person_id, req.comment),
                req.command_id,
                fp,
                prior_checked=True,
            )
        opened = event_of(prior, events_pb2.DisputeOpened)
        return self._dispute_view(opened.task_id, opened.dispute_id)

    def resolve_dispute(self, who: Principal, req: api_pb2.ResolveDisputeRequest) -> api_pb2.Dispute:
        who.require((R.ROLE_EXPERT,), "ResolveDispute")
        fp = request_fingerprint("ResolveDispute", req)
        prior = self.bus.prior(req.command_id, fp)
        if prior is None:
            task = self.task_state(req.task_id)
            self.require_member_or_admin(who, self.project_state(task.project_id))
            if not req.dispute_id:
                raise InvalidArgument("required", field="dispute_id")
            dispute = task.disputes.get(req.dispute_id)
            prior = self.execute(
                who,
                C.ResolveDispute(
                    req.task_id,
                    req.dispute_id,
                    who.person_id,
                    req.decision,
                    req.comment,
                    expert_roles=who.roles,
                    author=self._author_record(task, dispute.author_id) if dispute else NO_HISTORY,
                ),
                req.command_id,
                fp,
                prior_checked=True,
            )
        resolved = event_of(prior, events_pb2.DisputeResolved)
        out = self._dispute_view(resolved.task_id, resolved.dispute_id)
        if resolved.decision == R.DISPUTE_DECISION_OVERTURN:
            out.next_stage = _sent_on(self.task_state(resolved.task_id), prior, resolved.stage_index)[1]
        return out

    def list_disputes(self, who: Principal, req: api_pb2.ListDisputesRequest) -> api_pb2.ListDisputesResponse:
        who.require(READ_ALL, "ListDisputes")
        self.require_member_or_admin(who, self.project_state(req.project_id))
        open_ = req.status in (api_pb2.DISPUTE_STATUS_UNSPECIFIED, api_pb2.DISPUTE_STATUS_OPEN)
        docs, token = review_queries.disputes(
            self.store,
            req.project_id,
            open_=open_,
            limit=min(req.limit or 50, MAX_PAGE),
            page_token=req.page_token,
        )
        return api_pb2.ListDisputesResponse(disputes=[_dispute_of(d) for d in docs], next_page_token=token)

    def list_review_queue(
        self, who: Principal, req: api_pb2.ListReviewQueueRequest
    ) -> api_pb2.ListReviewQueueResponse:
        who.require(READ_ALL, "ListReviewQueue")
        project = self.project_state(req.project_id)
        self.require_member_or_admin(who, project)
        pipeline = resolve_pipeline(project.project_id, project.settings)
        stages = {stage_name(s): s for s in pipeline.stages}
        name = req.stage or next(iter(stages), "")
        stage = stages.get(name)
        if stage is None:
            known = ", ".join(stages) or "none: the project does not review"
            raise InvalidArgument(
                f"no stage {name!r} in the project's pipeline (stages: {known})", field="stage"
            )
        if stage.kind == EXPERT:
            raise InvalidArgument(
                f"stage {name!r} resolves disputes: list them with ListDisputes", field="stage"
            )
        if not (may_review(stage, who.roles) or who.has(R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_AUDITOR)):
            raise PermissionDenied(f"stage {name!r} is reviewed by the roles: {role_list(stage)}")
        docs, token = review_queries.review_queue(
            self.store, req.project_id, name, min(req.limit or 50, MAX_PAGE), req.page_token
        )
        out = api_pb2.ListReviewQueueResponse(
            next_page_token=token,
            depth=review_queries.stage_depths(self.store, req.project_id).get(name, 0),
            stage=name,
        )
        for doc in docs:
            item = api_pb2.ReviewQueueItem(
                task_id=doc["task_id"],
                annotation_id=doc["annotation_id"],
                version=doc["version"],
                author_id=doc["author_id"],
                stage=doc["stage"],
                rate=doc["rate"],
            )
            item.entered_at.FromMilliseconds(doc["entered_ms"])
            out.items.append(item)
        return out

    def get_review_state(self, who: Principal, req: api_pb2.GetReviewStateRequest) -> api_pb2.ReviewState:
        who.require(EVERYONE, "GetReviewState")
        task = self.task_state(req.task_id)
        full = self.may_see_task(who, task, self.project_state(task.project_id))
        if task.gold is not None and not full:
            return self._disguised_review_state(task, who.person_id)
        out = api_pb2.ReviewState(
            task_id=task.task_id,
            project_id=task.project_id,
            stages=[stage_name(s) for s in task.pipeline.stages],
        )
        doc = review_queries.review_state(self.store, req.task_id)
        if doc is None:
            return out  # the projection has not seen the task yet
        disputes: dict[str, Doc] = {
            d["dispute_id"]: d for d in review_queries.disputes_of_task(self.store, req.task_id)
        }
        for annotation_id, a in doc["annotations"].items():
            if not full and a["author_id"] != who.person_id:
                continue
            view = api_pb2.AnnotationReview(
                annotation_id=annotation_id,
                author_id=a["author_id"],
                version=a["version"],
                status=ANN_STATUS.get(a["status"], api_pb2.ANNOTATION_STATUS_UNSPECIFIED),
                pending_stage=a["pending"],
            )
            for name in out.stages:
                rec = a["stages"].get(name)
                if rec is None:
                    continue
                record = api_pb2.StageRecord(
                    stage=name,
                    state=STAGE_STATE[rec["state"]],
                    version=rec["version"],
                    reviewer_id=rec.get("reviewer_id", ""),
                    reason_codes=rec.get("reason_codes", ()),
                    comment=rec.get("comment", ""),
                    sampled=rec.get("sampled", True),
                    rate=rec.get("rate", 1.0),
                    sample_point=rec.get("sample_point", 0.0),
                )
                record.at.FromMilliseconds(rec["at_ms"])
                view.stages.append(record)
            for dispute_id in a.get("disputes", ()):
                if dispute_id in disputes:
                    view.disputes.append(_dispute_of(disputes[dispute_id]))
            out.annotations.append(view)
        return out

    def _disguised_review_state(self, task: TaskState, person_id: str) -> api_pb2.ReviewState:
        """A gold task's review state as one of its annotators sees it: their answer waiting at
        the project's first stage (accepted where the project does not review)."""
        project = self.project_state(task.project_id)
        pipeline = resolve_pipeline(task.project_id, project.settings)
        first = self._first_stage(task.project_id)
        out = api_pb2.ReviewState(
            task_id=task.task_id, project_id=task.project_id, stages=[stage_name(s) for s in pipeline.stages]
        )
        for a in task.annotations.values():
            if a.author_id != person_id:
                continue
            out.annotations.append(
                api_pb2.AnnotationReview(
                    annotation_id=a.annotation_id,
                    author_id=a.author_id,
                    version=a.version,
                    status=api_pb2.ANNOTATION_STATUS_SUBMITTED
                    if first
                    else api_pb2.ANNOTATION_STATUS_ACCEPTED,
                    pending_stage=first,
                )
            )
        return out

    def list_feedback(self, who: Principal, req: api_pb2.ListFeedbackRequest) -> api_pb2.ListFeedbackResponse:
        who.require(EVERYONE, "ListFeedback")
        person_id = req.person_id or who.person_id
        scope: frozenset[str] | None = None
        if person_id != who.person_id:
            who.require((R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_AUDITOR), "ListFeedback of other people")
            if not who.sees_everything:  # managers: the projects they manage
                scope = frozenset(queries.projects_of(self.store, who.person_id))
        if req.project_id:
            self.require_member_or_admin(who, self.project_state(req.project_id))
            scope = frozenset({req.project_id})
        limit = min(req.limit or 50, MAX_PAGE)
        # two feeds with one cursor format: verdicts on work (review view) and qualification
        # results and suspensions (gold view), merged newest first
        rows, token = gold_queries.merge_pages(
            [
                review_queries.feedback(
                    self.store, person_id, limit=limit, page_token=req.page_token, project_ids=scope
                ),
                gold_queries.quality_feed(
                    self.store, person_id, limit=limit, page_token=req.page_token, project_ids=scope
                ),
            ],
            limit,
        )
        projects: dict[str, ProjectState | None] = {}
        out = api_pb2.ListFeedbackResponse(next_page_token=token)
        for cursor, row in rows:
            if "event" in row:
                out.items.append(_quality_item(cursor, row))
                continue
            pid = row["project_id"]
            if pid not in projects:
                try:
                    projects[pid] = self.project_state(pid)
                except NotFound:
                    projects[pid] = None
            project = projects[pid]
            item = api_pb2.FeedbackItem(
                cursor=cursor,
                kind=FEEDBACK_KIND.get(row["kind"], api_pb2.FEEDBACK_KIND_UNSPECIFIED),
                project_id=pid,
                task_id=row["task_id"],
                annotation_id=row["annotation_id"],
                version=row["version"],
                stage=row.get("stage", ""),
                from_person_id=row.get("from_person_id", ""),
                verdict=row.get("verdict", 0),
                reason_codes=row.get("reason_codes", ()),
                comment=row.get("comment", ""),
                dispute_id=row.get("dispute_id", ""),
                decision=row.get("decision", 0),
                position=row["position"],
                event_id=row["event_id"],
            )
            for code in item.reason_codes:
                description = project.reason_description(code) if project is not None else ""
                item.reasons.append(model_pb2.ReasonCode(code=code, description=description))
            item.at.FromMilliseconds(row["at_ms"])
            out.items.append(item)
        return out

    # ------------------------------------------------------------------ gold and qualification

    def _quality_scope(self, who: Principal, project_id: str, person_id: str, what: str) -> ProjectState:
        """Yourself in a project of yours; other people: admins and auditors, or the project's
        managers and QA."""
        project = self.project_state(project_id)
        self.require_member_or_admin(who, project)
        if person_id != who.person_id:
            who.require(QUALITY_READERS, f"{what} of other people")
        return project

    def _reads_quality(self, who: Principal, project: ProjectState) -> bool:
        """Whether the caller may see which tasks were gold (the recent results)."""
        return who.sees_everything or (
            who.has(R.ROLE_MANAGER, R.ROLE_QA) and who.person_id in project.members
        )

    def _accuracy_report(
        self, project: ProjectState, person_id: str, *, recent: bool
    ) -> api_pb2.AccuracyReport:
        """The person's standing as the log says (their aggregate: window, suspension) plus the
        per-class figures and times from the gold view."""
        pid = project.project_id
        policy = resolve_policy(pid, project.settings.quality)
        standing = self.person_state(person_id).standing(pid)
        window = standing.window
        out = api_pb2.AccuracyReport(
            person_id=person_id,
            project_id=pid,
            window=policy.window,
            results=len(window),
            passed=sum(e.passed for e in window),
            accuracy=standing.accuracy,
            mean_score=sum(e.score for e in window) / len(window) if window else 0.0,
            suspended=standing.suspension is not None,
            min_accuracy=policy.min_accuracy,
            min_results=policy.min_results,
            total_results=standing.total,
        )
        doc = gold_queries.accuracy(self.store, pid, person_id) or {}
        for figures in gold_queries.class_figures(doc):
            out.classes.append(
                api_pb2.ClassAccuracy(
                    label=figures.label,
                    matched=figures.matched,
                    missed=figures.missed,
                    extra=figures.extra,
                    accuracy=figures.accuracy,
                    results=figures.results,
                )
            )
        suspension = standing.suspension
        if suspension is not None:
            out.suspension.CopyFrom(
                api_pb2.Suspension(
                    person_id=person_id,
                    project_id=pid,
                    reason=suspension.reason,
                    accuracy=suspension.accuracy,
                    threshold=suspension.threshold,
                    results=suspension.results,
                    retraining_skill=suspension.retraining_skill,
                    position=str(doc.get("suspension", {}).get("position", "")),
                )
            )
            since = doc.get("suspension", {}).get("since_ms")
            if since:
                out.suspension.since.FromMilliseconds(int(since))
        if recent:
            for row in gold_queries.recent_results(self.store, pid, person_id, policy.window):
                if row["purpose"] != R.GOLD_PURPOSE_GOLD:
                    continue
                result = api_pb2.GoldResult(
                    task_id=row["task_id"],
                    annotation_id=row["annotation_id"],
                    score=row["score"],
                    passed=row["passed"],
                    event_id=row["event_id"],
                )
                for label, (matched, missed, extra) in sorted(row["classes"].items()):
                    result.classes.append(
                        model_pb2.ClassScore(label=label, matched=matched, missed=missed, extra=extra)
                    )
                result.at.FromMilliseconds(row["at_ms"])
                out.recent.append(result)
        return out

    def get_accuracy(self, who: Principal, req: api_pb2.GetAccuracyRequest) -> api_pb2.AccuracyReport:
        who.require(EVERYONE, "GetAccuracy")
        person_id = req.person_id or who.person_id
        project = self._quality_scope(who, req.project_id, person_id, "GetAccuracy")
        return self._accuracy_report(project, person_id, recent=self._reads_quality(who, project))

    def list_accuracy(self, who: Principal, req: api_pb2.ListAccuracyRequest) -> api_pb2.ListAccuracyResponse:
        who.require(QUALITY_READERS, "ListAccuracy")
        project = self.project_state(req.project_id)
        self.require_member_or_admin(who, project)
        out = api_pb2.ListAccuracyResponse()
        for doc in gold_queries.accuracy_of_project(self.store, req.project_id):
            try:
                out.people.append(self._accuracy_report(project, doc["person_id"], recent=False))
            except NotFound:
                continue
        return out

    def list_suspensions(
        self, who: Principal, req: api_pb2.ListSuspensionsRequest
    ) -> api_pb2.ListSuspensionsResponse:
        who.require(QUALITY_READERS, "ListSuspensions")
        project = self.project_state(req.project_id)
        self.require_member_or_admin(who, project)
        out = api_pb2.ListSuspensionsResponse()
        for person_id, doc in gold_queries.suspensions(self.store, req.project_id):
            item = api_pb2.Suspension(
                person_id=person_id,
                project_id=req.project_id,
                reason=doc["reason"],
                accuracy=doc["accuracy"],
                threshold=doc["threshold"],
                results=doc["results"],
                retraining_skill=doc.get("retraining_skill", ""),
                position=doc["position"],
            )
            item.since.FromMilliseconds(int(doc["since_ms"]))
            out.suspensions.append(item)
        return out

    def reinstate_person(self, who: Principal, req: api_pb2.ReinstatePersonRequest) -> api_pb2.AccuracyReport:
        project = self.managed_project(who, req.project_id, "ReinstatePerson")
        fp = request_fingerprint("ReinstatePerson", req)
        prior = self.bus.prior(req.command_id, fp)
        if prior is None:
            if not req.person_id:
                raise InvalidArgument("required", field="person_id")
            self.person_state(req.person_id)
            prior = self.execute(
                who,
                C.ReinstatePerson(req.person_id, req.project_id, who.person_id, req.reason),
                req.command_id,
                fp,
                prior_checked=True,
            )
        reinstated = event_of(prior, events_pb2.PersonReinstated)
        self.wait_for_projections(prior)
        return self._accuracy_report(project, reinstated.person_id, recent=True)

    def start_qualification(
        self, who: Principal, req: api_pb2.StartQualificationRequest
    ) -> api_pb2.QualificationStatus:
        who.require(ANNOTATE, "StartQualification")
        fp = request_fingerprint("StartQualification", req)
        prior = self.bus.prior(req.command_id, fp)
        if prior is None:
            project = self.project_state(req.project_id)
            if who.person_id not in project.members:
                raise PermissionDenied(f"{who.person_id} is not a member of project {req.project_id}")
            if not req.skill:
                raise InvalidArgument("required", field="skill")
            qualification = qualification_of(project.settings.quality, req.skill)
            if qualification is None:
                known = ", ".join(q.skill for q in project.settings.quality.qualifications) or "none"
                raise InvalidArgument(
                    f"project {req.project_id} has no qualification for {req.skill!r}"
                    f" (qualifications: {known})",
                    field="skill",
                )
            person = self.fresh_person(who.person_id)
            attempt = person.standing(req.project_id).qualification(req.skill).last_attempt + 1
            policy = resolve_policy(req.project_id, project.settings.quality)
            items = [  # items the person could not lease would keep the attempt open for ever
                doc["task_id"]
                for doc in gold_queries.training_tasks(self.store, req.project_id, req.skill)
                if set(doc["required_skills"]) <= who.skills
            ]
            chosen = choose_items(policy.seed, who.person_id, attempt, items, qualification.items)
            prior = self.execute(
                who,
                C.StartQualification(
                    who.person_id, req.project_id, req.skill, qualification, tuple(chosen), self.clock()
                ),
                req.command_id,
                fp,
                prior_checked=True,
            )
        started = event_of(prior, events_pb2.QualificationStarted)
        return self._qualification_status(
            started.project_id, started.person_id, started.skill, prior.position
        )

    def get_qualification(
        self, who: Principal, req: api_pb2.GetQualificationRequest
    ) -> api_pb2.QualificationStatus:
        who.require(EVERYONE, "GetQualification")
        person_id = req.person_id or who.person_id
        self._quality_scope(who, req.project_id, person_id, "GetQualification")
        if not req.skill:
            raise InvalidArgument("required", field="skill")
        return self._qualification_status(req.project_id, person_id, req.skill)

    def _qualification_status(
        self, project_id: str, person_id: str, skill: str, position: str = ""
    ) -> api_pb2.QualificationStatus:
        project = self.project_state(project_id)
        person = self.person_state(person_id)
        qs = person.standing(project_id).qualification(skill)
        configured = qualification_of(project.settings.quality, skill)
        if configured is None and not qs.last_attempt:
            raise InvalidArgument(f"project {project_id} has no qualification for {skill!r}", field="skill")
        max_attempts = configured.max_attempts if configured is not None else qs.max_attempts
        out = api_pb2.QualificationStatus(
            person_id=person_id,
            project_id=project_id,
            skill=skill,
            attempt=qs.last_attempt,
            attempts_used=qs.attempts,
            max_attempts=max_attempts,
            has_skill=skill in person.skills,
            position=position,
        )
        if qs.open is not None:
            out.state = api_pb2.QUALIFICATION_STATE_IN_PROGRESS
            out.items_total = len(qs.open.items)
            out.items_done = len(qs.open.results)
        elif qs.last is None or qs.last.attempt != qs.last_attempt:
            out.state = api_pb2.QUALIFICATION_STATE_NOT_STARTED
        elif qs.last.passed:
            out.state = api_pb2.QUALIFICATION_STATE_PASSED
        elif qs.attempts >= max_attempts:
            out.state = api_pb2.QUALIFICATION_STATE_EXHAUSTED
        else:
            out.state = api_pb2.QUALIFICATION_STATE_FAILED
        if qs.last is not None:
            out.last.CopyFrom(qs.last)
            if qs.open is None:
                out.items_total = out.items_done = len(qs.last.items)
        if qs.retry_after is not None and qs.open is None:
            out.retry_after.CopyFrom(codec.timestamp(qs.retry_after))
        return out

    # ------------------------------------------------------------------ history and metrics

    def history(self, who: Principal, req: api_pb2.HistoryRequest) -> api_pb2.HistoryResponse:
        who.require(EVERYONE, "History")
        task = self.task_state(req.task_id)
        full = self.may_see_task(who, task, self.project_state(task.project_id))
        mine = {a.annotation_id for a in task.annotations.values() if a.author_id == who.person_id}
        until = (
            Position.parse(req.as_of_position, field_name="as_of_position") if req.as_of_position else None
        )
        until_time = codec.from_timestamp(req.as_of_time) if req.HasField("as_of_time") else None
        out = api_pb2.HistoryResponse()
        state: TaskState | None = None
        for ev in self.log.read_stream(f"task:{req.task_id}"):
            if until is not None and ev.position > until:
                break
            if until_time is not None and codec.from_timestamp(ev.envelope.recorded_at) > until_time:
                break
            payload = codec.payload_of(ev.envelope)
            evolved = aggregates.evolve(state, payload)
            assert isinstance(evolved, TaskState)
            state = evolved
            if task.gold is not None and not full:
                # a gold task, to one of its annotators: an ordinary import, no scores
                envelope = self._disguised(ev.envelope, task)
                if envelope is not None and _concerns(envelope, payload, who.person_id, mine):
                    out.entries.append(api_pb2.HistoryEntry(position=str(ev.position), event=envelope))
                continue
            if full or _concerns(ev.envelope, payload, who.person_id, mine):
                out.entries.append(api_pb2.HistoryEntry(position=str(ev.position), event=ev.envelope))
        if state is not None:
            last = out.entries[-1].position if out.entries else ""
            out.task.CopyFrom(
                self.task_view(state, last, only="" if full else who.person_id, gold_answer=full)
            )
        return out

    def _disguised(
        self, envelope: events_pb2.EventEnvelope, task: TaskState
    ) -> events_pb2.EventEnvelope | None:
        """An event of a gold task as its annotators may see it: the import as an ordinary
        `task_imported` (no known answer), scores dropped, everything else as it is."""
        if envelope.type == "gold_scored":
            return None
        if envelope.type != "gold_task_imported":
            return envelope
        gold = envelope.gold_task_imported
        project = self.project_state(task.project_id)
        pipeline = resolve_pipeline(task.project_id, project.settings)
        out = events_pb2.EventEnvelope()
        out.CopyFrom(envelope)
        out.ClearField("gold_task_imported")
        out.type = "task_imported"
        out.task_imported.CopyFrom(
            events_pb2.TaskImported(
                project_id=gold.project_id,
                batch_id=gold.batch_id,
                task=gold.task,
                review_policy=R.REVIEW_POLICY_FULL if next_stage(pipeline, 0) >= 0 else R.REVIEW_POLICY_NONE,
                lease_seconds=gold.lease_seconds,
                pipeline=pipeline,
            )
        )
        return out

    def get_metrics(self, who: Principal, req: api_pb2.GetMetricsRequest) -> api_pb2.GetMetricsResponse:
        who.require(EVERYONE, "GetMetrics")
        scope = req.project_id or "*"
        if req.project_id:
            project = self.project_state(req.project_id)
            self.require_member_or_admin(who, project)
        if req.person_id != who.person_id:
            who.require((R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_AUDITOR), "GetMetrics of other people")
            if scope == "*" and not who.sees_everything:
                raise PermissionDenied(
                    "cross-project metrics need the admin or auditor role", field="project_id"
                )
        out = api_pb2.GetMetricsResponse()
        for doc in queries.annotator_metrics(self.store, scope, req.person_id or None):
            out.annotators.append(
                api_pb2.AnnotatorMetrics(
                    **{k: doc.get(k, 0) for k in api_pb2.AnnotatorMetrics.DESCRIPTOR.fields_by_name}
                )
            )
        return out

    # ------------------------------------------------------------------ streams

    def subscribe_labels(
        self, who: Principal, req: api_pb2.SubscribeLabelsRequest, active: object
    ) -> Iterator[api_pb2.LabelEvent]:
        """Accepted labels of one project in log order; `active()` False ends the stream."""
        who.require((R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_AUDITOR, R.ROLE_ML_CLIENT), "SubscribeLabels")
        project = self.project_state(req.project_id)
        self.require_member_or_admin(who, project)
        cursor = parse_checkpoint(req.resume_token)
        self.metrics.label_subscribers.inc()
        try:
            while active():  # type: ignore[operator]
                batch = self.log.read(cursor, 500)
                for ev in batch:
                    cursor[ev.position.partition] = ev.position.offset
                    if ev.envelope.type != "annotation_accepted":
                        continue
                    label = ev.envelope.annotation_accepted
                    if label.project_id != req.project_id:
                        continue
                    yield api_pb2.LabelEvent(
                        resume_token=format_checkpoint(cursor), label=label, envelope=ev.envelope
                    )
                if batch:
                    continue
                if not req.follow:
                    return
                self.log.wait(cursor, 0.5)
        finally:
            self.metrics.label_subscribers.dec()

    def export_labels(
        self, who: Principal, req: api_pb2.ExportLabelsRequest, active: object
    ) -> Iterator[api_pb2.ExportedLabel]:
        """The latest accepted label per (task, annotation), read page by page from the projection
        so memory stays flat whatever the project's size; the cursor is the row's sort key."""
        who.require((R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_AUDITOR, R.ROLE_ML_CLIENT), "ExportLabels")
        project = self.project_state(req.project_id)
        self.require_member_or_admin(who, project)
        cursor = req.cursor
        while active():  # type: ignore[operator]
            page = queries.accepted_labels(self.store, req.project_id, after=cursor, limit=500)
            for sk, doc in page:
                cursor = sk
                label = events_pb2.AnnotationAccepted(
                    task_id=doc["task_id"],
                    annotation_id=doc["annotation_id"],
                    version=doc["version"],
                    author_id=doc["author_id"],
                    accepted_by=doc["accepted_by"],
                    project_id=req.project_id,
                    label_schema_version=doc["label_schema_version"],
                    guideline_version=doc["guideline_version"],
                    data_uri=doc["data_uri"],
                )
                json_format.ParseDict(doc["annotation"], label.annotation)
                out = api_pb2.ExportedLabel(
                    cursor=sk, label=label, position=doc.get("position", ""), event_id=doc["event_id"]
                )
                out.accepted_at.FromMilliseconds(doc["recorded_ms"])
                yield out
            if len(page) < 500:
                return

    def read_events(
        self, who: Principal, req: api_pb2.ReadEventsRequest, active: object
    ) -> Iterator[api_pb2.HistoryEntry]:
        who.require((R.ROLE_ADMIN, R.ROLE_AUDITOR), "ReadEvents")
        cursor = parse_checkpoint(req.from_position, field_name="from_position")
        until = Position.parse(req.to_position, field_name="to_position") if req.to_position else None
        until_time = codec.from_timestamp(req.to_time) if req.HasField("to_time") else None
        remaining = req.limit or None
        head = self.log.head()
        while active():  # type: ignore[operator]
            batch = self.log.read(cursor, 1000)
            if not batch:
                return
            for ev in batch:
                cursor[ev.position.partition] = ev.position.offset
                if ev.position.offset > head.get(ev.position.partition, 0):
                    return
                if until is not None and ev.position.partition == until.partition and ev.position > until:
                    return
                if until_time is not None and codec.from_timestamp(ev.envelope.recorded_at) > until_time:
                    return
                if req.stream_id and ev.envelope.stream_id != req.stream_id:
                    continue
                yield api_pb2.HistoryEntry(position=str(ev.position), event=ev.envelope)
                if remaining is not None:
                    remaining -= 1
                    if remaining <= 0:
                        return


_TASK_LEVEL = frozenset({"task_imported", "prelabel_ingested", "task_completed", "task_reopened"})


def _concerns(envelope: events_pb2.EventEnvelope, payload: Message, person_id: str, mine: set[str]) -> bool:
    """Whether an annotator may see this event of a task it works on: its own actions, what
    happened to its own annotations, and task-level facts; never another annotator's work."""
    if envelope.type in _TASK_LEVEL or envelope.actor.user_id == person_id:
        return True
    if getattr(payload, "person_id", "") == person_id:
        return True
    return getattr(payload, "annotation_id", "") in mine


def _sent_on(
    task: TaskState, outcome: Outcome, from_index: int
) -> tuple[api_pb2.AnnotationStatus.ValueType, str]:
    """(annotation status, stage it waits at) after work left stage `from_index` in `outcome`:
    accepted past the last stage, at the stage a ReviewRouted sampled it for, or at the next
    stage (one that reviews everything records no routing event)."""
    index = next_stage(task.pipeline, from_index + 1)
    for payload in outcome.payloads():
        if isinstance(payload, events_pb2.AnnotationAccepted):
            return api_pb2.ANNOTATION_STATUS_ACCEPTED, ""
        if isinstance(payload, events_pb2.ReviewRouted):
            index = (
                payload.stage_index if payload.sampled else next_stage(task.pipeline, payload.stage_index + 1)
            )
    return api_pb2.ANNOTATION_STATUS_SUBMITTED, task.stage_name(index)


def _dispute_of(doc: Doc) -> api_pb2.Dispute:
    out = api_pb2.Dispute(
        dispute_id=doc["dispute_id"],
        task_id=doc["task_id"],
        project_id=doc["project_id"],
        annotation_id=doc["annotation_id"],
        version=doc["version"],
        author_id=doc["author_id"],
        stage=doc["stage"],
        reviewer_id=doc["reviewer_id"],
        reason_codes=doc["reason_codes"],
        rejection_comment=doc["rejection_comment"],
        comment=doc["comment"],
        status=DISPUTE_STATUS[doc["status"]],
        expert_id=doc["expert_id"],
        resolution_comment=doc["resolution_comment"],
        position=doc["position"],
    )
    out.opened_at.FromMilliseconds(doc["opened_ms"])
    if doc["resolved_ms"]:
        out.resolved_at.FromMilliseconds(doc["resolved_ms"])
    return out


def _quality_item(cursor: str, row: Doc) -> api_pb2.FeedbackItem:
    """A quality feed row (`projections.views.gold`) as a feedback item."""
    kind = row["kind"]
    item = api_pb2.FeedbackItem(
        cursor=cursor,
        kind=FEEDBACK_KIND.get(kind, api_pb2.FEEDBACK_KIND_UNSPECIFIED),
        project_id=row["project_id"],
        position=row["position"],
        event_id=row["event_id"],
    )
    item.at.FromMilliseconds(row["at_ms"])
    if kind == "qualification":
        json_format.ParseDict(row["event"], item.qualification, ignore_unknown_fields=True)
    elif kind == "suspended":
        json_format.ParseDict(row["event"], item.suspension, ignore_unknown_fields=True)
        if "retraining" in row:
            json_format.ParseDict(row["retraining"], item.retraining, ignore_unknown_fields=True)
    elif kind == "reinstated":
        json_format.ParseDict(row["event"], item.reinstatement, ignore_unknown_fields=True)
        item.from_person_id = item.reinstatement.reinstated_by
    return item


def _suspended_message(person_id: str, project_id: str, standing: Standing) -> str:
    suspension = standing.suspension
    assert suspension is not None
    skill = suspension.retraining_skill
    then = (
        f"pass the {skill!r} qualification again (StartQualification) or ask a manager to reinstate you"
        if skill
        else "a manager of the project can reinstate you (ReinstatePerson)"
    )
    return f"{person_id} is suspended from project {project_id}: {suspension.reason}; {then}"


def _works_on(task: TaskState, person_id: str) -> bool:
    return any(lease.person_id == person_id for lease in task.leases.values()) or any(
        a.author_id == person_id for a in task.annotations.values()
    )


def _gold_import(
    project_id: str, batch_id: str, spec: model_pb2.TaskSpec, lease_seconds: int
) -> C.ImportGoldTask:
    """The known answer leaves the spec: it lives in `GoldTaskImported.gold` only."""
    plain = model_pb2.TaskSpec()
    plain.CopyFrom(spec)
    plain.ClearField("gold")
    gold = model_pb2.GoldSpec()
    gold.CopyFrom(spec.gold)
    return C.ImportGoldTask(project_id, batch_id, plain, gold, lease_seconds)


def could_lease(task: TaskState, person_id: str, now: datetime) -> bool:
    """Whether a lease of the task by the person at `now` may be allowed (a cheap pre-check of the
    lease decision: the task is open, has a slot, and holds no live lease of theirs)."""
    if task.status == "done":
        return False
    if any(lease.person_id == person_id and lease.expires_at > now for lease in task.leases.values()):
        return False  # a lease of theirs that has run out is retired by the lease decision itself
    expired_leases = sum(1 for lease in task.leases.values() if lease.expires_at <= now)
    return task.free_slots + expired_leases > 0
