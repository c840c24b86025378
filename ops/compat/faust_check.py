"""Compatibility check: a minimal faust-streaming app against the local broker (ops/kafka.sh).

Run with the broker up:  python ops/compat/faust_check.py [--bootstrap 127.0.0.1:9092]

What it does:
  1. Creates a 6-partition source and sink topic and produces 100 keyed records (kafka-python).
  2. Starts a real worker, `faust -A faust_check worker --without-web`, in a subprocess. The app
     (broker kafka://..., store memory://) has one agent that counts records per key in a Table
     (changelog topic created by faust) and forwards every updated count to the sink topic.
  3. Keeps producing 20 records every 0.5 s for --duration seconds (default 20) while reading the
     sink; then waits until every record is accounted for and stops the worker with SIGTERM.
  4. Starts a second worker with the same app id, waits until it logs "Ready", produces 10 more
     records per key and checks the counts continue from where they were (table recovered from its
     changelog, offsets committed, nothing reprocessed). With --produce-during-startup the records
     are produced while the worker is still starting: faust-streaming 0.15.3 then sometimes
     processes records twice or stalls (see docs/distributed-compat.md).
Topics (source, sink and faust's internal ones) are deleted at the end.

This module is also the faust app module: the worker imports it with LW_FAUST_RUN_ID set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import faust

RUN_ID = os.environ.get("LW_FAUST_RUN_ID", "idle")
BROKER = os.environ.get("LW_FAUST_BOOTSTRAP", "127.0.0.1:9092")
PARTITIONS = 6
KEYS = [f"item-{i}" for i in range(10)]
RUN_DIR = Path(os.environ.get("LABELWEAVE_RUN", Path(__file__).resolve().parent.parent.parent / ".run"))

app = faust.App(
    f"lw-compat-faust-{RUN_ID}",
    broker=f"kafka://{BROKER}",
    store="memory://",
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    datadir=str(RUN_DIR / "faust-check" / f"lw-compat-faust-{RUN_ID}-data"),
)
# Plain bytes on the wire (as produced by kafka-python), no faust JSON envelope.
raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
source = app.topic(f"lw-compat-faust-in-{RUN_ID}", partitions=PARTITIONS, **raw)
sink = app.topic(f"lw-compat-faust-out-{RUN_ID}", partitions=PARTITIONS, **raw)
counts = app.Table("counts", default=int, partitions=PARTITIONS)


@app.agent(source)
async def count_records(stream: faust.StreamT) -> None:
    async for key, _value in stream.items():
        name = key.decode()
        counts[name] += 1
        await sink.send(key=key, value=str(counts[name]).encode())


class Check:
    """Drives the worker subprocesses and tracks what the agent forwarded to the sink topic."""

    def __init__(self, bootstrap: str, run_id: str) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        self.bootstrap = bootstrap
        self.run_id = run_id
        self.src = f"lw-compat-faust-in-{run_id}"
        self.out = f"lw-compat-faust-out-{run_id}"
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        self.consumer = KafkaConsumer(self.out, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        self.produced = 0
        self.forwarded = 0
        self.latest: dict[str, int] = {}
        self.ok = True
        self.passed = 0
        self.failed = 0
        here = Path(__file__).resolve().parent
        self.here = here
        self.log_dir = RUN_DIR / "faust-check"
        self.logs: list[Path] = []

    def produce(self, n: int) -> None:
        for _ in range(n):
            key = KEYS[self.produced % len(KEYS)]
            self.producer.send(self.src, key=key.encode(), value=f"event-{self.produced}".encode())
            self.produced += 1
        self.producer.flush(timeout=30)

    def drain(self, timeout_ms: int = 200) -> None:
        for batch in self.consumer.poll(timeout_ms=timeout_ms).values():
            for rec in batch:
                self.forwarded += 1
                key = rec.key.decode()
                self.latest[key] = max(self.latest.get(key, 0), int(rec.value.decode()))

    def start_worker(self, n: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ, LW_FAUST_RUN_ID=self.run_id, LW_FAUST_BOOTSTRAP=self.bootstrap)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.here), env.get("PYTHONPATH", "")) if p)
        faust_bin = Path(sys.executable).with_name("faust")
        cmd = [str(faust_bin), "-A", "faust_check", "worker", "--without-web", "-l", "info"]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"faust-check-{self.run_id}-{n}.log"
        self.logs.append(log_path)
        with log_path.open("w") as log:
            return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.here)

    def wait_for(self, worker: subprocess.Popen[bytes], want: dict[str, int], timeout: float) -> bool:
        """Wait until every key's count reached `want` (or timeout); True if exactly `want`, no extras."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and worker.poll() is None:
            self.drain()
            if all(self.latest.get(k, 0) >= n for k, n in want.items()):
                break
        end = time.monotonic() + 1.0  # surplus (reprocessed) records would show up here
        while time.monotonic() < end:
            self.drain(100)
        return self.latest == want and self.forwarded == self.produced

    def wait_ready(self, worker: subprocess.Popen[bytes], log_path: Path, timeout: float) -> float:
        """Seconds until the worker logged '[^Worker]: Ready' (raises on timeout or exit)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}; see {log_path}")
            if "[^Worker]: Ready" in log_path.read_text(errors="replace"):
                return time.monotonic() - started
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout}s; see {log_path}")

    def stop_worker(self, worker: subprocess.Popen[bytes], log_path: Path) -> tuple[bool, str]:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
                return False, "did not stop within 30 s of SIGTERM (killed)"
        tracebacks = log_path.read_text(errors="replace").count("Traceback (most recent call last)")
        if worker.returncode not in (0, -signal.SIGTERM) or tracebacks:
            return False, f"exit code {worker.returncode}, {tracebacks} tracebacks in {log_path}"
        return True, f"stopped cleanly on SIGTERM (exit {worker.returncode}, no tracebacks)"

    def lag(self, group: str) -> str:
        """Committed offsets of the faust consumer group vs end offsets of the source topic."""
        from kafka import KafkaAdminClient, TopicPartition

        tps = [TopicPartition(self.src, p) for p in range(PARTITIONS)]
        ends = self.consumer.end_offsets(tps)
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            if hasattr(admin, "list_group_offsets"):  # kafka-python 3.x
                committed = admin.list_group_offsets(group)[group]
            else:
                committed = admin.list_consumer_group_offsets(group)
        finally:
            admin.close()
        pairs = [
            f"p{tp.partition}:{committed[tp].offset if tp in committed else '-'}/{ends[tp]}" for tp in tps
        ]
        return "committed/end " + " ".join(pairs)

    def report(self, ok: bool, text: str) -> None:
        self.ok &= ok
        self.passed += ok
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {text}", flush=True)

    def close(self) -> None:
        self.consumer.close()
        self.producer.close(timeout=10)


def main() -> int:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", default=BROKER)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of live traffic")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the agent")
    parser.add_argument(
        "--produce-during-startup",
        action="store_true",
        help="phase 2: produce before the restarted worker is ready (shows faust's restart race)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker logs even on success")
    args = parser.parse_args()

    import aiokafka

    run_id = uuid.uuid4().hex[:8]
    app_id = f"lw-compat-faust-{run_id}"
    print(
        f"faust-streaming {faust.__version__}, aiokafka {aiokafka.__version__}, app id {app_id}", flush=True
    )

    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap)
    c = Check(args.bootstrap, run_id)
    try:
        admin.create_topics(
            [NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in (c.src, c.out)]
        )
        c.produce(100)

        # Phase 1: live traffic through one worker.
        started = time.monotonic()
        worker = c.start_worker(1)
        first_output = None
        while time.monotonic() - started < args.duration and worker.poll() is None:
            c.produce(20)
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                c.drain(100)
            if first_output is None and c.forwarded:
                first_output = time.monotonic() - started
        expected = {k: c.produced // len(KEYS) for k in KEYS}
        complete = c.wait_for(worker, expected, args.timeout)
        ran = time.monotonic() - started
        c.report(
            complete,
            f"worker 1: {c.produced} records produced over {ran:.1f}s, {c.forwarded} counted and forwarded "
            f"(first output {first_output or float('nan'):.1f}s after start); per-key counts "
            f"{'all ' + str(expected[KEYS[0]]) if c.latest == expected else c.latest}",
        )
        stopped, how = c.stop_worker(worker, c.logs[-1])
        c.report(stopped, f"worker 1 {how}")
        print(f"  after worker 1: {c.lag(app_id)}", flush=True)
        if not c.ok:
            return 1

        # Phase 2: a new worker resumes: table restored from the changelog, offsets committed.
        before = dict(c.latest)
        started = time.monotonic()
        worker = c.start_worker(2)
        ready = "not awaited"
        if not args.produce_during_startup:
            ready = f"ready after {c.wait_ready(worker, c.logs[-1], args.timeout):.1f}s"
        c.produce(10 * len(KEYS))
        want = {k: v + 10 for k, v in before.items()}
        complete = c.wait_for(worker, want, args.timeout)
        c.report(
            complete,
            f"worker 2 (restart, same app id, {ready}): 100 new records, done after "
            f"{time.monotonic() - started:.1f}s; "
            f"counts continued {before[KEYS[0]]} -> {c.latest.get(KEYS[0])} per key; "
            f"total forwarded {c.forwarded} of {c.produced} produced",
        )
        if c.latest != want:
            print(f"  per-key counts {c.latest}, expected {want}", flush=True)
        stopped, how = c.stop_worker(worker, c.logs[-1])
        c.report(stopped, f"worker 2 {how}")
        print(f"  after worker 2: {c.lag(app_id)}", flush=True)
    finally:
        c.close()
        topics = [t for t in admin.list_topics() if t.startswith(("lw-compat-faust-in-", app_id))]
        topics += [t for t in admin.list_topics() if t.startswith("lw-compat-faust-out-" + run_id)]
        admin.delete_topics(sorted(set(topics)))
        admin.close()
        print(f"deleted topics: {sorted(set(topics))}")
    print(f"{c.passed} passed, {c.failed} failed")
    if c.ok and not args.keep_logs:
        for path in c.logs:
            path.unlink()
        shutil.rmtree(RUN_DIR / "faust-check" / f"{app_id}-data", ignore_errors=True)
    else:
        print(f"worker logs kept: {[str(p) for p in c.logs]}")
    return 0 if c.ok else 1


if __name__ == "__main__":
    sys.exit(main())
