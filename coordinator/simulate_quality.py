"""`labelweave simulate --quality`: the whole quality pipeline, with known truth to measure against.

Every image has a hidden *true* annotation (deterministic per seed and task). Each simulated
annotator has a skill in [0.55, 0.95]: the chance that each true object is drawn well (a jittered
copy of the true box, attributes right), and not dropped or drawn far off, plus a chance of extra
boxes and wrong scene attributes. So what the service measures (gold accuracy, review acceptance,
agreement between annotators of one task) can be compared with what was simulated.

The project created in this mode has:

* a three-layer pipeline: peer review of everything → QA spot check of 20 % (50 % for authors whose
  recent acceptance is under 0.8) → expert resolution of disputes; reason codes with descriptions;
* a gold mix (`--gold` known-answer tasks, 10 % of leases) and a suspension rule (rolling gold
  accuracy under 0.5 over 6 results); a simulated manager reinstates suspended people after a
  short pause (as a manager would after retraining);
* consensus when `--overlap` is 2 or more (the project's consensus policy, defaults).

Peer reviewers and QA pull their stage's queue (`ListReviewQueue`) and judge a submission against
the hidden truth with the gold scorer (reject under 0.75 citing `missed_object`, `wrong_class` or
`loose_box`), making a wrong call 5 % of the time. An author whose rejected work was in fact good
(score >= 0.75) disputes it with `--dispute-rate`; experts (`ListDisputes`) overturn a rejection of
good work and uphold the rest. Rejected work that is not disputed (or whose dispute was upheld) is
reworked, a little better each time.

The summary adds, per annotator: the simulated skill, gold results and accuracy as the service
measured them, acceptance by reviewers, disputes won and lost, suspensions; and per project: the
rank correlation between simulated skill and measured accuracy, and inter-annotator agreement
when the server offers it.
"""

from __future__ import annotations

import argparse
import math
import random
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import annotation_pb2, model_pb2
from coordinator.domain.gold import Scoring, score_answer

if TYPE_CHECKING:
    from rich.console import Console

    from coordinator.client import LabelweaveClient
    from coordinator.simulate import Run, Worker

M = model_pb2
A = annotation_pb2

GOOD_ENOUGH = 0.75  # reviewers accept work scoring at least this against the truth
REVIEWER_ERROR = 0.05
PEER, QA, EXPERT = "peer_review", "qa_spot_check", "expert_resolution"
REASONS = (
    M.ReasonCode(code="missed_object", description="An object in the frame is not labelled"),
    M.ReasonCode(code="loose_box", description="A box is not tight around its object"),
    M.ReasonCode(code="wrong_class", description="A label or attribute is wrong, or a box marks nothing"),
    M.ReasonCode(code="wrong_attribute", description="An attribute value is wrong"),
)
_SCORING = Scoring()
QUALITY_TOLERATED: frozenset[tuple[str, str]] = frozenset(
    {
        ("next_task", "FAILED_PRECONDITION"),  # suspended until the manager reinstates them
        ("resolve_dispute", "FAILED_PRECONDITION"),  # the open-disputes list lags a resolution
        ("dispute", "FAILED_PRECONDITION"),  # the rejection was superseded meanwhile
    }
)


def add_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--quality",
        action="store_true",
        help="exercise the quality pipeline: peer review, QA spot checks, disputes to experts, gold "
        "tasks with suspension, annotators of known skill; summary of accuracy and agreement",
    )
    g.add_argument("--qa", type=int, default=1, help="QA people (with --quality)")
    g.add_argument("--experts", type=int, default=1, help="experts resolving disputes (with --quality)")
    g.add_argument(
        "--gold", type=int, default=20, help="gold (known-answer) tasks to import (with --quality)"
    )
    g.add_argument(
        "--dispute-rate", type=float, default=0.6, help="share of wrongly rejected work its author disputes"
    )


def check_arguments(args: argparse.Namespace) -> None:
    from coordinator.errors import InvalidArgument

    if not args.quality:
        return
    if args.reviewers < 1:
        raise InvalidArgument("the quality pipeline needs at least one peer reviewer", field="--reviewers")
    for name in ("qa", "experts"):
        if getattr(args, name) < 1:
            raise InvalidArgument("must be at least 1 with --quality", field=f"--{name}")
    if args.gold < 0:
        raise InvalidArgument("must not be negative", field="--gold")
    if not 0.0 <= args.dispute_rate <= 1.0:
        raise InvalidArgument("must be in [0, 1]", field="--dispute-rate")


