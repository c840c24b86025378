"""The views, driven by a scripted history: every step is one command's events, applied and
committed, then the read models are checked through `projections.queries`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.message import Message

from coordinator._pb.labelweave.events.v1 import annotation_pb2, events_pb2, model_pb2
from coordinator.eventlog import codec
from coordinator.eventlog.base import RecordedEvent
from projections import queries
from projections.base import Doc
from projections.memory import MemoryStore
from projections.views import default_views
from projections.views.taskstate import queue_sort_key
from tests.unit.viewkit import Recorder, apply_as_one_batch, apply_interleavings, commit_live, repartition

E = events_pb2
M = model_pb2
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MS0 = int(T0.timestamp()) * 1000
PROJECT = "proj-1"


def box(x: float) -> annotation_pb2.Annotation:
    return annotation_pb2.Annotation(
        shapes=[
            annotation_pb2.Shape(label="car", box=annotation_pb2.BoundingBox(x=x, y=1, width=2, height=3))
        ]
    )


class Script(Recorder):
    """Appends events at offsets 1, 2, 3, … and applies each command's events as one batch."""

    def __init__(self) -> None:
        super().__init__(T0)
        self.store = MemoryStore()
        self.views = default_views()

    def emit(self, stream: str, *payloads: Message) -> list[RecordedEvent]:
        command_id = uuid.uuid4().hex
        batch = [
            self.append(payload, stream=stream, command_id=command_id, actor="someone")
            for payload in payloads
        ]
        commit_live(self.store, self.views, batch)
        return batch

    # ---- conveniences

    def task(self, task_id: str) -> Doc:
        doc = queries.get_task_doc(self.store, task_id)
        assert doc is not None
        return doc

    def imported(
        self,
        task_id: str,
        *,
        priority: int = 0,
        deadline: datetime | None = None,
        skills: tuple[str, ...] = (),
        overlap: int = 1,
    ) -> None:
        spec = M.TaskSpec(
            task_id=task_id,
            data_uri=f"s3://bucket/{task_id}.jpg",
            media_type=M.MEDIA_TYPE_IMAGE,
            priority=priority,
            required_skills=list(skills),
            overlap=overlap,
        )
        if deadline is not None:
            spec.deadline.CopyFrom(codec.timestamp(deadline))
        self.emit(
            f"task:{task_id}",
            E.TaskImported(
                project_id=PROJECT,
                batch_id="b1",
                task=spec,
                review_policy=M.REVIEW_POLICY_FULL,
                lease_seconds=600,
            ),
        )

    def lease(self, task_id: str, lease_id: str, person: str, seconds: int = 600) -> None:
        expires = codec.timestamp(self.now + timedelta(seconds=seconds))
        self.emit(
            f"task:{task_id}",
            E.TaskLeased(
                task_id=task_id, lease_id=lease_id, person_id=person, expires_at=expires, project_id=PROJECT
            ),
        )

    def submit(self, task_id: str, lease_id: str, person: str, ann_id: str, x: float = 1.0) -> None:
        self.emit(
            f"task:{task_id}",
            E.AnnotationSubmitted(
                task_id=task_id,
                annotation_id=ann_id,
                version=1,
                lease_id=lease_id,
                person_id=person,
                annotation=box(x),
                label_schema_version=1,
                guideline_version=1,
                time_on_task_ms=1500,
                project_id=PROJECT,
            ),
        )

    def review(
        self,
        task_id: str,
        ann_id: str,
        version: int,
        verdict: int,
        author: str,
        reasons: tuple[str, ...] = (),
    ) -> E.ReviewRecorded:
        return E.ReviewRecorded(
            task_id=task_id,
            annotation_id=ann_id,
            version=version,
            reviewer_id="rita",
            verdict=verdict,  # type: ignore[arg-type]
            reason_codes=list(reasons),
            comment="c",
            author_id=author,
            project_id=PROJECT,
        )

    def accepted(
        self, task_id: str, ann_id: str, version: int, author: str, x: float
    ) -> E.AnnotationAccepted:
        return E.AnnotationAccepted(
            task_id=task_id,
            annotation_id=ann_id,
            version=version,
            author_id=author,
            accepted_by="rita",
            annotation=box(x),
            project_id=PROJECT,
            label_schema_version=1,
            guideline_version=1,
            data_uri=f"s3://bucket/{task_id}.jpg",
        )

    def metrics(self, person: str, project: str = PROJECT) -> Doc:
        (doc,) = queries.annotator_metrics(self.store, project, person)
        return doc

    def rebuilt_checksum(self) -> str:
        """The same events applied as one batch into a fresh store."""
        return apply_as_one_batch(self.events).checksum()


