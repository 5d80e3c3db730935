"""The compose stack's servers, natively on 127.0.0.1: Postgres, an S3 server, Prefect, MLflow.

The same topology as ``docker/compose.yaml`` without a container engine: Debian's Postgres
(started as the ``postgres`` user when this runs as root: Postgres refuses root), moto's S3
server standing in for MinIO, ``prefect server`` and ``mlflow server`` on Postgres, and a process
work-pool worker. Every server binds 127.0.0.1 and runs in its own process group, stopped with
everything it forked. Credentials are generated per run and passed only through environments.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_contracts import TrainConfig
from flows.server_process import ServerProcess, free_port

__all__ = [
    "TINY_TRAINING",
    "PostgresServer",
    "StackCredentials",
    "mlflow_server_command",
    "postgres_bin",
    "venv_tool",
]

#: One epoch of two steps of a 2-level U-Net with 4 base features: seconds on a CPU.
TINY_TRAINING = TrainConfig(
    model="unet",
    model_options={"base_features": 4, "depth": 2},
    max_epochs=1,
    steps_per_epoch=2,
    accelerator="cpu",
)


def venv_tool(name: str) -> str:
    """A console script of this venv (``mlflow``, ``moto_server``, ``prefect``)."""
    return str(Path(sys.executable).with_name(name))


def postgres_bin() -> Path:
    """Debian's Postgres binaries (``scripts/ensure_postgres.sh`` installs them if missing)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("Postgres is not installed: run `bash scripts/ensure_postgres.sh`")
    return Path(found[-1]).parent


@dataclass(frozen=True)
class StackCredentials:
    """Random credentials for one run: never written to a file of the repository."""

    db_user: str
    db_password: str
    s3_key: str
    s3_secret: str

    @classmethod
    def generate(cls) -> StackCredentials:
        return cls("segflow", secrets.token_urlsafe(16), "segflow", secrets.token_urlsafe(24))


def _as_postgres_user() -> list[str]:
    """Postgres refuses to run as root: drop to the ``postgres`` user when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PostgresServer(ServerProcess):
    """A throwaway Postgres cluster on 127.0.0.1 with a password-protected superuser.

    The data folder lives in a fresh temporary folder the ``postgres`` user owns (pytest's own
    temporary folders are private to root).
    """

    def __init__(self, credentials: StackCredentials, log_path: Path):
        self.root = Path(tempfile.mkdtemp(prefix="segflow-pg-"))
        self.port = free_port()
        self.credentials = credentials
        bin_dir = postgres_bin()
        data = self.root / "data"
        command = [*_as_postgres_user(), str(bin_dir / "postgres"), "-D", str(data)]
        command += ["-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.root)]
        super().__init__(command, "", log_path, startup_timeout=60)
        self._initdb(bin_dir, data)

    def _initdb(self, bin_dir: Path, data: Path) -> None:
        password_file = self.root / "pwfile"
        password_file.write_text(self.credentials.db_password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(password_file, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        command = [*_as_postgres_user(), str(bin_dir / "initdb"), "-D", str(data)]
        command += ["-U", self.credentials.db_user, f"--pwfile={password_file}"]
        command += ["--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions"]
        subprocess.run(command, check=True, capture_output=True)
        password_file.unlink()

    def url(self, database: str, driver: str = "postgresql") -> str:
        """A SQLAlchemy URL for ``database`` (``driver`` e.g. ``postgresql+asyncpg``)."""
        user, password = self.credentials.db_user, self.credentials.db_password
        return f"{driver}://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def healthy(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def create_databases(self, *names: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            for name in names:
                connection.execute(f'CREATE DATABASE "{name}"'.encode())

    def stop(self, timeout: float = 20.0) -> None:
        super().stop(timeout)
        shutil.rmtree(self.root, ignore_errors=True)


def s3_server(log_path: Path) -> tuple[ServerProcess, str]:
    """moto's standalone S3 server on 127.0.0.1 (stands in for MinIO); the endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [venv_tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    return ServerProcess(command, f"{endpoint}/moto-api/", log_path), endpoint


def mlflow_server_command(backend_url: str, artifacts: str, port: int) -> list[str]:
    """``mlflow server`` on 127.0.0.1:``port``, one worker, proxying artifacts to ``artifacts``."""
    command = [venv_tool("mlflow"), "server", "--backend-store-uri", backend_url]
    command += ["--serve-artifacts", "--artifacts-destination", artifacts]
    return [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def mlflow_server(
    backend_url: str, bucket: str, env: dict[str, str], log_path: Path
) -> tuple[ServerProcess, str]:
    """``mlflow server`` on Postgres, proxying artifacts to ``s3://bucket``; its URI."""
    port = free_port()
    command = mlflow_server_command(backend_url, f"s3://{bucket}/", port)
    uri = f"http://127.0.0.1:{port}"
    return ServerProcess(command, f"{uri}/health", log_path, env=env), uri


def process_worker(pool: str, env: dict[str, str], log_path: Path) -> ServerProcess:
    """``prefect worker start`` on a process pool, healthy when its health server answers."""
    port = free_port()
    env = {**env, "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1"}
    env["PREFECT_WORKER_WEBSERVER_PORT"] = str(port)
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
    command += ["--type", "process", "--with-healthcheck", "--name", "segflow-test-worker"]
    return ServerProcess(command, f"http://127.0.0.1:{port}/health", log_path, env=env)


@contextlib.contextmanager
def running(*servers: ServerProcess) -> Iterator[None]:
    """Start ``servers`` in order; stop them in reverse order, whatever happens."""
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        yield
