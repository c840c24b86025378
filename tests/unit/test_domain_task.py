"""Task aggregate rules: each command's allowed path and each refusal with its error type and field."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import annotation_pb2, events_pb2, model_pb2
from coordinator.domain import aggregates
from coordinator.domain.commands import (
    AbandonAnnotation,
    EditAnnotation,
    ExpireLease,
    ImportTask,
    IngestPrelabel,
    LeaseTask,
    ReleaseLease,
    ReopenTask,
    ReviewAnnotation,
    SubmitAnnotation,
    TaskCommand,
)
from coordinator.domain.task import TaskState, decide_task, evolve_task
from coordinator.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    LabelweaveError,
    NotFound,
    PermissionDenied,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
FULL = model_pb2.REVIEW_POLICY_FULL
NONE = model_pb2.REVIEW_POLICY_NONE


def content(label: str = "cat") -> annotation_pb2.Annotation:
    return annotation_pb2.Annotation(
        shapes=[
            annotation_pb2.Shape(id="s1", label=label, box=annotation_pb2.BoundingBox(width=3, height=4))
        ],
        source=annotation_pb2.ANNOTATION_SOURCE_HUMAN,
    )


def import_cmd(
    *,
    overlap: int = 1,
    policy: model_pb2.ReviewPolicy.ValueType = FULL,
    skills: Sequence[str] = (),
    lease_seconds: int = 600,
    task_id: str = "t1",
) -> ImportTask:
    spec = model_pb2.TaskSpec(
        task_id=task_id, data_uri="s3://bucket/img.png", overlap=overlap, required_skills=list(skills)
    )
    return ImportTask("p1", "b1", spec, policy, lease_seconds)


def run(state: TaskState | None, cmd: TaskCommand) -> tuple[list[Message], TaskState]:
    events = decide_task(state, cmd)
    assert events, "a successful decision always records something"
    new = state
    for e in events:
        new = evolve_task(new, e)
    assert new is not None
    return events, new


def task(**kw: object) -> TaskState:
    return run(None, import_cmd(**kw))[1]  # type: ignore[arg-type]


def lease(state: TaskState, person: str, lease_id: str | None = None, now: datetime = T0) -> TaskState:
    return run(state, LeaseTask("t1", lease_id or f"L-{person}", person, frozenset(), now))[1]


def submit_cmd(
    person: str, ann_id: str | None = None, lease_id: str | None = None, now: datetime = T0
) -> SubmitAnnotation:
    return SubmitAnnotation(
        "t1", lease_id or f"L-{person}", person, ann_id or f"A-{person}", content(), 3, 2, 1500, now
    )


def submitted(state: TaskState, person: str, now: datetime = T0) -> TaskState:
    return run(lease(state, person, now=now), submit_cmd(person, now=now))[1]


def review_cmd(
    ann_id: str,
    verdict: model_pb2.Verdict.ValueType,
    *,
    reviewer: str = "rev",
    version: int = 1,
    reasons: tuple[str, ...] = (),
    allowed: frozenset[str] = frozenset(),
    correction: annotation_pb2.Annotation | None = None,
) -> ReviewAnnotation:
    return ReviewAnnotation(
        "t1", ann_id, version, reviewer, verdict, reasons, "looks off", correction, allowed, 4, 5
    )


def rejected(state: TaskState, ann_id: str) -> TaskState:
    return run(state, review_cmd(ann_id, model_pb2.VERDICT_REJECT, reasons=("blurry",)))[1]


def edit_cmd(ann_id: str, person: str, expected: int = 1, label: str = "dog") -> EditAnnotation:
    return EditAnnotation("t1", ann_id, expected, person, content(label), 6, 7)


def refused(state: TaskState | None, cmd: TaskCommand, kind: type[LabelweaveError], field: str = "") -> str:
    with pytest.raises(kind) as info:
        decide_task(state, cmd)
    assert type(info.value) is kind
    assert info.value.field == field
    return info.value.message


def kinds(events: Sequence[Message]) -> list[str]:
    return [type(e).__name__ for e in events]


# ------------------------------------------------------------------------------------ import


def test_import_creates_a_queued_task() -> None:
    events, state = run(None, import_cmd(overlap=2, lease_seconds=900))
    (ev,) = events
    assert isinstance(ev, events_pb2.TaskImported)
    assert (ev.project_id, ev.batch_id, ev.task.task_id, ev.task.overlap) == ("p1", "b1", "t1", 2)
    assert (ev.review_policy, ev.lease_seconds) == (FULL, 900)
    assert (state.task_id, state.project_id, state.batch_id, state.round) == ("t1", "p1", "b1", 1)
    assert state.overlap == 2 and state.free_slots == 2 and state.status == "queued"
    assert not state.leases and not state.annotations and state.prelabel is None and not state.completed


def test_import_twice_already_exists() -> None:
    refused(task(), import_cmd(), AlreadyExists, "task.task_id")


def test_import_zero_overlap_is_invalid() -> None:
    refused(None, import_cmd(overlap=0), InvalidArgument, "task.overlap")


def test_import_without_task_id_is_invalid() -> None:
    refused(None, import_cmd(task_id=""), InvalidArgument, "task.task_id")


def test_import_keeps_a_prelabel_given_in_the_spec() -> None:
    cmd = import_cmd()
    cmd.spec.prelabel.CopyFrom(content("pre"))
    _, state = run(None, cmd)
    assert state.prelabel == content("pre")
    assert state.prelabel_id == ""


def test_import_does_not_alias_the_command_spec() -> None:
    cmd = import_cmd()
    _, state = run(None, cmd)
    cmd.spec.overlap = 9
    assert state.overlap == 1


# ------------------------------------------------------------------------------------ prelabel


def prelabel(name: str = "det", version: str = "1.0") -> annotation_pb2.Annotation:
    ann = content("pre")
    ann.source = annotation_pb2.ANNOTATION_SOURCE_MODEL
    ann.model.name = name
    ann.model.version = version
    return ann


def test_ingest_prelabel_latest_wins() -> None:
    events, state = run(task(), IngestPrelabel("t1", "pl1", prelabel()))
    assert kinds(events) == ["PrelabelIngested"]
    _, state = run(state, IngestPrelabel("t1", "pl2", prelabel(version="2.0")))
    assert state.prelabel_id == "pl2"
    assert state.prelabel is not None and state.prelabel.model.version == "2.0"


def test_ingest_prelabel_refusals() -> None:
    state = task()
    refused(None, IngestPrelabel("t1", "pl", prelabel()), NotFound, "task_id")
    human = prelabel()
    human.source = annotation_pb2.ANNOTATION_SOURCE_HUMAN
    refused(state, IngestPrelabel("t1", "pl", human), InvalidArgument, "annotation.source")
    refused(state, IngestPrelabel("t1", "pl", prelabel(name="")), InvalidArgument, "annotation.model.name")
    refused(
        state, IngestPrelabel("t1", "pl", prelabel(version="")), InvalidArgument, "annotation.model.version"
    )
    done = submitted(task(policy=NONE), "ann")
    assert done.completed
    refused(done, IngestPrelabel("t1", "pl", prelabel()), FailedPrecondition)


# ------------------------------------------------------------------------------------ lease


def test_lease_emits_task_leased_with_deadline() -> None:
    events, state = run(task(lease_seconds=600), LeaseTask("t1", "L1", "ann", frozenset(), T0))
    (ev,) = events
    assert isinstance(ev, events_pb2.TaskLeased)
    assert (ev.task_id, ev.lease_id, ev.person_id, ev.project_id) == ("t1", "L1", "ann", "p1")
    assert ev.expires_at.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=600)
    assert state.leases["L1"].person_id == "ann"
    assert state.leases["L1"].expires_at == T0 + timedelta(seconds=600)
    assert state.free_slots == 0 and state.status == "in_progress"


def test_lease_unknown_task_not_found() -> None:
    refused(None, LeaseTask("t1", "L1", "ann", frozenset(), T0), NotFound, "task_id")


def test_lease_refused_when_complete() -> None:
    done = submitted(task(policy=NONE), "ann")
    msg = refused(done, LeaseTask("t1", "L9", "bob", frozenset(), T0), FailedPrecondition)
    assert msg == "task is complete"


def test_lease_refused_when_person_holds_one() -> None:
    state = lease(task(overlap=3), "ann")
    msg = refused(state, LeaseTask("t1", "L2", "ann", frozenset(), T0), FailedPrecondition)
    assert "already holds a lease" in msg


def test_lease_refused_after_own_submission_in_round() -> None:
    state = submitted(task(overlap=3), "ann")
    msg = refused(state, LeaseTask("t1", "L2", "ann", frozenset(), T0), FailedPrecondition)
    assert msg == "already annotated by you in this round"


def test_lease_refused_for_missing_skills() -> None:
    state = task(skills=("lidar", "arabic", "medical"))
    msg = refused(state, LeaseTask("t1", "L1", "ann", frozenset({"arabic"}), T0), FailedPrecondition)
    assert msg == "missing skills: lidar, medical"
    run(state, LeaseTask("t1", "L1", "ann", frozenset({"arabic", "lidar", "medical", "x"}), T0))


def test_lease_refused_when_no_free_slot() -> None:
    state = lease(lease(task(overlap=2), "ann"), "bob")
    msg = refused(state, LeaseTask("t1", "L3", "cid", frozenset(), T0), FailedPrecondition)
    assert msg == "no free slot: overlap 2 reached"


def test_lease_duplicate_lease_id_already_exists() -> None:
    state = lease(task(overlap=2), "ann", lease_id="L1")
    refused(state, LeaseTask("t1", "L1", "bob", frozenset(), T0), AlreadyExists, "lease_id")


def test_lease_expires_stale_leases_first_in_lease_id_order() -> None:
    state = task(overlap=2, lease_seconds=60)
    state = lease(state, "bob", lease_id="Lb", now=T0)
    state = lease(state, "ann", lease_id="La", now=T0 + timedelta(seconds=1))
    later = T0 + timedelta(seconds=61)  # both deadlines have passed (La's is exactly now)
    events, after = run(state, LeaseTask("t1", "Lc", "cid", frozenset(), later))
    assert kinds(events) == ["LeaseExpired", "LeaseExpired", "TaskLeased"]
    assert [e.lease_id for e in events[:2]] == ["La", "Lb"]  # type: ignore[attr-defined]
    assert set(after.leases) == {"Lc"}


def test_lease_expiry_frees_the_slot_for_the_same_person() -> None:
    state = lease(task(lease_seconds=60), "ann", lease_id="L1")
    events, after = run(state, LeaseTask("t1", "L2", "ann", frozenset(), T0 + timedelta(minutes=5)))
    assert kinds(events) == ["LeaseExpired", "TaskLeased"]
    assert set(after.leases) == {"L2"}


def test_lease_refusal_after_expiry_still_raises() -> None:
    # The stale lease would be expired, but the lease is refused for another reason: nothing is
    # emitted (the ExpireLease timer retires the stale lease separately).
    state = run(None, import_cmd(lease_seconds=60, skills=("x",)))[1]
    state = run(state, LeaseTask("t1", "L1", "ann", frozenset({"x"}), T0))[1]
    msg = refused(
        state, LeaseTask("t1", "L2", "bob", frozenset(), T0 + timedelta(hours=1)), FailedPrecondition
    )
    assert msg == "missing skills: x"
    assert "L1" in state.leases


# ------------------------------------------------------------------------------------ release / expire


def test_release_removes_the_lease() -> None:
    state = lease(task(), "ann")
    events, after = run(state, ReleaseLease("t1", "L-ann", "ann", "lunch"))
    (ev,) = events
    assert isinstance(ev, events_pb2.LeaseReleased)
    assert (ev.lease_id, ev.person_id, ev.reason) == ("L-ann", "ann", "lunch")
    assert not after.leases and after.status == "queued"


def test_release_refusals() -> None:
    state = lease(task(), "ann")
    refused(None, ReleaseLease("t1", "L-ann", "ann", ""), NotFound, "task_id")
    msg = refused(state, ReleaseLease("t1", "nope", "ann", ""), NotFound, "lease_id")
    assert msg == "no lease nope on task t1"
    refused(state, ReleaseLease("t1", "L-ann", "bob", ""), PermissionDenied, "lease_id")


def test_expire_lease_at_its_deadline() -> None:
    state = lease(task(lease_seconds=60), "ann")
    refused(state, ExpireLease("t1", "L-ann", T0 + timedelta(seconds=59)), FailedPrecondition)
    events, after = run(state, ExpireLease("t1", "L-ann", T0 + timedelta(seconds=60)))
    assert kinds(events) == ["LeaseExpired"]
    assert not after.leases


def test_expire_unknown_lease_not_found() -> None:
    refused(task(), ExpireLease("t1", "L1", T0), NotFound, "lease_id")
    refused(None, ExpireLease("t1", "L1", T0), NotFound, "task_id")


def test_naive_time_is_rejected() -> None:
    refused(task(), LeaseTask("t1", "L1", "ann", frozenset(), datetime(2024, 1, 1)), InvalidArgument, "now")


# ------------------------------------------------------------------------------------ submit


def test_submit_records_version_one_and_frees_the_lease() -> None:
    state = lease(task(overlap=2), "ann")
    events, after = run(state, submit_cmd("ann", "A1"))
    (ev,) = events
    assert isinstance(ev, events_pb2.AnnotationSubmitted)
    assert (ev.annotation_id, ev.version, ev.lease_id, ev.person_id, ev.project_id) == (
        "A1",
        1,
        "L-ann",
        "ann",
        "p1",
    )
    assert (ev.label_schema_version, ev.guideline_version, ev.time_on_task_ms) == (3, 2, 1500)
    assert ev.annotation == content()
    assert not after.leases
    a = after.annotations["A1"]
    assert (a.author_id, a.version, a.status, a.round, a.reason_codes) == ("ann", 1, "submitted", 1, ())
    assert (a.label_schema_version, a.guideline_version) == (3, 2)
    assert after.free_slots == 1 and after.status == "queued"


def test_submit_refusals() -> None:
    state = lease(task(overlap=2, lease_seconds=60), "ann")
    msg = refused(state, submit_cmd("ann", lease_id="gone"), FailedPrecondition)
    assert msg == "lease gone is not active (expired or released)"
    refused(state, submit_cmd("bob", lease_id="L-ann"), PermissionDenied, "lease_id")
    msg = refused(state, submit_cmd("ann", now=T0 + timedelta(seconds=60)), FailedPrecondition)
    assert msg.startswith("lease expired")
    refused(None, submit_cmd("ann"), NotFound, "task_id")
    state = submitted(state, "bob")
    state = run(state, ReopenTask("t1", "redo"))[1]
    state = lease(state, "cid")
    refused(state, submit_cmd("cid", ann_id="A-bob"), AlreadyExists, "annotation_id")


def test_submit_without_review_is_accepted_and_completes() -> None:
    state = lease(task(policy=NONE), "ann")
    events, after = run(state, submit_cmd("ann", "A1"))
    assert kinds(events) == ["AnnotationSubmitted", "AnnotationAccepted", "TaskCompleted"]
    acc = events[1]
    assert isinstance(acc, events_pb2.AnnotationAccepted)
    assert (acc.accepted_by, acc.author_id, acc.version, acc.data_uri) == (
        "",
        "ann",
        1,
        "s3://bucket/img.png",
    )
    assert (acc.label_schema_version, acc.guideline_version, acc.project_id) == (3, 2, "p1")
    assert acc.annotation == content()
    done = events[2]
    assert isinstance(done, events_pb2.TaskCompleted)
    assert list(done.annotation_ids) == ["A1"] and done.project_id == "p1"
    assert after.completed and after.status == "done" and after.annotations["A1"].status == "accepted"


def test_submit_without_review_completes_only_at_overlap() -> None:
    state = submitted(task(overlap=2, policy=NONE), "ann")
    assert not state.completed and state.accepted_count == 1
    events, after = run(lease(state, "bob"), submit_cmd("bob"))
    assert kinds(events)[-1] == "TaskCompleted"
    assert list(events[-1].annotation_ids) == ["A-ann", "A-bob"]  # type: ignore[attr-defined]
    assert after.completed


def test_unspecified_policy_means_full_review() -> None:
    state = lease(task(policy=model_pb2.REVIEW_POLICY_UNSPECIFIED), "ann")
    events, after = run(state, submit_cmd("ann"))
    assert kinds(events) == ["AnnotationSubmitted"]
    assert after.status == "in_review"


# ------------------------------------------------------------------------------------ edit


def test_edit_bumps_version_and_clears_rejection() -> None:
    state = rejected(submitted(task(), "ann"), "A-ann")
    assert state.annotations["A-ann"].reason_codes == ("blurry",)
    events, after = run(state, edit_cmd("A-ann", "ann", 1))
    (ev,) = events
    assert isinstance(ev, events_pb2.AnnotationEdited)
    assert (ev.version, ev.previous_version, ev.person_id, ev.project_id) == (2, 1, "ann", "p1")
    assert (ev.label_schema_version, ev.guideline_version) == (6, 7)
    a = after.annotations["A-ann"]
    assert (a.version, a.status, a.reason_codes, a.author_id) == (2, "submitted", (), "ann")
    assert a.annotation == content("dog")
    assert (a.label_schema_version, a.guideline_version) == (6, 7)


def test_edit_submitted_work_before_review() -> None:
    events, after = run(submitted(task(), "ann"), edit_cmd("A-ann", "ann", 1))
    assert kinds(events) == ["AnnotationEdited"]
    assert after.annotations["A-ann"].version == 2


def test_edit_refusals() -> None:
    state = submitted(task(overlap=2), "ann")
    refused(None, edit_cmd("A-ann", "ann"), NotFound, "task_id")
    refused(state, edit_cmd("nope", "ann"), NotFound, "annotation_id")
    refused(state, edit_cmd("A-ann", "bob"), PermissionDenied, "annotation_id")
    msg = refused(state, edit_cmd("A-ann", "ann", expected=3), Conflict, "expected_version")
    assert msg == "annotation A-ann is at version 1, not 3"
    accepted = run(state, review_cmd("A-ann", model_pb2.VERDICT_ACCEPT))[1]
    msg = refused(accepted, edit_cmd("A-ann", "ann"), FailedPrecondition)
    assert "accepted work is final" in msg
    abandoned = run(rejected(state, "A-ann"), AbandonAnnotation("t1", "A-ann", "ann", "give up"))[1]
    refused(abandoned, edit_cmd("A-ann", "ann"), FailedPrecondition)
    superseded = run(state, ReopenTask("t1", "redo"))[1]
    refused(superseded, edit_cmd("A-ann", "ann"), FailedPrecondition)


# ------------------------------------------------------------------------------------ review


def test_review_accept_accepts_and_completes() -> None:
    state = submitted(task(), "ann")
    events, after = run(state, review_cmd("A-ann", model_pb2.VERDICT_ACCEPT))
    assert kinds(events) == ["ReviewRecorded", "AnnotationAccepted", "TaskCompleted"]
    rec, acc, _ = events
    assert isinstance(rec, events_pb2.ReviewRecorded) and isinstance(acc, events_pb2.AnnotationAccepted)
    assert (rec.version, rec.reviewer_id, rec.verdict, rec.author_id, rec.comment) == (
        1,
        "rev",
        model_pb2.VERDICT_ACCEPT,
        "ann",
        "looks off",
    )
    assert (acc.accepted_by, acc.author_id, acc.version) == ("rev", "ann", 1)
    # accepted content keeps the versions it was made under, not the reviewer's
    assert (acc.label_schema_version, acc.guideline_version) == (3, 2)
    assert acc.annotation == content()
    assert after.completed and after.annotations["A-ann"].status == "accepted"


def test_review_accept_below_overlap_does_not_complete() -> None:
    state = submitted(task(overlap=2), "ann")
    events, after = run(state, review_cmd("A-ann", model_pb2.VERDICT_ACCEPT))
    assert kinds(events) == ["ReviewRecorded", "AnnotationAccepted"]
    assert not after.completed and after.accepted_count == 1 and after.status == "queued"


def test_review_reject_records_reasons() -> None:
    state = submitted(task(), "ann")
    cmd = review_cmd("A-ann", model_pb2.VERDICT_REJECT, reasons=("blurry", "wrong_class"))
    events, after = run(state, cmd)
    assert kinds(events) == ["ReviewRecorded"]
    assert list(events[0].reason_codes) == ["blurry", "wrong_class"]  # type: ignore[attr-defined]
    a = after.annotations["A-ann"]
    assert (a.status, a.reason_codes) == ("rejected", ("blurry", "wrong_class"))
    assert after.status == "in_review" and after.free_slots == 0


def test_review_reject_needs_known_reasons() -> None:
    state = submitted(task(), "ann")
    refused(state, review_cmd("A-ann", model_pb2.VERDICT_REJECT), InvalidArgument, "reason_codes")
    allowed = frozenset({"blurry", "occluded"})
    cmd = review_cmd("A-ann", model_pb2.VERDICT_REJECT, reasons=("blurry", "meh"), allowed=allowed)
    msg = refused(state, cmd, InvalidArgument, "reason_codes[1]")
    assert "'meh'" in msg and "blurry, occluded" in msg
    run(state, review_cmd("A-ann", model_pb2.VERDICT_REJECT, reasons=("occluded",), allowed=allowed))


def test_review_correct_edits_then_accepts() -> None:
    state = submitted(task(), "ann")
    cmd = review_cmd("A-ann", model_pb2.VERDICT_CORRECT, correction=content("fixed"))
    events, after = run(state, cmd)
    assert kinds(events) == ["AnnotationEdited", "ReviewRecorded", "AnnotationAccepted", "TaskCompleted"]
    ed, rec, acc, _ = events
    assert isinstance(ed, events_pb2.AnnotationEdited)
    assert isinstance(rec, events_pb2.ReviewRecorded)
    assert isinstance(acc, events_pb2.AnnotationAccepted)
    assert (ed.version, ed.previous_version, ed.person_id) == (2, 1, "rev")
    assert (ed.label_schema_version, ed.guideline_version) == (4, 5)
    assert (rec.version, rec.verdict) == (2, model_pb2.VERDICT_CORRECT)
    assert (acc.version, acc.accepted_by, acc.author_id) == (2, "rev", "ann")
    assert acc.annotation == content("fixed")
    a = after.annotations["A-ann"]
    assert (a.author_id, a.version, a.status) == ("ann", 2, "accepted")
    assert a.annotation == content("fixed")
    assert after.completed


def test_review_refusals() -> None:
    state = submitted(task(overlap=2), "ann")
    accept = model_pb2.VERDICT_ACCEPT
    refused(None, review_cmd("A-ann", accept), NotFound, "task_id")
    refused(state, review_cmd("nope", accept), NotFound, "annotation_id")
    msg = refused(state, review_cmd("A-ann", accept, version=2), Conflict, "version")
    assert msg == "annotation A-ann is at version 1, not 2"
    msg = refused(state, review_cmd("A-ann", accept, reviewer="ann"), PermissionDenied)
    assert msg == "reviewers cannot review their own work"
    refused(state, review_cmd("A-ann", model_pb2.VERDICT_UNSPECIFIED), InvalidArgument, "verdict")
    refused(state, review_cmd("A-ann", model_pb2.VERDICT_CORRECT), InvalidArgument, "correction")
    done = run(state, review_cmd("A-ann", accept))[1]
    msg = refused(done, review_cmd("A-ann", accept), FailedPrecondition)
    assert msg == "annotation is accepted, not awaiting review"
    rej = rejected(state, "A-ann")
    msg = refused(rej, review_cmd("A-ann", accept), FailedPrecondition)
    assert msg == "annotation is rejected, not awaiting review"


# ------------------------------------------------------------------------------------ reopen / abandon


def test_reopen_supersedes_current_round_and_keeps_leases() -> None:
    state = submitted(task(overlap=2, policy=NONE), "ann")
    state = submitted(state, "bob")
    assert state.completed
    events, after = run(state, ReopenTask("t1", "guideline changed"))
    (ev,) = events
    assert isinstance(ev, events_pb2.TaskReopened)
    assert (ev.round, ev.reason, ev.project_id) == (2, "guideline changed", "p1")
    assert after.round == 2 and not after.completed and after.status == "queued"
    assert {a.status for a in after.annotations.values()} == {"superseded"}
    assert after.annotations["A-ann"].round == 1
    # the previous author may work on the new round
    again = lease(after, "ann", lease_id="L-ann-2")
    assert again.free_slots == 1


def test_reopen_keeps_leases_of_the_new_round() -> None:
    state = lease(submitted(task(overlap=2), "ann"), "bob")
    _, after = run(state, ReopenTask("t1", "redo"))
    assert set(after.leases) == {"L-bob"}
    assert after.free_slots == 1


def test_reopen_needs_live_work() -> None:
    msg = refused(task(), ReopenTask("t1", "x"), FailedPrecondition)
    assert msg.startswith("nothing to reopen")
    refused(None, ReopenTask("t1", "x"), NotFound, "task_id")


def test_abandon_frees_the_slot() -> None:
    state = rejected(submitted(task(), "ann"), "A-ann")
    assert state.free_slots == 0
    events, after = run(state, AbandonAnnotation("t1", "A-ann", "ann", "cannot fix"))
    (ev,) = events
    assert isinstance(ev, events_pb2.AnnotationAbandoned)
    assert (ev.annotation_id, ev.person_id, ev.reason) == ("A-ann", "ann", "cannot fix")
    assert after.annotations["A-ann"].status == "abandoned"
    assert after.free_slots == 1 and after.status == "queued"
    lease(after, "ann", lease_id="L-again")  # the author may try again


def test_abandon_refusals() -> None:
    state = submitted(task(), "ann")
    refused(state, AbandonAnnotation("t1", "nope", "ann", ""), NotFound, "annotation_id")
    refused(state, AbandonAnnotation("t1", "A-ann", "ann", ""), FailedPrecondition)
    rej = rejected(state, "A-ann")
    refused(rej, AbandonAnnotation("t1", "A-ann", "bob", ""), PermissionDenied, "annotation_id")


# ------------------------------------------------------------------------------------ status, purity, routing


def test_status_walk() -> None:
    state = task()
    assert state.status == "queued"
    state = lease(state, "ann")
    assert state.status == "in_progress"
    state = run(state, submit_cmd("ann"))[1]
    assert state.status == "in_review"
    state = run(state, review_cmd("A-ann", model_pb2.VERDICT_ACCEPT))[1]
    assert state.status == "done"


def test_decide_and_evolve_leave_inputs_untouched() -> None:
    state = lease(task(overlap=2), "ann")
    before = (dict(state.leases), dict(state.annotations), state.round)
    events = decide_task(state, submit_cmd("ann"))
    after = evolve_task(state, events[0])
    assert (dict(state.leases), dict(state.annotations), state.round) == before
    assert after is not state
    with pytest.raises(TypeError):
        state.leases["x"] = state.leases["L-ann"]  # type: ignore[index]
    # mutating the event afterwards must not leak into the state
    events[0].annotation.shapes[0].label = "mutated"  # type: ignore[attr-defined]
    assert after.annotations["A-ann"].annotation == content()


def test_fold_reproduces_incremental_state() -> None:
    log: list[Message] = []
    state: TaskState | None = None
    cmds: list[TaskCommand] = [
        import_cmd(overlap=2),
        LeaseTask("t1", "L1", "ann", frozenset(), T0),
        SubmitAnnotation("t1", "L1", "ann", "A1", content(), 1, 1, 10, T0),
        review_cmd("A1", model_pb2.VERDICT_REJECT, reasons=("x",)),
        edit_cmd("A1", "ann", 1),
        review_cmd("A1", model_pb2.VERDICT_CORRECT, version=2, correction=content("z")),
    ]
    for cmd in cmds:
        events = aggregates.decide(state, cmd)
        log.extend(events)
        for e in events:
            new = aggregates.evolve(state, e)
            assert isinstance(new, TaskState)
            state = new
    assert aggregates.fold(log) == state


def test_aggregate_routing() -> None:
    assert aggregates.stream_of(import_cmd(task_id="abc")) == "task:abc"
    assert aggregates.stream_of(LeaseTask("t9", "L", "p", frozenset(), T0)) == "task:t9"
    assert aggregates.fold([]) is None
    with pytest.raises(TypeError):
        aggregates.evolve(None, model_pb2.TaskSpec())
    with pytest.raises(ValueError):
        aggregates.evolve(None, events_pb2.TaskLeased(task_id="t1"))