# ---------------------------------------------------------------------- project and people


def project_settings(args: argparse.Namespace, project_id: str) -> model_pb2.ProjectSettings:
    settings = M.ProjectSettings(
        default_overlap=args.overlap, lease_seconds=args.lease_seconds, review_policy=M.REVIEW_POLICY_FULL
    )
    settings.reason_codes.extend(REASONS)
    stages = settings.pipeline.stages
    stages.add(kind=M.REVIEW_STAGE_KIND_PEER_REVIEW, reviewer_roles=[M.ROLE_REVIEWER])
    qa = stages.add(kind=M.REVIEW_STAGE_KIND_QA_SPOT_CHECK, sample_rate=0.2, min_verdicts=3)
    qa.reviewer_roles.append(M.ROLE_QA)
    qa.strata.add(below_acceptance=0.8, sample_rate=0.5)
    stages.add(kind=M.REVIEW_STAGE_KIND_EXPERT_RESOLUTION)
    settings.pipeline.sampling_seed = f"sim-{args.seed}"
    settings.pipeline.accuracy_window = 20
    q = settings.quality
    q.gold_rate = 0.1 if args.gold else 0.0
    q.pass_score = GOOD_ENOUGH
    q.accuracy_window = 8
    q.min_accuracy = 0.5
    q.min_results = 6
    q.seed = f"sim-gold-{args.seed}-{project_id}"
    if args.overlap >= 2:
        settings.consensus.SetInParent()  # fuse the N annotations; low agreement goes to review
    return settings


def skill_of(index: int, annotators: int) -> float:
    """Evenly spread from 0.55 (the first annotator) to 0.95 (the last)."""
    return 0.55 + 0.40 * (index / max(1, annotators - 1))


def extra_workers(prefix: str, args: argparse.Namespace, zones: tuple[str, ...]) -> list[Worker]:
    from coordinator.simulate import Worker

    out = [
        Worker(f"{prefix}-qa-{i:02d}", "qa", zones[(i * 5 + 1) % len(zones)], ("vehicles",))
        for i in range(args.qa)
    ]
    out += [
        Worker(f"{prefix}-exp-{i:02d}", "expert", zones[(i * 2 + 4) % len(zones)], ("vehicles", "night"))
        for i in range(args.experts)
    ]
    return out


ROLE_OF = {
    "annotator": M.ROLE_ANNOTATOR,
    "reviewer": M.ROLE_REVIEWER,
    "qa": M.ROLE_QA,
    "expert": M.ROLE_EXPERT,
}


# ---------------------------------------------------------------------- truth and noise


def truth(run: Run, task_id: str, media: model_pb2.MediaInfo) -> annotation_pb2.Annotation:
    from coordinator.simulate import build_annotation

    return build_annotation(run.schema, media, random.Random(f"{run.args.seed}:truth:{task_id}"))


