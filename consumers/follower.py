"""Projections built elsewhere: the coordinator's view of the store the faust workers write.

In the distributed backend `labelweave serve` does not apply views itself (two writers of the same
documents would double-count); `labelweave workers` do. The coordinator still needs what the
embedded runner gave it: "wait until the projections include position P" (admin mutations answer
once their effect is readable), the projection lag, and queue-depth gauges. `StoreFollower`
offers the same methods as `ProjectionRunner` by polling the workers' checkpoint in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from consumers.projector import CONSUMER
from coordinator.errors import LabelweaveError
from coordinator.eventlog.base import EventLog
from coordinator.metrics import Metrics
from projections.base import ProjectionStore

logger = logging.getLogger(__name__)


class StoreFollower:
    """Duck-type compatible with `ProjectionRunner` for the methods the application uses."""

    POLL = 0.01
    REFRESH = 1.0  # seconds between lag / queue-depth gauge refreshes

    def __init__(
        self,
        log: EventLog,
        store: ProjectionStore,
        *,
        consumer: str = CONSUMER,
        metrics: Metrics | None = None,
    ) -> None:
        self.log = log
        self.store = store
        self.consumer = consumer
        self.metrics = metrics
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def applied(self) -> dict[int, int]:
        return self.store.checkpoint(self.consumer)

    def lag(self, applied: Mapping[int, int] | None = None) -> int:
        """Events in the log the workers have not applied (`applied`: a checkpoint just read)."""
        head = self.log.head()
        done = self.applied if applied is None else applied
        return sum(max(0, off - done.get(p, 0)) for p, off in head.items())

    def wait_for(self, checkpoint: Mapping[int, int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = self.POLL
        while True:
            applied = self.applied
            if all(applied.get(p, 0) >= o for p, o in checkpoint.items()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def catch_up(self, timeout: float = 60.0) -> int:
        """Wait until the workers applied everything in the log now (0: returns the lag left)."""
        if not self.wait_for(self.log.head(), timeout):
            lag = self.lag()
            logger.warning("projection workers are %d events behind after %.0f s", lag, timeout)
            return lag
        return 0

    def run_once(self) -> int:
        return 0

    def start(self) -> None:
        if self.running or self.metrics is None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="projection-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        from consumers.gauges import ProjectionGauges

        m = self.metrics
        assert m is not None
        gauges = ProjectionGauges(m)
        last_applied: int | None = None
        while not self._stop.wait(self.REFRESH):
            try:
                checkpoint = self.applied  # one store read per refresh (Cassandra settles commits on it)
                applied = sum(checkpoint.values())
                if last_applied is not None and applied > last_applied:
                    # position steps, so Kafka transaction markers count too: close enough for a rate
                    m.projection_applied.labels(self.consumer).inc(applied - last_applied)
                last_applied = applied
                m.projection_lag.labels(self.consumer).set(self.lag(checkpoint))
                gauges.refresh(self.store)
            except LabelweaveError as exc:  # the store is unavailable (restarting): one line, no traceback
                logger.warning("projection gauges refresh failed: %s", exc)
            except Exception:
                logger.exception("projection gauges refresh failed")
