"""Runtime settings for `labelweave serve` and friends; backends are chosen by URL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: mutual TLS, clients must present a cert signed by it


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./labelweave-data")
    listen: str = "127.0.0.1:50051"
    metrics_port: int = 9464  # 0: no metrics HTTP server
    metrics_host: str = "127.0.0.1"
    event_log_url: str = ""  # default: sqlite:///<data_dir>/events.db
    store_url: str = ""  # default: sqlite:///<data_dir>/projections.db
    projections: str = "auto"
    """Who applies the views: "in-process" (the embedded runner), "workers" (`labelweave workers`,
    the coordinator only follows their checkpoint), or "auto": workers when the event log is Kafka."""
    tls: TlsSettings | None = None
    grpc_workers: int = 32
    lease_sweep_seconds: float = 1.0
    shutdown_grace_seconds: float = 10.0

    @property
    def resolved_event_log_url(self) -> str:
        return self.event_log_url or f"sqlite:///{self.data_dir.resolve() / 'events.db'}"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir.resolve() / 'projections.db'}"

    @property
    def projections_in_process(self) -> bool:
        if self.projections == "auto":
            return not self.resolved_event_log_url.startswith("kafka://")
        if self.projections not in ("in-process", "workers"):
            from coordinator.errors import InvalidArgument

            raise InvalidArgument(
                f"projections must be auto, in-process or workers, not {self.projections!r}",
                field="projections",
            )
        return self.projections == "in-process"

    @property
    def admin_token_file(self) -> Path:
        """Written (mode 0600) on first start of an empty log: the bootstrap admin's bearer token."""
        return self.data_dir / "admin.token"