def noisy(
    run: Run, true: annotation_pb2.Annotation, media: model_pb2.MediaInfo, skill: float, rng: random.Random
) -> annotation_pb2.Annotation:
    """What an annotator of this skill draws: each true object well with probability `skill`."""
    from coordinator.simulate import _fill_attributes

    width, height = float(media.width or 1920), float(media.height or 1080)
    classes = {c.name: c for c in run.schema.classes}
    out = A.Annotation(source=A.ANNOTATION_SOURCE_HUMAN)
    n = 0
    for shape in true.shapes:
        if shape.HasField("classification"):
            copy = out.shapes.add()
            copy.CopyFrom(shape)
            if rng.random() > skill and shape.label in classes:
                copy.attributes.clear()
                _fill_attributes(copy, classes[shape.label], rng)
            continue
        roll = rng.random()
        if roll > skill and roll > (1 + skill) / 2:
            continue  # missed
        n += 1
        copy = out.shapes.add()
        copy.CopyFrom(shape)
        copy.id = f"b{n}"
        b = copy.box
        jitter = 0.03 if roll <= skill else 0.6  # drawn well: a few pixels off; badly: far off
        dx, dy = rng.uniform(-jitter, jitter) * b.width, rng.uniform(-jitter, jitter) * b.height
        b.x = math.floor(min(max(0.0, b.x + dx), width - b.width) * 10) / 10
        b.y = math.floor(min(max(0.0, b.y + dy), height - b.height) * 10) / 10
    if rng.random() < (1 - skill) / 2:  # an extra box on nothing
        cls = next((c for c in run.schema.classes if M.ANNOTATION_KIND_BOX in c.kinds), None)
        if cls is not None:
            n += 1
            w, h = round(rng.uniform(20, 200), 1), round(rng.uniform(20, 200), 1)
            extra = out.shapes.add(id=f"b{n}", label=cls.name)
            extra.box.CopyFrom(
                A.BoundingBox(
                    x=math.floor(rng.uniform(0, width - w) * 10) / 10,
                    y=math.floor(rng.uniform(0, height - h) * 10) / 10,
                    width=w,
                    height=h,
                )
            )
            _fill_attributes(extra, cls, rng)
    return out


def quality_of(run: Run, task: api_pb2.Task, content: annotation_pb2.Annotation) -> float:
    return score_answer(truth(run, task.task_id, task.spec.media), content, _SCORING).score


def gold_specs(run: Run, project_id: str, run_tag: str, count: int) -> list[model_pb2.TaskSpec]:
    from coordinator.simulate import HEIGHT, WIDTH

    out: list[model_pb2.TaskSpec] = []
    for i in range(count):
        task_id = f"{project_id}-{run_tag}-gold-{i:03d}"
        spec = M.TaskSpec(
            task_id=task_id,
            data_uri=f"s3://labelweave-sim/{project_id}/{run_tag}/gold-{i:03d}.jpg",
            media_type=M.MEDIA_TYPE_IMAGE,
            media=M.MediaInfo(width=WIDTH, height=HEIGHT),
            metadata={"sim_run": run_tag, "gold": "yes"},
        )
        spec.gold.answer.CopyFrom(truth(run, task_id, spec.media))
        out.append(spec)
    return out


# ---------------------------------------------------------------------- shared state


@dataclass
class QualityStats:
    disputes_opened: int = 0
    disputes_won: int = 0
    disputes_lost: int = 0
    wrong_calls: int = 0  # as reviewer: verdicts that disagree with the truth
    reinstated: int = 0


@dataclass
class Quality:
    skill: dict[str, float] = field(default_factory=dict)
    stats: dict[str, QualityStats] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    disputed: dict[str, int] = field(default_factory=dict)  # annotation id → version disputed
    suspensions: int = 0

    def bump(self, person_id: str, **deltas: int) -> None:
        with self.lock:
            stats = self.stats.setdefault(person_id, QualityStats())
            for name, delta in deltas.items():
                setattr(stats, name, getattr(stats, name) + delta)


def annotate(run: Run, worker: Worker, task: api_pb2.Task, attempt: int) -> annotation_pb2.Annotation:
    """The worker's drawing of the task; a rework (`attempt` > 0) is a little more careful."""
    q: Quality = run.quality
    skill = min(0.99, q.skill.get(worker.person_id, 0.8) + 0.1 * attempt)
    rng = random.Random(f"{run.args.seed}:{task.task_id}:{worker.person_id}:{task.round}:{attempt}")
    return noisy(run, truth(run, task.task_id, task.spec.media), task.spec.media, skill, rng)


# ---------------------------------------------------------------------- authors: disputes


