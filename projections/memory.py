"""In-process projection store (`memory://`): for tests and single-process demos.

Documents are held as JSON text, so `get`/`scan` hand out fresh objects (callers cannot mutate
what is stored) and values behave exactly as they would after a SQLite round trip. Each
partition keeps its sort keys in a sorted list, so scans are a bisect plus a slice.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from coordinator.eventlog.base import Checkpoint
from projections.base import Change, Delete, Doc, ProjectionStore, Put
from projections.jsonfast import compact_json, loads

_dumps = compact_json
_loads = loads


@dataclass
class _Partition:
    keys: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)


class MemoryStore(ProjectionStore):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.RLock()
        self._data: dict[tuple[str, str], _Partition] = {}
        self._checkpoints: dict[str, dict[int, int]] = {}

    def get(self, collection: str, pk: str, sk: str = "") -> Doc | None:
        with self._lock:
            part = self._data.get((collection, pk))
            text = part.values.get(sk) if part is not None else None
        return None if text is None else _loads(text)

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
        if limit is not None and limit <= 0:
            return []
        with self._lock:
            part = self._data.get((collection, pk))
            if part is None:
                return []
            keys = part.keys
            lo = bisect.bisect_left(keys, start)
            hi = len(keys) if end is None else bisect.bisect_left(keys, end)
            if hi <= lo:
                return []
            if reverse:
                lo2 = lo if limit is None else max(lo, hi - limit)
                chosen = keys[lo2:hi][::-1]
            else:
                chosen = keys[lo:hi] if limit is None else keys[lo : min(hi, lo + limit)]
            texts = [(k, part.values[k]) for k in chosen]
        return [(k, _loads(t)) for k, t in texts]

    def commit(self, consumer: str, changes: Sequence[Change], checkpoint: Checkpoint) -> None:
        # Serialize outside the lock (and before touching anything, so a value that is not
        # JSON-compatible fails the whole commit instead of half of it).
        prepared: list[tuple[str, str, str, str | None]] = []
        for ch in changes:
            if isinstance(ch, Put):
                prepared.append((ch.collection, ch.pk, ch.sk, _dumps(ch.value)))
            elif isinstance(ch, Delete):
                prepared.append((ch.collection, ch.pk, ch.sk, None))
            else:  # pragma: no cover - defensive
                raise TypeError(f"not a change: {ch!r}")
        with self._lock:
            for collection, pk, sk, text in prepared:
                part = self._data.get((collection, pk))
                if text is not None:
                    if part is None:
                        part = self._data[(collection, pk)] = _Partition()
                    if sk not in part.values:
                        bisect.insort(part.keys, sk)
                    part.values[sk] = text
                elif part is not None and sk in part.values:
                    del part.values[sk]
                    i = bisect.bisect_left(part.keys, sk)
                    del part.keys[i]
                    if not part.keys:
                        del self._data[(collection, pk)]
            cp = self._checkpoints.setdefault(consumer, {})
            for p, off in checkpoint.items():
                cp[p] = max(off, cp.get(p, 0))

    def checkpoint(self, consumer: str) -> dict[int, int]:
        with self._lock:
            return dict(self._checkpoints.get(consumer, {}))

    def items(self) -> Iterable[tuple[str, str, str, Doc]]:
        with self._lock:
            snapshot = [
                (collection, pk, [(k, part.values[k]) for k in part.keys])
                for (collection, pk), part in sorted(self._data.items())
            ]
        for collection, pk, rows in snapshot:
            for sk, text in rows:
                yield collection, pk, sk, _loads(text)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._checkpoints.clear()
