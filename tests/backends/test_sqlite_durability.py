"""SQLite durability: reopen, SIGKILL mid-stream, two processes on one file, group commit."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import defaultdict
from pathlib import Path

from coordinator.eventlog.base import EventLog
from coordinator.eventlog.sqlite import SqliteEventLog
from coordinator.metrics import Metrics
from tests.contracts.eventlog_contract import append_with_retry, request

REPO = Path(__file__).resolve().parents[2]

# Appends with the optimistic retry loop from THREADS threads and prints every acknowledged
# command id (flushed) as soon as append returns. COUNT per thread, 0 = forever. Prints "ready"
# once the log is open, then starts when a line arrives on stdin.
WRITER = textwrap.dedent(
    """
    import sys, threading
    from datetime import UTC, datetime
    from coordinator._pb.labelweave.events.v1 import events_pb2, model_pb2
    from coordinator.eventlog import codec
    from coordinator.eventlog.base import AppendRequest, WrongExpectedVersion
    from coordinator.eventlog.sqlite import SqliteEventLog

    path, prefix, count, threads, streams = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    log = SqliteEventLog(path)
    out = threading.Lock()
    print("ready", flush=True)
    sys.stdin.readline()  # "go": lets the parent start several writers at once

    def work(t):
        i = 0
        while count == 0 or i < count:
            cid = f"{prefix}-{t}-{i}"
            stream = f"project:s{(t * 7 + i) % streams}"
            env = codec.make_envelope(
                events_pb2.ProjectMemberAdded(project_id=stream, person_id=cid), stream_id=stream,
                actor_id="a", actor_role=model_pb2.Role.ROLE_ADMIN, command_id=cid,
                occurred_at=datetime.now(UTC),
            )
            while True:
                try:
                    log.append(AppendRequest(stream, log.stream_version(stream), [env], cid))
                    break
                except WrongExpectedVersion:
                    pass
            with out:
                sys.stdout.write(cid + "\\n")
                sys.stdout.flush()
            i += 1

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for p in pool:
        p.start()
    for p in pool:
        p.join()
    log.close()
    """
)


def _spawn(
    tmp_path: Path, db: Path, prefix: str, *, count: int, threads: int, streams: int
) -> subprocess.Popen[str]:
    script = tmp_path / "writer.py"
    if not script.exists():
        script.write_text(WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), str(db), prefix, str(count), str(threads), str(streams)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _go(*children: subprocess.Popen[str]) -> None:
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()


def _assert_consistent(log: EventLog, acked: list[str]) -> None:
    """Offsets 1..head gap-free, every stream's versions 1..n, every ack has its events."""
    everything = log.read({}, 1_000_000)
    assert [e.position.offset for e in everything] == list(range(1, len(everything) + 1))
    assert log.head() == {0: len(everything)}
    versions: dict[str, list[int]] = defaultdict(list)
    for ev in everything:
        versions[ev.stream_id].append(ev.envelope.stream_version)
    for stream, vs in versions.items():
        assert vs == list(range(1, len(vs) + 1)), stream
    by_command = {ev.envelope.command_id: ev for ev in everything}
    for cid in acked:
        outcome = log.outcome(cid)
        assert outcome is not None, f"acknowledged {cid} was lost"
        assert [e.data for e in outcome.events] == [by_command[cid].data]


def test_reopen_keeps_events_and_idempotency_records(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    first = log.append(request("project:a", 0, 3, command_id="cmd-1", fingerprint="fp"))
    log.append(request("project:b", 0, command_id="cmd-2"))
    before = log.read({}, 100)
    log.close()

    reopened = SqliteEventLog(path)
    try:
        assert reopened.read({}, 100) == before
        assert reopened.head() == {0: 4}
        assert reopened.stream_version("project:a") == 3
        again = reopened.append(request("project:a", 0, 3, command_id="cmd-1", fingerprint="fp"))
        assert again.duplicate
        assert again.events == first.events
        assert reopened.head() == {0: 4}
        nxt = reopened.append(request("project:a", 3))
        assert nxt.events[0].position.offset == 5
    finally:
        reopened.close()


def test_sigkill_loses_no_acknowledged_append(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    child = _spawn(tmp_path, db, "k", count=0, threads=4, streams=6)
    acked: list[str] = []
    _go(child)
    try:
        assert child.stdout is not None
        for line in child.stdout:
            acked.append(line.strip())
            if len(acked) >= 200:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest, err = child.communicate(timeout=30)
    acked += rest.split()  # acknowledged before the kill, still in the pipe
    assert child.returncode == -signal.SIGKILL, err
    assert len(acked) >= 200, err

    log = SqliteEventLog(db)
    try:
        _assert_consistent(log, acked)
        # The log is writable after the crash.
        assert not append_with_retry(log, "project:s0").duplicate
    finally:
        log.close()


def test_two_processes_appending_to_one_file_stay_consistent(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    SqliteEventLog(db).close()  # create the schema before the race
    # One thread each: a writer whose queue never empties holds SQLite's lock back to back and
    # the other process only gets in once it finishes (correct, but then nothing interleaves).
    children = [_spawn(tmp_path, db, p, count=200, threads=1, streams=3) for p in ("x", "y")]
    _go(*children)
    acked: list[str] = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        acked += out.split()
    assert len(acked) == len(set(acked)) == 2 * 200

    log = SqliteEventLog(db)
    try:
        _assert_consistent(log, acked)
        assert log.head() == {0: len(acked)}
        writers = [ev.envelope.command_id[0] for ev in log.read({}, 10_000)]
        switches = sum(a != b for a, b in itertools.pairwise(writers))
        assert switches > 1, "the two processes did not actually overlap"
    finally:
        log.close()


def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    metrics = Metrics()
    log = SqliteEventLog(tmp_path / "events.db", metrics=metrics)
    per_thread = 30
    try:
        threads = [
            threading.Thread(
                target=lambda n=n: [append_with_retry(log, f"project:{n}") for _ in range(per_thread)]
            )
            for n in range(16)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert log.head() == {0: 16 * per_thread}
    finally:
        log.close()
    get = metrics.registry.get_sample_value
    commands = get("labelweave_append_batch_commands_sum")
    commits = get("labelweave_append_batch_commands_count")
    assert commands == 16 * per_thread
    assert commits is not None and commits < commands, "every commit held a single command: no batching"
    assert get("labelweave_events_appended_total", {"type": "project_member_added"}) == 16 * per_thread
    assert get("labelweave_append_latency_seconds_count") == 16 * per_thread
