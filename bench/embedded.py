"""Embedded-mode benchmark: one `labelweave serve` process on SQLite, driven over gRPC.

    python -m bench.embedded                     # sizes 10000,100000; 10 s per load phase
    python -m bench.embedded --quick             # sizes 2000,5000; 3 s phases (smoke test, < 2 min)
    python -m bench.embedded --sizes 50000 --seconds 20 --json out.json
    python -m bench.embedded --profile-server /tmp/prof   # + server CPU profile of each phase

For each size N the server runs in its own process (`python -m coordinator serve`), so the
load generator and the server share the machine's cores as they would on one box. The bench
creates a project (review policy NONE, overlap 1), 8 annotators, imports N tasks, then loops
NextTask -> Submit for a fixed wall time with 1 client thread and then with 8 (each thread has
its own channel and annotator; the queue is topped up to N before each phase). It then reads
the server's RSS, stops it with SIGTERM (exit status 0 required), rebuilds the projections
offline and compares checksums, and measures two SQLite baselines in the same run: single-row
transactions of the same encoded events (WAL, synchronous=FULL) and read+decode of the log.

Exit status 0 even when targets are missed; 1 when something broke (RPC errors, a checksum
mismatch, a server that did not start or did not stop cleanly).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import gc
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import ANNOTATION, BenchError
from bench.report import host_notes, loadavg, render_errors, render_header, render_rows, say, thousands
from coordinator._pb.labelweave.api.v1 import api_pb2, api_pb2_grpc
from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.client import error_code, translate_error
from coordinator.eventlog import codec
from coordinator.testing import sample_schema

PROJECT = "bench"
ANNOTATORS = 8
IMPORT_BATCH = 5_000
BASELINE_MIN_EVENTS = 20_000
BASELINE_MAX_SECONDS = 30.0
RPC_TIMEOUT = 60.0
REPO_ROOT = Path(__file__).resolve().parent.parent

TARGET_SUBMITS_PER_S = 1_500.0
TARGET_NEXT_P99_MS = 20.0
TARGET_NEXT_P99_GROWTH = 1.5
TARGET_REBUILD_EVENTS_PER_S = 20_000.0


# ---------------------------------------------------------------------- small helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def proc_memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def machine_notes(workdir: Path) -> dict[str, str]:
    import google.protobuf

    return {
        **host_notes(),
        "sqlite": sqlite3.sqlite_version,
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "workdir": str(workdir),
    }


def _rpc_failure(exc: grpc.RpcError) -> str:
    err = translate_error(exc)
    return f"{error_code(err)}: {err}"


# ---------------------------------------------------------------------- the server process


class ServerProcess:
    """`python -m coordinator serve` on a loopback port, optionally under the CPU profiler."""

    def __init__(self, data_dir: Path, *, profile_out: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.log_path = data_dir.parent / f"{data_dir.name}.server.log"
        serve = [
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            self.target,
            "--metrics-port",
            str(self.metrics_port),
            "--log-level",
            "warning",
        ]
        if profile_out is not None:
            cmd = [sys.executable, "-m", "bench.embedded", "--profiled-serve", str(profile_out), *serve]
        else:
            cmd = [sys.executable, "-m", "coordinator", *serve]
        self.profile_out = profile_out
        self._log = self.log_path.open("wb")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def counters(self) -> dict[str, float]:
        """The server's command outcomes and group-commit sizes, from its Prometheus endpoint."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, float] = collections.defaultdict(float)
        for line in text.splitlines():
            m = _METRIC_LINE.match(line)
            if m is None:
                continue
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            if name == "labelweave_commands_total":
                outcome = re.search(r'outcome="([^"]*)"', labels)
                out[f"commands_{outcome.group(1) if outcome else '?'}"] += value
            elif name in ("labelweave_append_batch_commands_sum", "labelweave_append_batch_commands_count"):
                out[name.removeprefix("labelweave_append_batch_")] += value
        return dict(out)

    def wait_serving(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(f"server exited with {self.proc.returncode}; see {self.log_path}")
                try:
                    resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"server not SERVING after {timeout:.0f} s; see {self.log_path}")
                time.sleep(0.05)
        token_file = self.data_dir / "admin.token"
        while not token_file.is_file() or not token_file.read_text().strip():
            if time.monotonic() > deadline:
                raise BenchError(f"no {token_file}")
            time.sleep(0.05)

    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def stop(self, timeout: float = 120.0) -> tuple[int, float]:
        """SIGTERM and wait: (exit status, seconds to exit)."""
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            self._log.close()
            raise BenchError(f"server did not exit within {timeout:.0f} s of SIGTERM (killed)") from None
        self._log.close()
        return rc, time.perf_counter() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)\s*$")


class EventHead:
    """Read-only view of the server's events.db (WAL lets it read while the server writes)."""

    def __init__(self, events_db: Path) -> None:
        self._conn = sqlite3.connect(f"file:{events_db}?mode=ro", uri=True, isolation_level=None)

    def head(self) -> int:
        row = self._conn.execute('SELECT COALESCE(MAX("offset"), 0) FROM events').fetchone()
        return int(row[0])

    def close(self) -> None:
        self._conn.close()


# ---------------------------------------------------------------------- setup


@dataclass
class Annotator:
    person_id: str
    token: str


@dataclass
class ImportStats:
    tasks: int = 0
    rpc_seconds: float = 0.0
    queued_seconds: float = 0.0  # from the first import call until GetProject shows them queued

    @property
    def acked_rate(self) -> float:
        return self.tasks / self.rpc_seconds if self.rpc_seconds > 0 else 0.0

    @property
    def queued_rate(self) -> float:
        return self.tasks / self.queued_seconds if self.queued_seconds > 0 else 0.0


