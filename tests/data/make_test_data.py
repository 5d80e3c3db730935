"""Build the fixture datasets the tests use, from :mod:`pipelines.synthetic`.

Run as ``python tests/data/make_test_data.py OUTDIR`` or call :func:`build_fixtures`. Every
fixture is a thin call to a library generator, seeded, with files of a few KB:

``volumes_nnunet``
    nnU-Net v2 raw layout (``imagesTr/``, ``labelsTr/``, ``imagesTs/``, ``dataset.json``): two
    channels, two classes, LPS orientation, 0.9×1.1×3 mm voxels and a 10° rotation, so that
    orientation, spacing and affine round trips are exercised.
``volumes_ct``
    ``images/`` + ``labels/`` layout of one-channel CT stored as int16 with ``scl_slope`` 1 and
    ``scl_inter`` -1024, in PSR orientation: header scaling and unusual axis orders.
``rasters_epsg``
    GeoTIFF tiles in EPSG:32633 (0.5 m pixels, uint16, nodata 0 in a corner strip) with uint8
    label rasters on the same grid.
``rasters_wkt``
    The same kind of tiles in an Albers CRS that has no EPSG code (WKT only).
``rasters_vector_4326``
    The tiles of ``rasters_epsg`` (same seed, so the same pixels) whose labels are only GeoJSON
    polygons in EPSG:4326 (RFC 7946 lon/lat), to be rasterised back onto the EPSG:32633 grid;
    ``rasters_epsg/labels/*.tif`` is the expected result.
``images_2d``
    Grey PNG "microscopy" images with uint16 instance labels.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.synthetic import (
    custom_albers_wkt,
    make_image_dataset,
    make_raster_dataset,
    make_volume_dataset,
)

_RASTER: dict[str, Any] = {"n_tiles": 2, "size": (48, 48), "bands": 3, "pixel_size": 0.5}

FIXTURES: dict[str, Callable[[Path, int], Path]] = {
    "volumes_nnunet": lambda root, seed: make_volume_dataset(
        root, n_cases=2, shape=(20, 18, 10), rotation_deg=10.0, n_test=1, seed=seed
    ),
    "volumes_ct": lambda root, seed: make_volume_dataset(
        root,
        n_cases=2,
        shape=(16, 14, 8),
        spacing=(0.8, 0.8, 2.5),
        axcodes=("P", "S", "R"),
        n_channels=1,
        n_classes=1,
        modality="ct",
        layout="images_labels",
        seed=seed,
    ),
    "rasters_epsg": lambda root, seed: make_raster_dataset(
        root, crs="EPSG:32633", seed=seed, **_RASTER
    ),
    "rasters_wkt": lambda root, seed: make_raster_dataset(
        root, crs=custom_albers_wkt(), seed=seed, **_RASTER
    ),
    "rasters_vector_4326": lambda root, seed: make_raster_dataset(
        root,
        crs="EPSG:32633",
        vector_labels=True,
        raster_labels=False,
        vector_crs="EPSG:4326",
        seed=seed,
        **_RASTER,
    ),
    "images_2d": lambda root, seed: make_image_dataset(root, n_images=3, size=(48, 48), seed=seed),
}


def build_fixtures(outdir: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Write every fixture under ``outdir`` (created) and return their folders by name."""
    outdir = Path(outdir)
    return {name: build(outdir / name, seed) for name, build in FIXTURES.items()}


def main(argv: list[str] | None = None) -> int:
    """Command line: build the fixtures in OUTDIR and print their folders."""
    parser = argparse.ArgumentParser(description="Build segflow's test fixture datasets.")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, folder in build_fixtures(args.outdir, seed=args.seed).items():
        print(f"{name:22} {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
