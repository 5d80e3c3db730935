"""Acceptance: every real dataset in ../shared/data ingests with every case valid, and the
manifest's geometry matches what nibabel and rasterio read from the files themselves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from data_contracts import DatasetManifest, IngestOptions, RasterGeometry, VolumeGeometry
from pipelines.ingest import ingest

# Options per set follow each set's README (label meaning, ignore values, label file names).
DATASETS: dict[str, dict[str, Any]] = {
    "brats2015_deepmedic": {},
    "msd_spleen_ct_crop": {},
    "sct_spinalcord_mri": {},
    "totalsegmentator_examples": {},
    "dsb2018_nuclei": {"label_kind": "instance"},
    "landsat_center_pivots_albers": {"label_suffix": "_mask"},
    "nc_landsat7_landcover": {"ignore_value": 0},
    "spacenet3_vegas_roads": {"label_suffix": "_mask", "labels": {"background": 0, "road": 255}},
    "spacenet4_atlanta_buildings": {"label_suffix": "_mask"},
    "unlabeled_georef": {},
}
EXPECTED_CASES = {
    "brats2015_deepmedic": 3,
    "msd_spleen_ct_crop": 1,
    "sct_spinalcord_mri": 4,
    "totalsegmentator_examples": 2,
    "dsb2018_nuclei": 40,
    "landsat_center_pivots_albers": 1,
    "nc_landsat7_landcover": 2,
    "spacenet3_vegas_roads": 1,
    "spacenet4_atlanta_buildings": 2,
    "unlabeled_georef": 2,
}


def _check_geometry_against_files(manifest: DatasetManifest) -> None:
    for case in manifest.cases:
        files = [
            *(record.path for record in case.channels),
            *([case.label.path] if case.label else []),
        ]
        for path in files:
            if isinstance(case.geometry, VolumeGeometry):
                image = nib.load(path)
                np.testing.assert_allclose(np.array(case.geometry.affine), image.affine, atol=1e-3)
                assert case.geometry.shape == image.shape[:3]
                assert "".join(case.geometry.orientation) == "".join(nib.aff2axcodes(image.affine))
            elif isinstance(case.geometry, RasterGeometry):
                with rasterio.open(path) as dataset:
                    assert CRS.from_wkt(case.geometry.crs_wkt) == dataset.crs
                    pixel = case.geometry.resolution[0]
                    np.testing.assert_allclose(
                        case.geometry.transform, tuple(dataset.transform)[:6], atol=1e-3 * pixel
                    )
                    assert (case.geometry.width, case.geometry.height) == (
                        dataset.width,
                        dataset.height,
                    )
        if isinstance(case.geometry, RasterGeometry):
            with rasterio.open(case.channels[0].path) as first:
                assert case.geometry.epsg == first.crs.to_epsg()
                assert case.geometry.transform == tuple(first.transform)[:6]
                if first.nodata is None:
                    assert case.geometry.nodata is None
                else:
                    np.testing.assert_equal(case.geometry.nodata, first.nodata)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_real_dataset_ingests_fully(name: str, shared_data: Path, tmp_path: Path) -> None:
    manifest = ingest(shared_data / name, options=IngestOptions(**DATASETS[name]), workdir=tmp_path)
    assert manifest.rejected == (), [r.reason for r in manifest.rejected]
    assert len(manifest.cases) == EXPECTED_CASES[name]
    _check_geometry_against_files(manifest)
    # The manifest survives a JSON round trip unchanged.
    assert (
        DatasetManifest.model_validate_json(manifest.model_dump_json()).model_dump_json()
        == manifest.model_dump_json()
    )


def test_sen1floods_pairs_through_a_csv(shared_data: Path, tmp_path: Path) -> None:
    """S1 and S2 files of one chip are two channel files of one case; names do not pair by stem."""
    folder = shared_data / "sen1floods11_spain_sample"
    images = ";".join(
        os.path.relpath(folder / "images" / f"Spain_7370579_{s}Hand.tif", tmp_path)
        for s in ("S1", "S2")
    )
    label = os.path.relpath(folder / "labels" / "Spain_7370579_LabelHand.tif", tmp_path)
    csv_path = tmp_path / "sen1floods.csv"
    csv_path.write_text(f"image,label\n{images},{label}\n")
    options = IngestOptions(labels={"not_water": 0, "water": 1}, ignore_value=-1)
    manifest = ingest(csv_path, options=options, workdir=tmp_path / "work")
    assert manifest.rejected == ()
    (case,) = manifest.cases
    assert case.channel_counts == (2, 13)
    assert case.label_stats is not None
    assert dict(zip(case.label_stats.values, case.label_stats.voxel_counts, strict=True)) == {
        -1: 99,
        0: 192010,
        1: 70035,
    }
    assert isinstance(case.geometry, RasterGeometry) and case.geometry.epsg == 4326
    assert case.geometry.nodata is not None and np.isnan(case.geometry.nodata)
    _check_geometry_against_files(manifest)


@pytest.mark.parametrize(
    ("name", "suffix", "shipped_mask"),
    [
        ("landsat_center_pivots_albers", "_pivots", "landsat_albers_mask.tif"),
        ("spacenet4_atlanta_buildings", "_buildings", "sn4_atl_nw_mask.tif"),
    ],
)
def test_vector_labels_rasterise_onto_the_image_grid(
    name: str, suffix: str, shipped_mask: str, shared_data: Path, tmp_path: Path
) -> None:
    """GeoJSON labels (a WKT sidecar CRS for Albers; an EPSG member for SpaceNet) burn exactly
    onto the grid the dataset's own rasterised mask uses."""
    manifest = ingest(
        shared_data / name, options=IngestOptions(label_suffix=suffix), workdir=tmp_path
    )
    assert manifest.rejected == ()
    case = next(c for c in manifest.cases if shipped_mask.startswith(c.case_id))
    assert (
        case.label is not None
        and case.label.source is not None
        and case.label.source.endswith(".geojson")
    )
    with (
        rasterio.open(case.label.path) as ours,
        rasterio.open(shared_data / name / "labels" / shipped_mask) as theirs,
    ):
        assert ours.crs == theirs.crs and ours.transform == theirs.transform
        assert (ours.read(1) == theirs.read(1)).mean() > 0.999


def test_medical_label_counts_match_the_readme(shared_data: Path, tmp_path: Path) -> None:
    manifest = ingest(shared_data / "msd_spleen_ct_crop", workdir=tmp_path)
    (case,) = manifest.cases
    assert case.label_stats is not None
    assert (
        dict(zip(case.label_stats.values, case.label_stats.voxel_counts, strict=True))[1] == 96672
    )
    assert manifest.labels == {"background": 0, "spleen": 1}
