"""Gold reconcile: enter scored gold answers whose `RecordGoldResult` was lost.

Answering a gold (or training) task appends `GoldScored` on the task's stream; the service then
records the result on the person's stream (`GoldResultRecorded`) in a second command
(`Service.record_gold_scored`). A crash between the two appends leaves the answer out of the
person's record. This sweep, run by the application's lease timer, heals that without a retry
of the submission:

- the gold view keeps every `GoldScored` in log order per partition ("gold_scored") and every
  recorded result by the GoldScored event's id ("gold_recorded"); both are pure inserts written by
  one stream each, so the difference is the same however partitions interleave;
- the sweep walks "gold_scored" from where it stopped, per partition (a partition's events are
  applied in offset order, so nothing can appear behind the walk), and for each answer not in
  "gold_recorded" and older than `GRACE_SECONDS` (the service's own call is usually in flight)
  sends the same `RecordGoldResult` the service sends, with the same command id
  `gold/<task id>/<annotation id>`: whoever appends first wins, the other appends nothing;
- the person aggregate refuses a result it has already (`AlreadyExists`) or that can no longer
  count (`FailedPrecondition`, e.g. a training answer of an attempt that is over); both settle the
  answer. A backend error stops the walk of that partition there, to be retried next time.

The walk's position is kept in memory: a restarted process walks the whole scored log once (in
steps of `limit` answers per sweep), which costs one point read per answer already recorded.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from coordinator._pb.labelweave.events.v1 import events_pb2
from coordinator.errors import LabelweaveError
from projections import gold_queries
from projections.base import Doc

if TYPE_CHECKING:
    from coordinator.service import Service

log = logging.getLogger(__name__)

GRACE_SECONDS: Final = 2.0
"""A scored answer younger than this (by its recorded time) is left to the service's own call."""


def gold_command_id(task_id: str, annotation_id: str) -> str:
    """The command id of recording one scored answer: the same for the service and the sweep."""
    return f"gold/{task_id}/{annotation_id}"


class GoldReconciler:
    def __init__(self, service: Service) -> None:
        self._service = service
        self._marks: dict[str, tuple[str, str]] = {}  # shard → (bucket, sort key) walked up to
        self._lock = threading.Lock()  # one sweep at a time per process

    def sweep(self, now: datetime | None = None, limit: int = 200) -> int:
        """Record every lost result found in up to `limit` scored answers; returns how many were
        recorded. `now` (real time by default) decides which answers are past the grace."""
        with self._lock:
            return self._sweep(now or datetime.now(UTC), limit)

    def _sweep(self, now: datetime, limit: int) -> int:
        store = self._service.store
        cutoff_ms = int((now.timestamp() - GRACE_SECONDS) * 1000)
        recorded = 0
        budget = limit
        blocked: set[str] = set()
        for shard, bucket in gold_queries.scored_buckets(store):
            if budget <= 0:
                break
            if shard in blocked:
                continue
            mark_bucket, mark_sk = self._marks.get(shard, ("", ""))
            if bucket < mark_bucket:
                continue
            after = mark_sk if bucket == mark_bucket else ""
            for sk, row in gold_queries.scored_after(store, bucket, after, budget):
                if int(row.get("at_ms", 0)) > cutoff_ms:
                    blocked.add(shard)  # in log order: everything after it is younger still
                    break
                outcome = self._settle(row)
                if outcome is None:
                    blocked.add(shard)  # retry from here next time
                    break
                recorded += outcome
                budget -= 1
                self._marks[shard] = (bucket, sk)
        return recorded

    def _settle(self, row: Doc) -> int | None:
        """1: recorded now; 0: recorded already (or refused for good); None: try again later."""
        service = self._service
        if gold_queries.is_recorded(service.store, str(row["event_id"])):
            return 0
        try:
            env = self._scored_event(str(row["task_id"]), str(row["event_id"]))
            if env is None:
                log.warning("gold reconcile: no GoldScored %s on task %s", row["event_id"], row["task_id"])
                return 0
            outcome = service.record_gold_scored(env)
        except LabelweaveError as exc:  # a backend is unavailable: try again on the next sweep
            log.warning("gold reconcile of %s stopped: %s", row["event_id"], exc)
            return None
        if outcome is None or outcome.duplicate:
            return 0
        log.info("gold reconcile: recorded %s for %s", row["event_id"], row["person_id"])
        return 1

    def _scored_event(self, task_id: str, event_id: str) -> events_pb2.EventEnvelope | None:
        for ev in self._service.log.read_stream(f"task:{task_id}"):
            if ev.envelope.event_id == event_id and ev.envelope.type == "gold_scored":
                return ev.envelope
        return None
