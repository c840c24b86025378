"""Pick a projection store by URL."""

from __future__ import annotations

from coordinator.errors import InvalidArgument
from projections.base import ProjectionStore


def open_store(url: str) -> ProjectionStore:
    """`memory://` or `sqlite:///path/projections.db` (`sqlite:////abs/path.db` for absolute paths)."""
    if url == "memory://" or url.startswith("memory://"):
        from projections.memory import MemoryStore

        return MemoryStore(url)
    if url.startswith("sqlite:///"):
        from projections.sqlite import SqliteStore

        return SqliteStore(url)
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise InvalidArgument(
        f"unknown projection store {scheme!r} in {url!r}: use memory:// or sqlite:///path/projections.db "
        "(cassandra:// is coming with the distributed backend)",
        field="store",
    )
