"""Seeded synthetic GeoTIFF tiles with raster and GeoJSON labels, in any CRS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.transform import Affine
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_geom
from scipy import ndimage
from skimage.draw import disk, rectangle

from pipelines.synthetic._common import (
    BLOCK_SIZE,
    write_json,
)


def custom_albers_wkt() -> str:
    """An Albers Equal Area CRS (WGS 84, lat_0 23, lon_0 -96, parallels 29.5/45.5) as WKT.

    The definition of ``/work/shared/data/landsat_center_pivots_albers``; it has no EPSG code
    (``CRS.from_wkt(...).to_epsg()`` is ``None``).
    """
    proj4 = "+proj=aea +lat_0=23 +lon_0=-96 +lat_1=29.5 +lat_2=45.5 +datum=WGS84 +units=m"
    return str(CRS.from_proj4(proj4).to_wkt())


def _default_origin(crs: CRS) -> tuple[float, float]:
    """A plausible upper-left corner inside the CRS's area of use (from its projection params)."""
    params = crs.to_dict()
    if "zone" in params:
        lon, lat = 6.0 * int(params["zone"]) - 183.0, -45.0 if params.get("south") else 45.0
    else:
        lon = float(params.get("lon_0", 15.0))
        parallels = [float(params[key]) for key in ("lat_1", "lat_2") if key in params]
        lat = float(np.mean(parallels)) if parallels else float(params.get("lat_0", 45.0)) or 45.0
    if crs.is_geographic:
        return lon, lat
    xs, ys = warp_points(CRS.from_epsg(4326), crs, [lon], [lat])
    return round(xs[0], -2), round(ys[0], -2)


def _raster_label(
    rng: np.random.Generator, size: tuple[int, int], n_classes: int
) -> NDArray[np.uint8]:
    """Rectangles ("buildings", odd classes) and discs (even classes) on a 0 background."""
    label = np.zeros(size, np.uint8)
    for index in range(max(2 * n_classes, int(rng.integers(4, 7)))):
        value = 1 + index % n_classes
        extent = rng.uniform(0.08, 0.2, 2) * np.array(size)
        centre = rng.uniform(extent, np.array(size) - extent)
        if value % 2:
            start = np.floor(centre - extent / 2).astype(int)
            rows, cols = rectangle(  # type: ignore[no-untyped-call]
                tuple(start), extent=tuple(np.ceil(extent).astype(int)), shape=size
            )
        else:
            rows, cols = disk(tuple(centre), float(extent.min() / 2), shape=size)  # type: ignore[no-untyped-call]
        label[rows, cols] = value
    return label


def _raster_image(
    rng: np.random.Generator, label: NDArray[np.uint8], bands: int, n_classes: int
) -> NDArray[np.float64]:
    """(bands, H, W) values in [0.05, 0.95]: smooth background plus a per-class, per-band level.

    Even bands brighten with the class value and odd bands darken, so every class differs from
    the background by at least 0.3 in some band.
    """
    steps = np.arange(n_classes + 1) / n_classes
    even = np.arange(bands)[:, None] % 2 == 0
    levels = np.where(even, 0.25 + 0.6 * steps, 0.6 - 0.45 * steps)
    levels += rng.uniform(-0.03, 0.03, levels.shape)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (bands, *label.shape)), (0, 4, 4))
    image: NDArray[np.float64] = (
        levels[:, label] + 0.08 * texture + rng.normal(0, 0.02, (bands, *label.shape))
    )
    return np.clip(image, 0.05, 0.95)


def _scale_to(image: NDArray[np.float64], dtype: str) -> NDArray[Any]:
    if np.issubdtype(np.dtype(dtype), np.floating):
        return image.astype(dtype)
    top = min(np.iinfo(dtype).max, 4000)
    return np.round(image * top).astype(dtype)


