"""Label subscribers disconnect and resume 100 times during load: every label exactly once, in order."""

from __future__ import annotations

import random
import threading

import grpc

from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M

from .conftest import Env, Stubs, image_task


def test_resume_100_times_during_load_sees_every_label_once_in_order(env: Env) -> None:
    workers: list[Stubs] = [env.person(f"w{i}", M.ROLE_ANNOTATOR) for i in range(4)]
    ml = env.person("ml", M.ROLE_ML_CLIENT)
    env.project("p1", review=M.REVIEW_POLICY_NONE, members=("w0", "w1", "w2", "w3", "ml"))
    env.admin.tasks.ImportTasks(
        api_pb2.ImportTasksRequest(
            command_id="imp", project_id="p1", tasks=[image_task(f"t{i:03d}") for i in range(600)]
        ),
        metadata=env.admin.md,
    )
    env.server.app.runner.catch_up()
    ann = A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=1, y=1, width=10, height=10))])
    stop = threading.Event()

    def work(i: int, stubs: Stubs) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            nxt = stubs.tasks.NextTask(
                api_pb2.NextTaskRequest(command_id=f"{i}-n{n}", project_id="p1"), metadata=stubs.md
            )
            if not nxt.HasField("task"):
                if stop.wait(0.05):
                    return
                continue
            stubs.tasks.Submit(
                api_pb2.SubmitRequest(
                    command_id=f"{i}-s{n}",
                    task_id=nxt.task.task_id,
                    lease_id=nxt.lease.lease_id,
                    annotation=ann,
                ),
                metadata=stubs.md,
            )

    threads = [threading.Thread(target=work, args=(i, s), daemon=True) for i, s in enumerate(workers)]
    for t in threads:
        t.start()
    rng = random.Random(11)
    seen: list[str] = []
    token = ""
    reconnects = 0
    try:
        while reconnects < 100:
            call = ml.streams.SubscribeLabels(
                api_pb2.SubscribeLabelsRequest(project_id="p1", resume_token=token, follow=True),
                metadata=ml.md,
            )
            want = rng.randint(1, 4)
            try:
                for msg in call:
                    seen.append(msg.envelope.event_id)
                    token = msg.resume_token
                    want -= 1
                    if want == 0:
                        break
            finally:
                call.cancel()  # a disconnect in the middle of a live stream
            reconnects += 1
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    # drain whatever is left, then compare with the log
    for msg in ml.streams.SubscribeLabels(
        api_pb2.SubscribeLabelsRequest(project_id="p1", resume_token=token, follow=False), metadata=ml.md
    ):
        seen.append(msg.envelope.event_id)
    expected = [
        ev.envelope.event_id
        for ev in env.server.app.log.read({}, 10_000_000)
        if ev.type == "annotation_accepted"
    ]
    assert reconnects == 100
    assert len(seen) == len(set(seen)), "no duplicates"
    assert seen == expected, "no gaps, log order"
    assert len(expected) > 100


def test_a_bad_resume_token_names_the_field(env: Env) -> None:
    env.project("p1")
    try:
        list(
            env.admin.streams.SubscribeLabels(
                api_pb2.SubscribeLabelsRequest(project_id="p1", resume_token="garbage"), metadata=env.admin.md
            )
        )
        raise AssertionError("expected INVALID_ARGUMENT")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "resume_token" in (exc.details() or "")
