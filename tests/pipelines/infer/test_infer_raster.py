"""Raster segmentation end to end: COG masks, probabilities, block post-processing, bad bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from data_contracts import ChannelCountError, DatasetManifest, InferenceOptions, PostprocessConfig
from pipelines.infer import raster as raster_module
from pipelines.infer.inputs import discover_inputs
from pipelines.infer.raster import segment_raster
from pipelines.ingest import ingest
from pipelines.postprocess.labels import postprocess_labels
from pipelines.services.batch import run_batch
from pipelines.synthetic import make_raster_dataset
from pipelines.synthetic.models import oracle_model


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetManifest]:
    root = tmp_path_factory.mktemp("tiles")
    dataset = make_raster_dataset(root / "data", n_tiles=2, size=(150, 130), seed=3)
    return dataset, ingest(dataset, workdir=root / "work")


def test_probabilities_cog_matches_the_mask(
    tiles: tuple[Path, DatasetManifest], tmp_path: Path
) -> None:
    _, manifest = tiles
    model = oracle_model(manifest, patch=(64, 64))
    source = Path(manifest.cases[0].channels[0].path)
    outputs = segment_raster(
        model, source, tmp_path / "m.tif", probabilities_path=tmp_path / "p.tif"
    )
    assert outputs.probabilities is not None
    with rasterio.open(outputs.mask) as mask, rasterio.open(outputs.probabilities) as probs:
        labels, scaled = mask.read(1), probs.read()
        assert probs.count == len(model.plan.class_values)
        assert probs.descriptions == tuple(model.plan.class_names)
        assert probs.crs == mask.crs and probs.transform == mask.transform
    valid = labels != 255
    values = np.asarray(model.plan.class_values)[scaled.argmax(axis=0)]
    assert (values[valid] == labels[valid]).mean() > 0.99  # ties after rounding may differ
    assert np.abs(scaled[:, valid].astype(int).sum(axis=0) - 255).max() <= len(values)


def test_block_postprocessing_equals_whole_scene_postprocessing(
    tiles: tuple[Path, DatasetManifest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, manifest = tiles
    model = oracle_model(manifest, patch=(64, 64))
    source = Path(manifest.cases[1].channels[0].path)
    plain = segment_raster(model, source, tmp_path / "plain.tif").mask
    with rasterio.open(plain) as dataset:
        labels, transform = dataset.read(1), dataset.transform
    pixel = abs(transform.a * transform.e)
    config = PostprocessConfig(min_object_size=40 * pixel, fill_holes=True)
    valid = labels != 255
    expected = postprocess_labels(
        np.where(valid, labels, 0), config, spacing=(abs(transform.e), transform.a), valid=valid
    )
    expected = np.where(valid, expected, 255)
    monkeypatch.setattr(raster_module, "POSTPROCESS_BLOCK_ROWS", 40)
    monkeypatch.setattr(raster_module, "POSTPROCESS_HALO_ROWS", 30)
    cleaned = segment_raster(model, source, tmp_path / "clean.tif", postprocess=config).mask
    with rasterio.open(cleaned) as dataset:
        result = dataset.read(1)
    assert result.shape == labels.shape
    np.testing.assert_array_equal(result, expected)


def test_a_raster_with_too_few_bands_fails_alone(
    tiles: tuple[Path, DatasetManifest], tmp_path: Path
) -> None:
    _, manifest = tiles
    model = oracle_model(manifest, patch=(64, 64))
    folder = tmp_path / "in"
    folder.mkdir()
    source = Path(manifest.cases[0].channels[0].path)
    with rasterio.open(source) as src:
        profile, pixels = src.profile, src.read()
    (folder / source.name).write_bytes(source.read_bytes())
    profile.update(count=2)
    with rasterio.open(folder / "two_bands.tif", "w", **profile) as dst:
        dst.write(pixels[:2])
    report = run_batch(folder, model, tmp_path / "out", InferenceOptions(polygons=True))
    assert [item.case_id for item in report.items if item.status == "done"] == [source.stem]
    failed = {item.case_id: item.error or "" for item in report.items if item.status == "failed"}
    error = failed["two_bands"]
    assert error.startswith(f"{ChannelCountError.__name__}: ")
    assert "two_bands.tif" in error and "has 2 band(s); the model expects 3" in error
    assert not (tmp_path / "out" / "two_bands.tif").exists()
    assert len(discover_inputs(folder, workdir=tmp_path).cases) == 2


@pytest.mark.parametrize("threshold", [0.4, 0.9])
def test_the_models_threshold_cuts_the_foreground(
    tiles: tuple[Path, DatasetManifest], tmp_path: Path, threshold: float
) -> None:
    _, manifest = tiles
    model = oracle_model(manifest, patch=(64, 64))
    assert model.plan.class_values[0] == 0
    source = Path(manifest.cases[0].channels[0].path)
    config = PostprocessConfig(threshold=threshold)
    outputs = segment_raster(
        model, source, tmp_path / "m.tif", probabilities_path=tmp_path / "p.tif", postprocess=config
    )
    assert outputs.probabilities is not None
    with rasterio.open(outputs.mask) as mask, rasterio.open(outputs.probabilities) as probs:
        labels, foreground = mask.read(1), 1 - probs.read(1) / 255
    valid = labels != 255
    clearly_in = valid & (foreground >= threshold + 0.005)
    clearly_out = valid & (foreground < threshold - 0.005)
    assert clearly_in.any() and clearly_out.any()
    assert (labels[clearly_in] != 0).all() and (labels[clearly_out] == 0).all()
