"""Tests of pipelines.synthetic and the fixture script: geometry is what was asked, and seeded."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import pytest
import rasterio
from numpy.typing import NDArray
from PIL import Image
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform_geom

from pipelines.files import sha256_file
from pipelines.io.archives import extract_archive
from pipelines.synthetic import (
    CT_INTERCEPT,
    custom_albers_wkt,
    make_image_dataset,
    make_raster_dataset,
    make_sample_archive,
    make_volume_dataset,
    pack_archive,
    volume_affine,
)
from tests.data.make_test_data import FIXTURES, build_fixtures

SMALL: dict[str, Any] = {"n_cases": 2, "shape": (16, 14, 8)}
RASTER: dict[str, Any] = {"n_tiles": 2, "size": (40, 48), "bands": 2}


def _nifti(path: str | Path) -> nib.Nifti1Image:
    return cast(nib.Nifti1Image, nib.load(path))


def _array(path: str | Path | None) -> NDArray[Any]:
    assert path is not None
    return np.asarray(_nifti(path).dataobj)


def _read(path: Path) -> NDArray[Any]:
    with rasterio.open(path) as src:
        return src.read()


@pytest.mark.parametrize("rotation", [0.0, 12.0])
def test_volume_dataset_nnunet_layout_and_geometry(tmp_path: Path, rotation: float) -> None:
    root = make_volume_dataset(tmp_path / "ds", rotation_deg=rotation, n_test=1, **SMALL)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T2"}
    assert meta["labels"] == {"background": 0, "tumour": 1, "oedema": 2}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert (root / "imagesTs" / "test_000_0001.nii.gz").is_file()
    assert not (root / "labelsTr" / "test_000.nii.gz").exists()

    image = _nifti(root / "imagesTr" / "case_001_0001.nii.gz")
    label = _nifti(root / "labelsTr" / "case_001.nii.gz")
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert np.allclose(image.header.get_zooms(), (0.9, 1.1, 3.0))
    assert image.shape == label.shape == (16, 14, 8)
    assert np.allclose(image.affine, label.affine)
    assert np.allclose(image.header.get_qform(), image.header.get_sform(), atol=1e-4)
    for img in (image, label):
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert label.get_data_dtype() == np.uint8
    assert set(np.unique(_array(label.get_filename()))) <= {0, 1, 2}
    rotated = not np.allclose(image.affine[:3, :3], np.diag(np.diag(image.affine[:3, :3])))
    assert rotated is (rotation != 0)


def test_volume_objects_are_learnable(tmp_path: Path) -> None:
    root = make_volume_dataset(tmp_path / "ds", **SMALL)
    label = _array(root / "labelsTr" / "case_000.nii.gz")
    for channel in (0, 1):
        image = _array(root / "imagesTr" / f"case_000_{channel:04d}.nii.gz")
        background = image[label == 0]
        for value in np.unique(label[label > 0]):
            gap = abs(image[label == value].mean() - background.mean())
            assert gap > 3 * background.std(), (channel, value)


def test_volume_images_labels_layout_and_ct(tmp_path: Path) -> None:
    root = make_volume_dataset(
        tmp_path / "ct",
        n_channels=1,
        n_classes=1,
        modality="ct",
        axcodes=("R", "A", "S"),
        layout="images_labels",
        class_names=["spleen"],
        **SMALL,
    )
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["labels"] == {"background": 0, "spleen": 1}
    assert meta["numCases"] == 2
    for case in meta["cases"]:
        assert all((root / path).is_file() for path in [*case["image"], case["label"]])
    image = _nifti(root / "images" / "case_000_0000.nii.gz")
    assert image.get_data_dtype() == np.int16
    proxy: Any = image.dataobj  # nibabel moves scl_slope/scl_inter from the header to the proxy
    assert proxy.slope == 1.0 and proxy.inter == CT_INTERCEPT
    hu = image.get_fdata()
    assert hu.min() > -300 and hu.max() < 300
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1


def test_volume_affine_matches_requested_axcodes() -> None:
    for axcodes in [("L", "P", "S"), ("P", "S", "R"), ("R", "A", "I")]:
        affine = volume_affine((10, 10, 10), (1.0, 2.0, 3.0), axcodes, rotation_deg=20)
        assert nib.aff2axcodes(affine) == axcodes
        assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), (1.0, 2.0, 3.0))


def test_same_seed_gives_identical_arrays(tmp_path: Path) -> None:
    def arrays(root: Path) -> list[NDArray[Any]]:
        return [
            *(_array(p) for p in sorted(root.glob("v/*/*.nii.gz"))),
            *(_read(p) for p in sorted(root.glob("r/*/*.tif"))),
            *(np.asarray(Image.open(p)) for p in sorted(root.glob("i/*/*.png"))),
        ]

    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        make_volume_dataset(tmp_path / name / "v", seed=seed, **SMALL)
        make_raster_dataset(tmp_path / name / "r", seed=seed, **RASTER)
        make_image_dataset(tmp_path / name / "i", n_images=2, seed=seed)
    first, second, other = (arrays(tmp_path / name) for name in "abc")
    assert len(first) == 2 * 3 + 2 * 2 + 2 * 2  # volumes (2 channels + label), tiles, PNGs
    assert all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))


def test_raster_dataset_epsg_grid_nodata_and_labels(tmp_path: Path) -> None:
    root = make_raster_dataset(tmp_path / "geo", pixel_size=0.5, **RASTER)
    transforms = []
    for tile in ("tile_000", "tile_001"):
        with (
            rasterio.open(root / "images" / f"{tile}.tif") as img,
            rasterio.open(root / "labels" / f"{tile}.tif") as lab,
        ):
            assert img.crs.to_epsg() == 32633 and lab.crs == img.crs
            assert lab.transform == img.transform and lab.shape == img.shape == (40, 48)
            assert img.count == 2 and img.dtypes[0] == "uint16" and lab.dtypes[0] == "uint8"
            assert img.nodata == 0 and img.block_shapes[0] == (64, 64)
            assert img.profile["compress"].lower() == "deflate"
            image, label = img.read(), lab.read(1)
            transforms.append(img.transform)
        assert img.transform.a == 0.5 and img.transform.e == -0.5
        nodata = (image == 0).all(axis=0)
        assert nodata[:5, :16].all() and nodata.sum() == 5 * 16
        assert (label[nodata] == 0).all() and (image[:, ~nodata] > 0).all()
        assert set(np.unique(label)) == {0, 1, 2}
    assert transforms[1].c == transforms[0].c + 48 * 0.5 and transforms[1].f == transforms[0].f


def test_raster_dataset_wkt_only_crs(tmp_path: Path) -> None:
    wkt = custom_albers_wkt()
    assert CRS.from_wkt(wkt).to_epsg() is None
    root = make_raster_dataset(tmp_path / "albers", crs=wkt, dtype="uint8", nodata=None, **RASTER)
    with rasterio.open(root / "images" / "tile_000.tif") as src:
        assert src.crs.to_epsg() is None and src.crs == CRS.from_wkt(wkt)
        assert "Albers" in src.crs.to_wkt() and src.nodata is None
        assert src.dtypes[0] == "uint8" and (src.read() > 0).all()


def _rasterise_back(geojson: Path, vector_crs: CRS, grid: Path) -> tuple[NDArray[Any], Any]:
    with rasterio.open(grid) as src:
        crs, transform, shape, expected = src.crs, src.transform, src.shape, src.read(1)
    features = json.loads(geojson.read_text())
    shapes = [
        (transform_geom(vector_crs, crs, f["geometry"]), f["properties"]["class"])
        for f in features["features"]
    ]
    burnt = rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8")
    return burnt, expected


@pytest.mark.parametrize("vector_crs", ["EPSG:4326", "EPSG:3857"])
def test_geojson_labels_rasterise_back_onto_the_grid(tmp_path: Path, vector_crs: str) -> None:
    root = make_raster_dataset(
        tmp_path / "geo", vector_labels=True, vector_crs=vector_crs, **RASTER
    )
    path = root / "labels" / "tile_001.geojson"
    collection = json.loads(path.read_text())
    if vector_crs == "EPSG:4326":
        assert "crs" not in collection  # RFC 7946
        lon, lat = collection["features"][0]["geometry"]["coordinates"][0][0]
        assert 14 < lon < 16 and 44 < lat < 46  # lon/lat order, near UTM 33N's meridian
        assert not (root / "labels" / "tile_001.crs.wkt").exists()
    else:
        assert collection["crs"]["properties"]["name"].endswith("EPSG::3857")
        sidecar = (root / "labels" / "tile_001.crs.wkt").read_text()
        assert CRS.from_wkt(sidecar).to_epsg() == 3857
    assert {f["properties"]["class"] for f in collection["features"]} == {1, 2}
    burnt, expected = _rasterise_back(
        path, CRS.from_user_input(vector_crs), path.with_suffix(".tif")
    )
    for value in (1, 2):
        union = ((burnt == value) | (expected == value)).sum()
        assert ((burnt == value) & (expected == value)).sum() / union > 0.95


def test_vector_only_labels_match_the_raster_ones(tmp_path: Path) -> None:
    both = make_raster_dataset(tmp_path / "both", vector_labels=True, **RASTER)
    vector = make_raster_dataset(
        tmp_path / "vec", vector_labels=True, raster_labels=False, **RASTER
    )
    assert not list((vector / "labels").glob("*.tif"))
    for tile in ("tile_000", "tile_001"):
        geojson = f"labels/{tile}.geojson"
        assert (both / geojson).read_bytes() == (vector / geojson).read_bytes()
        assert np.array_equal(
            _read(both / f"images/{tile}.tif"), _read(vector / f"images/{tile}.tif")
        )


@pytest.mark.parametrize("rgb", [False, True])
def test_image_dataset_pngs_and_instances(tmp_path: Path, rgb: bool) -> None:
    root = make_image_dataset(tmp_path / "img", n_images=2, size=(40, 56), rgb=rgb)
    for index in range(2):
        image = Image.open(root / "images" / f"img_{index:03d}.png")
        label = Image.open(root / "labels" / f"img_{index:03d}.png")
        assert image.mode == ("RGB" if rgb else "L") and image.size == (56, 40)
        instances = np.asarray(label)
        assert instances.dtype == np.uint16 and instances.shape == (40, 56)
        ids = np.unique(instances)
        assert ids[0] == 0 and list(ids[1:]) == list(range(1, len(ids))) and len(ids) > 2
        grey = np.asarray(image.convert("L"), dtype=float)
        assert grey[instances > 0].mean() > grey[instances == 0].mean() + 40


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tar.xz"])
def test_pack_archive_round_trips_and_is_deterministic(tmp_path: Path, suffix: str) -> None:
    folder = make_image_dataset(tmp_path / "img", n_images=2, size=(32, 32))
    first = pack_archive(folder, tmp_path / f"a{suffix}")
    second = pack_archive(folder, tmp_path / f"b{suffix}")
    assert sha256_file(first) == sha256_file(second)
    result = extract_archive(first, tmp_path / "out")
    assert result.rejected == ()
    names = sorted(p.relative_to(result.root).as_posix() for p in result.extracted)
    assert names == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    with pytest.raises(ValueError, match="not an archive suffix"):
        pack_archive(folder, tmp_path / "c.7z")


def test_sample_archive_holds_volumes_and_rasters(tmp_path: Path) -> None:
    archive = make_sample_archive(tmp_path)
    assert archive == tmp_path / "segflow_sample.zip"
    assert archive.stat().st_size < 5_000_000
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
    assert {"volumes/dataset.json", "volumes/imagesTr/case_007_0001.nii.gz"} <= names
    assert {"volumes/labelsTr/case_007.nii.gz", "rasters/images/tile_003.tif"} <= names
    assert "rasters/labels/tile_003.tif" in names
    assert all(not name.startswith("/") and ".." not in name for name in names)
    assert not tarfile.is_tarfile(archive)


def test_fixture_script_builds_every_fixture(tmp_path: Path) -> None:
    folders = build_fixtures(tmp_path / "imported")
    assert set(folders) == set(FIXTURES)
    with rasterio.open(folders["rasters_wkt"] / "images" / "tile_000.tif") as src:
        assert src.crs.to_epsg() is None
    assert list((folders["rasters_vector_4326"] / "labels").glob("*.geojson"))
    assert nib.aff2axcodes(_nifti(next(folders["volumes_ct"].glob("images/*"))).affine) == (
        "P",
        "S",
        "R",
    )
    script = Path(__file__).resolve().parents[2] / "data" / "make_test_data.py"
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cli")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert all((tmp_path / "cli" / name).is_dir() for name in FIXTURES)
