"""Masks and probabilities written as COGs on the source's exact grid, atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from data_contracts import OutputError, UsageError
from pipelines.synthetic import custom_albers_wkt
from pipelines.write.geotiff import (
    PROBABILITY_TAGS,
    GeoTiffMaskWriter,
    default_colormap,
    mask_dtype,
    overview_factors,
    quantize_probabilities,
)

CLASSES = ("background", "building", "road")
HEIGHT, WIDTH = 1100, 1300  # larger than a 512 tile, so the COG gets overviews
CRSES = {"epsg": CRS.from_epsg(32633), "wkt-only": CRS.from_wkt(custom_albers_wkt())}


def _source(folder: Path, crs: CRS) -> Path:
    """A one-band source raster: the writer only takes its grid."""
    path = folder / "source.tif"
    transform = Affine.translation(-1_234_567.5, 2_345_678.25) @ Affine.scale(30.0, -30.0)
    with rasterio.open(
        path, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=1, dtype="uint8", crs=crs,
        transform=transform, tiled=True, blockxsize=256, blockysize=256,
    ) as dst:  # fmt: skip
        dst.write(np.zeros((1, HEIGHT, WIDTH), np.uint8))
    return path


def _labels() -> NDArray[np.uint8]:
    """Stripes of the three classes, with a nodata (255) rectangle."""
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    labels = ((rows // 37 + cols // 53) % len(CLASSES)).astype(np.uint8)
    labels[100:300, 900:1250] = 255
    return labels


def _write_bands(writer: GeoTiffMaskWriter, data: NDArray[Any], rows: int = 200) -> None:
    for top in range(0, HEIGHT, rows):  # not tile aligned: tiles are filled by several writes
        window = Window(0, top, WIDTH, min(rows, HEIGHT - top))
        writer.write(data[..., top : top + rows, :], window)


def _write_mask(folder: Path, crs: CRS) -> Path:
    """The labels written from a source in ``crs``; returns the mask's path."""
    out = folder / "out" / "mask.tif"
    with rasterio.open(_source(folder, crs)) as source:
        profile = source.profile
    with GeoTiffMaskWriter(out, profile, class_names=CLASSES) as writer:
        _write_bands(writer, _labels())
    return out


def _files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize("crs", CRSES.values(), ids=CRSES.keys())
def test_mask_is_a_cog_on_the_source_grid(tmp_path: Path, crs: CRS) -> None:
    out = _write_mask(tmp_path, crs)
    with rasterio.open(tmp_path / "source.tif") as source, rasterio.open(out) as mask:
        assert mask.crs == source.crs
        assert mask.crs.to_wkt() == source.crs.to_wkt()
        assert mask.transform == source.transform
        assert (mask.height, mask.width, mask.count) == (HEIGHT, WIDTH, 1)
        assert (mask.dtypes[0], mask.nodata) == ("uint8", 255)
        assert mask.driver == "GTiff"
        assert mask.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert mask.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert mask.block_shapes == [(512, 512)]
        assert mask.overviews(1) == [2, 4]
        np.testing.assert_array_equal(mask.read(1), _labels())
    assert _files(out.parent) == ["mask.tif"]


def test_overviews_hold_only_class_values_and_nodata(tmp_path: Path) -> None:
    out = _write_mask(tmp_path, CRSES["epsg"])
    for level in range(2):
        with rasterio.open(out, overview_level=level) as overview:
            assert overview.width < WIDTH
            assert set(np.unique(overview.read(1)).tolist()) == {0, 1, 2, 255}


def test_colormap_and_class_tags(tmp_path: Path) -> None:
    out = _write_mask(tmp_path, CRSES["epsg"])
    with rasterio.open(out) as mask:
        colours = mask.colormap(1)
        tags = mask.tags()
        assert mask.descriptions == ("class",)
    for value, colour in default_colormap(len(CLASSES)).items():
        assert colours[value] == colour
    assert colours[255] == (0, 0, 0, 0)
    assert json.loads(tags["class_names"]) == list(CLASSES)
    assert (tags["class_0"], tags["class_2"]) == ("background", "road")


