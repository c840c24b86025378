"""End-to-end fixtures: a real `labelweave serve` subprocess and a runner for CLI subprocesses.

Everything here goes through processes and sockets, as an operator would: the server is
`python -m coordinator serve` on free loopback ports, and every client command is
`python -m coordinator ...` with explicit `--target`/`--token`. Timeouts are generous because
these tests share the machine with other load; nothing asserts on durations.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0  # until health reports SERVING
STOP_TIMEOUT = 60.0  # SIGTERM until exit (the server's grace period is 10 s)
CLI_TIMEOUT = 180.0  # any single CLI command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env() -> dict[str, str]:
    """The caller's environment without LABELWEAVE_* (no ambient target or token), with the
    working tree first on the import path so the code under test is what runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELWEAVE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


def run_cli(
    *args: str, cwd: Path, timeout: float = CLI_TIMEOUT, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m coordinator ARGS` to completion; stdout and stderr captured separately."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        cwd=cwd,
        env=cli_env(),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """Assertion message: the command, its exit code and both streams."""
    return (
        f"{result.args!r} exited {result.returncode}\n"
        f"--stdout--\n{result.stdout}\n--stderr--\n{result.stderr}"
    )


def health_status(target: str, credentials: grpc.ChannelCredentials | None = None, service: str = "") -> int:
    channel = (
        grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)
    finally:
        channel.close()


@dataclass
class Server:
    """A running `labelweave serve` subprocess."""

    proc: subprocess.Popen[bytes]
    target: str
    data_dir: Path
    metrics_port: int
    log_path: Path  # stdout and stderr of the server, interleaved
    admin_token: str
    cwd: Path
    client_args: tuple[str, ...] = ()  # connection flags a client needs (e.g. --tls-ca)
    credentials: grpc.ChannelCredentials | None = None
    stopped_output: str | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.target.rsplit(":", 1)[1])

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def cli(
        self, *args: str, token: str | None = None, auth: bool = True, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """A client command against this server: `--target`, TLS flags and (unless `auth` is
        False) `--token` (the admin's unless `token` is given) are appended."""
        flags = ["--target", self.target, *self.client_args]
        if auth:
            flags += ["--token", token if token is not None else self.admin_token]
        return run_cli(*args, *flags, cwd=self.cwd, timeout=timeout)

    def stop(self) -> str:
        """SIGTERM; asserts exit status 0 and the clean-shutdown message. Returns the output."""
        assert self.running, f"server already exited ({self.proc.returncode}):\n{self.output()}"
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # the server dumps every thread's stack
            time.sleep(2)
            self.kill()
            raise AssertionError(f"server ignored SIGTERM for {STOP_TIMEOUT} s:\n{self.output()}") from None
        output = self.output()
        self.stopped_output = output
        assert code == 0, f"server exited {code} on SIGTERM:\n{output}"
        assert "stopped cleanly" in output, output
        assert "Traceback" not in output, output
        return output

    def kill(self) -> None:
        if self.running:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)


def start_server(
    data_dir: Path,
    *,
    cwd: Path,
    extra_args: Sequence[str] = (),
    client_args: Sequence[str] = (),
    credentials: grpc.ChannelCredentials | None = None,
    port: int | None = None,
) -> Server:
    """Start `labelweave serve` on free ports and wait until gRPC health says SERVING.

    `credentials` are what the health probe uses to reach a TLS server; `client_args` are
    the matching CLI flags, appended by `Server.cli`.
    """
    port = port or free_port()
    metrics_port = free_port()
    target = f"127.0.0.1:{port}"
    cwd.mkdir(parents=True, exist_ok=True)
    n = 0
    while (log_path := cwd / f"server-{data_dir.name}-{n}.log").exists():
        n += 1
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coordinator",
                "serve",
                "--data-dir",
                str(data_dir),
                "--listen",
                target,
                "--metrics-port",
                str(metrics_port),
                *extra_args,
            ],
            cwd=cwd,
            env=cli_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(
        proc=proc,
        target=target,
        data_dir=data_dir,
        metrics_port=metrics_port,
        log_path=log_path,
        admin_token="",
        cwd=cwd,
        client_args=tuple(client_args),
        credentials=credentials,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} while starting:\n{server.output()}")
        try:
            if health_status(target, credentials) == health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"server not SERVING after {START_TIMEOUT} s:\n{server.output()}")
        time.sleep(0.2)
    server.admin_token = (data_dir / "admin.token").read_text(encoding="utf-8").strip()
    return server


Launch = Callable[..., Server]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """`launch(data_dir=tmp/data, **start_server_kwargs)`; every server still running at the
    end of the test is killed (tests that care about shutdown call `Server.stop()` themselves)."""
    started: list[Server] = []

    def _launch(data_dir: Path | None = None, **kwargs: object) -> Server:
        kwargs.setdefault("cwd", tmp_path)
        server = start_server(data_dir or tmp_path / "data", **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield _launch
    for server in started:
        server.kill()


@pytest.fixture
def server(launch: Launch) -> Iterator[Server]:
    """A fresh plaintext server on its own data directory, stopped with SIGTERM afterwards
    (exit status 0 and "stopped cleanly" asserted) unless the test stopped it already."""
    srv = launch()
    yield srv
    if srv.running:
        srv.stop()
