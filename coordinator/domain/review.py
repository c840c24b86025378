"""Review pipelines: the stages work passes after annotate, sampling, and who reviews where. Pure.

A project's pipeline is an ordered list of stages. PEER_REVIEW and QA_SPOT_CHECK stages review
work in order; EXPERT_RESOLUTION (last, at most one) is reached only by disputes. A stage reviews
everything unless it has a `sample_rate` below 1; then whether it looks at a piece of work is

    sample_point(seed, task, annotation, stage) < rate

where the point is a SHA-256 hash mapped onto [0, 1) and the rate is the stage's, raised by its
strata for authors with a low recent acceptance rate. The task aggregate makes that decision
once, when work enters the stage, and records it (`ReviewRouted`: rate, point, the acceptance
rate used), so replaying the log never decides again. Stages that review everything decide
nothing and record nothing: work simply waits there.

`review_policy` is the one-stage special case: with no explicit stages, FULL is one full
PEER_REVIEW stage that reviewers, QA and experts may all review (as before pipelines existed)
and NONE is no stage at all. Tasks imported before pipelines existed carry no pipeline in
`TaskImported`; `pipeline_of_import` derives the same one-stage pipeline from their policy, so
old logs replay unchanged without an upcaster (the meaning of the old fields did not change).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
from coordinator.errors import InvalidArgument

R = model_pb2
PEER: Final = R.REVIEW_STAGE_KIND_PEER_REVIEW
QA: Final = R.REVIEW_STAGE_KIND_QA_SPOT_CHECK
EXPERT: Final = R.REVIEW_STAGE_KIND_EXPERT_RESOLUTION

DEFAULT_STAGE_NAMES: Final[dict[int, str]] = {
    PEER: "peer_review",
    QA: "qa_spot_check",
    EXPERT: "expert_resolution",
}
DEFAULT_STAGE_ROLES: Final[dict[int, tuple[model_pb2.Role.ValueType, ...]]] = {
    PEER: (R.ROLE_REVIEWER,),
    QA: (R.ROLE_QA,),
    EXPERT: (R.ROLE_EXPERT,),
}
LEGACY_REVIEW_ROLES: Final[tuple[model_pb2.Role.ValueType, ...]] = (R.ROLE_REVIEWER, R.ROLE_QA, R.ROLE_EXPERT)
"""Who reviewed under `review_policy` FULL before pipelines existed; its derived stage keeps them."""

DEFAULT_ACCURACY_WINDOW: Final = 50
MAX_ACCURACY_WINDOW: Final = 10_000
MAX_STAGES: Final = 8
MAX_STRATA: Final = 8
MAX_REASON_CODES: Final = 200
MAX_COMMENT_LENGTH: Final = 4000
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_REASON_RE = _NAME_RE
ROLE_LABELS: Final[dict[int, str]] = {
    R.ROLE_ADMIN: "admin",
    R.ROLE_MANAGER: "manager",
    R.ROLE_ANNOTATOR: "annotator",
    R.ROLE_REVIEWER: "reviewer",
    R.ROLE_QA: "qa",
    R.ROLE_EXPERT: "expert",
    R.ROLE_AUDITOR: "auditor",
    R.ROLE_ML_CLIENT: "ml-client",
}


@dataclass(frozen=True)
class AuthorRecord:
    """The author's recent acceptance rate in the project (from the review projection), passed
    into commands so sampling can be stratified; `verdicts` == 0 means no history."""

    acceptance: float = 0.0
    verdicts: int = 0


NO_HISTORY: Final = AuthorRecord()


# ------------------------------------------------------------------ settings


def stage_name(stage: model_pb2.ReviewStage) -> str:
    return stage.name or DEFAULT_STAGE_NAMES.get(stage.kind, "")


def normalize_pipeline(pipeline: model_pb2.ReviewPipeline) -> model_pb2.ReviewPipeline:
    """Fill stage names and reviewer roles from their kinds (events store resolved values)."""
    out = model_pb2.ReviewPipeline()
    out.CopyFrom(pipeline)
    for stage in out.stages:
        if not stage.name:
            stage.name = stage_name(stage)
        if not stage.reviewer_roles:
            stage.reviewer_roles.extend(DEFAULT_STAGE_ROLES.get(stage.kind, ()))
    return out


def check_settings(settings: model_pb2.ProjectSettings, field: str = "settings") -> None:
    """Refuse pipelines and reason codes that cannot work, naming the field."""
    pipeline = settings.pipeline
    stages = pipeline.stages
    base = f"{field}.pipeline"
    if stages and settings.review_policy == R.REVIEW_POLICY_NONE:
        raise InvalidArgument(
            "REVIEW_POLICY_NONE contradicts a pipeline with stages; leave the policy unset",
            field=f"{field}.review_policy",
        )
    if len(stages) > MAX_STAGES:
        raise InvalidArgument(f"at most {MAX_STAGES} stages, got {len(stages)}", field=f"{base}.stages")
    seen: dict[str, int] = {}
    for i, stage in enumerate(stages):
        where = f"{base}.stages[{i}]"
        if stage.kind not in DEFAULT_STAGE_NAMES:
            raise InvalidArgument(
                "choose REVIEW_STAGE_KIND_PEER_REVIEW, _QA_SPOT_CHECK or _EXPERT_RESOLUTION",
                field=f"{where}.kind",
            )
        name = stage_name(stage)
        if not _NAME_RE.fullmatch(name):
            raise InvalidArgument(
                f"{name!r} is not a valid stage name: 1-64 of a-z 0-9 _ . -", field=f"{where}.name"
            )
        if name in seen:
            raise InvalidArgument(
                f"stage name {name!r} is used by stages[{seen[name]}] already", field=f"{where}.name"
            )
        seen[name] = i
        allowed_roles: tuple[int, ...] = (R.ROLE_EXPERT,) if stage.kind == EXPERT else LEGACY_REVIEW_ROLES
        for j, role in enumerate(stage.reviewer_roles):
            if role not in allowed_roles:
                names = ", ".join(ROLE_LABELS[r] for r in allowed_roles)
                label, kind = ROLE_LABELS.get(role, str(role)), DEFAULT_STAGE_NAMES[stage.kind]
                raise InvalidArgument(
                    f"{label!r} cannot review at a {kind} stage; choose from: {names}",
                    field=f"{where}.reviewer_roles[{j}]",
                )
        if stage.kind == EXPERT:
            if i != len(stages) - 1:
                raise InvalidArgument(
                    "expert resolution takes disputes after every review stage: it must be last",
                    field=f"{where}.kind",
                )
            if i == 0:
                raise InvalidArgument(
                    "expert resolution needs a review stage before it (there is nothing to dispute)",
                    field=f"{where}.kind",
                )
            if stage.HasField("sample_rate") or stage.strata or stage.min_verdicts:
                raise InvalidArgument(
                    "expert resolution takes every dispute: it has no sampling", field=f"{where}.sample_rate"
                )
            continue
        if stage.HasField("sample_rate"):
            _check_rate(stage.sample_rate, f"{where}.sample_rate")
        if len(stage.strata) > MAX_STRATA:
            raise InvalidArgument(f"at most {MAX_STRATA} strata", field=f"{where}.strata")
        for j, stratum in enumerate(stage.strata):
            _check_rate(stratum.sample_rate, f"{where}.strata[{j}].sample_rate")
            b = stratum.below_acceptance
            if not (math.isfinite(b) and 0.0 < b <= 1.0):
                raise InvalidArgument(
                    f"an acceptance threshold in (0, 1], got {b}",
                    field=f"{where}.strata[{j}].below_acceptance",
                )
    if pipeline.sampling_seed and len(pipeline.sampling_seed) > 128:
        raise InvalidArgument("at most 128 characters", field=f"{base}.sampling_seed")
    if pipeline.accuracy_window > MAX_ACCURACY_WINDOW:
        raise InvalidArgument(f"at most {MAX_ACCURACY_WINDOW}", field=f"{base}.accuracy_window")
    if len(settings.reason_codes) > MAX_REASON_CODES:
        raise InvalidArgument(f"at most {MAX_REASON_CODES} reason codes", field=f"{field}.reason_codes")
    codes: dict[str, int] = {}
    for i, reason in enumerate(settings.reason_codes):
        where = f"{field}.reason_codes[{i}].code"
        if not _REASON_RE.fullmatch(reason.code):
            raise InvalidArgument(
                f"{reason.code!r} is not a valid reason code: 1-64 of a-z 0-9 _ . -", field=where
            )
        if reason.code in codes:
            raise InvalidArgument(f"duplicate of reason_codes[{codes[reason.code]}]", field=where)
        codes[reason.code] = i


def _check_rate(rate: float, field: str) -> None:
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise InvalidArgument(f"a rate in [0, 1], got {rate}", field=field)


def derived_pipeline(policy: model_pb2.ReviewPolicy.ValueType, seed: str) -> model_pb2.ReviewPipeline:
    """The pipeline `review_policy` stands for: NONE → no stage, FULL (or unset) → one full peer stage."""
    out = model_pb2.ReviewPipeline(sampling_seed=seed, accuracy_window=DEFAULT_ACCURACY_WINDOW)
    if policy != R.REVIEW_POLICY_NONE:
        out.stages.append(
            model_pb2.ReviewStage(
                name=DEFAULT_STAGE_NAMES[PEER], kind=PEER, reviewer_roles=list(LEGACY_REVIEW_ROLES)
            )
        )
    return out


def resolve_pipeline(project_id: str, settings: model_pb2.ProjectSettings) -> model_pb2.ReviewPipeline:
    """The pipeline a task imported now follows (copied into `TaskImported`)."""
    seed = settings.pipeline.sampling_seed or project_id
    if not settings.pipeline.stages:
        return derived_pipeline(settings.review_policy, seed)
    out = normalize_pipeline(settings.pipeline)
    out.sampling_seed = seed
    out.accuracy_window = out.accuracy_window or DEFAULT_ACCURACY_WINDOW
    return out


def pipeline_of_import(event: events_pb2.TaskImported) -> model_pb2.ReviewPipeline:
    if event.HasField("pipeline"):
        out = model_pb2.ReviewPipeline()
        out.CopyFrom(event.pipeline)
        return out
    return derived_pipeline(event.review_policy, event.project_id)


def reason_codes_of(
    settings: model_pb2.ProjectSettings, schema: model_pb2.LabelSchema | None
) -> frozenset[str]:
    """The codes reviews may cite: the settings' list, else the label schema's (empty: any)."""
    if settings.reason_codes:
        return frozenset(r.code for r in settings.reason_codes)
    return frozenset(schema.reject_reasons) if schema is not None else frozenset()


# ------------------------------------------------------------------ routing


def routable(stage: model_pb2.ReviewStage) -> bool:
    """Work passes through review stages in order; expert resolution is reached by disputes only."""
    return stage.kind != EXPERT


def next_stage(pipeline: model_pb2.ReviewPipeline, start: int) -> int:
    """Index of the first review stage at or after `start`, or -1 when none is left."""
    for i in range(max(start, 0), len(pipeline.stages)):
        if routable(pipeline.stages[i]):
            return i
    return -1


def expert_stage(pipeline: model_pb2.ReviewPipeline) -> int:
    for i, stage in enumerate(pipeline.stages):
        if stage.kind == EXPERT:
            return i
    return -1


def reviews_everything(stage: model_pb2.ReviewStage) -> bool:
    """No sampling decision to make: strata only raise a rate, so a full stage stays full."""
    return not stage.HasField("sample_rate") or stage.sample_rate >= 1.0


def stage_rate(stage: model_pb2.ReviewStage, author: AuthorRecord) -> float:
    """The stage's rate for this author: its sample rate, raised to the rate of every stratum
    whose threshold the author's recent acceptance is below (given enough verdicts)."""
    rate = stage.sample_rate if stage.HasField("sample_rate") else 1.0
    if author.verdicts <= 0 or author.verdicts < stage.min_verdicts:
        return rate
    for stratum in stage.strata:
        if author.acceptance < stratum.below_acceptance:
            rate = max(rate, stratum.sample_rate)
    return rate


def sample_point(seed: str, task_id: str, annotation_id: str, stage: str) -> float:
    """A uniform point in [0, 1) from SHA-256 of the key (53 bits, exact as a double)."""
    digest = hashlib.sha256("\x1f".join((seed, task_id, annotation_id, stage)).encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def may_review(stage: model_pb2.ReviewStage, roles: Iterable[int]) -> bool:
    allowed: set[int] = set(stage.reviewer_roles) or set(DEFAULT_STAGE_ROLES.get(stage.kind, ()))
    return not allowed.isdisjoint(roles)


def role_list(stage: model_pb2.ReviewStage) -> str:
    allowed: list[int] = list(stage.reviewer_roles) or list(DEFAULT_STAGE_ROLES.get(stage.kind, ()))
    return ", ".join(sorted(ROLE_LABELS.get(r, str(r)) for r in allowed))


def check_comment(comment: str, field: str = "comment") -> None:
    if len(comment) > MAX_COMMENT_LENGTH:
        raise InvalidArgument(f"at most {MAX_COMMENT_LENGTH} characters", field=field)