class Admin:
    def __init__(self, target: str, token: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.admin = api_pb2_grpc.AdminServiceStub(self.channel)
        self.tasks = api_pb2_grpc.TaskServiceStub(self.channel)
        self.md = (("authorization", f"Bearer {token}"),)
        self._imported = 0

    def close(self) -> None:
        self.channel.close()

    def create_project(self) -> None:
        self.admin.CreateProject(
            api_pb2.CreateProjectRequest(
                command_id="bench-project",
                project_id=PROJECT,
                name="Benchmark",
                settings=model_pb2.ProjectSettings(
                    default_overlap=1, lease_seconds=1800, review_policy=model_pb2.REVIEW_POLICY_NONE
                ),
            ),
            metadata=self.md,
            timeout=RPC_TIMEOUT,
        )
        self.admin.PublishLabelSchema(
            api_pb2.PublishLabelSchemaRequest(
                command_id="bench-schema", project_id=PROJECT, schema=sample_schema()
            ),
            metadata=self.md,
            timeout=RPC_TIMEOUT,
        )

    def annotators(self, n: int) -> list[Annotator]:
        out: list[Annotator] = []
        for i in range(n):
            pid = f"annotator-{i}"
            self.admin.RegisterPerson(
                api_pb2.RegisterPersonRequest(
                    command_id=f"bench-reg-{pid}",
                    person=model_pb2.PersonSpec(
                        person_id=pid, display_name=pid, roles=[model_pb2.ROLE_ANNOTATOR], time_zone="UTC"
                    ),
                ),
                metadata=self.md,
                timeout=RPC_TIMEOUT,
            )
            tok = self.admin.CreateToken(
                api_pb2.CreateTokenRequest(command_id=f"bench-tok-{pid}", person_id=pid),
                metadata=self.md,
                timeout=RPC_TIMEOUT,
            )
            self.admin.AddProjectMember(
                api_pb2.ProjectMemberRequest(
                    command_id=f"bench-member-{pid}", project_id=PROJECT, person_id=pid
                ),
                metadata=self.md,
                timeout=RPC_TIMEOUT,
            )
            out.append(Annotator(pid, tok.token))
        return out

    def queue_depth(self) -> int:
        project = self.admin.GetProject(
            api_pb2.GetProjectRequest(project_id=PROJECT), metadata=self.md, timeout=RPC_TIMEOUT
        )
        return int(project.queue_depth)

    def settled_depth(self, timeout: float = 60.0) -> int:
        """The queue depth once the projections have caught up with the last phase's leases
        (two equal reads 100 ms apart): a lagging read would make the refill miss its target."""
        deadline = time.monotonic() + timeout
        last = self.queue_depth()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            current = self.queue_depth()
            if current == last:
                return current
            last = current
        return last

    def wait_depth(self, depth: int, timeout: float = 900.0) -> None:
        deadline = time.monotonic() + timeout
        while (current := self.queue_depth()) != depth:
            if time.monotonic() > deadline:
                raise BenchError(f"queue depth {current} != {depth} after {timeout:.0f} s")
            time.sleep(0.05)

    def import_tasks(self, n: int) -> ImportStats:
        """Import n new tasks in batches of IMPORT_BATCH, then wait until all of them are queued."""
        stats = ImportStats(tasks=n)
        target_depth = self.settled_depth() + n
        t_first = time.perf_counter()
        done = 0
        while done < n:
            count = min(IMPORT_BATCH, n - done)
            first = self._imported
            specs = [
                model_pb2.TaskSpec(
                    task_id=f"t{first + i:07d}",
                    data_uri=f"s3://bench/images/{first + i:07d}.jpg",
                    media_type=model_pb2.MEDIA_TYPE_IMAGE,
                    media=model_pb2.MediaInfo(width=640, height=480),
                )
                for i in range(count)
            ]
            req = api_pb2.ImportTasksRequest(
                command_id=f"bench-import-{first}", project_id=PROJECT, batch_id=f"b{first}", tasks=specs
            )
            t0 = time.perf_counter()
            self.tasks.ImportTasks(req, metadata=self.md, timeout=RPC_TIMEOUT * 5)
            stats.rpc_seconds += time.perf_counter() - t0
            self._imported += count
            done += count
        self.wait_depth(target_depth)
        stats.queued_seconds = time.perf_counter() - t_first
        return stats


# ---------------------------------------------------------------------- load phases


@dataclass
class WorkerStats:
    submits: int = 0
    empty: int = 0
    drained: bool = False
    finished: float = 0.0
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class PhaseResult:
    threads: int
    seconds: float
    submits: int
    events: int
    empty: int
    drained: bool
    errors: list[str]
    next_p50_ms: float
    next_p99_ms: float
    next_max_ms: float
    submit_p50_ms: float
    submit_p99_ms: float
    server_cpu_pct: float
    client_cpu_pct: float
    loadavg_after: str
    counters: dict[str, float]
    """Server counter deltas over the phase: commands_<outcome>, commands_sum/_count per group commit."""

    @property
    def conflicts_per_submit(self) -> float:
        """Optimistic-concurrency retries (WrongExpectedVersion) per completed NextTask+Submit."""
        return self.counters.get("commands_conflict", 0.0) / max(self.submits, 1)

    @property
    def commands_per_commit(self) -> float:
        return self.counters.get("commands_sum", 0.0) / max(self.counters.get("commands_count", 0.0), 1.0)

    @property
    def submits_per_s(self) -> float:
        return self.submits / self.seconds if self.seconds > 0 else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _work(
    target: str, who: Annotator, tag: str, seconds: float, barrier: threading.Barrier, stats: WorkerStats
) -> None:
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = api_pb2_grpc.TaskServiceStub(channel)
        md = (("authorization", f"Bearer {who.token}"),)
        barrier.wait(timeout=60)
        deadline = time.perf_counter() + seconds
        n = 0
        empty_since = 0.0
        while time.perf_counter() < deadline:
            n += 1
            t0 = time.perf_counter()
            nxt = stub.NextTask(
                api_pb2.NextTaskRequest(command_id=f"{tag}-{who.person_id}-n{n}", project_id=PROJECT),
                metadata=md,
                timeout=RPC_TIMEOUT,
            )
            t1 = time.perf_counter()
            if not nxt.HasField("task"):
                # the queue projection may briefly lag the leases; a queue empty for 1 s is drained
                stats.empty += 1
                if not empty_since:
                    empty_since = t0
                elif t0 - empty_since > 1.0:
                    stats.drained = True
                    break
                time.sleep(0.005)
                continue
            empty_since = 0.0
            stats.next_ms.append((t1 - t0) * 1000.0)
            stub.Submit(
                api_pb2.SubmitRequest(
                    command_id=f"{tag}-{who.person_id}-s{n}",
                    task_id=nxt.task.task_id,
                    lease_id=nxt.lease.lease_id,
                    annotation=ANNOTATION,
                    time_on_task_ms=1,
                ),
                metadata=md,
                timeout=RPC_TIMEOUT,
            )
            stats.submit_ms.append((time.perf_counter() - t1) * 1000.0)
            stats.submits += 1
    except grpc.RpcError as exc:
        stats.errors.append(f"{who.person_id}: {_rpc_failure(exc)}")
    except threading.BrokenBarrierError:
        stats.errors.append(f"{who.person_id}: start barrier broken")
    except Exception as exc:
        stats.errors.append(f"{who.person_id}: {type(exc).__name__}: {exc}")
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.abort()
    finally:
        stats.finished = time.perf_counter()
        channel.close()


def run_phase(
    server: ServerProcess,
    heads: EventHead,
    annotators: Sequence[Annotator],
    threads: int,
    seconds: float,
    tag: str,
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[], None] | None = None,
) -> PhaseResult:
    stats = [WorkerStats() for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    workers = [
        threading.Thread(
            target=_work,
            args=(server.target, annotators[i % len(annotators)], tag, seconds, barrier, stats[i]),
            name=f"bench-{tag}-{i}",
            daemon=True,
        )
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    head0 = heads.head()
    counters0 = server.counters()
    if on_start is not None:
        on_start()
    server_cpu0, client_cpu0 = proc_cpu_seconds(server.pid), self_cpu_seconds()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=60)
    t0 = time.perf_counter()
    for w in workers:
        w.join(timeout=seconds + 2 * RPC_TIMEOUT + 60)
    if any(w.is_alive() for w in workers):
        raise BenchError(f"{tag}: client threads did not finish")
    t_end = max(s.finished for s in stats)
    server_cpu1, client_cpu1 = proc_cpu_seconds(server.pid), self_cpu_seconds()
    if on_end is not None:
        on_end()
    counters1 = server.counters()
    elapsed = max(t_end - t0, 1e-9)
    next_ms = [x for s in stats for x in s.next_ms]
    submit_ms = [x for s in stats for x in s.submit_ms]
    return PhaseResult(
        threads=threads,
        seconds=elapsed,
        submits=sum(s.submits for s in stats),
        events=heads.head() - head0,
        empty=sum(s.empty for s in stats),
        drained=any(s.drained for s in stats),
        errors=[e for s in stats for e in s.errors],
        next_p50_ms=percentile(next_ms, 50),
        next_p99_ms=percentile(next_ms, 99),
        next_max_ms=max(next_ms, default=float("nan")),
        submit_p50_ms=percentile(submit_ms, 50),
        submit_p99_ms=percentile(submit_ms, 99),
        server_cpu_pct=100.0 * (server_cpu1 - server_cpu0) / elapsed,
        client_cpu_pct=100.0 * (client_cpu1 - client_cpu0) / elapsed,
        loadavg_after=loadavg(),
        counters={k: v - counters0.get(k, 0.0) for k, v in counters1.items()},
    )


# ---------------------------------------------------------------------- rebuild and baselines


@dataclass
class RebuildStats:
    events: int
    seconds: float
    """Replay and commit, as `Application.rebuild()` (and `labelweave rebuild`) report it."""
    rate: float
    match: bool
    checksum: str
    checksum_seconds: float
    """A second `checksum()` of the rebuilt store, timed alone (verification, not part of `seconds`)."""


def run_rebuild(data_dir: Path) -> RebuildStats:
    from coordinator.app import Application
    from coordinator.settings import Settings
    from projections.factory import open_store

    app = Application.open(Settings(data_dir=data_dir, metrics_port=0))
    try:
        out = app.rebuild()
    finally:
        app.close()
    rebuilt = open_store(f"sqlite:///{(data_dir / 'projections.rebuild.db').resolve()}")
    try:
        t0 = time.perf_counter()
        again = rebuilt.checksum()
        checksum_seconds = time.perf_counter() - t0
    finally:
        rebuilt.close()
    if again != out["rebuilt_checksum"]:
        raise BenchError("the rebuilt store's checksum changed when computed again")
    return RebuildStats(
        events=int(out["events"]),
        seconds=float(out["seconds"]),
        rate=float(out["rate"]),
        match=bool(out["match"]),
        checksum=str(out["rebuilt_checksum"]),
        checksum_seconds=checksum_seconds,
    )


@dataclass
class Baselines:
    insert_rows: int
    insert_seconds: float
    decode_rows: int
    decode_seconds: float

    @property
    def inserts_per_s(self) -> float:
        return self.insert_rows / self.insert_seconds if self.insert_seconds > 0 else 0.0

    @property
    def decodes_per_s(self) -> float:
        return self.decode_rows / self.decode_seconds if self.decode_seconds > 0 else 0.0


def _read_blobs(events_db: Path, limit: int) -> Iterator[bytes]:
    conn = sqlite3.connect(f"file:{events_db}?mode=ro", uri=True)
    try:
        for (data,) in conn.execute('SELECT data FROM events ORDER BY "offset" LIMIT ?', (limit,)):
            yield bytes(data)
    finally:
        conn.close()


def baseline_inserts(events_db: Path, scratch: Path, k: int) -> tuple[int, float]:
    """Insert the first k encoded events, one `BEGIN; INSERT; COMMIT` each, WAL + synchronous=FULL."""
    blobs = list(_read_blobs(events_db, k))
    for suffix in ("", "-wal", "-shm"):
        Path(str(scratch) + suffix).unlink(missing_ok=True)
    conn = sqlite3.connect(str(scratch), isolation_level=None)
    try:
        if str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower() != "wal":
            raise BenchError("baseline database is not in WAL mode")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute('CREATE TABLE events ("offset" INTEGER PRIMARY KEY, data BLOB NOT NULL)')
        n = 0
        t0 = time.perf_counter()
        for n, blob in enumerate(blobs, 1):
            conn.execute("BEGIN")
            conn.execute('INSERT INTO events ("offset", data) VALUES (?, ?)', (n, blob))
            conn.execute("COMMIT")
            if n % 1000 == 0 and time.perf_counter() - t0 > BASELINE_MAX_SECONDS:
                break
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(scratch) + suffix).unlink(missing_ok=True)
    return n, seconds