def statuses(s: Script, task_id: str) -> dict[str, str]:
    return {aid: a["status"] for aid, a in s.task(task_id)["annotations"].items()}


def metric_counts(doc: Doc) -> tuple[int, ...]:
    return tuple(doc[k] for k in ("leased", "submitted", "accepted", "rejected", "edits", "expired"))


@pytest.fixture
def s() -> Script:
    script = Script()
    script.emit(
        f"project:{PROJECT}",
        E.ProjectCreated(
            project_id=PROJECT, name="Cars", description="d", settings=M.ProjectSettings(default_overlap=2)
        ),
    )
    return script


def test_task_lifecycle(s: Script) -> None:
    # --- import: five tasks with different priorities, deadlines and skills
    s.imported("t1", priority=5, skills=("lidar",), overlap=2)
    s.imported("t2", priority=5, deadline=T0 + timedelta(days=1))
    s.imported("t3", priority=10)
    s.imported("t4", priority=5)
    s.imported("t5", priority=1, skills=("night", "lidar"))
    s.imported("t6", priority=5, deadline=T0 + timedelta(hours=1), skills=("lidar",))

    t1 = s.task("t1")
    assert t1["status"] == "queued" and t1["overlap"] == 2 and t1["round"] == 1
    assert t1["required_skills"] == ["lidar"] and t1["priority"] == 5 and t1["deadline_ms"] is None
    assert t1["project_id"] == PROJECT and t1["batch_id"] == "b1" and t1["media_type"] == M.MEDIA_TYPE_IMAGE
    assert t1["imported_offset"] == 2 and t1["last_offset"] == 2
    assert s.task("t2")["deadline_ms"] == MS0 + 86_400_000
    assert s.task("t5")["required_skills"] == ["lidar", "night"]
    # queue: priority DESC, deadline ASC (none last), import order; skills filter
    assert queries.queue_candidates(s.store, PROJECT, []) == ["t3", "t2", "t4"]
    assert queries.queue_candidates(s.store, PROJECT, ["lidar"]) == ["t3", "t6", "t2", "t1", "t4"]
    assert queries.queue_candidates(s.store, PROJECT, {"lidar", "night", "x"}) == [
        "t3",
        "t6",
        "t2",
        "t1",
        "t4",
        "t5",
    ]
    assert queries.queue_candidates(s.store, PROJECT, ["night"]) == ["t3", "t2", "t4"]
    assert queries.queue_candidates(s.store, PROJECT, ["lidar"], limit=2) == ["t3", "t6"]
    assert queries.queue_candidates(s.store, "other", ["lidar"]) == []
    assert queries.queue_depth(s.store, PROJECT) == 6
    assert queries.queue_depths(s.store) == {PROJECT: 6}
    assert queries.list_tasks(s.store, PROJECT, None, 10, "") == (["t1", "t2", "t3", "t4", "t5", "t6"], "")

    # --- two leases fill overlap 2
    s.lease("t1", "L1", "alice")
    assert s.task("t1")["status"] == "queued"
    assert s.task("t1")["leases"] == {"L1": {"person_id": "alice", "expires_ms": MS0 + 600_000}}
    s.now += timedelta(seconds=30)
    s.lease("t1", "L2", "bob")
    assert s.task("t1")["status"] == "in_progress"
    assert "t1" not in queries.queue_candidates(s.store, PROJECT, ["lidar"])
    assert queries.queue_depth(s.store, PROJECT) == 5
    assert queries.expired_leases(s.store, T0 + timedelta(seconds=599)) == []
    assert queries.expired_leases(s.store, T0 + timedelta(seconds=600)) == [("t1", "L1")]
    assert queries.expired_leases(s.store, T0 + timedelta(hours=1)) == [("t1", "L1"), ("t1", "L2")]
    assert queries.list_tasks(s.store, PROJECT, "in_progress", 10, "") == (["t1"], "")
    assert metric_counts(s.metrics("alice")) == (1, 0, 0, 0, 0, 0)

    # --- alice submits; reviewer rejects
    s.submit("t1", "L1", "alice", "A1", x=1)
    t1 = s.task("t1")
    assert t1["status"] == "in_progress" and list(t1["leases"]) == ["L2"]
    assert t1["annotations"]["A1"] == {
        "author_id": "alice",
        "version": 1,
        "status": "submitted",
        "round": 1,
        "reason_codes": [],
    }
    assert queries.expired_leases(s.store, T0 + timedelta(hours=1)) == [("t1", "L2")]
    s.emit("task:t1", s.review("t1", "A1", 1, M.VERDICT_REJECT, "alice", ("blurry",)))
    t1 = s.task("t1")
    assert t1["annotations"]["A1"]["status"] == "rejected"
    assert t1["annotations"]["A1"]["reason_codes"] == ["blurry"]
    assert t1["status"] == "in_progress"  # a rejected annotation still holds its slot
    assert metric_counts(s.metrics("alice")) == (1, 1, 0, 1, 0, 0)
    assert s.metrics("alice")["time_on_task_ms"] == 1500

    # --- alice edits (v2)
    s.emit(
        "task:t1",
        E.AnnotationEdited(
            task_id="t1",
            annotation_id="A1",
            version=2,
            previous_version=1,
            person_id="alice",
            annotation=box(2),
            label_schema_version=1,
            guideline_version=1,
            project_id=PROJECT,
        ),
    )
    assert s.task("t1")["annotations"]["A1"] == {
        "author_id": "alice",
        "version": 2,
        "status": "submitted",
        "round": 1,
        "reason_codes": [],
    }
    assert metric_counts(s.metrics("alice")) == (1, 1, 0, 1, 1, 0)
    versions = queries.annotation_versions(s.store, "t1")
    assert [(v["annotation_id"], v["version"], v["kind"], v["person_id"]) for v in versions] == [
        ("A1", 1, "submitted", "alice"),
        ("A1", 2, "edited", "alice"),
    ]
    assert versions[1]["annotation"] == {
        "shapes": [{"label": "car", "box": {"x": 2.0, "y": 1.0, "width": 2.0, "height": 3.0}}]
    }
    assert versions[0]["recorded_ms"] == MS0 + 30_000 and versions[0]["label_schema_version"] == 1

    # --- bob's lease expires: the slot frees, t1 is queued again
    s.now += timedelta(minutes=20)
    s.emit("task:t1", E.LeaseExpired(task_id="t1", lease_id="L2", person_id="bob"))
    assert s.task("t1")["status"] == "queued" and s.task("t1")["leases"] == {}
    assert metric_counts(s.metrics("bob")) == (1, 0, 0, 0, 0, 1)
    assert metric_counts(s.metrics("bob", "*")) == (1, 0, 0, 0, 0, 1)
    assert queries.expired_leases(s.store, T0 + timedelta(days=9)) == []
    assert queries.queue_candidates(s.store, PROJECT, ["lidar"]) == ["t3", "t6", "t2", "t1", "t4"]
    assert queries.queue_depth(s.store, PROJECT) == 6

    # --- carol takes the second slot and submits: in review
    s.lease("t1", "L3", "carol")
    s.submit("t1", "L3", "carol", "A2", x=3)
    assert s.task("t1")["status"] == "in_review"
    assert queries.list_tasks(s.store, PROJECT, "in_review", 10, "") == (["t1"], "")
    assert queries.list_tasks(s.store, PROJECT, "queued", 10, "") == (["t2", "t3", "t4", "t5", "t6"], "")

    # --- accept A1 v2
    s.emit(
        "task:t1", s.review("t1", "A1", 2, M.VERDICT_ACCEPT, "alice"), s.accepted("t1", "A1", 2, "alice", 2)
    )
    assert statuses(s, "t1") == {"A1": "accepted", "A2": "submitted"}
    assert s.task("t1")["status"] == "in_review"
    labels = queries.accepted_labels(s.store, PROJECT)
    assert [sk for sk, _ in labels] == ["t1|A1"]
    assert labels[0][1]["version"] == 2 and labels[0][1]["author_id"] == "alice"
    assert labels[0][1]["accepted_by"] == "rita" and labels[0][1]["data_uri"] == "s3://bucket/t1.jpg"
    assert labels[0][1]["annotation"]["shapes"][0]["box"]["x"] == 2.0
    assert metric_counts(s.metrics("alice")) == (1, 1, 1, 1, 1, 0)

    # --- the reviewer corrects A2 (edit v2 + review CORRECT + accepted) and the task completes
    s.emit(
        "task:t1",
        E.AnnotationEdited(
            task_id="t1",
            annotation_id="A2",
            version=2,
            previous_version=1,
            person_id="rita",
            annotation=box(4),
            label_schema_version=1,
            guideline_version=1,
            project_id=PROJECT,
        ),
        s.review("t1", "A2", 2, M.VERDICT_CORRECT, "carol"),
        s.accepted("t1", "A2", 2, "carol", 4),
        E.TaskCompleted(task_id="t1", project_id=PROJECT, annotation_ids=["A1", "A2"]),
    )
    t1 = s.task("t1")
    assert t1["status"] == "done"
    assert statuses(s, "t1") == {"A1": "accepted", "A2": "accepted"}
    assert t1["annotations"]["A2"]["version"] == 2
    assert queries.list_tasks(s.store, PROJECT, "done", 10, "") == (["t1"], "")
    assert queries.list_tasks(s.store, PROJECT, "in_review", 10, "") == ([], "")
    kinds = [
        (v["annotation_id"], v["version"], v["kind"]) for v in queries.annotation_versions(s.store, "t1")
    ]
    assert kinds == [
        ("A1", 1, "submitted"),
        ("A1", 2, "edited"),
        ("A2", 1, "submitted"),
        ("A2", 2, "corrected"),
    ]
    assert [sk for sk, _ in queries.accepted_labels(s.store, PROJECT)] == ["t1|A1", "t1|A2"]
    assert [sk for sk, _ in queries.accepted_labels(s.store, PROJECT, after="t1|A1")] == ["t1|A2"]
    assert metric_counts(s.metrics("carol")) == (1, 1, 1, 0, 0, 0)
    assert metric_counts(s.metrics("rita")) == (0, 0, 0, 0, 1, 0)  # the correction is rita's edit
    reviews = s.store.scan("reviews", "t1")
    assert [(d["annotation_id"], d["version"], d["verdict"]) for _, d in reviews] == [
        ("A1", 1, M.VERDICT_REJECT),
        ("A1", 2, M.VERDICT_ACCEPT),
        ("A2", 2, M.VERDICT_CORRECT),
    ]

    # --- reopen: round 2, old work superseded, queued again, accepted labels withdrawn
    s.emit("task:t1", E.TaskReopened(task_id="t1", project_id=PROJECT, reason="bad", round=2))
    t1 = s.task("t1")
    assert t1["status"] == "queued" and t1["round"] == 2
    assert statuses(s, "t1") == {"A1": "superseded", "A2": "superseded"}
    assert queries.accepted_labels(s.store, PROJECT) == []
    assert len(queries.annotation_versions(s.store, "t1")) == 4  # history stays
    assert queries.queue_candidates(s.store, PROJECT, ["lidar"]) == ["t3", "t6", "t2", "t1", "t4"]
    assert queries.list_tasks(s.store, PROJECT, "done", 10, "") == ([], "")

    # --- round 2: dave submits; the new annotation counts in round 2 only
    s.lease("t1", "L4", "dave")
    s.submit("t1", "L4", "dave", "A3")
    assert s.task("t1")["annotations"]["A3"]["round"] == 2
    assert s.task("t1")["status"] == "queued"  # overlap 2, one slot used in round 2

    # --- abandon: rejected work that is given up frees its slot
    s.lease("t4", "L5", "erin")
    s.submit("t4", "L5", "erin", "A4")
    assert s.task("t4")["status"] == "in_review"
    assert "t4" not in queries.queue_candidates(s.store, PROJECT, [])
    s.emit("task:t4", s.review("t4", "A4", 1, M.VERDICT_REJECT, "erin", ("wrong",)))
    assert s.task("t4")["status"] == "in_review"
    s.emit("task:t4", E.AnnotationAbandoned(task_id="t4", annotation_id="A4", person_id="erin", reason="r"))
    assert s.task("t4")["status"] == "queued"
    assert statuses(s, "t4") == {"A4": "abandoned"}
    assert queries.queue_candidates(s.store, PROJECT, []) == ["t3", "t2", "t4"]

    # --- released leases leave no expiry row behind
    s.lease("t3", "L6", "frank")
    assert s.task("t3")["status"] == "in_progress"
    s.emit("task:t3", E.LeaseReleased(task_id="t3", lease_id="L6", person_id="frank", reason="later"))
    assert s.task("t3")["status"] == "queued" and s.task("t3")["last_offset"] == len(s.events)
    assert queries.expired_leases(s.store, T0 + timedelta(days=9)) == []

    # queue bookkeeping agrees with the task docs
    queued = {
        sk.split("|")[-1]
        for sk, _ in s.store.scan("tasks_by_project", PROJECT, start="queued|", end="queued}")
    }
    assert queued == {"t1", "t2", "t3", "t4", "t5", "t6"}
    assert queries.queue_depth(s.store, PROJECT) == 6
    keys = dict(s.store.scan("queue_keys", PROJECT))
    assert keys == {"|00000": {"count": 3}, "lidar|00000": {"count": 2}, "lidar,night|00000": {"count": 1}}
    # all projects
    assert metric_counts(s.metrics("alice", "*")) == (1, 1, 1, 1, 1, 0)
    everyone = {d["person_id"] for d in queries.annotator_metrics(s.store, PROJECT, None)}
    assert everyone == {"alice", "bob", "carol", "dave", "erin", "frank", "rita"}
    assert queries.annotator_metrics(s.store, PROJECT, "nobody") == [
        {"person_id": "nobody", **dict.fromkeys(("leased", "submitted", "accepted", "rejected"), 0)}
        | {"edits": 0, "expired": 0, "time_on_task_ms": 0}
    ]

    # applying everything in one batch gives the same rows as command by command
    assert s.rebuilt_checksum() == s.store.checksum()