def _write_geotiff(
    path: Path, data: NDArray[Any], crs: CRS, transform: Affine, nodata: float | None
) -> None:
    """Write ``(bands, H, W)`` as a tiled (64×64), deflate-compressed GeoTIFF."""
    count, height, width = data.shape
    profile = {"driver": "GTiff", "tiled": True, "blockxsize": BLOCK_SIZE, "blockysize": BLOCK_SIZE}
    with rasterio.open(
        path, "w", **profile, count=count, height=height, width=width, dtype=data.dtype.name,
        crs=crs, transform=transform, nodata=nodata, compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(data)


def _vector_labels(
    label: NDArray[np.uint8], transform: Affine, crs: CRS, vector_crs: CRS
) -> dict[str, Any]:
    """The label's polygons (property ``class``) reprojected into ``vector_crs``."""
    features = [
        {
            "type": "Feature",
            "properties": {"class": int(value)},
            "geometry": transform_geom(crs, vector_crs, geometry),
        }
        for geometry, value in shapes(label, mask=label > 0, transform=transform, connectivity=4)
    ]
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    epsg = vector_crs.to_epsg()
    if epsg != 4326 and epsg is not None:
        # Pre-RFC 7946 "crs" member, which GDAL reads; RFC 7946 GeoJSON is lon/lat without one.
        urn = f"urn:ogc:def:crs:EPSG::{epsg}"
        collection["crs"] = {"type": "name", "properties": {"name": urn}}
    return collection


def make_raster_dataset(
    root: str | Path,
    *,
    n_tiles: int = 2,
    size: tuple[int, int] = (96, 96),
    bands: int = 3,
    crs: str = "EPSG:32633",
    pixel_size: float = 0.5,
    nodata: float | None = 0,
    dtype: str = "uint16",
    n_classes: int = 2,
    vector_labels: bool = False,
    raster_labels: bool = True,
    vector_crs: str = "EPSG:4326",
    origin: tuple[float, float] | None = None,
    seed: int = 0,
) -> Path:
    """Write GeoTIFF tiles with "buildings" (rectangles) and discs, and their labels.

    Tiles ``tile_000``… sit side by side (west to east). A strip in the upper-left corner of
    every image is ``nodata`` (its label is 0); elsewhere no pixel equals ``nodata``. The label
    rasters are the same whatever ``vector_labels``/``raster_labels`` say.

    Args:
        root: dataset folder (created): ``images/<tile>.tif``, ``labels/<tile>.tif``.
        n_tiles: number of tiles.
        size: (height, width) in pixels.
        bands: image bands.
        crs: any CRS rasterio accepts ("EPSG:32633", a WKT with no EPSG code…).
        pixel_size: pixel size in CRS units.
        nodata: image nodata value, or ``None`` for no nodata strip.
        dtype: image data type.
        n_classes: label classes 1..n_classes (uint8, 0 is background).
        vector_labels: also write ``labels/<tile>.geojson`` (polygons with an integer ``class``)
            in ``vector_crs``; outside EPSG:4326 a ``labels/<tile>.crs.wkt`` sidecar too.
        raster_labels: write ``labels/<tile>.tif``.
        vector_crs: CRS of the GeoJSON; EPSG:4326 follows RFC 7946 (lon/lat, no ``crs`` member).
        origin: upper-left corner of the first tile in CRS units (default: a point inside the
            CRS's area of use).
        seed: random seed.

    Returns:
        ``root``.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    raster_crs, target_crs = CRS.from_user_input(crs), CRS.from_user_input(vector_crs)
    x0, y0 = origin if origin is not None else _default_origin(raster_crs)
    for index in range(n_tiles):
        tile = f"tile_{index:03d}"
        west = x0 + index * size[1] * pixel_size
        transform = Affine.translation(west, y0) @ Affine.scale(pixel_size, -pixel_size)
        label = _raster_label(rng, size, n_classes)
        image = _scale_to(_raster_image(rng, label, bands, n_classes), dtype)
        if nodata is not None:
            strip = (slice(0, max(1, size[0] // 8)), slice(0, max(1, size[1] // 3)))
            image[(slice(None), *strip)] = nodata
            label[strip] = 0
        _write_geotiff(root / "images" / f"{tile}.tif", image, raster_crs, transform, nodata)
        if raster_labels:
            _write_geotiff(
                root / "labels" / f"{tile}.tif", label[None], raster_crs, transform, None
            )
        if vector_labels:
            collection = _vector_labels(label, transform, raster_crs, target_crs)
            write_json(root / "labels" / f"{tile}.geojson", collection, indent=None)
            if target_crs.to_epsg() != 4326:
                (root / "labels" / f"{tile}.crs.wkt").write_text(target_crs.to_wkt() + "\n")
    return root


# --- 2D microscopy images -----------------------------------------------------------------------
