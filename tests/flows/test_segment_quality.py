"""``segflow segment`` and the ``segment-archive`` flow: drift flags, confidence, the QA report
beside the outputs and on the batch's MLflow run, on the threads and the Dask runner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pytest
from typer.testing import CliRunner

from data_contracts import InferenceOptions, get_settings
from flows.cli import app
from pipelines.ingest import ingest
from pipelines.synthetic import make_image_dataset, make_raster_dataset, make_volume_dataset
from pipelines.synthetic.models import oracle_model
from tests.oracle_registry import register_oracle

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(autouse=True)
def _module_home(in_mlflow_home: None) -> None:
    """Every test of this module uses the module's MLflow home."""


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three in-distribution scenes and one at three times the pixel size (``coarse``)."""
    root = tmp_path_factory.mktemp("scenes")
    train = make_raster_dataset(root / "train", n_tiles=3, size=(72, 80), seed=11)
    inputs = Path(shutil.copytree(train / "images", root / "inputs"))
    coarse = make_raster_dataset(root / "coarse", n_tiles=1, size=(72, 80), pixel_size=1.5)
    shutil.copy(next((coarse / "images").iterdir()), inputs / "coarse.tif")
    return root


@pytest.fixture(scope="module")
def champion(scenes: Path, mlflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGFLOW_HOME", str(mlflow_home))
        get_settings.cache_clear()
        manifest = ingest(scenes / "train", workdir=tmp_path_factory.mktemp("ingest"))
        return register_oracle(oracle_model(manifest, patch=(32, 32)), "quality_scenes")


def _latest_batch_run() -> mlflow.entities.Run:
    runs = mlflow.search_runs(experiment_names=["segflow-batches"], output_format="list")
    return max(runs, key=lambda run: run.info.start_time)


def test_segment_flags_drift_lists_files_to_review_and_writes_the_report(
    scenes: Path, champion: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["segment", str(scenes / "inputs"), "--model", champion, "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--review-below", "1", "--write-uncertainty"])
    assert result.exit_code == 0, result.output
    assert "files to review" in result.output and "QA report" in result.output
    assert len(list(out.glob("*_entropy.tif"))) == 4
    page = (out / "report.html").read_text()
    for case in ("tile_000", "tile_001", "tile_002", "coarse"):
        assert f'id="row-{case}"' in page
    assert "resolution" in page and "http://" not in page.replace("http://www.w3.org", "")
    footprints = json.loads((out / "report_footprints.geojson").read_text())
    assert len(footprints["features"]) == 4
    ledger = json.loads((out / ".segflow" / "ledger.json").read_text())
    drifted = {case["case_id"] for case in ledger["cases"] if case["quality"]["drift"]}
    assert drifted == {"coarse"}
    run = _latest_batch_run()
    assert run.data.metrics["share_drifted"] == 0.25
    assert 0 <= run.data.metrics["mean_confidence"] <= 1
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "report")}
    assert artifacts == {"report/report.html", "report/report_footprints.geojson"}


def test_on_drift_fail_fails_only_the_drifted_file(
    scenes: Path, champion: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["segment", str(scenes / "inputs"), "--model", champion, "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--on-drift", "fail"])
    assert result.exit_code == 3, result.output  # partial
    assert "coarse" in result.output
    assert not (out / "coarse.tif").exists() and (out / "tile_000.tif").is_file()
    assert 'id="row-coarse"' in (out / "report.html").read_text()
    ledger = json.loads((out / ".segflow" / "ledger.json").read_text())
    (coarse,) = [case for case in ledger["cases"] if case["case_id"] == "coarse"]
    assert coarse["status"] == "failed" and "InputDriftError" in coarse["error"]
    assert coarse["quality"]["drift"][0]["check"] == "resolution"  # survived the worker process


def test_the_dask_runner_reports_quality_too(scenes: Path, champion: str, tmp_path: Path) -> None:
    from flows.runners import task_runner
    from flows.segment_flow import segment_archive_flow

    out = tmp_path / "out"
    state = segment_archive_flow.with_options(task_runner=task_runner("dask", max_workers=2))(
        source=str(scenes / "inputs"),
        model=champion,
        out=str(out),
        options=InferenceOptions(),
        track=False,
        return_state=True,
    )
    summary: dict[str, Any] = state.result()  # type: ignore[assignment]
    assert {row["case"]: bool(row["drift"]) for row in summary["items"]} == {
        "coarse": True,
        "tile_000": False,
        "tile_001": False,
        "tile_002": False,
    }
    assert all(row["confidence"] is not None for row in summary["items"])
    assert Path(summary["report"]).is_file()


@pytest.mark.parametrize("kind", ["volume", "image"])
def test_volumes_and_images_get_confidence_lineage_and_a_report(kind: str, tmp_path: Path) -> None:
    if kind == "volume":
        data = make_volume_dataset(tmp_path / "data", n_cases=3, n_channels=1, seed=5)
        images, unit, entropy = data / "imagesTr", "ml", "_entropy.nii.gz"
    else:
        data = make_image_dataset(tmp_path / "data", n_images=3, seed=5)
        images, unit, entropy = data / "images", " px", "_entropy.tif"  # blob ids: classes
    model = oracle_model(ingest(data, workdir=tmp_path / "work"))
    uri = register_oracle(model, f"quality_{kind}")
    out = tmp_path / "out"
    args = ["segment", str(images), "--model", uri, "--out", str(out), "--write-uncertainty"]
    result = CliRunner().invoke(app, [*args, "--review-below", "1"])
    assert result.exit_code == 0, result.output
    lineages = sorted(out.glob("*.lineage.json"))
    assert len(lineages) == 3 and len(list(out.glob(f"*{entropy}"))) == 3
    for lineage in lineages:
        quality = json.loads(lineage.read_text())["quality"]
        assert 0 <= quality["confidence"] <= 1 and quality["drift_status"] == "ok"
    page = (out / "report.html").read_text()
    assert page.count('id="row-') == 3 and unit in page
    assert page.count("data:image/png;base64,") == 3
