"""A ``prefect server`` child process on 127.0.0.1: started in its own process group, waited
for until its API answers, and stopped with everything it forked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from data_contracts import OutputError
from pipelines.redaction import redact

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
    """A server subprocess in its own process group, healthy when ``health_url`` answers 200.

    Used by ``segflow serve`` for its local Prefect server and by the integration tests for
    Prefect and MLflow servers. ``stop`` signals the whole group: both servers fork workers.

    Args:
        command: the server's command line.
        health_url: polled until it answers 200.
        log_path: the server's stdout and stderr.
        env: environment of the server (default: this process's).
        startup_timeout: seconds to wait for health.
    """

    def __init__(
        self,
        command: list[str],
        health_url: str,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 120.0,
    ):
        self.command = command
        self.health_url = health_url
        self.log_path = log_path
        self.env = dict(env if env is not None else os.environ)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        """Start the server and wait until it is healthy.

        Raises:
            OutputError: the server exited or did not become healthy in time (log tail quoted).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
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

    def healthy(self) -> bool:
        """True when ``health_url`` answers 200."""
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _fail(self, what: str) -> None:
        tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
        command = " ".join(self.command[:4])
        raise OutputError(redact(f"{command} {what}; log:\n" + "\n".join(tail)), path=self.log_path)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue

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
