"""Real servers on 127.0.0.1 for the integration tests: Prefect and MLflow, once per session.

``prefect_server`` and ``mlflow_server`` start the servers in their own process groups (both
fork workers) and stop the whole groups afterwards; their logs stay in the session's temporary
folder and are quoted when a server fails to start. ``on_servers`` points this process at both
for one test: environment variables for subprocesses and segflow's settings, Prefect's settings
context for the flows run here (Prefect reads its environment only once, at import).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from data_contracts import get_settings
from flows.server_process import ServerProcess, free_port
from flows.server_process import prefect_server as prefect_server_process
from tests.integration.stack import mlflow_server_command


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``prefect server start`` with its own PREFECT_HOME; yields the API URL (``…/api``)."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    server = prefect_server_process(port, home=root / "home", log_path=root / "server.log")
    with server:
        yield f"http://127.0.0.1:{port}/api"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a sqlite store, serving artifacts itself; yields the tracking URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    backend = f"sqlite:///{root / 'mlflow.db'}"
    command = mlflow_server_command(backend, str(root / "artifacts"), port)
    with ServerProcess(command, f"http://127.0.0.1:{port}/health", root / "server.log"):
        yield f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Servers:
    """Where the servers of a test are."""

    prefect_api_url: str
    mlflow_tracking_uri: str


@pytest.fixture
def on_servers(
    prefect_server: str, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Servers]:
    """Point this process (and the subprocesses it starts) at both servers for one test."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    get_settings.cache_clear()
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield Servers(prefect_server, mlflow_server)
    get_settings.cache_clear()
