"""Test-wide fixtures: an isolated SEGFLOW_HOME, and the gpu marker's skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from data_contracts import get_settings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _prefect_logs_to_the_session_stream() -> None:
    """Prefect's console log handler binds ``sys.stderr`` when Prefect is first imported. If
    that happened inside a test using ``capsys`` or ``CliRunner``, whose streams are closed
    afterwards, every later Prefect log line would fail; importing it once at session start
    binds pytest's session-long capture stream instead, whatever order tests run in."""
    import prefect.main  # noqa: F401


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Each test gets its own SEGFLOW_HOME, so MLflow/Prefect state never leaks between tests."""
    home = tmp_path_factory.mktemp("segflow-home")
    monkeypatch.setenv("SEGFLOW_HOME", str(home))
    for variable in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"):
        monkeypatch.delenv(variable, raising=False)
    # Every test has its own SEGFLOW_HOME: a shared background API per home would outlive the
    # test. The shared API has tests of its own (tests/flows/test_shared_api.py).
    monkeypatch.setenv("SEGFLOW_API", "per-command")
    # Likewise the warm process of a home (tests/flows/test_warm_process.py has its own tests).
    monkeypatch.setenv("SEGFLOW_WARM", "0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests when no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data beside the repository (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the real data folder {SHARED_DATA} is missing: CI lays it beside the clone")
    return SHARED_DATA


@pytest.fixture(scope="module")
def mlflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One SEGFLOW_HOME (so one MLflow database) per test module: creating one costs ~1.5 s.

    Modules that use it re-point SEGFLOW_HOME to it in an autouse fixture of their own.
    """
    home = tmp_path_factory.mktemp("mlflow-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGFLOW_HOME", str(home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        get_settings.cache_clear()
        yield home
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Prefect's temporary local API for the module, with its own PREFECT_HOME (~15 s start).

    Prefect's console log handler binds ``sys.stderr`` when Prefect is first imported; importing
    it here (not inside a ``CliRunner`` call, whose stream is closed afterwards) keeps later CLI
    invocations from logging into a closed file.
    """
    import prefect.main  # noqa: F401  (sets up Prefect's logging)
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    updates = {PREFECT_HOME: str(home), PREFECT_SERVER_ANALYTICS_ENABLED: False}
    with temporary_settings(updates=updates), prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def in_mlflow_home(mlflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point SEGFLOW_HOME at the module's shared MLflow home for one test."""
    monkeypatch.setenv("SEGFLOW_HOME", str(mlflow_home))
    get_settings.cache_clear()
