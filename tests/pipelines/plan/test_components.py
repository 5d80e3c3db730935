"""The plan's post-processing: keep the largest foreground component when labels hold one."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_contracts import DatasetManifest, IngestOptions, PostprocessConfig
from pipelines.ingest import ingest
from pipelines.plan import compute_fingerprint, make_plan, plan_table
from pipelines.plan.components import (
    ONE_REGION_SHARE,
    foreground_component_share,
    largest_component_share,
    planned_postprocess,
)
from pipelines.synthetic import make_raster_dataset, make_volume_dataset

SHAPE = (24, 24, 12)


def _one_region_volumes(root: Path) -> Path:
    return make_volume_dataset(root, n_cases=2, shape=SHAPE, n_classes=1, seed=5)


def _add_second_region(label_path: Path) -> None:
    """A second, separate blob as large as the first one's share allows to fail the rule."""
    image = nib.load(label_path)
    label = np.asarray(image.dataobj).copy()
    label[label > 0] = 0
    label[1:7, 1:7, 1:5] = 1
    label[14:22, 14:22, 6:11] = 1
    nib.save(nib.Nifti1Image(label, image.affine, image.header), label_path)


def test_largest_component_share_counts_every_class_as_foreground() -> None:
    label = np.zeros((10, 10), np.uint8)
    label[0:3, 0:3] = 1
    label[3, 3] = 2  # joins the first blob by a corner (full connectivity)
    label[8:10, 8:10] = 1
    assert largest_component_share(label) == pytest.approx(10 / 14)
    assert largest_component_share(label, ignore_value=1) == pytest.approx(1.0)
    assert largest_component_share(np.zeros((4, 4), np.uint8)) is None


@pytest.fixture(scope="module")
def one_region(tmp_path_factory: pytest.TempPathFactory) -> DatasetManifest:
    root = tmp_path_factory.mktemp("components")
    return ingest(_one_region_volumes(root / "vol"), workdir=root / "work")


def test_one_region_volumes_plan_keep_largest_foreground(one_region: DatasetManifest) -> None:
    manifest = one_region
    fingerprint = compute_fingerprint(manifest)
    assert fingerprint.foreground_component_share == pytest.approx(1.0)
    plan = make_plan(fingerprint, manifest)
    assert plan.postprocess == PostprocessConfig(keep_largest_foreground=True)
    rows = dict(plan_table(plan))
    assert rows["postprocess"] == "keep the largest foreground component"


def test_two_regions_in_one_case_keep_every_component(tmp_path: Path) -> None:
    root = _one_region_volumes(tmp_path / "vol")
    labels = sorted((root / "labelsTr").glob("*.nii.gz"))
    _add_second_region(labels[0])
    manifest = ingest(root, workdir=tmp_path / "work")
    share = foreground_component_share(manifest)
    assert share is not None and share < ONE_REGION_SHARE
    plan = make_plan(compute_fingerprint(manifest), manifest)
    assert not plan.postprocess.changes_labels
    assert dict(plan_table(plan))["postprocess"] == "none"


def _manifest_without_background(tmp_path: Path) -> DatasetManifest:
    make_raster_dataset(tmp_path / "ras", n_tiles=1, size=(48, 48), pixel_size=10.0, seed=2)
    options = IngestOptions(ignore_value=0)
    return ingest(tmp_path / "ras", workdir=tmp_path / "work", options=options)


def test_no_background_or_instance_labels_are_not_measured(tmp_path: Path) -> None:
    manifest = _manifest_without_background(tmp_path)
    assert foreground_component_share(manifest) is None
    instance = manifest.model_copy(update={"label_kind": "instance", "ignore_value": None})
    assert foreground_component_share(instance) is None


@pytest.mark.parametrize(
    ("share", "expected"),
    [(None, False), (ONE_REGION_SHARE - 0.01, False), (ONE_REGION_SHARE, True), (1.0, True)],
)
def test_rule_threshold(one_region: DatasetManifest, share: float | None, expected: bool) -> None:
    fingerprint = compute_fingerprint(one_region).model_copy(
        update={"foreground_component_share": share}
    )
    assert planned_postprocess(fingerprint).keep_largest_foreground is expected


def test_label_maps_too_large_to_read_whole_are_not_measured(
    one_region: DatasetManifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipelines.plan.components.MAX_VOXELS", 100)
    assert foreground_component_share(one_region) is None
    assert not make_plan(compute_fingerprint(one_region), one_region).postprocess.changes_labels