def on_rejected(
    run: Run, worker: Worker, client: LabelweaveClient, task: api_pb2.Task, summary: api_pb2.AnnotationSummary
) -> bool:
    """Called for my rejected work before reworking it. True: leave it (disputed, or the dispute is
    still open); False: rework it."""
    q: Quality = run.quality
    me = worker.person_id
    aid = summary.annotation_id
    with q.lock:
        disputed_version = q.disputed.get(aid)
    if disputed_version == summary.version:  # upheld: rework; open: wait for the expert
        return summary.dispute_status == api_pb2.DISPUTE_STATUS_OPEN
    if disputed_version is not None:
        return False  # a dispute of an earlier version: this rejection is new, but just rework
    content = run.call(me, "history", partial(_submitted_content, client, task.task_id, aid, summary.version))
    if content is None:
        return False
    good = quality_of(run, task, content) >= GOOD_ENOUGH
    draw = random.Random(f"{run.args.seed}:dispute:{aid}:{summary.version}").random()
    if not good or draw >= run.args.dispute_rate:
        return False
    opened = run.call(
        me,
        "dispute",
        partial(client.open_dispute, task.task_id, aid, "I believe the work matches the guideline"),
    )
    if opened is None:
        return False
    with q.lock:
        q.disputed[aid] = summary.version
    q.bump(me, disputes_opened=1)
    return True


def _submitted_content(
    client: LabelweaveClient, task_id: str, annotation_id: str, version: int
) -> annotation_pb2.Annotation:
    """The content of one version of an annotation, from the task's history."""
    found = A.Annotation()
    for entry in client.history(task_id).entries:
        kind = entry.event.WhichOneof("payload")
        if kind in ("annotation_submitted", "annotation_edited"):
            event = getattr(entry.event, kind)
            if event.annotation_id == annotation_id and event.version <= version:
                found = event.annotation
    return found


# ---------------------------------------------------------------------- reviewers, QA, experts


def stage_reviewer_loop(run: Run, worker: Worker, client: LabelweaveClient, stage: str) -> None:
    """Peer reviewers (stage peer_review) and QA (qa_spot_check) work through their stage's queue."""
    me = worker.person_id
    rng = random.Random(f"{run.args.seed}:{me}")
    seen: set[tuple[str, int]] = set()
    # people at one stage split its queue by task hash, as a team lead would hand out work
    crew = sorted(w.person_id for w in run.workers.values() if w.role == worker.role)
    index, size = crew.index(me), len(crew)
    idle = 0.05
    while not run.stop.is_set():
        page = run.call(me, "review_queue", partial(client.list_review_queue, run.project_id, stage, 200))
        worked = False
        for item in page.items if page is not None else ():
            if run.stop.is_set():
                break
            key = (item.annotation_id, item.version)
            if key in seen or item.author_id == me or zlib.crc32(item.task_id.encode()) % size != index:
                continue
            seen.add(key)
            worked = True
            _judge(run, worker, client, item, rng)
        if worked:
            idle = 0.05
        else:
            run.stop.wait(idle * (0.5 + rng.random()))
            idle = min(idle * 2, 0.5)


def _judge(
    run: Run, worker: Worker, client: LabelweaveClient, item: api_pb2.ReviewQueueItem, rng: random.Random
) -> None:
    me = worker.person_id
    task = run.call(me, "get_task", partial(client.get_task, item.task_id))
    if task is None:
        return
    content = run.call(
        me, "history", partial(_submitted_content, client, item.task_id, item.annotation_id, item.version)
    )
    if content is None:
        return
    true = truth(run, task.task_id, task.spec.media)
    score = score_answer(true, content, _SCORING)
    good = score.score >= GOOD_ENOUGH
    wrong_call = rng.random() < REVIEWER_ERROR
    accept = good != wrong_call
    codes: list[str] = []
    if not accept:
        missed = sum(c.missed for c in score.classes)
        extra = sum(c.extra for c in score.classes)
        codes = ["missed_object" if missed else "wrong_class" if extra else "loose_box"]
    review = partial(
        client.review,
        item.task_id,
        item.annotation_id,
        item.version,
        M.VERDICT_ACCEPT if accept else M.VERDICT_REJECT,
        codes,
        comment=f"simulated {item.stage} by {me}",
        stage=item.stage,
    )
    response = run.call(me, "review", review)
    if response is None:
        return
    run.bump(me, reviews=1)
    if wrong_call:
        run.quality.bump(me, wrong_calls=1)
    if item.author_id in run.workers:
        if not accept:
            run.bump(item.author_id, rejected=1)
        elif response.annotation_status == api_pb2.ANNOTATION_STATUS_ACCEPTED:  # past the last stage
            run.bump(item.author_id, accepted=1)
    if response.task_status == api_pb2.TASK_STATUS_DONE:
        with run.lock:
            run.done_ids.add(item.task_id)


