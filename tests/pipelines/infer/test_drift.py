"""Drift against the training data: exactly the shifted inputs are flagged, with their values;
--on-drift skip/fail; models without a reference; confidence falls on unfamiliar inputs."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
from PIL import Image

from data_contracts import DatasetManifest, InferenceOptions
from pipelines.infer.loaded_model import LoadedModel
from pipelines.ingest import ingest
from pipelines.io.nifti import load_volume
from pipelines.services.batch import BatchReport, run_batch
from pipelines.services.ledger import Ledger
from pipelines.synthetic import make_image_dataset, make_raster_dataset, make_volume_dataset
from pipelines.synthetic.models import oracle_model


def _scaled_nifti(source: Path, destination: Path, factor: float, noise: float = 0.0) -> None:
    data, image = load_volume(source)
    values = np.asarray(data, dtype=np.float32) * factor
    if noise:
        values = values + np.random.default_rng(0).normal(0, noise, values.shape)
    nib.save(nib.Nifti1Image(values.astype(np.float32), image.affine), destination)  # type: ignore[no-untyped-call]


def _flags(report: BatchReport) -> dict[str, str]:
    """Case id → the drift text of every item (empty when not flagged)."""
    return {
        item.case_id: item.quality.drift_text() if item.quality else "" for item in report.items
    }


@pytest.fixture(scope="module")
def volume_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, DatasetManifest]:
    root = tmp_path_factory.mktemp("train_volumes")
    dataset = make_volume_dataset(root / "data", n_cases=3, n_channels=1, seed=1)
    manifest = ingest(dataset, workdir=root / "work")
    return oracle_model(manifest), manifest


@pytest.fixture(scope="module")
def volume_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two in-distribution volumes, one at a coarser spacing, one at 10× the intensities."""
    root = tmp_path_factory.mktemp("volume_inputs")
    inputs = root / "inputs"
    inputs.mkdir()
    fresh = make_volume_dataset(root / "fresh", n_cases=3, n_channels=1, seed=2) / "imagesTr"
    files = sorted(fresh.glob("*.nii.gz"))
    shutil.copy(files[0], inputs / "same_a.nii.gz")
    shutil.copy(files[1], inputs / "same_b.nii.gz")
    _scaled_nifti(files[2], inputs / "bright.nii.gz", 10.0)
    coarse = make_volume_dataset(
        root / "coarse", n_cases=1, n_channels=1, spacing=(2.7, 3.3, 9.0), seed=3
    )
    shutil.copy(next((coarse / "imagesTr").glob("*.nii.gz")), inputs / "coarse.nii.gz")
    return inputs


def test_exactly_the_shifted_volumes_are_flagged_with_their_values(
    volume_model: tuple[LoadedModel, DatasetManifest], volume_inputs: Path, tmp_path: Path
) -> None:
    model, _ = volume_model
    report = run_batch(volume_inputs, model, tmp_path / "out")
    flags = _flags(report)
    assert {case for case, text in flags.items() if text} == {"bright", "coarse"}
    assert "spacing" in flags["coarse"] and "2.7" in flags["coarse"]
    assert "intensity" in flags["bright"] and "median" in flags["bright"]
    assert all(item.status == "done" for item in report.items)  # warn: segmented, flagged
    statuses = {item.case_id: item.quality.drift_status for item in report.items if item.quality}
    assert statuses["same_a"] == "ok" and statuses["bright"] == "flagged"
    with Ledger.open(tmp_path / "out") as ledger:
        entry = ledger.get("coarse")
        assert entry is not None and entry.quality is not None and entry.quality.drifted


def test_skip_and_fail_leave_drifted_files_unsegmented(
    volume_model: tuple[LoadedModel, DatasetManifest], volume_inputs: Path, tmp_path: Path
) -> None:
    model, _ = volume_model
    skipped = run_batch(volume_inputs, model, tmp_path / "skip", InferenceOptions(on_drift="skip"))
    by_case = {item.case_id: item for item in skipped.items}
    assert by_case["bright"].status == "skipped" and by_case["bright"].reason == "drift"
    assert by_case["same_a"].status == "done"
    assert not (tmp_path / "skip" / "bright.nii.gz").exists()
    failed = run_batch(volume_inputs, model, tmp_path / "fail", InferenceOptions(on_drift="fail"))
    assert {item.case_id for item in failed.items if item.status == "failed"} == {
        "bright",
        "coarse",
    }
    assert "InputDriftError" in (next(i for i in failed.items if i.case_id == "coarse").error or "")
    again = run_batch(volume_inputs, model, tmp_path / "fail")  # warn: the drifted ones now run
    assert {item.case_id for item in again.items if item.status == "done"} == {"bright", "coarse"}


