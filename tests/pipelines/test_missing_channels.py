"""Pixels where one band is nodata and the others are not (Landsat 7's SLC-off stripes): the
plan notices them in the training rasters, training learns them and segmenting predicts them;
pixels where every band is nodata stay nodata. Plans without the rule keep the old one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from data_contracts import ConfigError, DatasetManifest, FileQuality
from pipelines.infer.raster import segment_raster
from pipelines.ingest import ingest
from pipelines.plan import apply_overrides, compute_fingerprint, make_plan, plan_table
from pipelines.plan.planner import PARTIAL_NODATA_SHARE
from pipelines.preprocess.array import IGNORE_INDEX, mark_nonfinite
from pipelines.preprocess.datasets import case_to_item
from pipelines.preprocess.transforms import LABEL_KEY, plan_transforms
from pipelines.synthetic import make_raster_dataset
from pipelines.synthetic.models import oracle_model

SIZE = (96, 80)
STRIPE_ROWS = slice(40, 56)  # the last band is nodata here, the others are not


def _stripe_the_last_band(dataset: Path) -> None:
    """Set the last band of every image to its nodata value on :data:`STRIPE_ROWS`."""
    for path in sorted((dataset / "images").glob("*.tif")):
        with rasterio.open(path, "r+") as image:
            band = image.read(image.count)
            band[STRIPE_ROWS] = image.nodata
            image.write(band, image.count)


@pytest.fixture(scope="module")
def striped(tmp_path_factory: pytest.TempPathFactory) -> DatasetManifest:
    root = tmp_path_factory.mktemp("striped")
    dataset = make_raster_dataset(root / "data", n_tiles=2, size=SIZE, seed=5)
    _stripe_the_last_band(dataset)
    return ingest(dataset, workdir=root / "work")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> DatasetManifest:
    root = tmp_path_factory.mktemp("plain")
    dataset = make_raster_dataset(root / "data", n_tiles=2, size=SIZE, seed=5)
    return ingest(dataset, workdir=root / "work")


def _stripe_share() -> float:
    rows = STRIPE_ROWS.stop - STRIPE_ROWS.start
    return rows / SIZE[0]


def test_the_plan_predicts_missing_bands_seen_in_training(striped: DatasetManifest) -> None:
    fingerprint = compute_fingerprint(striped)
    assert fingerprint.partial_nodata_fraction == pytest.approx(_stripe_share(), abs=0.02)
    plan = make_plan(fingerprint, striped)
    assert plan.missing_channels == "predict"
    assert "every channel" in dict(plan_table(plan))["missing_channels"]


def test_bands_missing_together_keep_the_nodata_rule(plain: DatasetManifest) -> None:
    fingerprint = compute_fingerprint(plain)
    assert fingerprint.partial_nodata_fraction < PARTIAL_NODATA_SHARE  # corner: every band
    plan = make_plan(fingerprint, plain)
    assert plan.missing_channels == "nodata"
    assert "any channel" in dict(plan_table(plan))["missing_channels"]


def test_one_band_cannot_predict_a_missing_band(tmp_path: Path) -> None:
    dataset = make_raster_dataset(tmp_path / "data", n_tiles=2, size=(64, 64), bands=1, seed=1)
    manifest = ingest(dataset, workdir=tmp_path / "work")
    plan = make_plan(compute_fingerprint(manifest), manifest)
    assert plan.missing_channels == "nodata" and "missing_channels" not in dict(plan_table(plan))
    with pytest.raises(ConfigError, match="missing_channels"):
        apply_overrides(plan, {"missing_channels": "predict"})


def test_mark_nonfinite_every_channel() -> None:
    image = torch.ones(2, 1, 3)
    image[0, 0, 1] = torch.nan  # one band missing
    image[:, 0, 2] = torch.nan  # both bands missing
    label = torch.zeros(1, 1, 3, dtype=torch.int64)
    assert mark_nonfinite(image, label)[0, 0].tolist() == [0, IGNORE_INDEX, IGNORE_INDEX]
    every = mark_nonfinite(image, label, every_channel=True)
    assert every[0, 0].tolist() == [0, 0, IGNORE_INDEX]


@pytest.mark.parametrize("rule", ["predict", "nodata"])
def test_training_labels_under_a_missing_band(striped: DatasetManifest, rule: str) -> None:
    plan = make_plan(compute_fingerprint(striped), striped)
    plan = plan.model_copy(update={"missing_channels": rule})
    item = plan_transforms(plan, train=False)(case_to_item(striped.cases[0]))
    stripe = np.asarray(item[LABEL_KEY])[0, STRIPE_ROWS]
    with rasterio.open(striped.cases[0].label.path) as truth:  # type: ignore[union-attr]
        labelled = truth.read(1)[STRIPE_ROWS] != 0
    assert labelled.any()
    ignored = stripe == IGNORE_INDEX
    assert (not ignored[labelled].any()) if rule == "predict" else ignored.all()


@pytest.mark.parametrize("rule", ["predict", "nodata"])
def test_segmenting_a_stripe(striped: DatasetManifest, tmp_path: Path, rule: str) -> None:
    model = oracle_model(striped, patch=(64, 64))
    assert model.plan.missing_channels == "predict"
    model = dataclasses.replace(
        model, plan=model.plan.model_copy(update={"missing_channels": rule})
    )
    source = Path(striped.cases[0].channels[0].path)
    written = segment_raster(model, source, tmp_path / "mask.tif")
    with rasterio.open(written.mask) as mask, rasterio.open(source) as image:
        labels = mask.read(1)
        every_band_missing = (image.read() == image.nodata).all(axis=0)
    assert (labels[every_band_missing] == 255).all()  # the corner strip of every band
    stripe = labels[STRIPE_ROWS][~every_band_missing[STRIPE_ROWS]]
    assert (stripe != 255).all() if rule == "predict" else (stripe == 255).all()
    outside = np.ones(labels.shape, dtype=bool)
    outside[STRIPE_ROWS] = False
    assert (labels[outside & ~every_band_missing] != 255).all()
    _check_missing_channel_share(written.quality, written.mask, labels, stripe.size, rule)


def _check_missing_channel_share(
    quality: FileQuality, mask: Path, labels: np.ndarray, stripe_pixels: int, rule: str
) -> None:
    """A predicting plan records the share of segmented pixels that had a band missing."""
    if rule == "nodata":
        assert quality.missing_channel_fraction is None
        return
    segmented = int(np.count_nonzero(labels != 255))
    assert quality.missing_channel_fraction == pytest.approx(stripe_pixels / segmented, abs=1e-6)
    with rasterio.open(mask) as written:
        tagged = json.loads(written.tags()["segflow_quality"])
    assert tagged["missing_channel_fraction"] == quality.missing_channel_fraction
