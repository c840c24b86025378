"""Helpers for the tests against a real Kafka broker (no mocks).

The broker is `LABELWEAVE_KAFKA` (default 127.0.0.1:9092), started by `ops/services.sh start`.
Tests that need it FAIL (never skip) when it is not reachable.

Also the child process of the multi-process tests:

    python -m tests.backends.kafka_util append URL SECONDS STREAM… (one JSON line per acknowledged
    append on stdout; "READY" first, once the log is open)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

BOOTSTRAP = os.environ.get("LABELWEAVE_KAFKA", "127.0.0.1:9092")
SMALL = {"task_partitions": 3, "project_partitions": 1, "workforce_partitions": 1, "reply_partitions": 2}
"""Small partition counts: fewer transactional producers to start per log, a faster suite."""
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}
"""group.min.session.timeout.ms is 6000 on a default broker."""


def kafka_reachable(bootstrap: str = BOOTSTRAP, timeout: float = 3.0) -> str | None:
    """None if a broker answers a metadata request at `bootstrap`, else why not."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"
    from kafka import KafkaAdminClient  # type: ignore[import-untyped]

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    except Exception as exc:
        return f"{bootstrap} accepts connections but does not speak Kafka: {exc}"
    admin.close()
    return None


@pytest.fixture(scope="session")
def kafka_broker() -> str:
    problem = kafka_reachable()
    if problem is not None:
        pytest.fail(
            f"Kafka is not reachable at {BOOTSTRAP} ({problem}): start it with ops/services.sh start "
            "(or ops/kafka.sh start && ops/kafka.sh wait), or point LABELWEAVE_KAFKA at a broker",
            pytrace=False,
        )
    return BOOTSTRAP


def new_prefix() -> str:
    return f"lwtest-{uuid.uuid4().hex[:10]}"


def kafka_url(prefix: str, **options: object) -> str:
    params = {"prefix": prefix, **SMALL, **FAST_GROUP, **options}
    query = "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())
    return f"kafka://{BOOTSTRAP}/?{query}"


def delete_topics(prefix: str) -> None:
    """Delete every topic of `prefix` and its decider group (best effort: cheap cleanup)."""
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    except Exception:
        return
    try:
        topics = [t for t in admin.list_topics() if t.startswith(f"{prefix}.")]
        if topics:
            admin.delete_topics(topics, raise_errors=False)
        with contextlib.suppress(Exception):  # still has members (a killed child) or gone already
            admin.delete_groups([f"{prefix}.deciders"])
    except Exception:
        pass
    finally:
        admin.close()


@pytest.fixture
def prefixes() -> Iterator[list[str]]:
    """Collects topic prefixes made by a test and deletes their topics afterwards."""
    made: list[str] = []
    yield made
    for prefix in made:
        delete_topics(prefix)


# ---------------------------------------------------------------------- child process


def _child_append(url: str, seconds: float, streams: list[str]) -> int:
    """Append to `streams` (round robin, optimistic loop) for `seconds`; print every ack."""
    sys.path.insert(0, os.getcwd())
    from coordinator.eventlog.factory import open_event_log
    from tests.contracts.eventlog_contract import append_with_retry

    log = open_event_log(url)
    print("READY", flush=True)
    deadline = time.monotonic() + seconds
    i = 0
    try:
        while time.monotonic() < deadline:
            stream = streams[i % len(streams)]
            # every third command id is shared with the parent process: both send it at once
            cid = f"shared-{i}" if i % 3 == 0 else f"child-{uuid.uuid4().hex}"
            result = append_with_retry(log, stream, command_id=cid)
            print(
                json.dumps(
                    {
                        "stream": stream,
                        "command_id": cid,
                        "duplicate": result.duplicate,
                        "event_ids": [e.envelope.event_id for e in result.events],
                        "positions": [str(e.position) for e in result.events],
                    }
                ),
                flush=True,
            )
            i += 1
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "append":
        sys.exit(_child_append(sys.argv[2], float(sys.argv[3]), sys.argv[4:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
