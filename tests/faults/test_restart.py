"""SIGKILL the server mid-load: every acknowledged command survives and projections converge to a rebuild."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator._pb.labelweave.api.v1 import api_pb2, api_pb2_grpc
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.app import Application
from coordinator.settings import Settings
from coordinator.testing import sample_schema


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "serve",
            "--data-dir",
            str(data),
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if (
                health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                == health_pb2.HealthCheckResponse.SERVING
            ):
                channel.close()
                return proc
        except grpc.RpcError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not become healthy")


@pytest.mark.slow
def test_sigkill_mid_load_loses_no_acknowledged_command(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    proc = start_server(data, port)
    token = (data / "admin.token").read_text().strip()
    md = (("authorization", f"Bearer {token}"),)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    admin = api_pb2_grpc.AdminServiceStub(channel)
    tasks = api_pb2_grpc.TaskServiceStub(channel)
    admin.CreateProject(
        api_pb2.CreateProjectRequest(
            command_id="cp",
            project_id="p1",
            name="P1",
            settings=M.ProjectSettings(review_policy=M.REVIEW_POLICY_NONE),
        ),
        metadata=md,
    )
    admin.PublishLabelSchema(
        api_pb2.PublishLabelSchemaRequest(command_id="ps", project_id="p1", schema=sample_schema()),
        metadata=md,
    )
    workers = []
    for i in range(6):
        admin.RegisterPerson(
            api_pb2.RegisterPersonRequest(
                command_id=f"r{i}",
                person=M.PersonSpec(person_id=f"w{i}", roles=[M.ROLE_ANNOTATOR], time_zone="UTC"),
            ),
            metadata=md,
        )
        admin.AddProjectMember(
            api_pb2.ProjectMemberRequest(command_id=f"m{i}", project_id="p1", person_id=f"w{i}"), metadata=md
        )
        tok = admin.CreateToken(
            api_pb2.CreateTokenRequest(command_id=f"t{i}", person_id=f"w{i}"), metadata=md
        ).token
        workers.append((("authorization", f"Bearer {tok}"),))
    tasks.ImportTasks(
        api_pb2.ImportTasksRequest(
            command_id="imp",
            project_id="p1",
            tasks=[
                M.TaskSpec(
                    task_id=f"t{i:04d}",
                    data_uri=f"file:///{i}.jpg",
                    media_type=M.MEDIA_TYPE_IMAGE,
                    media=M.MediaInfo(width=100, height=100),
                )
                for i in range(3000)
            ],
        ),
        metadata=md,
    )

    acked: list[str] = []  # annotation ids the server acknowledged
    lock = threading.Lock()
    ann = A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=1, y=1, width=10, height=10))])

    def work(i: int, wmd: tuple[tuple[str, str], ...]) -> None:
        n = 0
        while True:
            n += 1
            try:
                nxt = tasks.NextTask(
                    api_pb2.NextTaskRequest(command_id=f"{i}-n{n}", project_id="p1"), metadata=wmd
                )
                if not nxt.HasField("task"):
                    continue
                res = tasks.Submit(
                    api_pb2.SubmitRequest(
                        command_id=f"{i}-s{n}",
                        task_id=nxt.task.task_id,
                        lease_id=nxt.lease.lease_id,
                        annotation=ann,
                    ),
                    metadata=wmd,
                )
                with lock:
                    acked.append(res.annotation_id)
            except grpc.RpcError:
                return  # the server died under us

    threads = [threading.Thread(target=work, args=(i, w), daemon=True) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for t in threads:
        t.join(timeout=30)
    channel.close()
    with lock:
        acknowledged = set(acked)
    assert len(acknowledged) >= 300

    # restart: projections catch up from their checkpoint; then compare with a rebuild
    proc = start_server(data, port)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    app = Application.open(Settings(data_dir=data, metrics_port=0))
    try:
        logged = {
            ev.envelope.annotation_submitted.annotation_id
            for ev in app.log.read({}, 10_000_000)
            if ev.type == "annotation_submitted"
        }
        assert acknowledged <= logged, f"lost {len(acknowledged - logged)} acknowledged submits"
        result = app.rebuild()
        assert result["match"], result
        assert result["position"] == result["live_position"]
    finally:
        app.close()
