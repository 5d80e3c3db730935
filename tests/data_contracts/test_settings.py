"""Settings: one place for SEGFLOW_HOME, the MLflow URI and Prefect's home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_contracts import Settings, apply_environment, get_settings


def test_defaults_follow_segflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    assert (
        settings.tracking_uri
        == f"sqlite:////{(tmp_path / 'home' / 'mlflow.db').as_posix().lstrip('/')}"
    )
    assert settings.tracking_uri.startswith("sqlite:////")
    assert settings.prefect_home_dir == tmp_path / "home" / "prefect"
    assert settings.artifacts_dir == tmp_path / "home" / "mlartifacts"


def test_relative_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(home=Path(".segflow"))
    assert settings.home_dir == tmp_path / ".segflow"


def test_mlflow_uri_from_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    get_settings.cache_clear()
    assert get_settings().tracking_uri == "http://127.0.0.1:5000"


def test_apply_environment_sets_prefect_and_mlflow_without_overriding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "mine"))
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "45")
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    apply_environment()
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "mine")
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "45"
    assert os.environ["MLFLOW_TRACKING_URI"].endswith(f"{tmp_path.name}/mlflow.db")
    assert tmp_path.is_dir()


def test_apply_environment_gives_the_temporary_prefect_server_time_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect's 20 s made every command fail on a machine busy training."""
    monkeypatch.setenv("SEGFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    get_settings.cache_clear()
    apply_environment()
    assert int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 60
