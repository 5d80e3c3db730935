"""Ingestion of the seeded fixture datasets (tests/data/make_test_data.py): layouts, geometry,
CRS with and without EPSG code, vector labels in another CRS, archives, CT header scaling."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio

from data_contracts import IngestOptions, RasterGeometry, VolumeGeometry
from pipelines.ingest import ingest, read_manifest, write_manifest
from pipelines.synthetic import pack_archive
from tests.data.make_test_data import build_fixtures


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_fixtures(tmp_path_factory.mktemp("fixtures"), seed=7)


def test_nnunet_layout_with_test_images(fixtures: dict[str, Path], tmp_path: Path) -> None:
    manifest = ingest(fixtures["volumes_nnunet"], workdir=tmp_path)
    assert manifest.rejected == ()
    labelled = [case for case in manifest.cases if case.label is not None]
    unlabelled = [case for case in manifest.cases if case.label is None]
    assert len(labelled) == 2 and len(unlabelled) == 1
    case = labelled[0]
    assert isinstance(case.geometry, VolumeGeometry)
    assert case.geometry.orientation == ("L", "P", "S")
    assert case.geometry.spacing == pytest.approx((0.9, 1.1, 3.0), abs=1e-5)
    image = nib.load(case.channels[0].path)
    np.testing.assert_allclose(case.geometry.affine, image.affine, atol=1e-6)
    assert len(case.channels) == 2 and manifest.channel_names and len(manifest.channel_names) == 2
    assert manifest.labels["background"] == 0 and len(manifest.labels) == 3


def test_ct_scaling_and_psr_orientation(fixtures: dict[str, Path], tmp_path: Path) -> None:
    manifest = ingest(fixtures["volumes_ct"], workdir=tmp_path)
    assert manifest.rejected == ()
    case = manifest.cases[0]
    assert isinstance(case.geometry, VolumeGeometry)
    assert case.geometry.orientation == ("P", "S", "R") and case.geometry.dtype == "int16"


@pytest.mark.parametrize(("fixture", "epsg"), [("rasters_epsg", 32633), ("rasters_wkt", None)])
def test_rasters_keep_crs_transform_and_nodata(
    fixture: str, epsg: int | None, fixtures: dict[str, Path], tmp_path: Path
) -> None:
    manifest = ingest(fixtures[fixture], workdir=tmp_path)
    assert manifest.rejected == () and len(manifest.cases) == 2
    for case in manifest.cases:
        assert isinstance(case.geometry, RasterGeometry)
        with rasterio.open(case.channels[0].path) as dataset:
            assert case.geometry.epsg == epsg == dataset.crs.to_epsg()
            assert rasterio.crs.CRS.from_wkt(case.geometry.crs_wkt) == dataset.crs
            assert case.geometry.transform == tuple(dataset.transform)[:6]
            assert case.geometry.nodata == dataset.nodata == 0
            assert case.geometry.count == dataset.count == 3


def test_geojson_in_4326_rasterises_onto_the_utm_grid(
    fixtures: dict[str, Path], tmp_path: Path
) -> None:
    """Labels given only as RFC 7946 GeoJSON (lon/lat) burn onto the EPSG:32633 image grid and
    agree with the raster labels of the same seeded tiles."""
    manifest = ingest(fixtures["rasters_vector_4326"], workdir=tmp_path)
    assert manifest.rejected == ()
    for case in manifest.cases:
        assert (
            case.label is not None and case.label.source and case.label.source.endswith(".geojson")
        )
        expected = fixtures["rasters_epsg"] / "labels" / f"{case.case_id}.tif"
        with rasterio.open(case.label.path) as ours, rasterio.open(expected) as truth:
            assert ours.crs == truth.crs and ours.transform == truth.transform
            a, b = ours.read(1) > 0, truth.read(1) > 0
            assert (a & b).sum() / max((a | b).sum(), 1) > 0.9


def test_images_2d_instances(fixtures: dict[str, Path], tmp_path: Path) -> None:
    manifest = ingest(
        fixtures["images_2d"], options=IngestOptions(label_kind="instance"), workdir=tmp_path
    )
    assert manifest.rejected == () and len(manifest.cases) == 3
    assert all(
        case.kind == "image" and case.label_stats and max(case.label_stats.values) > 1
        for case in manifest.cases
    )


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz"])
def test_archives_ingest_like_folders(
    suffix: str, fixtures: dict[str, Path], tmp_path: Path
) -> None:
    archive = pack_archive(fixtures["rasters_wkt"], tmp_path / f"tiles{suffix}")
    before = archive.read_bytes()
    manifest = ingest(archive, workdir=tmp_path / "work")
    assert manifest.rejected == () and len(manifest.cases) == 2
    assert all(
        Path(case.channels[0].path).is_relative_to(tmp_path / "work") for case in manifest.cases
    )
    assert archive.read_bytes() == before  # inputs are never modified
    again = ingest(archive, workdir=tmp_path / "work")  # a rerun into the same workdir
    assert again.model_dump(exclude={"created_at"}) == manifest.model_dump(exclude={"created_at"})


def test_manifest_file_round_trip(fixtures: dict[str, Path], tmp_path: Path) -> None:
    manifest = ingest(fixtures["volumes_nnunet"], workdir=tmp_path)
    path = write_manifest(manifest, tmp_path / "m.json")
    assert read_manifest(path).model_dump_json() == manifest.model_dump_json()
    assert not list(tmp_path.glob(".m.json.*"))  # no temp file left behind


def test_sha256_matches_file_content(fixtures: dict[str, Path], tmp_path: Path) -> None:
    import hashlib

    manifest = ingest(fixtures["rasters_epsg"], workdir=tmp_path)
    for case in manifest.cases:
        for record in (*case.channels, case.label):
            assert record is not None
            assert record.sha256 == hashlib.sha256(Path(record.path).read_bytes()).hexdigest()


def test_progress_counts_checked_and_rejected_files(tmp_path: Path) -> None:
    """The callback hears of every file, with the rejections so far (the CLI's live line)."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(2):
        Image.fromarray(np.full((8, 8), index * 50, dtype=np.uint8)).save(folder / f"c{index}.png")
    (folder / "c2.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    calls: list[tuple[int, int, str, int]] = []
    manifest = ingest(
        folder,
        workdir=tmp_path / "work",
        progress=lambda done, total, case, rejected: calls.append((done, total, case, rejected)),
    )
    assert [call[:2] for call in calls] == [(1, 3), (2, 3), (3, 3)]
    assert calls[-1][3] == len(manifest.rejected) == 1
