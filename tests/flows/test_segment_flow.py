"""``segflow segment`` through the ``segment_archive`` flow: registry model, ledger, artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from data_contracts import InferenceOptions, get_settings
from flows.cli import app
from pipelines.infer.loaded_model import LoadedModel, ModelCard
from pipelines.ingest import ingest
from pipelines.services.batch import BatchItemResult, BatchProgress
from pipelines.synthetic import custom_albers_wkt, make_raster_dataset, pack_archive
from pipelines.synthetic.models import oracle_model
from tests.oracle_registry import register_oracle

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(autouse=True)
def _module_home(in_mlflow_home: None) -> None:
    """Every test of this module uses the module's MLflow home."""


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four labelled GeoTIFF tiles in a WKT-only CRS with nodata 0."""
    return make_raster_dataset(
        tmp_path_factory.mktemp("scenes") / "data",
        n_tiles=4,
        size=(72, 80),
        crs=custom_albers_wkt(),
        seed=11,
    )


@pytest.fixture(scope="module")
def champion(scenes: Path, mlflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGFLOW_HOME", str(mlflow_home))
        get_settings.cache_clear()
        manifest = ingest(scenes, workdir=tmp_path_factory.mktemp("ingest"))
        model = oracle_model(manifest, patch=(32, 32))
        return register_oracle(model, "scenes")


def _segment(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["segment", *args])
    return result.exit_code, result.output


def test_segment_archive_resumes_and_reports_bad_files(
    scenes: Path, champion: str, tmp_path: Path
) -> None:
    source = Path(shutil.copytree(scenes / "images", tmp_path / "in"))
    (source / "broken.tif").write_bytes(b"II*\x00not really a tiff")
    archive = pack_archive(source, tmp_path / "scenes.zip")
    out = tmp_path / "out"
    code, output = _segment(str(archive), "--model", champion, "--out", str(out), "--polygons")
    assert code == 3, output  # partial: one bad file
    assert "broken" in output
    masks = sorted(out.glob("*.tif"))
    assert len(masks) == 4
    for mask in masks:
        with rasterio.open(mask) as written, rasterio.open(source / mask.name) as original:
            assert written.crs == original.crs and written.transform == original.transform
            assert "segflow_lineage" in written.tags()
            lineage = json.loads(written.tags()["segflow_lineage"])
            assert lineage["model"]["name"] == "scenes" and lineage["model"]["version"] == "1"
        assert mask.with_suffix(".gpkg").is_file() and mask.with_suffix(".geojson").is_file()
    ledger = json.loads((out / ".segflow" / "ledger.json").read_text())
    statuses = sorted(entry["status"] for entry in _entries(ledger))
    assert statuses == ["done"] * 4 + ["failed"], statuses
    mtimes = {mask: mask.stat().st_mtime_ns for mask in masks}

    code, output = _segment(str(archive), "--model", champion, "--out", str(out), "--polygons")
    assert code == 3, output  # the bad file is retried and fails again
    assert {mask: mask.stat().st_mtime_ns for mask in masks} == mtimes  # nothing recomputed
    assert "skipped 4" in output


def _entries(ledger: object) -> list[dict[str, object]]:
    if isinstance(ledger, dict):
        entries = ledger.get("entries", ledger.get("cases", ledger))
        return list(entries.values()) if isinstance(entries, dict) else list(entries)
    return list(ledger)  # type: ignore[call-overload]


def test_batch_is_an_mlflow_run_with_the_ledger(
    scenes: Path, champion: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, output = _segment(str(scenes / "images"), "--model", champion, "--out", str(out))
    assert code == 0, output
    runs = mlflow.search_runs(experiment_names=["segflow-batches"], output_format="list")
    latest = max(runs, key=lambda run: run.info.start_time)
    assert latest.data.metrics["files_done"] == 4
    assert latest.data.params["model_uri"] == "models:/scenes/1"
    artifacts = mlflow.MlflowClient().list_artifacts(latest.info.run_id, "ledger")
    assert [Path(a.path).name for a in artifacts] == ["ledger.json"]


def test_masks_match_the_labels(scenes: Path, champion: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _ = _segment(str(scenes / "images"), "--model", champion, "--out", str(out))
    assert code == 0
    for mask in sorted(out.glob("*.tif")):
        with rasterio.open(mask) as written, rasterio.open(scenes / "labels" / mask.name) as truth:
            predicted, expected = written.read(1), truth.read(1)
            valid = predicted != written.nodata
            assert (predicted[valid] == expected[valid]).mean() > 0.97
            assert np.isin(np.unique(predicted), [0, 1, 2, 255]).all()  # classes + nodata


def test_segment_from_and_to_object_storage(
    scenes: Path, champion: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s3:// in and out: inputs staged locally, masks uploaded whole, a rerun uploads nothing."""
    import boto3
    from moto import mock_aws

    for name, value in [("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")]:
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    get_settings.cache_clear()
    tiles = sorted((scenes / "images").glob("*.tif"))[:2]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="archive")
        for tile in tiles:
            s3.upload_file(str(tile), "archive", f"incoming/{tile.name}")
        args = ["s3://archive/incoming/", "--model", champion, "--out", "s3://archive/masks/"]
        code, output = _segment(*args)
        assert code == 0, output

        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="archive")["Contents"])
        masks = [key for key in keys if key.startswith("masks/") and key.endswith(".tif")]
        assert masks == [f"masks/{tile.name}" for tile in tiles]
        assert "masks/.segflow/ledger.json" in keys
        assert not any("sqlite" in key or key.endswith(".part") for key in keys)
        downloaded = tmp_path / tiles[0].name
        s3.download_file("archive", masks[0], str(downloaded))
        with rasterio.open(downloaded) as mask, rasterio.open(tiles[0]) as source:
            assert mask.crs == source.crs and mask.transform == source.transform
            assert "segflow_lineage" in mask.tags()

        code, output = _segment(*args)
        assert code == 0, output
        uploaded_again = s3.list_objects_v2(Bucket="archive", Prefix="masks/")["KeyCount"]
        assert uploaded_again == len(keys) - len(tiles)  # the same objects, nothing new


