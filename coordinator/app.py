"""The embedded application: event log, command bus, projections and timers in one process.

`Application.open(settings)` picks backends by URL, so the same wiring serves the embedded
default (SQLite files under the data directory) and, later, Kafka and Cassandra.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumers.follower import StoreFollower
from consumers.rebuild import rebuild
from consumers.runner import ProjectionRunner
from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.auth import SYSTEM
from coordinator.commandbus import Clock, CommandBus, utc_now
from coordinator.domain import commands as C
from coordinator.errors import InvalidArgument, LabelweaveError
from coordinator.eventlog.base import EventLog, Position
from coordinator.eventlog.factory import open_event_log
from coordinator.metrics import Metrics
from coordinator.service import Service
from coordinator.settings import Settings
from projections.base import ProjectionStore
from projections.factory import open_store

log = logging.getLogger(__name__)

BOOTSTRAP_ADMIN = "admin"


@dataclass
class Application:
    settings: Settings
    log: EventLog
    store: ProjectionStore
    bus: CommandBus
    runner: ProjectionRunner | StoreFollower
    """Applies the views in process (embedded), or follows the workers' checkpoint (distributed)."""
    service: Service
    metrics: Metrics
    clock: Clock
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def open(
        cls, settings: Settings, *, clock: Clock | None = None, metrics: Metrics | None = None
    ) -> Application:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        metrics = metrics or Metrics()
        clock = clock or utc_now
        event_log = open_event_log(_with_replica(settings), metrics=metrics)
        store = open_store(settings.resolved_store_url)
        bus = CommandBus(event_log, metrics=metrics, clock=clock)
        runner: ProjectionRunner | StoreFollower
        if settings.projections_in_process:
            runner = ProjectionRunner(event_log, store, metrics=metrics)
        else:
            runner = StoreFollower(event_log, store, metrics=metrics)

        def settle(position: Position) -> None:
            if not runner.running and isinstance(runner, ProjectionRunner):
                runner.catch_up()  # offline commands (token create --offline): apply inline
                return
            if not runner.wait_for({position.partition: position.offset}, timeout=10.0):
                log.warning("projections did not reach %s within 10 s", position)

        service = Service(event_log, store, bus, clock=clock, metrics=metrics, wait_for_projection=settle)
        return cls(settings, event_log, store, bus, runner, service, metrics, clock)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Catch projections up, bootstrap an admin on an empty log, start background work."""
        self.runner.catch_up()
        self.runner.start()
        self.bootstrap()
        sweeper = threading.Thread(target=self._sweep_leases, name="lease-sweeper", daemon=True)
        sweeper.start()
        self._threads.append(sweeper)

    def bootstrap(self) -> str | None:
        """On a log with no people, create the `admin` person and write its token file (0600).

        Returns the secret when one was created. Idempotent: command ids are fixed, so two
        processes starting at once create one admin.
        """
        if self.bus.load(f"person:{BOOTSTRAP_ADMIN}")[1] is not None:
            return None
        spec = model_pb2.PersonSpec(
            person_id=BOOTSTRAP_ADMIN,
            display_name="Bootstrap admin",
            roles=[model_pb2.ROLE_ADMIN],
            time_zone="UTC",
        )
        self.bus.execute(
            C.RegisterPerson(spec),
            actor=C.Actor(SYSTEM.person_id, model_pb2.ROLE_ADMIN),
            command_id="bootstrap/admin",
        )
        _, secret = self.service.issue_token(
            BOOTSTRAP_ADMIN, "bootstrap admin token", command_id="bootstrap/admin-token"
        )
        path = self.settings.admin_token_file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
        log.info("bootstrap admin token written to %s", path)
        return secret

    def _sweep_leases(self) -> None:
        """The timer: expire leases past their deadline (gold and training leases included), then
        record scored gold answers whose result a crash lost (coordinator/gold_reconcile.py)."""
        while not self._stop.wait(self.settings.lease_sweep_seconds):
            for what, sweep in (
                ("lease sweep", self.service.expire_leases),
                ("gold reconcile", self.service.reconcile_gold),
            ):
                try:
                    sweep()
                except LabelweaveError as exc:  # a backend is unavailable (restarting): one line, retried
                    log.warning("%s failed: %s", what, exc)
                except Exception:  # the timer must survive a bad moment (e.g. disk full); it retries
                    log.exception("%s failed", what)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.runner.stop()
        self.log.close()
        self.store.close()

    def __enter__(self) -> Application:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ offline commands

    def issue_token(self, person_id: str, description: str = "", ttl_seconds: int = 0) -> tuple[str, str]:
        self.runner.catch_up()
        return self.service.issue_token(person_id, description, ttl_seconds)

    def rebuild(
        self, into_url: str | None = None, *, replace: bool = False, workers: int = 0
    ) -> dict[str, Any]:
        """Replay the whole log into a fresh store and compare with the live projections.

        The live store is first caught up to the same head, so equal checksums mean the live
        projection is exactly what a replay from position 0 produces. A SQLite log rebuilt into
        a SQLite store is replayed by `workers` processes, each applying a group of the views
        (`consumers.rebuild_views`; 0: one per core, at most 4; 1: this process alone).
        """
        target_url = into_url or f"sqlite:///{(self.settings.data_dir / 'projections.rebuild.db').resolve()}"
        target_path = _sqlite_path(target_url)
        if target_path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(str(target_path) + suffix).unlink(missing_ok=True)
        if workers < 0:
            raise InvalidArgument(f"workers must be >= 0, got {workers}", field="workers")
        workers = workers or min(os.cpu_count() or 1, 4)
        log_url = self.settings.resolved_event_log_url
        by_views = workers > 1 and log_url.startswith("sqlite:") and target_url.startswith("sqlite:")
        if by_views:
            from consumers.rebuild_views import rebuild_by_views

            # Into the new file, which its processes open for a bulk load: opened here first, it
            # would already be a WAL database and load as slowly as a live one.
            result = rebuild_by_views(log_url, target_url, workers=workers)
        target = open_store(target_url)
        try:
            if not by_views:
                result = rebuild(self.log, target)
            seconds = result.seconds  # replay and commit only; the checksum is reported apart
            self.runner.catch_up()
            live = self.store.checksum()
            live_cp: Mapping[int, int] = self.store.checkpoint(self.runner.consumer)
            out: dict[str, Any] = {
                "events": result.events,
                "seconds": seconds,
                "rate": result.events / seconds if seconds > 0 else 0.0,
                "rebuilt_checksum": result.checksum,
                "live_checksum": live,
                "position": ",".join(f"{p}:{o}" for p, o in sorted(result.checkpoint.items())),
                "live_position": ",".join(f"{p}:{o}" for p, o in sorted(live_cp.items())),
                "match": result.checksum == live,
            }
        finally:
            target.close()
        if replace and target_path is not None:
            live_path = _sqlite_path(self.settings.resolved_store_url)
            if live_path is not None:
                self.store.close()
                for suffix in ("-wal", "-shm"):
                    Path(str(live_path) + suffix).unlink(missing_ok=True)
                os.replace(target_path, live_path)
                self.store = open_store(self.settings.resolved_store_url)
                assert isinstance(self.runner, ProjectionRunner)
                self.runner.store = self.store
                self.service.store = self.store
        return out


def _with_replica(settings: Settings) -> str:
    """A Kafka log keeps a local index of the log; a server keeps it in its data directory so a
    restart catches up from where it stopped instead of re-reading every topic."""
    url = settings.resolved_event_log_url
    if not url.startswith("kafka://") or "replica=" in url:
        return url
    sep = "&" if "?" in url else ("?" if url.endswith("/") else "/?")
    return f"{url}{sep}replica={(settings.data_dir / 'kafka-replica.db').resolve()}"


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    return Path(url[len(prefix) :].split("?", 1)[0])