def test_a_model_without_a_reference_says_not_available_once(
    volume_model: tuple[LoadedModel, DatasetManifest],
    volume_inputs: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model, _ = volume_model
    old = dataclasses.replace(model, processing={})
    with caplog.at_level(logging.WARNING):
        report = run_batch(volume_inputs, old, tmp_path / "out")
    assert report.counts["done"] == 4
    assert {item.quality.drift_status for item in report.items if item.quality} == {"not available"}
    assert sum("drift check not available" in r.getMessage() for r in caplog.records) == 1


def test_confidence_is_lower_on_inputs_the_model_was_not_trained_for(
    volume_model: tuple[LoadedModel, DatasetManifest], tmp_path: Path
) -> None:
    model, manifest = volume_model
    validation = Path(manifest.cases[0].channels[0].path).parent
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    for index, case in enumerate(manifest.cases):
        source = Path(case.channels[0].path)
        spread = float(np.asarray(load_volume(source)[0]).std())
        _scaled_nifti(source, noisy / f"noisy_{index}.nii.gz", 1.0, noise=spread)
    known = run_batch(validation, model, tmp_path / "known").items
    unknown = run_batch(noisy, model, tmp_path / "unknown").items
    known_scores = [item.quality.confidence for item in known if item.quality]
    unknown_scores = [item.quality.confidence for item in unknown if item.quality]
    assert len(known_scores) == len(unknown_scores) == 3
    assert max(s for s in unknown_scores if s is not None) < min(
        s for s in known_scores if s is not None
    )


def _scaled_raster(source: Path, destination: Path, factor: float) -> None:
    with rasterio.open(source) as dataset:
        profile = {**dataset.profile, "dtype": "float32"}
        values = dataset.read().astype(np.float32) * factor
    with rasterio.open(destination, "w", **profile) as out:
        out.write(values)


def test_rasters_at_another_resolution_or_scale_are_flagged(tmp_path: Path) -> None:
    train = make_raster_dataset(tmp_path / "train", n_tiles=2, size=(80, 80), seed=1)
    model = oracle_model(ingest(train, workdir=tmp_path / "work"), patch=(32, 32))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    fresh = sorted(
        (make_raster_dataset(tmp_path / "fresh", n_tiles=2, seed=2) / "images").iterdir()
    )
    shutil.copy(fresh[0], inputs / "same.tif")
    _scaled_raster(fresh[1], inputs / "scaled.tif", 6.0)
    coarse = make_raster_dataset(tmp_path / "coarse", n_tiles=1, pixel_size=1.5, seed=3)
    shutil.copy(next((coarse / "images").iterdir()), inputs / "coarse.tif")
    flags = _flags(run_batch(inputs, model, tmp_path / "out"))
    assert {case for case, text in flags.items() if text} == {"scaled", "coarse"}
    assert "resolution" in flags["coarse"] and "1.5" in flags["coarse"]
    assert "intensity" in flags["scaled"]


def test_images_of_another_intensity_scale_are_flagged(tmp_path: Path) -> None:
    train = make_image_dataset(tmp_path / "train", n_images=2, seed=1)
    model = oracle_model(ingest(train, workdir=tmp_path / "work"))
    fresh = make_image_dataset(tmp_path / "fresh", n_images=3, seed=2) / "images"
    last = sorted(fresh.iterdir())[-1]
    values = np.asarray(Image.open(last), dtype=np.uint16) * 200  # 8-bit grey → 16-bit range
    Image.fromarray(values).save(fresh / "wide.png")
    last.unlink()
    report = run_batch(fresh, model, tmp_path / "out")
    assert report.counts["done"] == 3
    flags = _flags(report)
    assert {case for case, text in flags.items() if text} == {"wide"}
    assert "intensity" in flags["wide"]


def test_a_large_scene_without_overviews_is_sampled_in_windows(tmp_path: Path) -> None:
    from pipelines.kinds import kind_adapter

    small = make_raster_dataset(tmp_path / "small", n_tiles=1, size=(300, 250), seed=1)
    large = make_raster_dataset(tmp_path / "large", n_tiles=1, size=(3000, 2500), seed=1)
    samples = [
        kind_adapter("raster").sample_input(
            [next((data / "images").iterdir())], rng=np.random.default_rng(0), count=5000
        )
        for data in (small, large)
    ]
    assert samples[1].shape == (3000, 2500) and samples[1].crs_units == "metre"
    for one, other in zip(samples[0].values, samples[1].values, strict=True):
        assert other.size == 5000
        assert abs(float(np.median(one)) - float(np.median(other))) < 0.05 * float(np.median(one))
