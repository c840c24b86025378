"""`labelweave serve`: gRPC (with health and reflection) plus Prometheus metrics.

Health reports SERVING only once projections have caught up with the log and the bootstrap
admin exists; SIGTERM/SIGINT flip health to NOT_SERVING, stop accepting calls, let running
calls finish within the grace period, then close the log (so every acknowledged command is
already durable and nothing half-written remains).
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from coordinator.api.guidance_servicer import add_guidance_servicer
from coordinator.api.manager_servicer import add_manager_servicer
from coordinator.api.servicers import add_servicers
from coordinator.app import Application
from coordinator.commandbus import Clock
from coordinator.settings import Settings, TlsSettings

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024 * 1024


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    key = tls.key_file.read_bytes()
    cert = tls.cert_file.read_bytes()
    if tls.client_ca_file is not None:
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=tls.client_ca_file.read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials([(key, cert)])


@dataclass
class RunningServer:
    """A started server; `stop()` is the graceful shutdown path (also used by tests)."""

    app: Application
    grpc_server: grpc.Server
    health: health.HealthServicer
    port: int
    metrics_port: int
    _metrics_http: Any = None

    def stop(self, grace: float | None = None) -> None:
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace if grace is not None else self.app.settings.shutdown_grace_seconds).wait()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self.app.close()


def _tune_gc() -> None:
    """A long-running server with a large state cache: full collections of a few hundred MB of
    live objects paused every thread for ~0.5 s (p99 spikes). Freeze what start-up built and
    collect the young generation less often; reference cycles are rare in our code."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def start(settings: Settings, *, clock: Clock | None = None) -> RunningServer:
    app = Application.open(settings, clock=clock)
    app.start()
    _tune_gc()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )
    names = add_servicers(server, app.service)
    names += add_manager_servicer(server, app.service)
    names += add_guidance_servicer(server, app.service)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    if settings.tls is not None:
        port = server.add_secure_port(settings.listen, server_credentials(settings.tls))
    else:
        port = server.add_insecure_port(settings.listen)
    if port == 0:
        app.close()
        raise OSError(f"cannot listen on {settings.listen}")
    server.start()
    metrics_http = None
    metrics_port = 0
    if settings.metrics_port >= 0 and settings.metrics_port != 0:
        metrics_http, _ = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=app.metrics.registry
        )
        metrics_port = metrics_http.server_port
    for name in [*names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "labelweave serving on %s (event log %s, store %s, metrics :%s)",
        settings.listen.rsplit(":", 1)[0] + f":{port}",
        settings.resolved_event_log_url,
        settings.resolved_store_url,
        metrics_port or "off",
    )
    return RunningServer(app, server, health_servicer, port, metrics_port, metrics_http)


class _ConnectionLossWithoutTraceback(logging.Filter):
    """kafka-python logs a socket reset during a broker restart with a full traceback; the line
    itself says what happened, and the clients reconnect. Keep the line, drop the traceback, so
    a traceback in the server log still means a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ConnectionError):
            record.exc_info = None
            record.exc_text = None
        return True


def serve(settings: Settings, *, ready: threading.Event | None = None) -> int:
    """Run until SIGTERM or SIGINT; returns the process exit code."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # `kill -USR1 <pid>` writes every thread's stack to stderr: for "why does it hang?" in production.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.getLogger("kafka.net.transport").addFilter(_ConnectionLossWithoutTraceback())
    try:
        running = start(settings)
        token_file = settings.admin_token_file
        print(f"labelweave: serving gRPC on {settings.listen.rsplit(':', 1)[0]}:{running.port}", flush=True)
        if token_file.exists():
            print(f"labelweave: admin token in {token_file}", flush=True)
        if running.metrics_port:
            print(
                f"labelweave: metrics on http://{settings.metrics_host}:{running.metrics_port}/metrics",
                flush=True,
            )
        if ready is not None:
            ready.set()
        # Wake up twice a second rather than block: a process-directed SIGTERM may be delivered to
        # one of grpc's or kafka-python's threads, and then only the main thread's next trip through
        # the interpreter runs the Python handler; a blocked lock acquire never makes that trip.
        while not stop.wait(0.5):
            pass
        running.stop()
        print("labelweave: stopped cleanly", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
