"""Settings for an API test server on the distributed backend: real Kafka, real Cassandra.

Each test gets a fresh topic prefix (small partition counts) and a fresh, migrated keyspace, so tests
never see each other's events or rows; both are deleted afterwards. Projections are applied in
process (`projections="in-process"`): the API tests check the service's rules on each backend, while
the faust workers have their own suites (tests/distributed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from coordinator.settings import Settings
from tests.backends.cassandra_util import Admin, store_url
from tests.backends.kafka_util import delete_topics, kafka_url, new_prefix


@contextmanager
def distributed_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    request.getfixturevalue("kafka_broker")  # fails (never skips) when no broker answers
    admin: Admin = request.getfixturevalue("cassandra_admin")
    hosts: str = request.getfixturevalue("cassandra_hosts")
    from projections.migrate import migrate

    keyspace = admin.new_keyspace("api")
    migrate(store_url(hosts, keyspace), out=lambda _: None)
    prefix = new_prefix()
    try:
        yield Settings(
            data_dir=tmp_path / "data",
            listen="127.0.0.1:0",
            metrics_port=0,
            lease_sweep_seconds=0.05,
            shutdown_grace_seconds=1.0,
            event_log_url=kafka_url(prefix, task_partitions=2, reply_partitions=1),
            store_url=store_url(hosts, keyspace),
            projections="in-process",
        )
    finally:
        delete_topics(prefix)
        try:
            admin.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
            admin.created.remove(keyspace)
        except Exception as exc:  # dropped at session end otherwise
            print(f"could not drop {keyspace} now: {exc!r}")