def baseline_decode(events_db: Path) -> tuple[int, float]:
    """Read every row of the events table and protobuf-decode its envelope (codec.decode)."""
    conn = sqlite3.connect(f"file:{events_db}?mode=ro", uri=True)
    try:
        n = 0
        t0 = time.perf_counter()
        for (data,) in conn.execute('SELECT data FROM events ORDER BY "offset"'):
            codec.decode(data)
            n += 1
        return n, time.perf_counter() - t0
    finally:
        conn.close()


@dataclass
class NoopBaseline:
    """The same NextTask -> Submit loop against a gRPC server whose handlers do nothing."""

    pairs: int
    seconds: float
    server_cpu_s: float
    client_cpu_s: float

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_ms_per_pair(self) -> float:
        return 1000.0 * self.server_cpu_s / max(self.pairs, 1)

    @property
    def client_ms_per_pair(self) -> float:
        return 1000.0 * self.client_cpu_s / max(self.pairs, 1)


def noop_serve(listen: str) -> int:
    """A TaskService on the same grpc server set-up as `labelweave serve` (thread pool of 32,
    metadata read per call) whose NextTask/Submit return a fixed answer: the ceiling of Python
    gRPC on this machine, with no service, log or projection work at all."""
    from concurrent import futures

    task = api_pb2.NextTaskResponse(
        task=api_pb2.Task(task_id="t0000000"), lease=api_pb2.Lease(lease_id="lease", person_id="p")
    )
    submitted = api_pb2.SubmitResponse(annotation_id="a", version=1, position="0:1")

    class Noop(api_pb2_grpc.TaskServiceServicer):
        def NextTask(
            self, request: api_pb2.NextTaskRequest, context: grpc.ServicerContext
        ) -> api_pb2.NextTaskResponse:
            dict(context.invocation_metadata())
            return task

        def Submit(
            self, request: api_pb2.SubmitRequest, context: grpc.ServicerContext
        ) -> api_pb2.SubmitResponse:
            dict(context.invocation_metadata())
            return submitted

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="grpc"))
    api_pb2_grpc.add_TaskServiceServicer_to_server(Noop(), server)  # type: ignore[abstract]
    server.add_insecure_port(listen)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
    return 0


