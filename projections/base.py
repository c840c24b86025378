"""The projection-store port and the view contract.

A store holds documents in named collections, each addressed by a partition key `pk` and a
sort key `sk` (ordered lexicographically within a partition). This maps one-to-one onto SQLite
(`PRIMARY KEY (collection, pk, sk)`) and Cassandra (`PRIMARY KEY ((collection, pk), sk)`), so
every query a view needs is a point read or an ordered range scan of one partition.

Values are JSON-compatible dicts. The store keeps, per consumer, a checkpoint
(partition → last offset applied) written *in the same atomic write* as the rows it covers,
so a restart neither repeats nor skips an event.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from coordinator.eventlog.base import Checkpoint, RecordedEvent

Doc = dict[str, Any]


class Put(NamedTuple):
    # NamedTuples, not frozen dataclasses: a 100k-task rebuild builds ~0.8 M changes, and a
    # frozen dataclass's __init__ (object.__setattr__ per field) was 20 % of its time.
    collection: str
    pk: str
    sk: str
    value: Doc


class Delete(NamedTuple):
    collection: str
    pk: str
    sk: str


Change = Put | Delete


def canonical_json(value: Doc) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ProjectionStore(abc.ABC):
    """Thread-safe document store with ordered partitions and per-consumer checkpoints."""

    url: str

    @abc.abstractmethod
    def get(self, collection: str, pk: str, sk: str = "") -> Doc | None: ...

    @abc.abstractmethod
    def scan(
        self,
        collection: str,
        pk: str,
        *,
        start: str = "",
        end: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[str, Doc]]:
        """(sk, value) pairs with start <= sk < end, ordered by sk (descending if reverse)."""

    @abc.abstractmethod
    def commit(self, consumer: str, changes: Sequence[Change], checkpoint: Checkpoint) -> None:
        """Apply `changes` in order and record `checkpoint` for `consumer`, atomically.

        The checkpoint is merged: partitions not named keep their previous offset.
        """

    @abc.abstractmethod
    def checkpoint(self, consumer: str) -> dict[int, int]:
        """Last committed checkpoint of `consumer` ({} if none)."""

    @abc.abstractmethod
    def items(self) -> Iterable[tuple[str, str, str, Doc]]:
        """Every (collection, pk, sk, value), ordered by collection, pk, sk."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Drop every row and checkpoint (used by rebuild)."""

    def checksum(self) -> str:
        """SHA-256 over every row in key order: equal stores have equal checksums."""
        h = hashlib.sha256()
        for collection, pk, sk, value in self.items():
            h.update(f"{collection}\x1f{pk}\x1f{sk}\x1f{canonical_json(value)}\x1e".encode())
        return h.hexdigest()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


SHARD_SEP = "|"


_SHARDS: dict[int, str] = {}


def shard_of(event: RecordedEvent) -> str:
    """The shard suffix of a counter fed by many streams: the event's log partition, fixed-width.

    The single-writer rule for views: the distributed backend applies the events of each log
    partition independently (faust workers, one per set of partitions), so a document that is
    read-modify-written must only ever be written from ONE partition. Documents of one stream
    (a task's, a project's) satisfy that by keying. Counters fed by many streams (queue depth
    per project, metrics per annotator) keep one row per source partition, `f"{key}|{shard}"`,
    and queries sum the shards. The embedded log has one partition, so one shard.
    """
    partition = event.position.partition
    shard = _SHARDS.get(partition)
    if shard is None:
        shard = _SHARDS[partition] = f"{partition:05d}"
    return shard


def shard_range(key: str) -> tuple[str, str]:
    """Scan bounds (start, end) covering every shard row of `key` (keys never contain "|")."""
    return f"{key}{SHARD_SEP}", f"{key}{chr(ord(SHARD_SEP) + 1)}"


def unshard(sk: str) -> str:
    """The key part of a sharded sort key."""
    return sk.rsplit(SHARD_SEP, 1)[0]


class ViewTx(Protocol):
    """What a view may do while applying an event: read (seeing its own pending writes) and write."""

    def get(self, collection: str, pk: str, sk: str = "") -> Doc | None: ...

    def put(self, collection: str, pk: str, sk: str, value: Doc) -> None: ...

    def delete(self, collection: str, pk: str, sk: str) -> None: ...


class View(Protocol):
    """A pure view: `apply` reads state through `tx` and writes changes through it; no other I/O.

    `collections` names every collection the view writes; no two views share one.
    """

    name: str
    collections: tuple[str, ...]

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None: ...


class StagedTx:
    """A ViewTx over a store that buffers writes, so a batch of events commits at once.

    Changes come out in the order their keys were first written (a dict keeps insertion order
    and a rewrite keeps the key's place), each with its last value."""

    def __init__(self, store: ProjectionStore) -> None:
        self._store = store
        self._pending: dict[tuple[str, str, str], Doc | None] = {}

    def get(self, collection: str, pk: str, sk: str = "") -> Doc | None:
        key = (collection, pk, sk)
        value = self._pending.get(key, _ABSENT)
        if value is not _ABSENT:
            return value  # type: ignore[no-any-return]
        return self._store.get(collection, pk, sk)

    def put(self, collection: str, pk: str, sk: str, value: Doc) -> None:
        self._pending[(collection, pk, sk)] = value

    def delete(self, collection: str, pk: str, sk: str) -> None:
        self._pending[(collection, pk, sk)] = None

    @property
    def pending(self) -> dict[tuple[str, str, str], Doc | None]:
        """The staged writes, key → last value (None: delete), in first-write order; `changes()`
        as a mapping, for callers that need no `Change` objects (the rebuild)."""
        return self._pending

    def changes(self) -> list[Change]:
        return changes_of(self._pending)

    def __len__(self) -> int:
        return len(self._pending)


_ABSENT: Any = object()


def changes_of(pending: Mapping[tuple[str, str, str], Doc | None]) -> list[Change]:
    """`Put`s and `Delete`s (None) of a key → value mapping, in its order."""
    # tuple.__new__ straight away: a NamedTuple's generated __new__ costs ~90 ns more a row.
    new = tuple.__new__
    return [new(Delete, key) if value is None else new(Put, (*key, value)) for key, value in pending.items()]


def merge_checkpoint(base: Mapping[int, int], update: Mapping[int, int]) -> dict[int, int]:
    out = dict(base)
    for part, off in update.items():
        out[part] = max(off, out.get(part, 0))
    return out
