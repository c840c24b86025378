"""Consensus and agreement over real gRPC, on both backends: an overlap-3 task's consensus event,
escalation of a task with low agreement to the first review stage (and the normal pipeline for
high agreement), agreement and Dawid-Skene queries, role checks, bad settings refused with the
field named and nothing appended, and the CLI."""

from __future__ import annotations

import json

import grpc
import pytest

from coordinator import cli
from coordinator._pb.labelweave.api.v1 import api_pb2, consensus_pb2, consensus_pb2_grpc
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import consensus_pb2 as CP
from coordinator._pb.labelweave.events.v1 import model_pb2 as M

from .conftest import Env, Stubs, image_task, refused


@pytest.fixture
def env(both_env: Env) -> Env:
    """Every rule in this module is checked on both backends (embedded; Kafka + Cassandra)."""
    return both_env


PEOPLE = ("ann", "bob", "cid")


def settings(policy: CP.ConsensusPolicy | None = None) -> M.ProjectSettings:
    out = M.ProjectSettings(
        default_overlap=3,
        lease_seconds=600,
        pipeline=M.ReviewPipeline(
            stages=[
                M.ReviewStage(kind=M.REVIEW_STAGE_KIND_PEER_REVIEW, sample_rate=0.0),  # reviews nothing
                M.ReviewStage(kind=M.REVIEW_STAGE_KIND_EXPERT_RESOLUTION),
            ],
            sampling_seed="s",
        ),
    )
    out.consensus.CopyFrom(policy if policy is not None else CP.ConsensusPolicy(min_agreement=0.6))
    return out


def content(x: float) -> A.Annotation:
    return A.Annotation(
        shapes=[
            A.Shape(label="car", box=A.BoundingBox(x=x, y=100, width=60, height=40)),
            A.Shape(label="scene", classification=A.Classification()),
        ]
    )