def baseline_noop_grpc(threads: int, seconds: float) -> NoopBaseline:
    target = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.embedded", "--noop-serve", target],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise BenchError("the no-op gRPC server did not start")
        stats = [WorkerStats() for _ in range(threads)]
        barrier = threading.Barrier(threads + 1)
        who = [Annotator(f"annotator-{i}", "noop-token") for i in range(threads)]
        workers = [
            threading.Thread(
                target=_work, args=(target, who[i], "noop", seconds, barrier, stats[i]), daemon=True
            )
            for i in range(threads)
        ]
        for w in workers:
            w.start()
        server0, client0 = proc_cpu_seconds(proc.pid), self_cpu_seconds()
        barrier.wait(timeout=60)
        t0 = time.perf_counter()
        for w in workers:
            w.join(timeout=seconds + 2 * RPC_TIMEOUT)
        elapsed = max(max(st.finished for st in stats) - t0, 1e-9)
        server1, client1 = proc_cpu_seconds(proc.pid), self_cpu_seconds()
        errors = [e for st in stats for e in st.errors]
        if errors:
            raise BenchError(f"no-op gRPC baseline: {errors[0]}")
        return NoopBaseline(sum(st.submits for st in stats), elapsed, server1 - server0, client1 - client0)
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------- one size


@dataclass
class SizeResult:
    size: int
    loadavg_before: str
    imported: ImportStats
    one: PhaseResult
    many: PhaseResult
    rss_mb: float
    hwm_mb: float
    server_exit: int
    stop_seconds: float
    log_events: int
    rebuild: RebuildStats
    baselines: Baselines
    baseline_k: int
    noop: NoopBaseline
    profiles: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        out = [*self.one.errors, *self.many.errors]
        if self.server_exit != 0:
            out.append(f"server exited with status {self.server_exit} after SIGTERM")
        if not self.rebuild.match:
            out.append("rebuild checksum MISMATCH")
        return out


