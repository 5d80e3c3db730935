"""Flows against real Prefect and MLflow servers, and ``segflow serve`` with a cron schedule.

Run with ``pytest -m integration tests/integration`` (deselected by default; ``.ci/run``
selects them). Both servers start once per session (~15 s each).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.synthetic import make_raster_dataset
from tests.integration.conftest import Servers
from tests.integration.stack import TINY_TRAINING

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings('ignore:Field name "register":UserWarning'),
]
REPO = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-m", "flows", "serve"]
CONFIG = TINY_TRAINING


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raster_dataset(
        tmp_path_factory.mktemp("rasters") / "data", n_tiles=3, size=(48, 48), seed=6
    )


def mlflow_get(base: str, endpoint: str, **query: str) -> dict[str, Any]:
    """GET an MLflow REST endpoint (``runs/get``…) and decode its JSON."""
    url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(json.loads(response.read()))


def test_train_flow_tracks_in_the_servers(
    on_servers: Servers, rasters: Path, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import StateType

    from flows.dataset_flows import train_flow

    state = train_flow(
        source=rasters,
        config=CONFIG,
        register="integration-tiles",
        plan_overrides={"patch_size": [32, 32], "batch_size": 2},
        workdir=tmp_path / "train",
        return_state=True,
    )
    summary: Any = state.result()
    assert state.is_completed(), state.message

    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        assert str(client.api_url).rstrip("/") == on_servers.prefect_api_url
        (flow_run,) = client.read_flow_runs(flow_run_filter=run_filter)
    assert flow_run.name == "train-unet-data" and flow_run.state_type == StateType.COMPLETED

    uri = on_servers.mlflow_tracking_uri
    run = mlflow_get(uri, "runs/get", run_id=summary["run_id"])["run"]
    assert run["info"]["status"] == "FINISHED"
    assert any(metric["key"] == "final_val_dice" for metric in run["data"]["metrics"])
    model = mlflow_get(uri, "registered-models/get", name="integration-tiles")["registered_model"]
    assert {alias["alias"] for alias in model["aliases"]} >= {"champion", "challenger"}
    version = mlflow_get(uri, "registered-models/alias", name="integration-tiles", alias="champion")
    assert version["model_version"]["run_id"] == summary["run_id"]


@pytest.fixture
def serve_process(
    on_servers: Servers, rasters: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``segflow serve`` with one cron-scheduled ingest deployment, in its own process group."""
    out = tmp_path / "served.json"
    config = tmp_path / "schedules.yaml"
    schedule = {
        "name": "smoke-ingest",
        "flow": "ingest",
        "cron": "0 3 * * *",
        "parameters": {"source": str(rasters), "out": str(out)},
    }
    config.write_text(yaml.safe_dump({"schedules": [schedule]}))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-client")}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*SERVE, "--config", str(config), "--no-pause-on-shutdown"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process, out
    finally:
        _stop(process)
        print(log_path.read_text(errors="replace")[-3000:])  # shown when the test fails


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            continue


def _wait_for_deployment(name: str, process: subprocess.Popen[bytes], timeout: float) -> Any:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, "segflow serve exited early"
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                time.sleep(1)
    pytest.fail(f"deployment {name} did not appear in {timeout:g} s")


def test_serve_registers_a_cron_deployment_and_runs_it(
    serve_process: tuple[subprocess.Popen[bytes], Path],
) -> None:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    process, out = serve_process
    deployment = _wait_for_deployment("ingest/smoke-ingest", process, timeout=120)
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]  # type: ignore[union-attr]
    assert all(s.active for s in deployment.schedules)

    flow_run: FlowRun = run_deployment("ingest/smoke-ingest", timeout=180, poll_interval=1)  # type: ignore[assignment]
    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    assert flow_run.state.message == "3 of 3 inputs done"
    assert json.loads(out.read_text())["name"] == "data"


def test_serve_without_api_url_starts_and_stops_its_own_server(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server_process import ServerProcess, free_port

    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), SEGFLOW_HOME=str(tmp_path / "home"))
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*SERVE, "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = f"http://127.0.0.1:{port}/api"
    probe = ServerProcess(["probe"], f"{api}/health", log_path)
    try:
        deadline = time.monotonic() + 180
        while not probe.healthy() and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            time.sleep(1)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            deployment = _wait_for_deployment("train/on-demand", process, timeout=180)
        assert deployment.schedules == []
        process.send_signal(signal.SIGTERM)  # what `docker stop` sends
        assert process.wait(timeout=60) == 0
    finally:
        _stop(process)
    text = " ".join(log_path.read_text(errors="replace").split())
    assert f"UI http://127.0.0.1:{port}" in text, text[-3000:]
    assert not probe.healthy(), "the local Prefect server outlived segflow serve"
