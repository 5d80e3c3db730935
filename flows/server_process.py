"""Server child processes on 127.0.0.1 (``prefect server``, segflow's temporary Prefect API,
MLflow in tests): started in their own session with the parent-death signal set, so that they
never outlive segflow, waited for until their API answers, and stopped with everything they
forked."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_contracts import OutputError
from pipelines.redaction import redact
from pipelines.services.process_guard import popen_guarded, stop_process_group

__all__ = ["ServerProcess", "free_port", "prefect_server"]


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on 127.0.0.1, else a port the OS picks."""
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", candidate or 0))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OutputError("no free TCP port on 127.0.0.1")


class ServerProcess:
    """A server subprocess in its own session, healthy when ``health_url`` answers 200.

    Used by ``segflow serve`` for its local Prefect server, by :mod:`flows.local_api` for the
    commands' temporary Prefect API, and by the integration tests for Prefect and MLflow
    servers. The child is started by :func:`pipelines.services.process_guard.popen_guarded`: SIGKILL
    reaches it when this process dies, however it dies, and its output goes to ``log_path``
    (never to this process's stdout/stderr, which may be a caller's pipes). ``stop`` signals
    the whole process group: both servers fork workers.

    Args:
        command: the server's command line.
        health_url: polled until it answers 200.
        log_path: the server's stdout and stderr.
        env: environment of the server (default: this process's).
        startup_timeout: seconds to wait for health.
        pass_fds: file descriptors the server inherits (a listening socket for ``--fd``).
        health_timeout: seconds one health request may wait for its answer (a server handed
            a bound socket queues requests made while it starts: wait long, ask rarely).
    """

    def __init__(
        self,
        command: list[str],
        health_url: str,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 120.0,
        pass_fds: Sequence[int] = (),
        health_timeout: float = 2.0,
    ):
        self.command = command
        self.health_url = health_url
        self.log_path = log_path
        self.env = dict(env if env is not None else os.environ)
        self.startup_timeout = startup_timeout
        self.pass_fds = tuple(pass_fds)
        self.health_timeout = health_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        """Start the server and wait until it is healthy.

        Raises:
            OutputError: the server exited or did not become healthy in time (log tail quoted).
        """
        self.spawn()
        return self.wait_healthy()

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the server process without waiting for it (then :meth:`wait_healthy`)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = popen_guarded(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=self.pass_fds,
            )
        return self.process

    def wait_healthy(self) -> ServerProcess:
        """Wait until the spawned server answers ``health_url``.

        Raises:
            OutputError: the server exited or did not become healthy in time (log tail quoted).
        """
        if self.process is None:
            raise OutputError("the server was not started", path=self.log_path)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"exited with code {self.process.returncode}")
            if self.healthy():
                return self
            time.sleep(0.5)
        self.stop()
        self._fail(f"was not healthy after {self.startup_timeout:g} s")
        return self

    @property
    def running(self) -> bool:
        """True while the server process has not exited."""
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """True when ``health_url`` answers 200."""
        try:
            with urllib.request.urlopen(self.health_url, timeout=self.health_timeout) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _fail(self, what: str) -> None:
        tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
        command = " ".join(self.command[:4])
        raise OutputError(redact(f"{command} {what}; log:\n" + "\n".join(tail)), path=self.log_path)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``timeout`` seconds (or
        as soon as the server has exited, for members that stayed behind)."""
        if self.process is not None:
            stop_process_group(self.process, timeout)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def prefect_server(
    port: int, *, home: Path, log_path: Path, database_url: str | None = None
) -> ServerProcess:
    """``prefect server start`` on 127.0.0.1:``port`` with its own ``PREFECT_HOME``.

    Args:
        port: the port on 127.0.0.1.
        home: the server's ``PREFECT_HOME`` (its sqlite database, unless ``database_url``).
        log_path: the server's output.
        database_url: a database for the server, e.g. ``postgresql+asyncpg://…`` (default:
            sqlite in ``home``).
    """
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    return ServerProcess(command, f"http://127.0.0.1:{port}/api/health", log_path, env=env)