def bench_size(
    size: int,
    seconds: float,
    threads: int,
    workdir: Path,
    profile_dir: Path | None,
    say: Callable[[str], None],
) -> SizeResult:
    data_dir = workdir / f"size-{size}"
    profile_out = profile_dir / f".server-profile-{size}.current" if profile_dir is not None else None
    profiles: list[str] = []
    before = loadavg()
    say(f"[{size:,}] starting server (load average {before})")
    server = ServerProcess(data_dir, profile_out=profile_out)

    def profiling(phase: str) -> tuple[Callable[[], None], Callable[[], None]]:
        """(start, end) hooks that sample the server's CPU during one phase (--profile-server)."""

        def start() -> None:
            if profile_out is not None:
                profile_out.unlink(missing_ok=True)
                _profiler_command(profile_out, "begin")

        def end() -> None:
            if profile_out is not None and _profiler_command(profile_out, "report"):
                final = profile_out.with_name(f"server-profile-{size}-{phase}.txt")
                profile_out.replace(final)
                profiles.append(str(final))

        return start, end

    admin: Admin | None = None
    heads: EventHead | None = None
    try:
        server.wait_serving()
        admin = Admin(server.target, server.admin_token())
        admin.create_project()
        annotators = admin.annotators(ANNOTATORS)
        say(f"[{size:,}] importing {size:,} tasks in batches of {IMPORT_BATCH:,}")
        start, end = profiling("import")
        start()
        imported = admin.import_tasks(size)
        end()
        say(
            f"[{size:,}] imported: {imported.acked_rate:,.0f} tasks/s acknowledged,"
            f" all queued after {imported.queued_seconds:.1f} s"
        )
        heads = EventHead(data_dir / "events.db")

        say(f"[{size:,}] 1 client for {seconds:g} s (load average {loadavg()})")
        one = run_phase(server, heads, annotators, 1, seconds, f"s{size}-c1", *profiling("c1"))
        say(f"[{size:,}]   {one.submits_per_s:,.0f} submits/s, NextTask p99 {one.next_p99_ms:.1f} ms")
        refill = size - admin.settled_depth()
        if refill > 0:
            admin.import_tasks(refill)

        say(f"[{size:,}] {threads} clients for {seconds:g} s (load average {loadavg()})")
        many = run_phase(
            server, heads, annotators, threads, seconds, f"s{size}-c{threads}", *profiling(f"c{threads}")
        )
        say(f"[{size:,}]   {many.submits_per_s:,.0f} submits/s, NextTask p99 {many.next_p99_ms:.1f} ms")
        rss, hwm = proc_memory_mb(server.pid)
        log_events = heads.head()
        heads.close()
        heads = None
        admin.close()
        admin = None
        rc, stop_seconds = server.stop()
        say(f"[{size:,}] server stopped (exit {rc}, {stop_seconds:.1f} s); rebuilding {log_events:,} events")
    except BaseException:
        if admin is not None:
            admin.close()
        if heads is not None:
            heads.close()
        server.kill()
        raise
    rebuild = run_rebuild(data_dir)
    say(f"[{size:,}]   rebuild {rebuild.rate:,.0f} events/s, {'MATCH' if rebuild.match else 'MISMATCH'}")
    events_db = data_dir / "events.db"
    k = min(max(one.events + many.events, BASELINE_MIN_EVENTS), log_events)
    say(f"[{size:,}] baselines: {k:,} single-row transactions, read+decode of {log_events:,} events")
    ins_rows, ins_s = baseline_inserts(events_db, workdir / f"baseline-{size}.db", k)
    dec_rows, dec_s = baseline_decode(events_db)
    say(f"[{size:,}] baseline: no-op gRPC server, {threads} clients for {seconds:g} s")
    noop = baseline_noop_grpc(threads, seconds)
    say(f"[{size:,}]   {noop.pairs_per_s:,.0f} NextTask+Submit pairs/s")
    return SizeResult(
        size=size,
        loadavg_before=before,
        imported=imported,
        one=one,
        many=many,
        rss_mb=rss,
        hwm_mb=hwm,
        server_exit=rc,
        stop_seconds=stop_seconds,
        log_events=log_events,
        rebuild=rebuild,
        baselines=Baselines(ins_rows, ins_s, dec_rows, dec_s),
        baseline_k=k,
        noop=noop,
        profiles=profiles,
    )


# ---------------------------------------------------------------------- report


