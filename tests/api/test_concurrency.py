"""Many concurrent clients never lease beyond overlap; every task ends done exactly as asked."""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict

import grpc

from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.eventlog import codec

from .conftest import Env, Stubs, image_task

THREADS = 32
TASKS = 1000


def test_32_threads_on_1000_tasks_respect_overlap_with_no_double_lease(env: Env) -> None:
    workers: list[Stubs] = [env.person(f"w{i:02d}", M.ROLE_ANNOTATOR) for i in range(THREADS)]
    env.project("p1", review=M.REVIEW_POLICY_NONE, members=tuple(f"w{i:02d}" for i in range(THREADS)))
    rng = random.Random(3)
    overlap = {f"t{i:04d}": rng.choice((1, 1, 2, 3)) for i in range(TASKS)}
    specs = [image_task(tid, priority=rng.randint(0, 3), overlap=n) for tid, n in overlap.items()]
    for start in range(0, TASKS, 250):
        env.admin.tasks.ImportTasks(
            api_pb2.ImportTasksRequest(
                command_id=f"imp{start}", project_id="p1", tasks=specs[start : start + 250]
            ),
            metadata=env.admin.md,
        )
    env.server.app.runner.catch_up()
    errors: list[str] = []
    ann = A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=1, y=1, width=10, height=10))])

    def work(i: int, stubs: Stubs) -> None:
        empties = 0
        n = 0
        while empties < 20:
            n += 1
            try:
                nxt = stubs.tasks.NextTask(
                    api_pb2.NextTaskRequest(command_id=f"w{i}-n{n}", project_id="p1"), metadata=stubs.md
                )
                if not nxt.HasField("task"):
                    empties += 1
                    threading.Event().wait(0.05)
                    continue
                empties = 0
                stubs.tasks.Submit(
                    api_pb2.SubmitRequest(
                        command_id=f"w{i}-s{n}",
                        task_id=nxt.task.task_id,
                        lease_id=nxt.lease.lease_id,
                        annotation=ann,
                    ),
                    metadata=stubs.md,
                )
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")
                return

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:5]

    # Replay the log and check the invariant at every step, not just at the end.
    live: dict[str, set[str]] = defaultdict(set)  # task -> people holding a lease or a live annotation
    leases: dict[str, str] = {}
    done: Counter[str] = Counter()
    ever: dict[str, Counter[str]] = defaultdict(Counter)
    for ev in env.server.app.log.read({}, 10_000_000):
        p = codec.payload_of(ev.envelope)
        if ev.type == "task_leased":
            assert p.person_id not in live[p.task_id], f"{p.person_id} leased {p.task_id} twice"  # type: ignore[attr-defined]
            live[p.task_id].add(p.person_id)  # type: ignore[attr-defined]
            leases[p.lease_id] = p.person_id  # type: ignore[attr-defined]
            ever[p.task_id][p.person_id] += 1  # type: ignore[attr-defined]
            assert len(live[p.task_id]) <= overlap[p.task_id], f"{p.task_id} over its overlap"  # type: ignore[attr-defined]
        elif ev.type in ("lease_released", "lease_expired"):
            live[p.task_id].discard(p.person_id)  # type: ignore[attr-defined]
        elif ev.type == "annotation_accepted":
            done[p.task_id] += 1  # type: ignore[attr-defined]
    assert done == Counter(overlap), "every task is done exactly as often as its overlap asks"
    assert all(c == 1 for per_task in ever.values() for c in per_task.values())
    listed = env.admin.tasks.ListTasks(
        api_pb2.ListTasksRequest(project_id="p1", status=api_pb2.TASK_STATUS_QUEUED), metadata=env.admin.md
    )
    assert not listed.tasks