def expert_loop(run: Run, worker: Worker, client: LabelweaveClient) -> None:
    """Resolve open disputes, oldest first: overturn a rejection of good work, uphold the rest."""
    me = worker.person_id
    rng = random.Random(f"{run.args.seed}:{me}")
    resolved: set[str] = set()
    idle = 0.05
    while not run.stop.is_set():
        page = run.call(me, "list_disputes", partial(client.list_disputes, run.project_id))
        disputes = list(page.disputes) if page is not None else []
        disputes = [d for d in disputes if d.dispute_id not in resolved]  # the list may lag
        for d in disputes:
            if run.stop.is_set():
                break
            task = run.call(me, "get_task", partial(client.get_task, d.task_id))
            content = run.call(
                me, "history", partial(_submitted_content, client, d.task_id, d.annotation_id, d.version)
            )
            if task is None or content is None:
                continue
            good = quality_of(run, task, content) >= GOOD_ENOUGH
            decision = M.DISPUTE_DECISION_OVERTURN if good else M.DISPUTE_DECISION_UPHOLD
            comment = "the work matches the guideline" if good else "the rejection stands"
            done = run.call(
                me,
                "resolve_dispute",
                partial(client.resolve_dispute, d.task_id, d.dispute_id, decision, comment),
            )
            if done is None:
                continue
            resolved.add(d.dispute_id)
            run.bump(me, reviews=1)
            run.quality.bump(d.author_id, **({"disputes_won": 1} if good else {"disputes_lost": 1}))
            if good and d.author_id in run.workers:
                run.bump(d.author_id, rejected=-1)  # void; acceptance is counted where it happens
        if disputes:
            idle = 0.05
        else:
            run.stop.wait(idle * (0.5 + rng.random()))
            idle = min(idle * 2, 0.5)


def manager_loop(run: Run, client: LabelweaveClient, pause: float = 2.0) -> None:
    """The project's manager: reinstate people suspended for low gold accuracy after a pause (in a
    real project: after retraining). Uses the caller's (admin) client."""
    first_seen: dict[str, float] = {}
    while not run.stop.wait(0.5):
        listing = run.call("manager", "list_suspensions", partial(client.list_suspensions, run.project_id))
        if listing is None:
            continue
        now = time.monotonic()
        current = {s.person_id for s in listing.suspensions}
        for person_id in current:
            if person_id not in first_seen:
                first_seen[person_id] = now
                with run.quality.lock:
                    run.quality.suspensions += 1
            elif now - first_seen[person_id] >= pause:
                done = run.call(
                    "manager",
                    "reinstate",
                    partial(client.reinstate_person, run.project_id, person_id, "retrained (simulated)"),
                )
                if done is not None:
                    run.quality.bump(person_id, reinstated=1)
                    del first_seen[person_id]
        for person_id in list(first_seen):
            if person_id not in current:
                del first_seen[person_id]


def thread_target(run: Run, worker: Worker, client: LabelweaveClient) -> Callable[[], None] | None:
    if worker.role == "qa":
        return partial(stage_reviewer_loop, run, worker, client, QA)
    if worker.role == "expert":
        return partial(expert_loop, run, worker, client)
    if worker.role == "reviewer":
        return partial(stage_reviewer_loop, run, worker, client, PEER)
    return None


# ---------------------------------------------------------------------- summary


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (ties averaged); nan with fewer than 3 points or a constant side."""
    if len(x) < 3:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (vx * vy) if vx and vy else math.nan


def _categorical_rows(scope: str, c: Any) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for name in ("percent_agreement", "cohen_kappa", "fleiss_kappa", "alpha_nominal"):
        if c.HasField(name):
            rows.append((f"{scope}{name.replace('_', ' ')}", f"{getattr(c, name):.3f}"))
    return rows


def agreement_rows(admin: LabelweaveClient, run: Run) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Project agreement lines for the summary, and one agreement figure per annotator (the
    match rate of their shapes with other annotators' on the same tasks)."""
    report: Any = run.call("monitor", "agreement", partial(admin.get_agreement, run.project_id))
    if report is None:
        return [], {}
    rows = _categorical_rows("", report.categorical)
    if report.categorical.items:
        rows.insert(0, ("items rated by 2+ annotators", str(report.categorical.items)))
    for shape in report.shapes:
        if shape.HasField("mean_similarity"):
            rows.append(
                (
                    f"{shape.label} {shape.kind}: mean {shape.metric} of matched",
                    f"{shape.mean_similarity:.3f}",
                )
            )
        if shape.HasField("match_rate"):
            rows.append((f"{shape.label} {shape.kind}: match rate", f"{shape.match_rate:.3f}"))
    per_person: dict[str, str] = {}
    for a in report.annotators:
        matched = sum(s.matched for s in a.shapes)
        unmatched = sum(s.unmatched for s in a.shapes)
        if matched + unmatched:
            per_person[a.person_id] = f"{2 * matched / (2 * matched + unmatched):.2f}"
    return rows, per_person


