"""Faults on the real services: restart the Kafka broker, then the Cassandra node, under load.

A coordinator (`labelweave serve` on Kafka + Cassandra) and a faust worker run while two client
threads import tasks and lease/submit them, each retrying a failed command with the SAME
command id until it is acknowledged. Mid-load the broker is restarted (`ops/kafka.sh restart`),
later the Cassandra node (`ops/cassandra.sh restart`). Afterwards:

- every acknowledged command id has its outcome in the log (acknowledged data is never lost);
- nothing was appended twice for one command id (the log holds one outcome per id);
- the Cassandra projections converge to the checksum of an embedded rebuild of the Kafka log.

These tests restart the shared services, so they run last in the suite (see conftest ordering)
and leave both services running and healthy.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.client import LabelweaveClient
from coordinator.errors import LabelweaveError
from coordinator.eventlog.factory import open_event_log
from tests.backends.cassandra_util import cassandra_admin_fixture, cassandra_hosts_fixture  # noqa: F401
from tests.backends.kafka_util import kafka_broker  # noqa: F401 - fixture
from tests.distributed.test_e2e import Distributed, assert_projections_converge
from tests.e2e.conftest import REPO, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("kafka_broker", "cassandra_admin")]

BOX = A.Annotation(shapes=[A.Shape(label="car", box=A.BoundingBox(x=1, y=1, width=10, height=10))])


def restart(service: str) -> None:
    """Stop and start the service, and wait until it answers clients again."""
    for action in ("restart", "wait"):
        result = subprocess.run(
            [str(REPO / "ops" / f"{service}.sh"), action],
            cwd=REPO,
            env={**cli_env(), **_run_env()},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"ops/{service}.sh {action} failed:\n{result.stdout}\n{result.stderr}"


def _run_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k.startswith("LABELWEAVE_")}


class Load:
    """Importer and annotator threads; every command retried with its id until acknowledged."""

    def __init__(self, target: str, admin_token: str, annotator_token: str, project: str) -> None:
        self.admin = LabelweaveClient(target, admin_token, timeout=20, retries=2)
        self.ann = LabelweaveClient(target, annotator_token, timeout=20, retries=2)
        self.project = project
        self.acked: list[str] = []
        self.failures = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._import, daemon=True),
            threading.Thread(target=self._annotate, daemon=True),
        ]

    def _until_acked(self, call: object) -> object:
        """The call's result once acknowledged, or None if the test stopped before that."""
        while True:
            try:
                return call()  # type: ignore[operator]
            except LabelweaveError:
                with self._lock:
                    self.failures += 1
                if self._stop.is_set():
                    return None
                time.sleep(0.5)

    def _acked(self, *command_ids: str) -> None:
        with self._lock:
            self.acked.extend(command_ids)

    def _import(self) -> None:
        i = 0
        while not self._stop.is_set():
            cid = f"imp-{i}"
            specs = [
                M.TaskSpec(
                    task_id=f"t{i}-{k}",
                    data_uri=f"s3://b/{i}-{k}.jpg",
                    media_type=M.MEDIA_TYPE_IMAGE,
                    media=M.MediaInfo(width=640, height=480),
                )
                for k in range(5)
            ]
            if self._until_acked(partial(self.admin.import_tasks, self.project, specs, command_id=cid)):
                self._acked(*(f"{cid}/{spec.task_id}" for spec in specs))  # one command per task
            i += 1
            time.sleep(0.2)

    def _annotate(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            cid = f"next-{n}"
            nxt = self._until_acked(partial(self.ann.next_task, self.project, command_id=cid))
            if nxt is None or not nxt.HasField("task"):  # type: ignore[attr-defined]
                time.sleep(0.1)  # nothing leased: a NextTask that finds nothing appends nothing
                continue
            self._acked(cid)
            task_id, lease_id = nxt.task.task_id, nxt.lease.lease_id  # type: ignore[attr-defined]
            sid = f"sub-{n}"
            if self._until_acked(partial(self.ann.submit, task_id, lease_id, BOX, command_id=sid)):
                self._acked(sid)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=120)
        self.admin.close()
        self.ann.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Distributed]:
    d = Distributed(tmp_path)
    try:
        yield d
    finally:
        d.close()


def test_broker_and_cassandra_restarts_lose_no_acknowledged_command_and_projections_converge(
    cluster: Distributed,
) -> None:
    cluster.migrate()
    cluster.start_worker()
    server = cluster.start_server(1)
    project = f"p{uuid.uuid4().hex[:6]}"
    with LabelweaveClient(server.target, server.admin_token) as admin:
        admin.create_project(
            project, name="faults", settings=M.ProjectSettings(review_policy=M.REVIEW_POLICY_NONE)
        )
        admin.register_person(
            M.PersonSpec(person_id="ann", display_name="Ann", roles=[M.ROLE_ANNOTATOR], time_zone="UTC")
        )
        admin.add_project_member(project, "ann")
        token = admin.create_token("ann", "faults").token
    load = Load(server.target, server.admin_token, token, project)
    load.start()
    try:
        time.sleep(5)
        restart("kafka")
        time.sleep(8)
        restart("cassandra")
        time.sleep(8)
    finally:
        load.stop()
    assert len(load.acked) > 20, f"the load made little progress: {len(load.acked)} acknowledged"

    log = open_event_log(cluster.event_log)
    try:
        per_command: Counter[str] = Counter(
            ev.envelope.command_id for ev in log.read({}, 10_000_000) if ev.envelope.command_id
        )
        for cid in load.acked:
            outcome = log.outcome(cid)
            assert outcome is not None, f"acknowledged {cid} is not in the log"
            # appended once: the log holds exactly the events of its first outcome
            assert per_command[cid] == len(outcome.events), cid
        assert_projections_converge(cluster, log)
    finally:
        log.close()
    assert server.running, server.output()