class _Recorder(BatchProgress):
    """Keeps what the flow tells its progress."""

    def __init__(self) -> None:
        self.models: list[LoadedModel | ModelCard] = []
        self.done: list[tuple[str, int, int]] = []

    def model_ready(self, model: LoadedModel | ModelCard) -> None:
        self.models.append(model)

    def case_done(self, result: BatchItemResult, done: int, total: int) -> None:
        self.done.append((result.case_id, done, total))


def test_the_model_is_downloaded_once_and_progress_is_passed_down(
    scenes: Path, champion: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One download of the whole model per batch (this process and the worker processes load
    the same copy; before it, only the card's small files), the parent's model under the
    registry identity, and every case told to the progress object."""
    from flows.dataset_flows import run_flow
    from flows.segment_flow import reset_process_caches, segment_archive_flow

    downloads: list[str] = []
    real = mlflow.artifacts.download_artifacts

    def counting(uri: str, *args: Any, **kwargs: Any) -> Any:
        downloads.append(uri)
        return real(uri, *args, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", counting)
    reset_process_caches()  # as in a new `segflow segment` process
    progress = _Recorder()
    summary, code = run_flow(
        segment_archive_flow,
        source=str(scenes / "images"),
        model=champion,
        out=str(tmp_path / "out"),
        options=InferenceOptions(probabilities=True),
        progress=progress,
        track=False,
    )
    assert int(code) == 0 and summary["done"] == 4, summary
    card_files = [uri for uri in downloads if uri.endswith(("/MLmodel", ".json"))]
    assert len(card_files) == 4 and not any(uri.endswith(".pt") for uri in downloads)
    assert [uri for uri in downloads if uri not in card_files] == ["models:/scenes/1"]
    [model] = progress.models
    assert (model.uri, model.name, model.version) == ("models:/scenes/1", "scenes", "1")
    assert sorted(done for _, done, _ in progress.done) == [1, 2, 3, 4]
    assert {total for _, _, total in progress.done} == {4}
    assert len(list((tmp_path / "out").glob("*_prob.tif"))) == 4  # the options went down


def _segment_anew(scenes: Path, champion: str, out: Path, **options: Any) -> tuple[Any, Any]:
    """``segment_archive_flow`` of the scenes into ``out``, as in a new `segflow segment`
    process (no model kept from an earlier run), untracked."""
    import flows.segment_flow as segment_flow
    from flows.dataset_flows import run_flow

    segment_flow.reset_process_caches()
    return run_flow(
        segment_flow.segment_archive_flow,
        source=str(scenes / "images"),
        model=champion,
        out=str(out),
        track=False,
        **options,
    )


def test_with_worker_processes_only_the_workers_load_the_weights(
    scenes: Path, champion: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default batch segments in worker processes: the command's own process plans,
    records and reports from the model's card, and never loads the weights itself."""
    import flows.segment_flow as segment_flow

    def no_weights(*args: Any, **kwargs: Any) -> LoadedModel:
        raise AssertionError("the parent loaded the weights")

    monkeypatch.setattr(segment_flow, "_model", no_weights)
    summary, code = _segment_anew(scenes, champion, tmp_path / "out")
    assert int(code) == 0 and summary["done"] == 4, summary
    with pytest.raises(AssertionError, match="loaded the weights"):  # in-thread runs need them
        _segment_anew(scenes, champion, tmp_path / "in-thread", isolated=False)


def test_a_rerun_with_nothing_left_decides_without_the_weights(
    scenes: Path, champion: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished batch run again reads the model's card (identity, plan, classes) and the
    ledger: it never downloads nor loads the weights, and skips every case."""
    import flows.segment_flow as segment_flow

    def run() -> dict[str, Any]:
        summary, code = _segment_anew(scenes, champion, tmp_path / "out")
        assert int(code) == 0, summary
        return dict(summary)

    assert run()["done"] == 4

    def no_weights(*args: Any, **kwargs: Any) -> LoadedModel:
        raise AssertionError("the weights were loaded for a finished batch")

    monkeypatch.setattr(segment_flow, "_model", no_weights)
    again = run()
    assert (again["done"], again["skipped"]) == (0, 4)