def report(run: Run, admin: LabelweaveClient, console: Console) -> None:
    from rich.table import Table

    q: Quality = run.quality
    accuracy = run.call("monitor", "list_accuracy", partial(admin.list_accuracy, run.project_id))
    by_person = {r.person_id: r for r in accuracy.people} if accuracy is not None else {}
    metrics = run.call("monitor", "get_metrics", partial(admin.get_metrics, run.project_id))
    counted = {m.person_id: m for m in metrics.annotators} if metrics is not None else {}
    table = Table(
        title="Quality per annotator (simulated skill vs what the service measured)", title_justify="left"
    )
    for name in (
        "person",
        "skill",
        "gold results",
        "gold accuracy",
        "accepted",
        "rejected",
        "acceptance",
        "agreement",
        "disputes won/lost",
        "reinstated",
    ):
        table.add_column(name, justify="left" if name == "person" else "right")
    agreement, agreement_of = agreement_rows(admin, run)
    skills: list[float] = []
    measured: list[float] = []
    for worker in sorted(run.workers.values(), key=lambda w: q.skill.get(w.person_id, 0.0)):
        if worker.role != "annotator":
            continue
        skill = q.skill.get(worker.person_id, math.nan)
        acc = by_person.get(worker.person_id)
        stats = q.stats.get(worker.person_id, QualityStats())
        m = counted.get(worker.person_id)  # the service's counts (overturned rejections removed)
        accepted, rejected = (int(m.accepted), int(m.rejected)) if m is not None else (0, 0)
        acceptance = accepted / (accepted + rejected) if accepted + rejected else math.nan
        results = int(acc.total_results) if acc is not None else 0
        gold_acc = acc.mean_score if acc is not None and acc.results else math.nan
        if not math.isnan(gold_acc):
            skills.append(skill)
            measured.append(gold_acc)
        table.add_row(
            worker.person_id,
            f"{skill:.2f}",
            str(results),
            ("reset" if results else "-") if math.isnan(gold_acc) else f"{gold_acc:.2f}",
            str(accepted),
            str(rejected),
            "-" if math.isnan(acceptance) else f"{acceptance:.2f}",
            agreement_of.get(worker.person_id, "-"),
            f"{stats.disputes_won}/{stats.disputes_lost}",
            str(stats.reinstated),
        )
    console.print(table)
    wrong = sum(s.wrong_calls for s in q.stats.values())
    reviews = sum(w.stats.reviews for w in run.workers.values() if w.role in ("reviewer", "qa"))
    rho = spearman(skills, measured)
    summary = Table(title="Quality summary", title_justify="left")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    summary.add_row(
        "gold: rank correlation of skill and measured score", "-" if math.isnan(rho) else f"{rho:.2f}"
    )
    summary.add_row("review verdicts (peer + QA)", str(reviews))
    summary.add_row("verdicts against the truth (simulated reviewer error)", str(wrong))
    opened = sum(s.disputes_opened for s in q.stats.values())
    won = sum(s.disputes_won for s in q.stats.values())
    lost = sum(s.disputes_lost for s in q.stats.values())
    summary.add_row("disputes opened / overturned / upheld", f"{opened} / {won} / {lost}")
    summary.add_row(
        "suspensions / reinstatements", f"{q.suspensions} / {sum(s.reinstated for s in q.stats.values())}"
    )
    for name, value in agreement:
        summary.add_row(f"agreement: {name}", value)
    console.print(summary)