def test_consensus_escalation_queries_roles_and_cli(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    people = {p: env.person(p, M.ROLE_ANNOTATOR) for p in PEOPLE}
    mgr = env.person("mgr", M.ROLE_MANAGER)
    qa = env.person("qa", M.ROLE_QA)
    rev = env.person("rev", M.ROLE_REVIEWER)
    env.project("p1", overlap=3, members=(*PEOPLE, "mgr", "qa", "rev"))
    admin = env.admin

    # bad settings are refused naming the field, and nothing is appended
    for policy, field in (
        (CP.ConsensusPolicy(iou_threshold=2.0), "settings.consensus.iou_threshold"),
        (CP.ConsensusPolicy(min_agreement=-0.5), "settings.consensus.min_agreement"),
        (CP.ConsensusPolicy(quorum=1000), "settings.consensus.quorum"),
    ):
        refused(
            env,
            lambda policy=policy, field=field: admin.admin.UpdateProjectSettings(  # type: ignore[misc]
                api_pb2.UpdateProjectSettingsRequest(
                    command_id=f"bad-{field}", project_id="p1", settings=settings(policy)
                ),
                metadata=admin.md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        )
    project = admin.admin.UpdateProjectSettings(
        api_pb2.UpdateProjectSettingsRequest(command_id="set", project_id="p1", settings=settings()),
        metadata=admin.md,
    )
    assert project.settings.consensus.min_agreement == 0.6
    admin.tasks.ImportTasks(
        api_pb2.ImportTasksRequest(
            command_id="imp", project_id="p1", tasks=[image_task("agree"), image_task("split")]
        ),
        metadata=admin.md,
    )
    env.settle()
    # agree: three boxes nearly on top of each other; split: three boxes far apart
    xs = {"agree": {"ann": 100, "bob": 102, "cid": 104}, "split": {"ann": 10, "bob": 200, "cid": 400}}
    ids: dict[tuple[str, str], str] = {}
    for person, who in people.items():
        for _ in range(2):
            n = who.tasks.NextTask(
                api_pb2.NextTaskRequest(command_id=f"n-{person}-{_}", project_id="p1"), metadata=who.md
            )
            task_id = n.task.task_id
            assert task_id, f"nothing to lease for {person}"
            s = who.tasks.Submit(
                api_pb2.SubmitRequest(
                    command_id=f"s-{person}-{task_id}",
                    task_id=task_id,
                    lease_id=n.lease.lease_id,
                    annotation=content(xs[task_id][person]),
                ),
                metadata=who.md,
            )
            ids[(task_id, person)] = s.annotation_id
            env.settle()  # the queue projection has seen the lease and the submission
    env.settle()
    stub = consensus_pb2_grpc.ConsensusServiceStub(env.channel)

    def consensus(who: Stubs, task_id: str) -> consensus_pb2.ConsensusReport:
        return stub.GetConsensus(consensus_pb2.GetConsensusRequest(task_id=task_id), metadata=who.md)

    # high agreement: the normal pipeline (the peer stage samples nothing: accepted, done)
    good = consensus(mgr, "agree")
    (computed,) = good.rounds
    assert computed.round == 1 and not computed.escalated and computed.agreement > 0.6
    assert list(computed.annotation_ids) == [ids[("agree", p)] for p in PEOPLE]
    assert [s.label for s in computed.annotation.shapes] == ["scene", "car"]
    assert computed.annotation.shapes[1].box.x == pytest.approx(102.0)
    task = admin.tasks.GetTask(api_pb2.GetTaskRequest(task_id="agree"), metadata=admin.md)
    assert task.status == api_pb2.TASK_STATUS_DONE

    # low agreement: escalated to the first review stage although it samples nothing
    bad = consensus(qa, "split").rounds[0]
    assert bad.escalated and bad.escalation_stage == "peer_review" and bad.agreement < 0.6
    assert [o.fused for o in bad.objects if o.kind == "box"] == [False, False, False]  # below quorum 2
    task = admin.tasks.GetTask(api_pb2.GetTaskRequest(task_id="split"), metadata=admin.md)
    assert task.status == api_pb2.TASK_STATUS_IN_REVIEW
    queue = rev.reviews.ListReviewQueue(api_pb2.ListReviewQueueRequest(project_id="p1"), metadata=rev.md)
    assert [i.annotation_id for i in queue.items] == [ids[("split", "cid")]]
    events = [e.type for e in env.server.app.log.read_stream("task:split")]
    assert events.count("consensus_computed") == 1

    # role checks: reviewers read no consensus; annotators only their own part
    refused(env, lambda: consensus(rev, "split"), grpc.StatusCode.PERMISSION_DENIED)
    own = consensus(people["ann"], "split").rounds[0]
    assert list(own.annotation_ids) == [ids[("split", "ann")]] and not own.HasField("annotation")
    assert all(list(o.annotation_ids) == [ids[("split", "ann")]] for o in own.objects)

    # agreement: project, pair, and an annotator's own numbers
    agreement = stub.GetAgreement(consensus_pb2.GetAgreementRequest(project_id="p1"), metadata=mgr.md)
    assert len(agreement.pairs) == 3 and len(agreement.annotators) == 3
    (boxes,) = [s for s in agreement.shapes if s.kind == "box"]
    assert (boxes.label, boxes.metric, boxes.matched) == ("car", "iou", 3)  # "split" boxes never overlap
    assert boxes.unmatched == 6 and 0.8 < boxes.mean_similarity < 1
    assert agreement.categorical.percent_agreement == 1.0 and agreement.categorical.items == 2
    pair = stub.GetAgreement(
        consensus_pb2.GetAgreementRequest(project_id="p1", person_id="ann", other_person_id="bob"),
        metadata=qa.md,
    )
    assert pair.categorical.items == 2 and pair.categorical.percent_agreement == 1.0
    ann = people["ann"]
    mine = stub.GetAgreement(consensus_pb2.GetAgreementRequest(project_id="p1"), metadata=ann.md)
    assert mine.person_id == "ann" and not mine.pairs and mine.categorical.pairs == 2
    for request, field in (
        (consensus_pb2.GetAgreementRequest(project_id="p1", person_id="bob"), "person_id"),
        (
            consensus_pb2.GetAgreementRequest(project_id="p1", person_id="ann", other_person_id="bob"),
            "other_person_id",
        ),
    ):
        refused(
            env,
            lambda request=request: stub.GetAgreement(request, metadata=ann.md),  # type: ignore[misc]
            grpc.StatusCode.PERMISSION_DENIED,
            field,
        )
    refused(
        env,
        lambda: stub.GetAgreement(
            consensus_pb2.GetAgreementRequest(project_id="p1", other_person_id="bob"), metadata=mgr.md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "other_person_id",
    )

    # Dawid-Skene: managers yes, annotators no
    ds = stub.EstimateDawidSkene(consensus_pb2.EstimateDawidSkeneRequest(project_id="p1"), metadata=mgr.md)
    assert list(ds.classes) == ["scene"] and len(ds.tasks) == 2 and len(ds.annotators) == 3
    refused(
        env,
        lambda: stub.EstimateDawidSkene(
            consensus_pb2.EstimateDawidSkeneRequest(project_id="p1"), metadata=ann.md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    # the CLI
    base = ["--target", env.target, "--token", mgr.token]
    capsys.readouterr()
    assert cli.main(["consensus", "split", *base]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rounds"][0]["escalated"] is True and out["rounds"][0]["escalation_stage"] == "peer_review"
    assert cli.main(["agreement", "p1", "--person", "ann", "--pair", "bob", *base]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["categorical"]["percent_agreement"] == 1.0
    assert cli.main(["agreement", "p1", "--dawid-skene", *base]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["scene"]
