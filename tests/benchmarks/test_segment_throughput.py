"""The throughput benchmark's scene: a real tile mirrored to any size on its own grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from benchmarks.segment_throughput import write_mirrored_scene


def test_the_mirrored_scene_keeps_crs_pixel_size_and_origin(tmp_path: Path) -> None:
    source = tmp_path / "tile.tif"
    band = np.arange(30 * 20, dtype=np.uint16).reshape(30, 20)
    with rasterio.open(
        source,
        "w",
        driver="GTiff",
        height=30,
        width=20,
        count=1,
        dtype="uint16",
        crs="EPSG:32616",
        transform=from_origin(740000.0, 3740000.0, 0.5, 0.5),
    ) as out:
        out.write(band, 1)
    scene = write_mirrored_scene(source, tmp_path / "big" / "scene.tif", 100)
    with rasterio.open(scene) as dataset:
        mosaic = dataset.read(1)
        assert dataset.shape == (100, 100) and dataset.crs.to_epsg() == 32616
        assert dataset.res == (0.5, 0.5) and dataset.transform.c == 740000.0
    assert np.array_equal(mosaic[:30, :20], band)
    assert np.array_equal(mosaic[:30, 20:40], band[:, ::-1])  # mirrored, no seam
    assert np.array_equal(mosaic[30:60, :20], band[::-1])
