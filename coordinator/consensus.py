"""Use cases of the ConsensusService: a task's consensus, live agreement, Dawid-Skene.

Reads only (consensus is decided by the task aggregate when the round's N-th annotation is
submitted; see `coordinator.domain.consensus`). `GetConsensus` reads the task aggregate (consistent
with the log); `GetAgreement` and `EstimateDawidSkene` read the agreement projection (eventually
consistent). Who may read what:

- admins and auditors: everything; managers, QA and experts: their projects;
- annotators: only their own numbers: the consensus of a round they annotated, reduced to the
  objects their annotation is part of (no fused content, no other annotation ids), and their own
  agreement (no pairs, no other person); never Dawid-Skene;
- anyone else: PERMISSION_DENIED.

For dashboards: `agreement_summary(store, project_id)` (re-exported from
`projections.agreement_queries`; its docstring documents the dict it returns).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from consumers.quality import dawid_skene
from coordinator._pb.labelweave.api.v1 import consensus_pb2 as api
from coordinator._pb.labelweave.events.v1 import consensus_pb2, model_pb2
from coordinator.auth import Principal
from coordinator.domain.project import ProjectState
from coordinator.errors import InvalidArgument, PermissionDenied
from coordinator.service import Service
from projections import agreement_queries
from projections.agreement_queries import agreement_summary
from projections.base import Doc

__all__ = ["READERS", "ConsensusUseCases", "agreement_summary"]

R = model_pb2
READERS = (R.ROLE_ADMIN, R.ROLE_MANAGER, R.ROLE_QA, R.ROLE_EXPERT, R.ROLE_AUDITOR)
"""Who reads every number of a project they belong to (admins and auditors: every project)."""
MAX_ITERATIONS = 1000


class ConsensusUseCases:
    def __init__(self, service: Service) -> None:
        self.service = service

    # ------------------------------------------------------------------ helpers

    def _reader(self, who: Principal, project: ProjectState) -> bool:
        """True: the caller reads everything; False: only their own numbers (annotators)."""
        if who.sees_everything:
            return True
        member = who.person_id in project.members
        if who.has(R.ROLE_MANAGER, R.ROLE_QA, R.ROLE_EXPERT) and member:
            return True
        if who.has(R.ROLE_ANNOTATOR) and member:
            return False
        raise PermissionDenied(f"{who.person_id} may not read agreement in project {project.project_id}")

    # ------------------------------------------------------------------ GetConsensus

    def get_consensus(self, who: Principal, req: api.GetConsensusRequest) -> api.ConsensusReport:
        who.require((*READERS, R.ROLE_ANNOTATOR), "GetConsensus")
        task = self.service.task_state(req.task_id)
        project = self.service.project_state(task.project_id)
        full = self._reader(who, project)
        out = api.ConsensusReport(task_id=task.task_id, project_id=task.project_id, round=task.round)
        if full:
            out.rounds.extend(task.consensus[r] for r in sorted(task.consensus))
            return out
        mine = {a.annotation_id for a in task.annotations.values() if a.author_id == who.person_id}
        if not mine:
            raise PermissionDenied(f"task {task.task_id} is not annotated by {who.person_id}")
        for r in sorted(task.consensus):
            computed = task.consensus[r]
            if mine.isdisjoint(computed.annotation_ids):
                continue
            out.rounds.append(_own_part(computed, mine))
        return out

    # ------------------------------------------------------------------ GetAgreement

    def get_agreement(self, who: Principal, req: api.GetAgreementRequest) -> api.AgreementReport:
        who.require((*READERS, R.ROLE_ANNOTATOR), "GetAgreement")
        project = self.service.project_state(req.project_id)
        full = self._reader(who, project)
        person, other = req.person_id, req.other_person_id
        if other and not person:
            raise InvalidArgument("a pair needs person_id too", field="other_person_id")
        if other and other == person:
            raise InvalidArgument("a pair is two different people", field="other_person_id")
        if not full:
            if person and person != who.person_id:
                raise PermissionDenied("annotators see only their own agreement", field="person_id")
            if other:
                raise PermissionDenied("annotators see only their own agreement", field="other_person_id")
            person = who.person_id
        report = agreement_queries.agreement(
            self.service.store, req.project_id, label=req.label, person_id=person, other_person_id=other
        )
        out = api.AgreementReport(
            project_id=req.project_id, label=req.label, person_id=person, other_person_id=other
        )
        _categorical(out.categorical, report["categorical"])
        out.shapes.extend(_shape(row) for row in report["shapes"])
        for row in report["classes"]:
            cls = out.classes.add(label=row["label"])
            _set(cls, "specific_agreement", row["specific_agreement"])
            _set(cls, "cohen_kappa", row["cohen_kappa"])
            cls.shapes.extend(_shape(s) for s in row["shapes"])
        for row in report["annotators"]:
            ann = out.annotators.add(person_id=row["person_id"])
            _categorical(ann.categorical, row["categorical"])
            ann.shapes.extend(_shape(s) for s in row["shapes"])
        if full:
            for row in report["pairs"]:
                pair = out.pairs.add(person_id=row["person_id"], other_person_id=row["other_person_id"])
                _categorical(pair.categorical, row["categorical"])
                pair.shapes.extend(_shape(s) for s in row["shapes"])
        return out

    # ------------------------------------------------------------------ EstimateDawidSkene

    def estimate_dawid_skene(
        self, who: Principal, req: api.EstimateDawidSkeneRequest
    ) -> api.DawidSkeneReport:
        who.require(READERS, "EstimateDawidSkene")
        project = self.service.project_state(req.project_id)
        if not self._reader(who, project):
            raise PermissionDenied("Dawid-Skene estimates are for managers, QA, experts and auditors")
        if req.max_iterations > MAX_ITERATIONS:
            raise InvalidArgument(f"at most {MAX_ITERATIONS}", field="max_iterations")
        items = agreement_queries.categorical_items(self.service.store, req.project_id)
        return estimate(req.project_id, items, req.max_iterations or 100)


def estimate(
    project_id: str, items: list[tuple[str, int, dict[str, str]]], max_iterations: int = 100
) -> api.DawidSkeneReport:
    """Dawid-Skene EM (`consumers.quality.dawid_skene`) over (task, round, {person: class})."""
    out = api.DawidSkeneReport(project_id=project_id)
    if not items:
        return out
    classes = sorted({c for _, _, ratings in items for c in ratings.values()})
    people = sorted({p for _, _, ratings in items for p in ratings})
    ci = {c: i for i, c in enumerate(classes)}
    pi = {p: i for i, p in enumerate(people)}
    labels = np.full((len(items), len(people)), -1, dtype=np.int64)
    for row, (_, _, ratings) in enumerate(items):
        for person, c in ratings.items():
            labels[row, pi[person]] = ci[c]
    result = dawid_skene(labels, len(classes), max_iter=max_iterations)
    out.classes.extend(classes)
    out.priors.extend(float(p) for p in result.priors)
    out.iterations = result.n_iter
    out.converged = result.converged
    out.log_likelihood = result.log_likelihood
    for row, (task_id, round_, _) in enumerate(items):
        post = result.posteriors[row]
        out.tasks.add(
            task_id=task_id,
            round=round_,
            label=classes[int(np.argmax(post))],
            posterior=[float(v) for v in post],
        )
    for j, person in enumerate(people):
        conf = result.confusion[j]
        ann = out.annotators.add(
            person_id=person,
            labels=int((labels[:, j] >= 0).sum()),
            accuracy=float(sum(result.priors[k] * conf[k, k] for k in range(len(classes)))),
        )
        for k in range(len(classes)):
            ann.rows.add(probabilities=[float(v) for v in conf[k]])
    return out


def _own_part(computed: consensus_pb2.ConsensusComputed, mine: set[str]) -> consensus_pb2.ConsensusComputed:
    """An annotator's view of a round: agreement numbers of the objects their work is part of."""
    out = consensus_pb2.ConsensusComputed()
    out.CopyFrom(computed)
    out.ClearField("annotation")
    del out.annotation_ids[:]
    out.annotation_ids.extend(a for a in computed.annotation_ids if a in mine)
    del out.objects[:]
    for obj in computed.objects:
        if mine.isdisjoint(obj.annotation_ids):
            continue
        kept = out.objects.add()
        kept.CopyFrom(obj)
        del kept.annotation_ids[:]
        del kept.shape_ids[:]
        for i, a in enumerate(obj.annotation_ids):
            if a in mine:
                kept.annotation_ids.append(a)
                if i < len(obj.shape_ids):
                    kept.shape_ids.append(obj.shape_ids[i])
    return out


def _set(msg: Any, name: str, value: float | None) -> None:
    if value is not None and math.isfinite(value):
        setattr(msg, name, float(value))


def _categorical(msg: api.CategoricalAgreement, row: Doc) -> None:
    msg.items = int(row.get("items", 0))
    msg.pairs = int(row.get("pairs", 0))
    msg.fleiss_raters = int(row.get("fleiss_raters", 0))
    for name in (
        "percent_agreement",
        "cohen_kappa",
        "fleiss_kappa",
        "alpha_nominal",
        "alpha_ordinal",
        "alpha_interval",
    ):
        _set(msg, name, row.get(name))


def _shape(row: Doc) -> api.ShapeAgreement:
    out = api.ShapeAgreement(
        label=row["label"],
        kind=row["kind"],
        metric=row["metric"],
        matched=row["matched"],
        unmatched=row["unmatched"],
    )
    _set(out, "mean_similarity", row["mean_similarity"])
    _set(out, "match_rate", row["match_rate"])
    return out