def test_list_tasks_pages(s: Script) -> None:
    for i in range(7):
        s.imported(f"t{i}")
    ids, token = queries.list_tasks(s.store, PROJECT, None, 3, "")
    assert ids == ["t0", "t1", "t2"] and token
    ids, token = queries.list_tasks(s.store, PROJECT, None, 3, token)
    assert ids == ["t3", "t4", "t5"] and token
    ids, token = queries.list_tasks(s.store, PROJECT, None, 3, token)
    assert ids == ["t6"] and token == ""
    ids, token = queries.list_tasks(s.store, PROJECT, "queued", 7, "")
    assert len(ids) == 7 and token == ""
    with pytest.raises(Exception) as info:
        queries.list_tasks(s.store, PROJECT, "done", 3, "all|0001|x")
    assert getattr(info.value, "field", "") == "page_token"


def test_queue_sort_key_orders_priority_deadline_import() -> None:
    keys = [
        queue_sort_key(2_147_483_647, None, 9, "a"),
        queue_sort_key(10, 5, 8, "b"),
        queue_sort_key(10, 6, 1, "c"),
        queue_sort_key(10, None, 2, "d"),
        queue_sort_key(10, None, 3, "e"),
        queue_sort_key(-5, 0, 0, "f"),
        queue_sort_key(-2_147_483_648, None, 0, "g"),
    ]
    assert sorted(keys) == keys