def test_probabilities_are_multiband_uint8(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    probabilities = rng.dirichlet(np.ones(len(CLASSES)), (HEIGHT, WIDTH)).transpose(2, 0, 1)
    quantised = quantize_probabilities(probabilities)
    out = tmp_path / "probabilities.tif"
    with rasterio.open(_source(tmp_path, CRSES["wkt-only"])) as source:
        with GeoTiffMaskWriter(
            out, source.profile, class_names=CLASSES, count=len(CLASSES), nodata=None,
            tags=PROBABILITY_TAGS,
        ) as writer:  # fmt: skip
            _write_bands(writer, quantised, rows=512)
        with rasterio.open(out) as written:
            assert written.crs == source.crs and written.transform == source.transform
            assert (written.count, written.nodata) == (3, None)
            assert written.descriptions == CLASSES
            assert written.tags()["scale"] == "1/255"
            stored = written.read()
    np.testing.assert_array_equal(stored, quantised)
    assert np.abs(stored / 255.0 - probabilities).max() <= 0.5 / 255 + 1e-9


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    source = _source(tmp_path, CRSES["epsg"])
    out = tmp_path / "out" / "mask.tif"
    with rasterio.open(source) as dataset:
        profile = dataset.profile
    with (
        pytest.raises(UsageError, match="shape"),
        GeoTiffMaskWriter(out, profile, class_names=CLASSES) as writer,
    ):
        writer.write(np.zeros((200, WIDTH), np.uint8), Window(0, 0, WIDTH, 200))
        writer.write(np.zeros((10, 10), np.uint8), Window(0, 200, WIDTH, 200))
    assert _files(out.parent) == []
    with (
        pytest.raises(RuntimeError, match="interrupted"),
        GeoTiffMaskWriter(out, profile, class_names=CLASSES) as writer,
    ):
        writer.write(np.zeros((200, WIDTH), np.uint8), Window(0, 0, WIDTH, 200))
        raise RuntimeError("interrupted")
    assert _files(out.parent) == []


def test_grid_mismatch_after_writing_is_an_output_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_copy = rasterio.shutil.copy

    def shifted_copy(src: Path, dst: Path, **options: Any) -> None:
        real_copy(src, dst, **options)
        with rasterio.open(dst, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as damaged:
            damaged.transform = damaged.transform @ Affine.translation(1, 0)

    monkeypatch.setattr(rasterio.shutil, "copy", shifted_copy)
    out = tmp_path / "out" / "mask.tif"
    with rasterio.open(_source(tmp_path, CRSES["epsg"])) as source:
        writer = GeoTiffMaskWriter(out, source.profile, class_names=CLASSES)
    with pytest.raises(OutputError, match="transform"), writer:
        _write_bands(writer, _labels())
    assert _files(out.parent) == []


@pytest.mark.parametrize(("n_classes", "dtype"), [(1, "uint8"), (255, "uint8"), (256, "uint16")])
def test_mask_dtype_keeps_nodata_free(n_classes: int, dtype: str) -> None:
    assert mask_dtype(n_classes) == dtype


@pytest.mark.parametrize(
    "kwargs",
    [
        {"class_names": []},
        {"class_names": [str(v) for v in range(256)]},  # 255 would be nodata
        {"class_names": CLASSES, "nodata": 2},
        {"class_names": CLASSES, "dtype": "float32"},
        {"class_names": CLASSES, "count": 2, "band_descriptions": ["a"]},
    ],
)
def test_inconsistent_arguments_are_usage_errors(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    profile = {"crs": CRSES["epsg"], "transform": Affine.scale(1, -1), "width": 4, "height": 4}
    with pytest.raises(UsageError):
        GeoTiffMaskWriter(tmp_path / "mask.tif", profile, **kwargs)
    assert _files(tmp_path) == []


@pytest.mark.parametrize(("width", "height"), [(1300, 1100), (512, 512), (1025, 300), (4097, 2000)])
def test_overview_factors_are_those_the_cog_driver_picks(
    tmp_path: Path, width: int, height: int
) -> None:
    plain = tmp_path / "plain.tif"
    with rasterio.open(
        plain, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
        crs=CRSES["epsg"], transform=Affine.translation(500_000, 0) @ Affine.scale(1, -1),
    ) as dst:  # fmt: skip
        dst.write(np.zeros((1, height, width), np.uint8))
    rasterio.shutil.copy(plain, tmp_path / "cog.tif", driver="COG", BLOCKSIZE=512)
    with rasterio.open(tmp_path / "cog.tif") as cog:
        assert overview_factors(width, height) == cog.overviews(1)


def test_without_cog_the_tiled_gtiff_is_published_compressed(tmp_path: Path) -> None:
    out = tmp_path / "out" / "mask.tif"
    with rasterio.open(_source(tmp_path, CRSES["epsg"])) as source:
        profile = source.profile
    with GeoTiffMaskWriter(out, profile, class_names=CLASSES, cog=False) as writer:
        _write_bands(writer, _labels())
    with rasterio.open(out) as mask:
        assert mask.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert mask.overviews(1) == []
        np.testing.assert_array_equal(mask.read(1), _labels())
    assert _files(out.parent) == ["mask.tif"]
