"""``segment_archive_flow`` against real Prefect and MLflow servers: states, artifacts, ledger.

The model is the closed-form oracle of :mod:`pipelines.synthetic.models`, so no training is
needed. It is registered in the MLflow server and resolved from there as
``models:/NAME@champion``. The input is a zip with three GeoTIFF tiles and one broken file. Run
with ``pytest -m integration tests/integration/test_segment_servers.py``. The session fixtures
start both servers (about 15 s each) and stop them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID

import mlflow
import pytest

from pipelines.synthetic import make_raster_dataset, pack_archive
from tests.integration.conftest import Servers

pytestmark = pytest.mark.integration

MODEL_NAME = "integration-segment"
N_TILES = 3


@pytest.fixture
def tiles(tmp_path: Path) -> Path:
    """Three labelled GeoTIFF tiles (``images/`` + ``labels/``)."""
    return make_raster_dataset(tmp_path / "tiles", n_tiles=N_TILES, size=(48, 48), seed=3)


@pytest.fixture
def archive(tiles: Path, tmp_path: Path) -> Path:
    """The tiles' images and one file that is not really a TIFF, zipped."""
    source = Path(shutil.copytree(tiles / "images", tmp_path / "to-segment"))
    (source / "broken.tif").write_bytes(b"II*\x00not really a tiff")
    return pack_archive(source, tmp_path / "to-segment.zip")


def _register_oracle(tiles: Path, workdir: Path) -> str:
    """Fit the oracle to ``tiles`` and register it in the current MLflow; its champion URI."""
    from pipelines.ingest import ingest
    from pipelines.synthetic.models import oracle_model
    from tests.oracle_registry import register_oracle

    manifest = ingest(tiles, workdir=workdir)
    return register_oracle(oracle_model(manifest, patch=(32, 32)), MODEL_NAME)


def _segment(archive: Path, model: str, out: Path) -> tuple[UUID, dict[str, Any]]:
    """Run the flow; the flow run id and the summary it returned."""
    from flows.segment_flow import segment_archive_flow

    state = segment_archive_flow(str(archive), model, str(out), return_state=True)
    assert state.is_completed(), state.message
    assert (state.message or "").startswith("partial:"), state.message
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return flow_run_id, state.result()  # type: ignore[return-value]


def _flow_run_and_artifacts(flow_run_id: UUID) -> tuple[Any, dict[str, Any]]:
    """The flow run as the Prefect API has it, and its artifacts by key."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifact_filter = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(artifact_filter=artifact_filter)
    return flow_run, {artifact.key: artifact for artifact in artifacts if artifact.key}


def _table(artifact: Any) -> list[dict[str, Any]]:
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return list(data)


def test_segment_archive_flow_on_the_servers(
    on_servers: Servers, tiles: Path, archive: Path, tmp_path: Path
) -> None:
    from prefect.client.schemas.objects import StateType

    champion = _register_oracle(tiles, tmp_path / "ingest")
    out = tmp_path / "out"

    flow_run_id, summary = _segment(archive, champion, out)
    assert summary["model"] == f"models:/{MODEL_NAME}/1"  # the alias is pinned once
    assert (summary["done"], summary["skipped"], summary["failed"]) == (N_TILES, 0, 1)
    assert set(summary["failed_files"]) == {"broken"}
    masks = sorted(out.glob("*.tif"))
    assert [mask.name for mask in masks] == sorted(
        path.name for path in (tiles / "images").glob("*.tif")
    )

    # The flow run and its artifacts, as the Prefect server has them.
    with_api = on_servers.prefect_api_url
    flow_run, artifacts = _flow_run_and_artifacts(flow_run_id)
    assert flow_run.state_type == StateType.COMPLETED, (with_api, flow_run.state)
    assert flow_run.state is not None and flow_run.state.message.startswith("partial:")
    assert {"segment-summary", "segment-files"} <= set(artifacts), sorted(artifacts)
    assert artifacts["segment-summary"].type == "markdown"
    assert f"models:/{MODEL_NAME}/1" in str(artifacts["segment-summary"].data)
    rows = _table(artifacts["segment-files"])
    assert sorted(row["status"] for row in rows) == ["done"] * N_TILES + ["failed"]

    # The batch run, as the MLflow server has it: metrics and the ledger artifact.
    client = mlflow.MlflowClient(tracking_uri=on_servers.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("segflow-batches")
    assert experiment is not None
    run = client.get_run(summary["mlflow_run"])
    assert run.info.experiment_id == experiment.experiment_id
    assert run.data.metrics["files_done"] == N_TILES
    assert run.data.metrics["files_failed"] == 1
    assert run.data.params["model_uri"] == f"models:/{MODEL_NAME}/1"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "ledger")] == [
        "ledger/ledger.json"
    ]
    downloaded = client.download_artifacts(
        run.info.run_id, "ledger/ledger.json", str(tmp_path / "fetched")
    )
    ledger = json.loads(Path(downloaded).read_text())
    assert sorted(case["status"] for case in ledger["cases"]) == ["done"] * N_TILES + ["failed"]

    # A rerun skips every mask it wrote (the bad file is retried and fails again).
    mtimes = {mask: mask.stat().st_mtime_ns for mask in masks}
    rerun_id, again = _segment(archive, champion, out)
    assert rerun_id != flow_run_id
    assert (again["done"], again["skipped"], again["failed"]) == (0, N_TILES, 1)
    assert {mask: mask.stat().st_mtime_ns for mask in masks} == mtimes
    rerun, _ = _flow_run_and_artifacts(rerun_id)
    assert rerun.state_type == StateType.COMPLETED
    second = client.get_run(again["mlflow_run"])
    assert second.info.experiment_id == experiment.experiment_id
    assert second.data.metrics["files_skipped"] == N_TILES
    assert second.data.metrics["files_done"] == 0