def test_directory_and_tokens(s: Script) -> None:
    s.emit(
        "person:alice",
        E.PersonRegistered(
            person=M.PersonSpec(
                person_id="alice",
                display_name="Alice",
                roles=[M.ROLE_ANNOTATOR],
                skills=[M.Skill(name="lidar", level=2)],
                time_zone="Europe/Warsaw",
            )
        ),
    )
    s.emit(f"project:{PROJECT}", E.ProjectMemberAdded(project_id=PROJECT, person_id="alice"))
    s.emit("project:p2", E.ProjectCreated(project_id="p2", name="Two"))
    s.emit("project:p2", E.ProjectMemberAdded(project_id="p2", person_id="alice"))
    s.emit("project:p2", E.LabelSchemaPublished(project_id="p2", schema=M.LabelSchema(version=3)))
    s.emit("project:p2", E.GuidelinePublished(project_id="p2", guideline=M.Guideline(version=2)))
    s.emit(
        "project:p2", E.ProjectSettingsChanged(project_id="p2", settings=M.ProjectSettings(lease_seconds=60))
    )
    assert queries.list_projects(s.store) == ["p2", PROJECT]
    assert queries.projects_of(s.store, "alice") == ["p2", PROJECT]
    assert queries.members_of(s.store, "p2") == ["alice"]
    project = s.store.get("project", "p2")
    assert project is not None
    assert (project["schema_version"], project["guideline_version"]) == (3, 2)
    assert project["settings"] == {"lease_seconds": 60} and project["name"] == "Two"
    s.emit("project:p2", E.ProjectMemberRemoved(project_id="p2", person_id="alice"))
    assert queries.projects_of(s.store, "alice") == [PROJECT]
    assert queries.members_of(s.store, "p2") == []
    assert s.store.get("person", "alice") == {
        "person_id": "alice",
        "display_name": "Alice",
        "roles": [M.ROLE_ANNOTATOR],
        "skills": [{"name": "lidar", "level": 2}],
        "time_zone": "Europe/Warsaw",
    }

    expires = T0 + timedelta(days=30, milliseconds=250)
    s.emit(
        "person:alice",
        E.TokenIssued(
            person_id="alice", token_id="tok1", token_sha256="ab" * 32, expires_at=codec.timestamp(expires)
        ),
    )
    s.emit("person:alice", E.TokenIssued(person_id="alice", token_id="tok2", token_sha256="cd" * 32))
    ref = queries.find_token(s.store, "ab" * 32)
    assert ref == queries.TokenRef(person_id="alice", token_id="tok1", expires_at=expires, revoked=False)
    ref2 = queries.find_token(s.store, "cd" * 32)
    assert ref2 is not None and ref2.expires_at is None
    s.emit("person:alice", E.TokenRevoked(person_id="alice", token_id="tok1"))
    ref = queries.find_token(s.store, "ab" * 32)
    assert ref is not None and ref.revoked
    assert queries.find_token(s.store, "ef" * 32) is None


