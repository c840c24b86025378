"""`labelweave simulate`: a simulated annotation workforce driven through the public gRPC API.

Set-up (as the caller, normally the admin): create the project with a driving-scene label
schema (car / pedestrian boxes and a scene classification) unless it exists, register
annotators and reviewers spread over several IANA time zones, make them members, give each
a token, and import image tasks with varied priorities.

Then every person works in a thread with their own token and channel:

* annotators loop NextTask → draw 1-4 random, valid boxes plus the scene classification
  (content deterministic per seed and task) → Submit, occasionally ReleaseTask instead; they
  poll GetTask for their submitted annotations and rework rejected ones with EditAnnotation;
* reviewers pull ListTasks(IN_REVIEW) (each reviewer owns a hash partition of the tasks) and
  accept, reject with a reason code from the schema (`--reject-rate`) or correct
  (`--correct-rate`).

It stops when no task of the project is left open, or at `--duration-limit`, then prints a
summary per time zone and per person. Exit status: 0 when every task is done and nothing
unexpected happened, 1 on unexpected errors, 3 when the time limit stopped it first.
Only `LabelweaveClient` is used: no server internals.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import threading
import time
import traceback
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from google.protobuf import struct_pb2

from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import annotation_pb2, model_pb2
from coordinator.client import LabelweaveClient, error_code
from coordinator.domain.ids import check_id
from coordinator.errors import AlreadyExists, FailedPrecondition, InvalidArgument, LabelweaveError, NotFound
from coordinator.simulate_quality import QUALITY_TOLERATED, Quality

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")
M = model_pb2
A = annotation_pb2

TIME_ZONES = (
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Europe/Warsaw",
    "Africa/Nairobi",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
)
WIDTH, HEIGHT = 1920, 1080
# (operation, status) pairs that a real workforce runs into and that are not bugs: racing a
# stale list view, a lease that expired while the person was away.
TOLERATED: frozenset[tuple[str, str]] = frozenset(
    {
        ("review", "FAILED_PRECONDITION"),
        ("review", "ABORTED"),
        ("edit", "FAILED_PRECONDITION"),
        ("edit", "ABORTED"),
        ("release", "FAILED_PRECONDITION"),
        ("release", "NOT_FOUND"),
    }
)
OPEN_STATUSES = (api_pb2.TASK_STATUS_QUEUED, api_pb2.TASK_STATUS_IN_PROGRESS, api_pb2.TASK_STATUS_IN_REVIEW)
MAX_UNEXPECTED = 200  # give up rather than hammer a broken server


# ---------------------------------------------------------------------- CLI arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("simulation")
    g.add_argument("--project", required=True, help="project id (created when missing)")
    g.add_argument(
        "--people-prefix",
        default=None,
        help="person ids are PREFIX-ann-00, PREFIX-rev-00, … (default: the project id); give each of "
        "several simulations on one project its own prefix, like separate vendor sites",
    )
    g.add_argument("--annotators", type=int, default=12)
    g.add_argument("--reviewers", type=int, default=3)
    g.add_argument("--tasks", type=int, default=500, help="image tasks to import (0: work on what is there)")
    g.add_argument("--overlap", type=int, default=1, help="annotations per task")
    g.add_argument("--reject-rate", type=float, default=0.1, help="share of reviews that reject")
    g.add_argument("--correct-rate", type=float, default=0.03, help="share of reviews that correct")
    g.add_argument("--release-rate", type=float, default=0.03, help="share of leases released unworked")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--duration-limit", type=float, default=300.0, help="seconds")
    g.add_argument("--think-ms", type=float, default=0.0, help="max real pause per task, to pace the run")
    g.add_argument("--lease-seconds", type=int, default=300, help="lease length for a created project")
    g.add_argument(
        "--create", action="store_true", help="create the project (the default when it is missing)"
    )
    from coordinator import simulate_quality

    simulate_quality.add_arguments(g)


# ---------------------------------------------------------------------- schema and content


def driving_schema() -> model_pb2.LabelSchema:
    def enum(name: str, options: list[str], required: bool = False) -> model_pb2.AttributeDefinition:
        return M.AttributeDefinition(
            name=name, type=M.ATTRIBUTE_TYPE_ENUM, options=options, required=required
        )

    occluded = M.AttributeDefinition(name="occluded", type=M.ATTRIBUTE_TYPE_BOOL)
    return M.LabelSchema(
        classes=[
            M.LabelClass(
                name="car",
                kinds=[M.ANNOTATION_KIND_BOX],
                attributes=[occluded, enum("vehicle_type", ["sedan", "suv", "van", "truck", "bus"], True)],
            ),
            M.LabelClass(
                name="pedestrian",
                kinds=[M.ANNOTATION_KIND_BOX],
                attributes=[occluded, enum("pose", ["standing", "walking", "sitting"])],
            ),
            M.LabelClass(
                name="scene",
                kinds=[M.ANNOTATION_KIND_CLASSIFICATION],
                attributes=[
                    enum("weather", ["clear", "rain", "fog", "snow"], True),
                    enum("time_of_day", ["day", "dusk", "night"], True),
                ],
            ),
        ],
        reject_reasons=["missed_object", "loose_box", "wrong_class", "wrong_attribute"],
    )


GUIDELINE = M.Guideline(
    title="Driving scenes: cars and pedestrians",
    body=(
        "# Driving scenes\n\n"
        "* Draw a tight box around every car and pedestrian at least 16 px tall.\n"
        "* Mark `occluded` when less than half of the object is visible.\n"
        "* Classify the whole frame with one `scene` label (weather, time of day).\n"
    ),
)


def _attribute_value(attr: model_pb2.AttributeDefinition, rng: random.Random) -> struct_pb2.Value:
    if attr.type == M.ATTRIBUTE_TYPE_BOOL:
        return struct_pb2.Value(bool_value=rng.random() < 0.3)
    if attr.type == M.ATTRIBUTE_TYPE_NUMBER:
        return struct_pb2.Value(number_value=round(rng.uniform(0, 1), 3))
    if attr.type == M.ATTRIBUTE_TYPE_ENUM and attr.options:
        return struct_pb2.Value(string_value=rng.choice(list(attr.options)))
    return struct_pb2.Value(string_value=f"note-{rng.randrange(1000)}")


def _fill_attributes(shape: annotation_pb2.Shape, cls: model_pb2.LabelClass, rng: random.Random) -> None:
    for attr in cls.attributes:
        if attr.required or rng.random() < 0.5:
            shape.attributes[attr.name].CopyFrom(_attribute_value(attr, rng))


def build_annotation(
    schema: model_pb2.LabelSchema, media: model_pb2.MediaInfo, rng: random.Random
) -> annotation_pb2.Annotation:
    """1-4 boxes inside the frame for box classes, plus one shape per classification class."""
    width = float(media.width or WIDTH)
    height = float(media.height or HEIGHT)
    box_classes = [c for c in schema.classes if M.ANNOTATION_KIND_BOX in c.kinds]
    whole_frame = [c for c in schema.classes if M.ANNOTATION_KIND_CLASSIFICATION in c.kinds]
    ann = A.Annotation(source=A.ANNOTATION_SOURCE_HUMAN)
    if box_classes:
        for i in range(rng.randint(1, 4)):
            cls = rng.choice(box_classes)
            w = round(rng.uniform(16.0, max(17.0, width * 0.4)), 1)
            h = round(rng.uniform(16.0, max(17.0, height * 0.5)), 1)
            w, h = min(w, width), min(h, height)
            x = math.floor(rng.uniform(0.0, width - w) * 10) / 10
            y = math.floor(rng.uniform(0.0, height - h) * 10) / 10
            shape = ann.shapes.add(id=f"b{i + 1}", label=cls.name)
            shape.box.CopyFrom(A.BoundingBox(x=x, y=y, width=w, height=h))
            _fill_attributes(shape, cls, rng)
    for cls in whole_frame:
        shape = ann.shapes.add(id=f"c-{cls.name}", label=cls.name)
        shape.classification.SetInParent()
        _fill_attributes(shape, cls, rng)
    return ann


def task_specs(
    project_id: str, run_tag: str, count: int, seed: int, night_ok: bool
) -> list[model_pb2.TaskSpec]:
    rng = random.Random(f"{seed}:tasks")
    cities = ["warsaw", "nairobi", "pune", "osaka", "sydney", "sao-paulo", "oakland"]
    cameras = ["front", "front-left", "front-right", "rear"]
    out: list[model_pb2.TaskSpec] = []
    for i in range(count):
        night = night_ok and rng.random() < 0.1
        out.append(
            M.TaskSpec(
                task_id=f"{project_id}-{run_tag}-{i:05d}",
                data_uri=f"s3://labelweave-sim/{project_id}/{run_tag}/frame-{i:05d}.jpg",
                media_type=M.MEDIA_TYPE_IMAGE,
                media=M.MediaInfo(width=WIDTH, height=HEIGHT),
                priority=rng.choices([0, 1, 2, 5, 10], weights=[50, 20, 15, 10, 5])[0],
                metadata={"city": rng.choice(cities), "camera": rng.choice(cameras), "sim_run": run_tag},
                required_skills=["night"] if night else [],
            )
        )
    return out


# ---------------------------------------------------------------------- bookkeeping


@dataclass
class PersonStats:
    leased: int = 0
    submitted: int = 0
    released: int = 0
    reworked: int = 0
    accepted: int = 0  # as author (corrections count as accepted)
    rejected: int = 0  # as author
    corrected: int = 0  # as author
    reviews: int = 0  # as reviewer
    time_on_task_ms: int = 0


@dataclass
class Worker:
    person_id: str
    role: str  # "annotator" | "reviewer" | "qa" | "expert" (the last two with --quality)
    time_zone: str
    skills: tuple[str, ...] = ()
    token: str = ""
    stats: PersonStats = field(default_factory=PersonStats)


class Run:
    """Shared state of one simulation: counters, errors, the stop flag."""

    def __init__(self, args: argparse.Namespace, project_id: str) -> None:
        self.args = args
        self.project_id = project_id
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors: Counter[tuple[str, str]] = Counter()  # (op, code) → count
        self.unexpected: Counter[str] = Counter()
        self.samples: list[str] = []
        self.calls = 0
        self.done_ids: set[str] = set()
        self.workers: dict[str, Worker] = {}
        self.schema = model_pb2.LabelSchema()
        self.quality = Quality()  # --quality: simulated skills and dispute bookkeeping
        self.tolerated = TOLERATED | (QUALITY_TOLERATED if getattr(args, "quality", False) else frozenset())

    def bump(self, person_id: str, **deltas: int) -> None:
        with self.lock:
            stats = self.workers[person_id].stats
            for name, delta in deltas.items():
                setattr(stats, name, getattr(stats, name) + delta)

    def call(self, who: str, op: str, fn: Callable[[], T]) -> T | None:
        """Run one API call; record failures by operation and status, None when it failed."""
        with self.lock:
            self.calls += 1
        try:
            return fn()
        except LabelweaveError as err:
            self.record(who, op, error_code(err), str(err))
        except Exception as exc:  # a bug here or in the client: keep the run going, report it
            self.record(who, op, type(exc).__name__, "".join(traceback.format_exception_only(exc)).strip())
        return None

    def record(self, who: str, op: str, code: str, message: str) -> None:
        with self.lock:
            self.errors[(op, code)] += 1
            if (op, code) in self.tolerated:
                return
            self.unexpected[code] += 1
            if len(self.samples) < 10:
                self.samples.append(f"{who} {op}: {code}: {message}")
            if sum(self.unexpected.values()) >= MAX_UNEXPECTED:
                self.stop.set()


# ---------------------------------------------------------------------- set-up


def _person_spec(worker: Worker) -> model_pb2.PersonSpec:
    from coordinator.simulate_quality import ROLE_OF

    return M.PersonSpec(
        person_id=worker.person_id,
        display_name=worker.person_id.replace("-", " ").title(),
        roles=[ROLE_OF[worker.role]],
        skills=[M.Skill(name=s, level=3) for s in worker.skills],
        time_zone=worker.time_zone,
    )


def _plan_workers(project_id: str, annotators: int, reviewers: int) -> list[Worker]:
    out: list[Worker] = []
    for i in range(annotators):
        skills = ("vehicles", "night") if i % 2 == 0 else ("vehicles",)
        out.append(Worker(f"{project_id}-ann-{i:02d}", "annotator", TIME_ZONES[i % len(TIME_ZONES)], skills))
    for i in range(reviewers):
        tz = TIME_ZONES[(i * 3 + 2) % len(TIME_ZONES)]
        out.append(Worker(f"{project_id}-rev-{i:02d}", "reviewer", tz, ("vehicles",)))
    return out


def set_up(admin: LabelweaveClient, run: Run, console: Console) -> tuple[api_pb2.Project, int]:
    """Project, schema, people, memberships, tokens, tasks. Returns (project, open task count)."""
    args = run.args
    pid = run.project_id
    try:
        project = admin.get_project(pid)
        created = False
        if args.create:
            console.print(f"project {pid} exists already: using it")
    except NotFound:
        settings = M.ProjectSettings(
            default_overlap=args.overlap, lease_seconds=args.lease_seconds, review_policy=M.REVIEW_POLICY_FULL
        )
        if args.quality:
            from coordinator.simulate_quality import project_settings

            settings = project_settings(args, pid)
        project = admin.create_project(
            pid, f"Simulated driving scenes ({pid})", "labelweave simulate", settings
        )
        created = True
    if not project.label_schema.classes:
        project = admin.publish_label_schema(pid, driving_schema())
    if created:
        project = admin.publish_guideline(pid, GUIDELINE)
    schema = project.label_schema
    if not any(
        M.ANNOTATION_KIND_BOX in c.kinds or M.ANNOTATION_KIND_CLASSIFICATION in c.kinds
        for c in schema.classes
    ):
        raise InvalidArgument(
            f"project {pid} has no box or classification classes to simulate", field="--project"
        )
    needs_review = project.settings.review_policy != M.REVIEW_POLICY_NONE
    if needs_review and args.reviewers < 1:
        raise InvalidArgument("the project needs review: use at least one reviewer", field="--reviewers")
    console.print(
        f"project [bold]{pid}[/]: schema v{schema.version}, guideline v{project.guideline.version}, "
        f"review {'full' if needs_review else 'none'}"
    )

    members = set(project.members)
    prefix = getattr(args, "people_prefix", None) or pid
    check_id(prefix, "--people-prefix")
    planned = _plan_workers(prefix, args.annotators, args.reviewers)
    if args.quality:
        from coordinator.simulate_quality import extra_workers, skill_of

        planned += extra_workers(prefix, args, TIME_ZONES)
        for i, worker in enumerate(w for w in planned if w.role == "annotator"):
            run.quality.skill[worker.person_id] = skill_of(i, args.annotators)
    for worker in planned:
        with contextlib.suppress(AlreadyExists):
            admin.register_person(_person_spec(worker))
        if worker.person_id not in members:
            try:
                admin.add_project_member(pid, worker.person_id)
            except FailedPrecondition:
                # Another simulation (maybe through another coordinator) added them meanwhile.
                if worker.person_id not in set(admin.get_project(pid).members):
                    raise
        ttl = int(args.duration_limit) + 3600
        worker.token = admin.create_token(worker.person_id, "labelweave simulate", ttl).token
        run.workers[worker.person_id] = worker
    extra = f", {args.qa} QA and {args.experts} experts" if args.quality else ""
    console.print(
        f"{args.annotators} annotators and {args.reviewers} reviewers{extra} in "
        f"{len({w.time_zone for w in run.workers.values()})} time zones"
    )

    imported = 0
    if args.tasks > 0:
        run_tag = f"s{args.seed}-{uuid.uuid4().hex[:6]}"
        night_people = (args.annotators + 1) // 2
        specs = task_specs(pid, run_tag, args.tasks, args.seed, night_ok=night_people >= args.overlap)
        for spec in specs:
            spec.overlap = args.overlap
        for start in range(0, len(specs), 500):
            admin.import_tasks(pid, specs[start : start + 500], batch_id=f"sim-{run_tag}")
        imported = len(specs)
        console.print(f"imported {imported} tasks (batch sim-{run_tag}, overlap {args.overlap})")
        if args.quality and args.gold:
            from coordinator.simulate_quality import gold_specs

            run.schema = project.label_schema  # the known answers are drawn against it
            admin.import_tasks(pid, gold_specs(run, pid, run_tag, args.gold), batch_id=f"sim-{run_tag}-gold")
            console.print(f"imported {args.gold} gold tasks (known answers, mixed into 10% of leases)")
    # the list projection may lag the import by a moment: never count fewer than were imported
    open_tasks = sum(1 for status in OPEN_STATUSES for _ in admin.iter_tasks(pid, status))
    return project, max(open_tasks, imported)


# ---------------------------------------------------------------------- workers


@dataclass
class Pending:
    task_id: str
    version: int


def annotator_loop(run: Run, worker: Worker, client: LabelweaveClient) -> None:
    args = run.args
    me = worker.person_id
    rng = random.Random(f"{args.seed}:{me}")
    pending: dict[str, Pending] = {}  # annotation_id → what I submitted and await a verdict on
    last_check = 0.0
    idle = 0.05
    # NextTask serves a project's work only once its current guideline is acknowledged
    run.call(me, "acknowledge_guideline", partial(client.acknowledge_current_guideline, run.project_id))
    while not run.stop.is_set():
        now = time.monotonic()
        if pending and now - last_check > 1.0:
            last_check = now
            _rework(run, worker, client, pending, rng)
        leased = run.call(me, "next_task", partial(client.next_task, run.project_id))
        if leased is None or not leased.HasField("task"):
            if pending:
                _rework(run, worker, client, pending, rng)
            run.stop.wait(idle * (0.5 + rng.random()))
            idle = min(idle * 2, 0.5)
            continue
        idle = 0.05
        task, lease = leased.task, leased.lease
        run.bump(me, leased=1)
        if rng.random() < args.release_rate:
            release = partial(client.release_task, task.task_id, lease.lease_id, "skipped: unclear image")
            if run.call(me, "release", release) is not None:
                run.bump(me, released=1)
            continue
        content = random.Random(f"{args.seed}:{task.task_id}:{me}:{task.round}")
        if args.quality:
            from coordinator.simulate_quality import annotate

            ann = annotate(run, worker, task, 0)
        else:
            ann = build_annotation(leased.label_schema, task.spec.media, content)
        spent_ms = int(content.uniform(15_000, 45_000) * max(1, len(ann.shapes)))
        if args.think_ms > 0:
            run.stop.wait(rng.uniform(0, args.think_ms) / 1000)
        done = run.call(me, "submit", partial(client.submit, task.task_id, lease.lease_id, ann, spent_ms))
        if done is not None:
            run.bump(me, submitted=1, time_on_task_ms=spent_ms)
            pending[done.annotation_id] = Pending(task.task_id, done.version)


def _rework(
    run: Run, worker: Worker, client: LabelweaveClient, pending: dict[str, Pending], rng: random.Random
) -> None:
    """Look at a few of my submitted annotations (round robin); redo the rejected ones."""
    me = worker.person_id
    for annotation_id in list(pending)[:8]:
        if run.stop.is_set():
            return
        item = pending.pop(annotation_id)
        task = run.call(me, "get_task", partial(client.get_task, item.task_id))
        if task is None:
            pending[annotation_id] = item
            continue
        summary = next((a for a in task.annotations if a.annotation_id == annotation_id), None)
        if summary is None or summary.status in (
            api_pb2.ANNOTATION_STATUS_ACCEPTED,
            api_pb2.ANNOTATION_STATUS_SUPERSEDED,
            api_pb2.ANNOTATION_STATUS_ABANDONED,
        ):
            continue  # settled: the reviewer side counted the verdict
        if summary.status == api_pb2.ANNOTATION_STATUS_REJECTED:
            content = random.Random(f"{run.args.seed}:{task.task_id}:{me}:{summary.version}:rework")
            if run.args.quality:
                from coordinator.simulate_quality import annotate, on_rejected

                if on_rejected(run, worker, client, task, summary):  # disputed: wait for the expert
                    pending[annotation_id] = Pending(task.task_id, summary.version)
                    continue
                ann = annotate(run, worker, task, summary.version)
            else:
                ann = build_annotation(run.schema, task.spec.media, content)
            spent_ms = int(content.uniform(5_000, 20_000) * max(1, len(ann.shapes)))
            edit = partial(client.edit_annotation, task.task_id, annotation_id, summary.version, ann)
            edited = run.call(me, "edit", edit)
            if edited is not None:
                run.bump(me, reworked=1, time_on_task_ms=spent_ms)
                pending[annotation_id] = Pending(task.task_id, edited.version)
                continue
        pending[annotation_id] = Pending(task.task_id, summary.version)  # still waiting: back of the line


def reviewer_loop(run: Run, worker: Worker, client: LabelweaveClient, index: int, reviewers: int) -> None:
    args = run.args
    me = worker.person_id
    rng = random.Random(f"{args.seed}:{me}")
    reasons = list(run.schema.reject_reasons)
    seen: set[tuple[str, int]] = set()
    idle = 0.05
    while not run.stop.is_set():
        worked = False
        page_token = ""
        while not run.stop.is_set():
            listing = partial(
                client.list_tasks, run.project_id, api_pb2.TASK_STATUS_IN_REVIEW, 200, page_token
            )
            page = run.call(me, "list_tasks", listing)
            if page is None:
                break
            for task in page.tasks:
                if run.stop.is_set():
                    break
                if zlib.crc32(task.task_id.encode()) % reviewers != index:
                    continue
                if task.status != api_pb2.TASK_STATUS_IN_REVIEW:
                    continue
                for summary in task.annotations:
                    key = (summary.annotation_id, summary.version)
                    if summary.status != api_pb2.ANNOTATION_STATUS_SUBMITTED or key in seen:
                        continue
                    seen.add(key)
                    worked = True
                    _review_one(run, me, client, task, summary, reasons)
            page_token = page.next_page_token
            if not page_token or not page.tasks:
                break
        if worked:
            idle = 0.05
        else:
            run.stop.wait(idle * (0.5 + rng.random()))
            idle = min(idle * 2, 0.5)


def _review_one(
    run: Run,
    me: str,
    client: LabelweaveClient,
    task: api_pb2.Task,
    summary: api_pb2.AnnotationSummary,
    reasons: list[str],
) -> None:
    args = run.args
    draw = random.Random(
        f"{args.seed}:review:{task.task_id}:{summary.author_id}:{summary.version}:{task.round}"
    )
    roll = draw.random()
    correction: annotation_pb2.Annotation | None = None
    codes: list[str] = []
    if roll < args.reject_rate and reasons:
        verdict, outcome = M.VERDICT_REJECT, "rejected"
        codes = [draw.choice(reasons)]
    elif roll < args.reject_rate + args.correct_rate:
        verdict, outcome = M.VERDICT_CORRECT, "corrected"
        correction = build_annotation(run.schema, task.spec.media, draw)
    else:
        verdict, outcome = M.VERDICT_ACCEPT, "accepted"
    review = partial(
        client.review,
        task.task_id,
        summary.annotation_id,
        summary.version,
        verdict,
        codes,
        comment=f"simulated review by {me}",
        correction=correction,
    )
    response = run.call(me, "review", review)
    if response is None:
        return
    run.bump(me, reviews=1)
    if summary.author_id in run.workers:
        if outcome == "corrected":
            run.bump(summary.author_id, corrected=1, accepted=1)
        elif outcome == "accepted":
            run.bump(summary.author_id, accepted=1)
        else:
            run.bump(summary.author_id, rejected=1)
    if response.task_status == api_pb2.TASK_STATUS_DONE:
        with run.lock:
            run.done_ids.add(task.task_id)


# ---------------------------------------------------------------------- monitor and report


def _open_left(admin: LabelweaveClient, run: Run) -> bool | None:
    """True while some task of the project is not done; None when the check failed."""
    for status in OPEN_STATUSES:
        page = run.call("monitor", "list_tasks", partial(admin.list_tasks, run.project_id, status, 1))
        if page is None:
            return None
        if page.tasks:
            return True
    return False


def _done_count(admin: LabelweaveClient, run: Run) -> int | None:
    def count() -> int:
        return sum(1 for _ in admin.iter_tasks(run.project_id, api_pb2.TASK_STATUS_DONE))

    return run.call("monitor", "list_tasks", count)


def _find_stuck(admin: LabelweaveClient, run: Run) -> None:
    """After a timeout: tasks whose current round has `overlap` accepted annotations yet are not
    DONE can never finish; that is a server bug, reported as an unexpected error."""

    def scan() -> list[str]:
        stuck: list[str] = []
        for status in OPEN_STATUSES:
            for task in admin.iter_tasks(run.project_id, status):
                accepted = sum(
                    1
                    for a in task.annotations
                    if a.round == task.round and a.status == api_pb2.ANNOTATION_STATUS_ACCEPTED
                )
                if accepted >= max(task.spec.overlap, 1):
                    stuck.append(task.task_id)
        return stuck

    stuck = run.call("monitor", "list_tasks", scan) or []
    if stuck:
        run.record(
            "server",
            "completion",
            "STUCK_TASK",
            f"{len(stuck)} tasks have all their accepted annotations but are not DONE (e.g. {stuck[0]})",
        )
        with run.lock:
            run.errors[("completion", "STUCK_TASK")] = len(stuck)
            run.unexpected["STUCK_TASK"] = len(stuck)


def _hms(ms: int) -> str:
    seconds = ms // 1000
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def report(run: Run, console: Console, elapsed: float, done: int, total: int, outcome: str) -> None:
    from rich.table import Table

    columns = ("leased", "submitted", "released", "reworked", "accepted", "rejected", "corrected", "reviews")

    def row(stats: PersonStats) -> list[str]:
        return [str(getattr(stats, c)) for c in columns] + [_hms(stats.time_on_task_ms)]

    people = Table(title="Per person", title_justify="left")
    for name in ("person", "role", "time zone", *columns, "time on task"):
        people.add_column(name, justify="left" if name in ("person", "role", "time zone") else "right")
    zones: dict[str, PersonStats] = {}
    zone_people: Counter[str] = Counter()
    total_stats = PersonStats()
    for worker in sorted(run.workers.values(), key=lambda w: (w.time_zone, w.person_id)):
        people.add_row(worker.person_id, worker.role, worker.time_zone, *row(worker.stats))
        zone = zones.setdefault(worker.time_zone, PersonStats())
        zone_people[worker.time_zone] += 1
        for name in (*columns, "time_on_task_ms"):
            value = getattr(worker.stats, name)
            setattr(zone, name, getattr(zone, name) + value)
            setattr(total_stats, name, getattr(total_stats, name) + value)
    people.add_section()
    people.add_row("total", "", "", *row(total_stats), style="bold")

    by_zone = Table(title="Per time zone", title_justify="left")
    for name in ("time zone", "people", *columns, "time on task"):
        by_zone.add_column(name, justify="left" if name == "time zone" else "right")
    for tz in sorted(zones):
        by_zone.add_row(tz, str(zone_people[tz]), *row(zones[tz]))
    by_zone.add_section()
    by_zone.add_row("total", str(len(run.workers)), *row(total_stats), style="bold")

    console.print(by_zone)
    console.print(people)
    rate = elapsed if elapsed > 0 else 1.0
    console.print(
        f"{outcome}: elapsed {elapsed:.1f} s; tasks done {done}/{total}; "
        f"throughput: {done / rate:.1f} tasks/s, {total_stats.submitted / rate:.1f} submits/s, "
        f"{total_stats.reviews / rate:.1f} reviews/s, {run.calls / rate:.1f} API calls/s"
    )
    if run.errors:
        errors = Table(title="Errors", title_justify="left")
        for name in ("operation", "status", "count", "expected"):
            errors.add_column(name, justify="right" if name == "count" else "left")
        for (op, code), count in sorted(run.errors.items()):
            errors.add_row(op, code, str(count), "yes" if (op, code) in run.tolerated else "[red]no[/]")
        console.print(errors)
        for sample in run.samples:
            console.print(f"  [red]{sample}[/]", highlight=False)
    else:
        console.print("errors: none")


# ---------------------------------------------------------------------- entry point


def run(args: argparse.Namespace, make_client: Callable[[str], LabelweaveClient], admin_token: str) -> int:
    """Entry point of `labelweave simulate`; `make_client(token)` opens a client as that person."""
    from rich.console import Console

    _check_arguments(args)
    console = Console(stderr=True)
    state = Run(args, args.project)
    with make_client(admin_token) as admin:
        project, total = set_up(admin, state, console)  # errors here are plain CLI errors
        state.schema = project.label_schema
        clients: list[LabelweaveClient] = []
        threads: list[threading.Thread] = []
        reviewers = [w for w in state.workers.values() if w.role == "reviewer"]
        for worker in state.workers.values():
            client = make_client(worker.token)
            clients.append(client)
            if worker.role == "annotator":
                thread = threading.Thread(
                    target=annotator_loop, args=(state, worker, client), name=worker.person_id
                )
            elif args.quality:
                from coordinator.simulate_quality import thread_target

                target = thread_target(state, worker, client)
                assert target is not None
                thread = threading.Thread(target=target, name=worker.person_id)
            else:
                loop_args = (state, worker, client, reviewers.index(worker), len(reviewers))
                thread = threading.Thread(target=reviewer_loop, args=loop_args, name=worker.person_id)
            thread.daemon = True
            threads.append(thread)
        if args.quality:
            from coordinator.simulate_quality import manager_loop

            manager = threading.Thread(target=manager_loop, args=(state, admin), name="manager", daemon=True)
            threads.append(manager)
        started = time.monotonic()
        outcome = "time limit"
        done = 0
        try:
            for thread in threads:
                thread.start()
            outcome, done = _watch(admin, state, console, started, total)
        except KeyboardInterrupt:
            outcome = "interrupted"
        finally:
            elapsed = time.monotonic() - started
            state.stop.set()
            for thread in threads:
                thread.join(timeout=60)
            for client in clients:
                client.close()
        if outcome == "time limit":
            _find_stuck(admin, state)
    # The summary is the command's result, so it goes to stdout (progress stays on stderr);
    # a log file or pipe gets the full table rather than rich's 80-column default.
    stdout = Console()
    out = stdout if stdout.is_terminal else Console(width=160)
    report(state, out, elapsed, done, total, outcome)
    if args.quality:
        from coordinator import simulate_quality

        with make_client(admin_token) as admin:
            simulate_quality.report(state, admin, out)
    if outcome == "interrupted":
        return 130
    if state.unexpected:
        return 1
    return 0 if outcome == "finished" else 3


def _check_arguments(args: argparse.Namespace) -> None:
    from coordinator.simulate_quality import check_arguments

    check_arguments(args)
    for name in ("annotators", "overlap"):
        if getattr(args, name) < 1:
            raise InvalidArgument("must be at least 1", field=f"--{name}")
    if args.reviewers < 0 or args.tasks < 0:
        raise InvalidArgument(
            "must not be negative", field="--reviewers" if args.reviewers < 0 else "--tasks"
        )
    if args.overlap > args.annotators:
        raise InvalidArgument("overlap needs at least as many annotators", field="--overlap")
    for name in ("reject_rate", "correct_rate", "release_rate"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise InvalidArgument("must be in [0, 1)", field="--" + name.replace("_", "-"))
    if args.reject_rate + args.correct_rate >= 1.0:
        raise InvalidArgument("reject and correct rates must add up to less than 1", field="--correct-rate")


def _watch(
    admin: LabelweaveClient, state: Run, console: Console, started: float, total: int
) -> tuple[str, int]:
    """Progress bar until no task is open (checked twice: lists are eventually consistent)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )
    done = 0
    with progress:
        bar = progress.add_task("tasks done", total=total or None, detail="")
        next_check = 0.0
        empty_checks = 0
        while not state.stop.is_set():
            now = time.monotonic()
            if now - started >= state.args.duration_limit:
                return "time limit", done
            with state.lock:
                local_done = len(state.done_ids)
                submitted = sum(w.stats.submitted for w in state.workers.values())
                reviews = sum(w.stats.reviews for w in state.workers.values())
                unexpected = sum(state.unexpected.values())
            done = max(done, min(local_done, total) if total else local_done)
            if now >= next_check:
                left = _open_left(admin, state)
                empty_checks = empty_checks + 1 if left is False else 0
                if empty_checks >= 2:
                    progress.update(bar, completed=total)
                    return "finished", total
                if empty_checks or (total and done >= total):
                    next_check = now + 0.2  # nearly there: confirm quickly
                else:
                    scanned = _done_count(admin, state)
                    if scanned is not None:
                        done = max(done, min(scanned, total) if total else scanned)
                    next_check = now + 2.0
            detail = f"{submitted} submitted, {reviews} reviews, {unexpected} unexpected errors"
            progress.update(bar, completed=done, detail=detail)
            state.stop.wait(0.2)
    return "stopped: too many unexpected errors", done
