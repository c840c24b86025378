"""Pick a projection store by URL."""

from __future__ import annotations

from coordinator.errors import InvalidArgument
from projections.base import ProjectionStore


def open_store(url: str) -> ProjectionStore:
    """`memory://`, `sqlite:///path/projections.db` (`sqlite:////abs/path.db` for absolute paths) or
    `cassandra://host[:port][,host2…]/keyspace?…` (docs/cassandra-store.md; needs cassandra-driver,
    the `distributed` extra, and a migrated keyspace: `python -m projections.migrate URL`)."""
    if url == "memory://" or url.startswith("memory://"):
        from projections.memory import MemoryStore

        return MemoryStore(url)
    if url.startswith("sqlite:///"):
        from projections.sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith("cassandra://"):
        try:
            from projections.cassandra import CassandraStore
        except ImportError as exc:  # the driver comes with the `distributed` extra
            raise InvalidArgument(
                f"{url!r} needs cassandra-driver: pip install 'labelweave[distributed]' ({exc})",
                field="store",
            ) from exc
        return CassandraStore(url)
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise InvalidArgument(
        f"unknown projection store {scheme!r} in {url!r}: use memory://, sqlite:///path/projections.db "
        "or cassandra://host[:port]/keyspace",
        field="store",
    )