def test_partitions_applied_in_any_interleaving_give_the_same_projection(s: Script) -> None:
    """The single-writer rule (projections.base.shard_of): every document is written from one
    log partition only, so workers applying partitions independently, in any relative order,
    end with the same rows, and the sharded counters sum to the one-partition answer."""
    for i in range(12):
        s.imported(f"t{i}", priority=i % 3, skills=("lidar",) if i % 4 == 0 else ())
    for i in range(8):
        person = ("alice", "bob", "carol")[i % 3]
        s.lease(f"t{i}", f"l{i}", person)
        s.submit(f"t{i}", f"l{i}", person, f"a{i}", x=float(i))
        verdict = M.VERDICT_ACCEPT if i % 2 else M.VERDICT_REJECT
        s.emit(
            f"task:t{i}", s.review(f"t{i}", f"a{i}", 1, verdict, person, ("blurry",) if i % 2 == 0 else ())
        )
    one_partition = s.store

    by_partition = repartition(s.events)
    assert len(by_partition) > 1
    # one event per commit: the finest interleaving
    sequential, backwards, interleaved = apply_interleavings(by_partition, seed=7)
    assert sequential.checksum() == backwards.checksum() == interleaved.checksum()

    for store in (sequential, interleaved):
        assert queries.queue_depth(store, PROJECT) == queries.queue_depth(one_partition, PROJECT)
        assert queries.queue_depths(store) == queries.queue_depths(one_partition)
        for skills in ([], ["lidar"]):
            assert sorted(queries.queue_candidates(store, PROJECT, skills, limit=50)) == sorted(
                queries.queue_candidates(one_partition, PROJECT, skills, limit=50)
            )
        for scope in (PROJECT, "*"):
            assert sorted(
                queries.annotator_metrics(store, scope, None), key=lambda d: d["person_id"]
            ) == sorted(queries.annotator_metrics(one_partition, scope, None), key=lambda d: d["person_id"])
        assert queries.annotator_metrics(store, PROJECT, "alice") == queries.annotator_metrics(
            one_partition, PROJECT, "alice"
        )
