"""Project and person aggregate rules: allowed paths and refusals with their error type and field."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
from coordinator.domain import aggregates
from coordinator.domain.commands import (
    AddProjectMember,
    CreateProject,
    IssueToken,
    PersonCommand,
    ProjectCommand,
    PublishGuideline,
    PublishLabelSchema,
    RegisterPerson,
    RemoveProjectMember,
    RevokeToken,
    UpdatePerson,
    UpdateProjectSettings,
)
from coordinator.domain.person import PersonState
from coordinator.domain.project import ProjectState
from coordinator.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LabelweaveError,
    NotFound,
)

R = model_pb2
SHA = hashlib.sha256(b"secret").hexdigest()

Cmd = ProjectCommand | PersonCommand


def run(state: aggregates.State | None, cmd: Cmd) -> tuple[list[Message], aggregates.State]:
    events = aggregates.decide(state, cmd)
    new = state
    for e in events:
        new = aggregates.evolve(new, e)
    assert new is not None
    return events, new


def refused(state: aggregates.State | None, cmd: Cmd, kind: type[LabelweaveError], field: str = "") -> str:
    with pytest.raises(kind) as info:
        aggregates.decide(state, cmd)
    assert type(info.value) is kind
    assert info.value.field == field, info.value.message
    return info.value.message


# ======================================================================================= project


def create(
    settings: model_pb2.ProjectSettings | None = None, project_id: str = "p1", name: str = "Cars"
) -> CreateProject:
    return CreateProject(project_id, name, "street scenes", settings or model_pb2.ProjectSettings())


def project(**kw: object) -> ProjectState:
    state = run(None, create(**kw))[1]  # type: ignore[arg-type]
    assert isinstance(state, ProjectState)
    return state


def test_create_project_normalizes_settings() -> None:
    events, state = run(None, create())
    (ev,) = events
    assert isinstance(ev, events_pb2.ProjectCreated)
    assert ev.settings == model_pb2.ProjectSettings(
        default_overlap=1, lease_seconds=1800, review_policy=R.REVIEW_POLICY_FULL
    )
    assert isinstance(state, ProjectState)
    assert (state.project_id, state.name, state.description) == ("p1", "Cars", "street scenes")
    assert state.settings == ev.settings
    assert state.label_schema is None and state.guideline is None and state.members == frozenset()
    assert (state.schema_version, state.guideline_version, state.reject_reasons) == (0, 0, frozenset())


def test_create_project_keeps_explicit_settings() -> None:
    s = model_pb2.ProjectSettings(default_overlap=3, lease_seconds=60, review_policy=R.REVIEW_POLICY_NONE)
    (ev,), _ = run(None, create(s))
    assert ev.settings == s  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad_id", ["", "-x", ".x", "a b", "a/b", "x" * 129, "ok\n", "é"])
def test_create_project_bad_id(bad_id: str) -> None:
    refused(None, create(project_id=bad_id), InvalidArgument, "project_id")


def test_create_project_refusals() -> None:
    refused(project(), create(), AlreadyExists, "project_id")
    refused(None, create(name=""), InvalidArgument, "name")
    refused(None, create(name="   "), InvalidArgument, "name")
    refused(None, create(name="n" * 201), InvalidArgument, "name")
    run(None, create(name="n" * 200))
    refused(
        None,
        create(model_pb2.ProjectSettings(default_overlap=101)),
        InvalidArgument,
        "settings.default_overlap",
    )
    run(None, create(model_pb2.ProjectSettings(default_overlap=100)))
    refused(
        None, create(model_pb2.ProjectSettings(lease_seconds=9)), InvalidArgument, "settings.lease_seconds"
    )
    refused(
        None,
        create(model_pb2.ProjectSettings(lease_seconds=7 * 86400 + 1)),
        InvalidArgument,
        "settings.lease_seconds",
    )
    run(None, create(model_pb2.ProjectSettings(lease_seconds=7 * 86400)))
    run(None, create(model_pb2.ProjectSettings(lease_seconds=10)))


def test_update_settings() -> None:
    s = model_pb2.ProjectSettings(default_overlap=2)
    events, state = run(project(), UpdateProjectSettings("p1", s))
    (ev,) = events
    assert isinstance(ev, events_pb2.ProjectSettingsChanged)
    assert ev.settings == model_pb2.ProjectSettings(
        default_overlap=2, lease_seconds=1800, review_policy=R.REVIEW_POLICY_FULL
    )
    assert isinstance(state, ProjectState) and state.settings == ev.settings
    refused(None, UpdateProjectSettings("p1", s), NotFound, "project_id")
    bad = model_pb2.ProjectSettings(default_overlap=500)
    refused(project(), UpdateProjectSettings("p1", bad), InvalidArgument, "settings.default_overlap")


def schema(*reasons: str) -> model_pb2.LabelSchema:
    return model_pb2.LabelSchema(
        version=77,  # ignored: decide assigns the version
        classes=[model_pb2.LabelClass(name="car", kinds=[R.ANNOTATION_KIND_BOX])],
        reject_reasons=list(reasons),
    )


def test_publish_label_schema_assigns_versions() -> None:
    cmd_schema = schema("blurry")
    events, state = run(project(), PublishLabelSchema("p1", cmd_schema))
    (ev,) = events
    assert isinstance(ev, events_pb2.LabelSchemaPublished)
    assert ev.schema.version == 1 and cmd_schema.version == 77  # command not mutated
    assert isinstance(state, ProjectState)
    assert state.schema_version == 1 and state.reject_reasons == frozenset({"blurry"})
    (ev2,), state = run(state, PublishLabelSchema("p1", schema("blurry", "occluded")))
    assert ev2.schema.version == 2  # type: ignore[attr-defined]
    assert isinstance(state, ProjectState)
    assert state.schema_version == 2 and state.reject_reasons == frozenset({"blurry", "occluded"})


def test_publish_invalid_label_schema_is_refused() -> None:
    bad = model_pb2.LabelSchema(classes=[model_pb2.LabelClass(name="", kinds=[R.ANNOTATION_KIND_BOX])])
    with pytest.raises(InvalidArgument) as info:
        aggregates.decide(project(), PublishLabelSchema("p1", bad))
    assert info.value.field.startswith("schema")


def test_publish_label_schema_on_missing_project() -> None:
    refused(None, PublishLabelSchema("p1", schema()), NotFound, "project_id")


def test_label_schema_evolve_without_validation() -> None:
    # Evolve alone must replay history even when today's validator would object.
    state = aggregates.evolve(project(), events_pb2.LabelSchemaPublished(project_id="p1", schema=schema("x")))
    assert isinstance(state, ProjectState)
    assert state.schema_version == 77 and state.reject_reasons == frozenset({"x"})


def test_publish_guideline() -> None:
    g = model_pb2.Guideline(title="How to box cars", body="# Boxes", version=5)
    events, state = run(project(), PublishGuideline("p1", g))
    (ev,) = events
    assert isinstance(ev, events_pb2.GuidelinePublished)
    assert ev.guideline.version == 1 and ev.guideline.title == "How to box cars" and g.version == 5
    (ev2,), state = run(state, PublishGuideline("p1", g))
    assert ev2.guideline.version == 2  # type: ignore[attr-defined]
    assert isinstance(state, ProjectState) and state.guideline_version == 2
    refused(state, PublishGuideline("p1", model_pb2.Guideline(body="x")), InvalidArgument, "guideline.title")
    refused(None, PublishGuideline("p1", g), NotFound, "project_id")


def test_membership() -> None:
    events, state = run(project(), AddProjectMember("p1", "ann"))
    (ev,) = events
    assert isinstance(ev, events_pb2.ProjectMemberAdded) and ev.person_id == "ann"
    assert isinstance(state, ProjectState) and state.members == frozenset({"ann"})
    refused(state, AddProjectMember("p1", "ann"), FailedPrecondition)
    refused(state, AddProjectMember("p1", "bad id"), InvalidArgument, "person_id")
    refused(state, RemoveProjectMember("p1", "bob"), FailedPrecondition)
    events, state = run(state, RemoveProjectMember("p1", "ann"))
    assert isinstance(events[0], events_pb2.ProjectMemberRemoved)
    assert isinstance(state, ProjectState) and state.members == frozenset()
    refused(None, AddProjectMember("p1", "ann"), NotFound, "project_id")


# ======================================================================================= person


def spec(
    person_id: str = "ann",
    roles: tuple[int, ...] = (R.ROLE_ANNOTATOR,),
    tz: str = "Europe/Warsaw",
    skills: tuple[str, ...] = ("lidar",),
) -> model_pb2.PersonSpec:
    return model_pb2.PersonSpec(
        person_id=person_id,
        display_name="Ann",
        roles=list(roles),  # type: ignore[arg-type]
        time_zone=tz,
        skills=[model_pb2.Skill(name=s, level=2) for s in skills],
    )


def person() -> PersonState:
    state = run(None, RegisterPerson(spec()))[1]
    assert isinstance(state, PersonState)
    return state


def test_register_person() -> None:
    events, state = run(None, RegisterPerson(spec(roles=(R.ROLE_ANNOTATOR, R.ROLE_REVIEWER))))
    (ev,) = events
    assert isinstance(ev, events_pb2.PersonRegistered) and ev.person.person_id == "ann"
    assert isinstance(state, PersonState)
    assert state.person_id == "ann"
    assert state.roles == frozenset({R.ROLE_ANNOTATOR, R.ROLE_REVIEWER})
    assert state.skills == frozenset({"lidar"})
    assert not state.tokens


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (spec(person_id=""), "person.person_id"),
        (spec(person_id="a b"), "person.person_id"),
        (spec(roles=()), "person.roles"),
        (spec(roles=(R.ROLE_ANNOTATOR, R.ROLE_UNSPECIFIED)), "person.roles[1]"),
        (spec(roles=(99,)), "person.roles[0]"),
        (spec(tz=""), "person.time_zone"),
        (spec(tz="Mars/Olympus"), "person.time_zone"),
        (spec(tz="../etc/passwd"), "person.time_zone"),
        (spec(tz="America"), "person.time_zone"),
        (spec(skills=("a", "")), "person.skills[1].name"),
        (spec(skills=("a", "b", "a")), "person.skills[2].name"),
    ],
)
def test_register_person_refusals(bad: model_pb2.PersonSpec, field: str) -> None:
    refused(None, RegisterPerson(bad), InvalidArgument, field)


def test_register_twice_already_exists() -> None:
    refused(person(), RegisterPerson(spec()), AlreadyExists, "person.person_id")


def test_update_person_replaces_profile() -> None:
    new = spec(roles=(R.ROLE_REVIEWER,), tz="UTC", skills=())
    events, state = run(person(), UpdatePerson(new))
    assert isinstance(events[0], events_pb2.PersonUpdated)
    assert isinstance(state, PersonState)
    assert state.roles == frozenset({R.ROLE_REVIEWER}) and state.skills == frozenset()
    assert state.spec.time_zone == "UTC"
    refused(None, UpdatePerson(new), NotFound, "person.person_id")
    refused(person(), UpdatePerson(spec(tz="Nowhere")), InvalidArgument, "person.time_zone")
    refused(person(), UpdatePerson(spec(person_id="bob")), InvalidArgument, "person.person_id")


def test_issue_and_revoke_token() -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    events, state = run(person(), IssueToken("ann", "tok1", SHA, "ci", expires))
    (ev,) = events
    assert isinstance(ev, events_pb2.TokenIssued)
    assert (ev.person_id, ev.token_id, ev.token_sha256, ev.description) == ("ann", "tok1", SHA, "ci")
    assert ev.expires_at.ToDatetime(tzinfo=UTC) == expires
    (ev2,), state = run(state, IssueToken("ann", "tok2", SHA, "", None))
    assert isinstance(ev2, events_pb2.TokenIssued) and not ev2.HasField("expires_at")
    assert isinstance(state, PersonState)
    assert state.tokens["tok1"].expires_at == expires and state.tokens["tok2"].expires_at is None
    assert not state.tokens["tok1"].revoked
    events, state = run(state, RevokeToken("ann", "tok1"))
    assert isinstance(events[0], events_pb2.TokenRevoked)
    assert isinstance(state, PersonState)
    assert state.tokens["tok1"].revoked and not state.tokens["tok2"].revoked
    refused(state, RevokeToken("ann", "tok1"), FailedPrecondition)
    refused(state, RevokeToken("ann", "nope"), NotFound, "token_id")
    refused(state, IssueToken("ann", "tok1", SHA, "", None), AlreadyExists, "token_id")


def test_issue_token_refusals() -> None:
    state = person()
    refused(None, IssueToken("ann", "tok", SHA, "", None), NotFound, "person_id")
    refused(None, RevokeToken("ann", "tok"), NotFound, "person_id")
    refused(state, IssueToken("ann", "tok", SHA.upper(), "", None), InvalidArgument, "token_sha256")
    refused(state, IssueToken("ann", "tok", SHA[:-1], "", None), InvalidArgument, "token_sha256")
    refused(state, IssueToken("ann", "tok", SHA + "\n", "", None), InvalidArgument, "token_sha256")
    refused(state, IssueToken("ann", "", SHA, "", None), InvalidArgument, "token_id")


# ======================================================================================= routing


def test_streams() -> None:
    assert aggregates.stream_of(create()) == "project:p1"
    assert aggregates.stream_of(AddProjectMember("p2", "x")) == "project:p2"
    assert aggregates.stream_of(RegisterPerson(spec(person_id="bob"))) == "person:bob"
    assert aggregates.stream_of(UpdatePerson(spec(person_id="bob"))) == "person:bob"
    assert aggregates.stream_of(IssueToken("cid", "t", SHA, "", None)) == "person:cid"
    assert aggregates.stream_of(RevokeToken("cid", "t")) == "person:cid"


def test_wrong_state_kind_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        aggregates.decide(person(), AddProjectMember("p1", "ann"))
    with pytest.raises(TypeError):
        aggregates.evolve(project(), events_pb2.TokenRevoked(person_id="ann", token_id="t"))


def test_fold_project_and_person_history() -> None:
    log: list[Message] = []
    state: aggregates.State | None = None
    cmds: list[Cmd] = [
        create(),
        AddProjectMember("p1", "ann"),
        PublishGuideline("p1", model_pb2.Guideline(title="t")),
        UpdateProjectSettings("p1", model_pb2.ProjectSettings(default_overlap=2)),
    ]
    for cmd in cmds:
        events, state = run(state, cmd)
        log.extend(events)
    assert aggregates.fold(log) == state
    plog: list[Message] = []
    pstate: aggregates.State | None = None
    pcmds: list[Cmd] = [
        RegisterPerson(spec()),
        IssueToken("ann", "t1", SHA, "", None),
        RevokeToken("ann", "t1"),
    ]
    for pcmd in pcmds:
        events, pstate = run(pstate, pcmd)
        plog.extend(events)
    assert aggregates.fold(plog) == pstate