def _ms(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"  # NaN check


def render_table(results: Sequence[SizeResult], threads: int) -> str:
    rows: list[tuple[str, list[str]]] = [
        ("queued tasks", [thousands(r.size) for r in results]),
        ("load average before (1/5/15 min)", [r.loadavg_before for r in results]),
        ("import, tasks/s (acknowledged)", [thousands(r.imported.acked_rate) for r in results]),
        ("import, tasks/s (until all queued)", [thousands(r.imported.queued_rate) for r in results]),
        ("submits/s, 1 client", [thousands(r.one.submits_per_s) for r in results]),
        (f"submits/s, {threads} clients", [thousands(r.many.submits_per_s) for r in results]),
        ("events/s, 1 client", [thousands(r.one.events_per_s) for r in results]),
        (f"events/s, {threads} clients", [thousands(r.many.events_per_s) for r in results]),
        ("events per NextTask+Submit", [f"{r.many.events / max(r.many.submits, 1):.2f}" for r in results]),
        (
            f"conflict retries per submit, 1 / {threads} cl.",
            [f"{r.one.conflicts_per_submit:.2f} / {r.many.conflicts_per_submit:.2f}" for r in results],
        ),
        (
            f"commands per group commit, 1 / {threads} cl.",
            [f"{r.one.commands_per_commit:.2f} / {r.many.commands_per_commit:.2f}" for r in results],
        ),
        ("NextTask p50 ms, 1 client", [_ms(r.one.next_p50_ms) for r in results]),
        ("NextTask p99 ms, 1 client", [_ms(r.one.next_p99_ms) for r in results]),
        (f"NextTask p50 ms, {threads} clients", [_ms(r.many.next_p50_ms) for r in results]),
        (f"NextTask p99 ms, {threads} clients", [_ms(r.many.next_p99_ms) for r in results]),
        (
            "Submit p50 / p99 ms, 1 client",
            [f"{_ms(r.one.submit_p50_ms)} / {_ms(r.one.submit_p99_ms)}" for r in results],
        ),
        (
            f"Submit p50 / p99 ms, {threads} clients",
            [f"{_ms(r.many.submit_p50_ms)} / {_ms(r.many.submit_p99_ms)}" for r in results],
        ),
        (
            f"CPU % server / client, {threads} clients",
            [f"{r.many.server_cpu_pct:.0f} / {r.many.client_cpu_pct:.0f}" for r in results],
        ),
        (
            "CPU % server / client, 1 client",
            [f"{r.one.server_cpu_pct:.0f} / {r.one.client_cpu_pct:.0f}" for r in results],
        ),
        (
            f"server CPU ms per NextTask+Submit, {threads} cl.",
            [
                _ms(r.many.server_cpu_pct * r.many.seconds / 100.0 / max(r.many.submits, 1) * 1000)
                for r in results
            ],
        ),
        ("server RSS MB after load (VmRSS)", [f"{r.rss_mb:.0f}" for r in results]),
        ("server peak RSS MB (VmHWM)", [f"{r.hwm_mb:.0f}" for r in results]),
        ("rebuild events", [thousands(r.rebuild.events) for r in results]),
        ("rebuild seconds (replay + commit)", [f"{r.rebuild.seconds:.2f}" for r in results]),
        ("rebuild events/s", [thousands(r.rebuild.rate) for r in results]),
        ("checksum of the rebuilt store, seconds", [f"{r.rebuild.checksum_seconds:.2f}" for r in results]),
        ("rebuild checksum", ["MATCH" if r.rebuild.match else "MISMATCH" for r in results]),
        ("baseline: SQLite 1-row tx/s (WAL, FULL)", [thousands(r.baselines.inserts_per_s) for r in results]),
        ("  (rows inserted)", [thousands(r.baselines.insert_rows) for r in results]),
        (
            f"ratio submits/s ({threads} cl.) / baseline tx/s",
            [f"{r.many.submits_per_s / max(r.baselines.inserts_per_s, 1e-9):.3f}" for r in results],
        ),
        (
            f"ratio events/s ({threads} cl.) / baseline tx/s",
            [f"{r.many.events_per_s / max(r.baselines.inserts_per_s, 1e-9):.3f}" for r in results],
        ),
        ("baseline: read + decode events/s", [thousands(r.baselines.decodes_per_s) for r in results]),
        (
            "ratio rebuild / read+decode",
            [f"{r.rebuild.rate / max(r.baselines.decodes_per_s, 1e-9):.3f}" for r in results],
        ),
        (
            f"baseline: no-op gRPC server, pairs/s, {threads} cl.",
            [thousands(r.noop.pairs_per_s) for r in results],
        ),
        (
            "  its CPU ms per pair, server / client",
            [f"{_ms(r.noop.server_ms_per_pair)} / {_ms(r.noop.client_ms_per_pair)}" for r in results],
        ),
        (
            f"ratio submits/s ({threads} cl.) / no-op gRPC pairs/s",
            [f"{r.many.submits_per_s / max(r.noop.pairs_per_s, 1e-9):.3f}" for r in results],
        ),
        ("NextTask returned no task (count)", [f"{r.one.empty} / {r.many.empty}" for r in results]),
        (
            "queue drained during a phase",
            ["yes" if r.one.drained or r.many.drained else "no" for r in results],
        ),
        ("server exit status after SIGTERM", [f"{r.server_exit} ({r.stop_seconds:.1f} s)" for r in results]),
    ]
    return render_rows(rows, min_width=12)


@dataclass
class Target:
    name: str
    measured: str
    ok: bool


def evaluate_targets(results: Sequence[SizeResult], threads: int) -> list[Target]:
    by_size = sorted(results, key=lambda r: r.size)
    small, large = by_size[0], by_size[-1]
    out = [
        Target(
            f"submits/s with {threads} clients >= {TARGET_SUBMITS_PER_S:,.0f} at {r.size:,} tasks",
            f"{r.many.submits_per_s:,.0f}/s",
            r.many.submits_per_s >= TARGET_SUBMITS_PER_S,
        )
        for r in by_size
    ]
    pickers: list[tuple[str, Callable[[SizeResult], float]]] = [
        ("1 client", lambda r: r.one.next_p99_ms),
        (f"{threads} clients", lambda r: r.many.next_p99_ms),
    ]
    for label, pick in pickers:
        p_large, p_small = pick(large), pick(small)
        out.append(
            Target(
                f"NextTask p99 < {TARGET_NEXT_P99_MS:g} ms at {large.size:,} tasks ({label})",
                f"{p_large:.2f} ms",
                p_large < TARGET_NEXT_P99_MS,
            )
        )
        if len(by_size) > 1:
            growth = p_large / p_small if p_small > 0 else float("inf")
            out.append(
                Target(
                    f"NextTask p99 at {large.size:,} <= {TARGET_NEXT_P99_GROWTH:g} x"
                    f" at {small.size:,} ({label})",
                    f"{growth:.2f} x ({p_small:.2f} -> {p_large:.2f} ms)",
                    growth <= TARGET_NEXT_P99_GROWTH,
                )
            )
    out.extend(
        Target(
            f"rebuild >= {TARGET_REBUILD_EVENTS_PER_S:,.0f} events/s at {r.size:,} tasks",
            f"{r.rebuild.rate:,.0f} events/s ({r.rebuild.events:,} events, {r.rebuild.seconds:.2f} s)",
            r.rebuild.rate >= TARGET_REBUILD_EVENTS_PER_S,
        )
        for r in by_size
    )
    return out


def render_targets(targets: Sequence[Target]) -> str:
    w = max(len(t.name) for t in targets)
    return "\n".join(f"{'PASS' if t.ok else 'MISS'}  {t.name:<{w}}  {t.measured}" for t in targets)


# ---------------------------------------------------------------------- server profiler (--profile-server)


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return tail if marker == "site-packages/" else "stdlib/" + tail.split("/", 1)[-1]
    with contextlib.suppress(ValueError):
        return str(Path(filename).resolve().relative_to(REPO_ROOT))
    return filename


def _label(code: object) -> str:
    if isinstance(code, str):  # a builtin / C function: "<method 'execute' of 'sqlite3.Connection' objects>"
        return code
    co_filename = getattr(code, "co_filename", "?")
    qualname = getattr(code, "co_qualname", getattr(code, "co_name", "?"))
    return f"{_short_path(co_filename)}:{qualname}"


Snapshot = dict[str, tuple[int, float, float]]
"""function label -> (calls, inclusive CPU s, self CPU s), summed over the threads given."""


class ThreadProfiler:
    """cProfile in every thread the server starts, timed by each thread's own CPU clock.

    `threading.setprofile` enables a `cProfile.Profile(time.thread_time)` as each new thread
    starts (gRPC workers, the event-log writer, the projection runner, ...), so time a thread
    spends blocked (locks, fsync, waiting for the GIL) is not charged; only CPU is. A phase's
    profile is the difference of two snapshots. Deterministic profiling inflates functions
    that make many small calls, so read the percentages as a ranking, not exact shares; CPU
    of threads without Python frames (gRPC core's pollers) is the process total minus the sum.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._profiles: list[tuple[str, cProfile.Profile]] = []
        self._start: Snapshot = {}
        self._start_threads: dict[str, float] = {}
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._gc_started = 0.0
        self._gc_pauses: list[tuple[int, float]] = []  # (generation, seconds)

    def install(self) -> None:
        threading.setprofile(self._bootstrap)
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # runs with the GIL held, in whichever thread triggered the collection
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._gc_pauses.append((info["generation"], time.perf_counter() - self._gc_started))

    def _bootstrap(self, _frame: FrameType, _event: str, _arg: object) -> None:
        prof = cProfile.Profile(time.thread_time)
        with self._lock:
            self._profiles.append((threading.current_thread().name, prof))
        prof.enable()  # replaces this hook for the rest of the thread's life

    def snapshot(self) -> tuple[Snapshot, dict[str, float]]:
        with self._lock:
            profiles = list(self._profiles)
        out: dict[str, list[float]] = {}
        threads: dict[str, float] = collections.defaultdict(float)
        for name, prof in profiles:
            for entry in prof.getstats():
                label = _label(entry.code)
                acc = out.setdefault(label, [0, 0.0, 0.0])
                acc[0] += entry.callcount
                acc[1] += entry.totaltime
                acc[2] += entry.inlinetime
                threads[re.sub(r"[_-]\d+$", "", name)] += entry.inlinetime
        return {k: (int(v[0]), v[1], v[2]) for k, v in out.items()}, dict(threads)

    def begin(self) -> None:
        self._start, self._start_threads = self.snapshot()
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()
        self._gc_pauses = []

    def report(self, top: int = 35) -> str:
        wall, cpu = time.perf_counter() - self._t0, time.process_time() - self._cpu0
        end, end_threads = self.snapshot()
        diff = {}
        for label, (calls, total, inline) in end.items():
            c0, t0, i0 = self._start.get(label, (0, 0.0, 0.0))
            if calls - c0 > 0 or inline - i0 > 1e-6:
                diff[label] = (calls - c0, total - t0, inline - i0)
        threads = {k: v - self._start_threads.get(k, 0.0) for k, v in end_threads.items()}
        profiled = sum(v[2] for v in diff.values())
        pct = 100.0 / max(profiled, 1e-9)
        lines = [
            f"wall {wall:.2f} s; process CPU {cpu:.2f} s ({100 * cpu / max(wall, 1e-9):.0f}% of one core,"
            " profiler overhead included)",
            f"profiled Python-thread CPU {profiled:.2f} s;"
            f" other threads (gRPC core, main) ~{cpu - profiled:.2f} s",
            "",
            "CPU by thread (% of profiled):",
        ]
        lines += [
            f"  {pct * t:5.1f}%  {t:7.2f} s  {name}"
            for name, t in sorted(threads.items(), key=lambda kv: -kv[1])
            if t > 0.0005
        ]
        lines += ["", "garbage collector pauses (stop-the-world, GIL held):"]
        for gen in range(3):
            pauses = [d for g, d in self._gc_pauses if g == gen]
            if pauses:
                lines.append(
                    f"  gen {gen}: {len(pauses):6,} collections, total {1000 * sum(pauses):8.1f} ms,"
                    f" max {1000 * max(pauses):7.1f} ms"
                )
        for title, idx in (("SELF", 2), ("INCLUSIVE", 1)):
            lines += ["", f"top {top} by {title} CPU (% of profiled CPU; calls):"]
            for label, v in sorted(diff.items(), key=lambda kv: -kv[1][idx])[:top]:
                lines.append(f"  {pct * v[idx]:5.1f}%  {v[idx]:7.3f} s  {v[0]:>9,}  {label}")
        return "\n".join(lines) + "\n"


_command_seq = 0


def _profiler_command(out: Path, command: str, timeout: float = 60.0) -> bool:
    """Ask the profiled server to `begin` a phase or write its `report` to `out`; wait for it.

    A control file rather than a signal: a process-directed signal may land on any thread, and
    the main thread (blocked in `Event.wait`) would only run the handler much later.
    """
    global _command_seq
    _command_seq += 1
    ctl, ack = out.with_suffix(".ctl"), out.with_suffix(".ack")
    tmp = out.with_suffix(".ctl.tmp")
    tmp.write_text(f"{_command_seq} {command}")
    tmp.replace(ctl)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if ack.read_text().strip() == str(_command_seq):
                return command != "report" or out.is_file()
        time.sleep(0.01)
    return False


def profiled_serve(out: Path, serve_args: list[str]) -> int:
    """`labelweave serve` under ThreadProfiler, driven through `_profiler_command`'s files."""
    from coordinator.cli import main as cli_main

    profiler = ThreadProfiler()
    ctl, ack = out.with_suffix(".ctl"), out.with_suffix(".ack")
    for stale in (ctl, ack):
        stale.unlink(missing_ok=True)

    def control() -> None:  # started before install(): this thread itself is not profiled
        done = ""
        while True:
            time.sleep(0.01)
            try:
                seq, _, command = ctl.read_text().partition(" ")
            except OSError:
                continue
            if seq == done:
                continue
            if command == "begin":
                profiler.begin()
            elif command == "report":
                tmp = out.with_suffix(".tmp")
                tmp.write_text(profiler.report())
                tmp.replace(out)
            done = seq
            ack_tmp = out.with_suffix(".ack.tmp")
            ack_tmp.write_text(seq)
            ack_tmp.replace(ack)

    threading.Thread(target=control, name="profiler-control", daemon=True).start()
    profiler.install()
    return cli_main(serve_args)


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.embedded",
        description="Embedded-mode (SQLite) benchmark of Labelweave over gRPC.",
    )
    p.add_argument(
        "--sizes", default=None, help="queued task counts, comma separated (default: 10000,100000)"
    )
    p.add_argument("--seconds", type=float, default=None, help="wall time of each load phase (default: 10)")
    p.add_argument("--quick", action="store_true", help="smoke test: sizes 2000,5000 and 3 s phases")
    p.add_argument(
        "--threads",
        type=int,
        default=ANNOTATORS,
        help="client threads of the loaded phase (default: %(default)s)",
    )
    p.add_argument(
        "--workdir", default=None, help="parent of the scratch data directory (default: system temp)"
    )
    p.add_argument("--keep", action="store_true", help="keep the data directories and server logs")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.add_argument(
        "--profile-server",
        default=None,
        metavar="DIR",
        help="sample the server's CPU during the import and load phases;"
        " reports go to DIR/server-profile-SIZE-PHASE.txt",
    )
    args = p.parse_args(argv)
    default_sizes, default_seconds = ("2000,5000", 3.0) if args.quick else ("10000,100000", 10.0)
    args.size_list = [int(s.replace("_", "")) for s in (args.sizes or default_sizes).split(",") if s.strip()]
    args.seconds = args.seconds if args.seconds is not None else default_seconds
    if not args.size_list or min(args.size_list) < 1:
        p.error("--sizes needs positive task counts")
    if not 1 <= args.threads <= 64:
        p.error("--threads must be between 1 and 64")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--profiled-serve"]:
        return profiled_serve(Path(argv[1]), argv[2:])
    if argv[:1] == ["--noop-serve"]:
        return noop_serve(argv[1])
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="labelweave-bench-", dir=args.workdir))
    profile_dir = Path(args.profile_server).resolve() if args.profile_server else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)

    notes = machine_notes(workdir)
    started = time.perf_counter()
    results: list[SizeResult] = []
    failure = ""
    try:
        for size in args.size_list:
            results.append(bench_size(size, args.seconds, args.threads, workdir, profile_dir, say))
    except (BenchError, grpc.RpcError, OSError, sqlite3.Error) as exc:
        detail = _rpc_failure(exc) if isinstance(exc, grpc.RpcError) else str(exc)
        failure = f"{type(exc).__name__}: {detail}"
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)  # interrupted: nothing worth keeping
        raise
    broken = bool(failure) or any(r.errors for r in results)
    if not args.keep and not broken:
        shutil.rmtree(workdir, ignore_errors=True)

    phases = (
        f"{args.seconds:g} s each; 1 client, then {args.threads} clients (own channel and annotator each)"
    )
    print(
        render_header(
            "Labelweave embedded benchmark (python -m bench.embedded)",
            [*notes.items(), ("phases", phases)],
            started,
        )
    )
    if args.keep or broken:
        print(f"  data and server logs kept in {workdir}")
    print()
    if results:
        print(render_table(results, args.threads))
        print()
        targets = evaluate_targets(results, args.threads)
        print("targets:")
        print(render_targets(targets))
        profiles = [p for r in results for p in r.profiles]
        if profiles:
            print()
            print("server CPU profiles (import, 1 client, loaded phase):")
            for p in profiles:
                print(f"  {p}")
    errors = [f"[{r.size:,}] {e}" for r in results for e in r.errors]
    if failure:
        errors.append(failure)
    if errors:
        print()
        print(render_errors(errors[:20]))
    if args.json:
        payload = {
            "machine": notes,
            "seconds": args.seconds,
            "threads": args.threads,
            "results": [
                {**asdict(r), "errors": r.errors}
                | {
                    "derived": {
                        "submits_per_s_1": r.one.submits_per_s,
                        "submits_per_s_many": r.many.submits_per_s,
                        "events_per_s_many": r.many.events_per_s,
                        "baseline_inserts_per_s": r.baselines.inserts_per_s,
                        "baseline_decodes_per_s": r.baselines.decodes_per_s,
                        "baseline_noop_grpc_pairs_per_s": r.noop.pairs_per_s,
                    }
                }
                for r in results
            ],
            "targets": [asdict(t) for t in evaluate_targets(results, args.threads)] if results else [],
            "errors": errors,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
