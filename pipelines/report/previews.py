"""Overlay thumbnails (the image with its mask's outline) and raster footprints.

Sources and masks are read by their format: a NIfTI volume shows its middle slice along the last
axis, a GeoTIFF a decimated read of its first bands, a PNG itself. Thumbnails are PNG bytes of at
most :data:`THUMBNAIL_SIDE` pixels a side, to be inlined in the report as base64.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from PIL import Image
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform_geom
from skimage.segmentation import find_boundaries

from data_contracts import CorruptFileError
from pipelines.io.formats import FileFormat, detect_format
from pipelines.io.nifti import open_volume

__all__ = ["THUMBNAIL_SIDE", "footprint", "overlay_thumbnail"]

THUMBNAIL_SIDE = 160
_MASK_NODATA = 255  # raster masks' nodata (pipelines.infer.raster.MASK_NODATA)
#: Outline colours of class values 1, 2… (cycled), RGB: bright, unlike most image content.
_OUTLINE = ((255, 230, 0), (0, 230, 255), (255, 40, 40), (255, 255, 255), (255, 140, 0))


def _volume(path: Path) -> NDArray[Any]:
    data = np.asanyarray(open_volume(path).dataobj)
    return data[..., 0] if data.ndim == 4 else data


def _busiest_slice(mask: Path) -> int | None:
    """For a NIfTI mask, the slice along the last axis with the most foreground."""
    if detect_format(mask) is not FileFormat.NIFTI:
        return None
    labels = _volume(mask)
    return int(np.argmax(np.count_nonzero(labels, axis=(0, 1))))


def _planes(path: Path, side: int, index: int | None = None) -> NDArray[Any]:
    """``(C, H, W)`` pixels of ``path`` for display, at most ``side`` pixels a side for TIFFs;
    a volume's slice ``index`` along its last axis (default: the middle one)."""
    file_format = detect_format(path)
    if file_format is FileFormat.NIFTI:
        data = _volume(path)
        plane = data[:, :, data.shape[2] // 2 if index is None else index]
        return np.asarray(np.rot90(plane))[None]
    if file_format is FileFormat.GEOTIFF:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                scale = max(1.0, max(dataset.height, dataset.width) / side)
                shape = (
                    max(1, round(dataset.height / scale)),
                    max(1, round(dataset.width / scale)),
                )
                bands = list(range(1, min(dataset.count, 3) + 1))
                return np.asarray(
                    dataset.read(
                        bands, out_shape=(len(bands), *shape), resampling=Resampling.nearest
                    )
                )
    with Image.open(path) as picture:
        array = np.asarray(picture)
    return array[None] if array.ndim == 2 else np.moveaxis(array[..., :3], -1, 0)


def _to_rgb(planes: NDArray[Any]) -> NDArray[np.uint8]:
    """``(H, W, 3)`` uint8: each band stretched between its 1st and 99th percentiles."""
    values = planes.astype(np.float32)
    finite = np.isfinite(values)
    out = np.zeros(values.shape, dtype=np.uint8)
    for index, band in enumerate(values):
        seen = band[finite[index]]
        if seen.size == 0:
            continue
        low, high = np.percentile(seen, [1, 99])
        scaled = (np.nan_to_num(band, nan=low) - low) / max(float(high - low), 1e-6)
        out[index] = np.clip(scaled * 255, 0, 255).astype(np.uint8)
    rgb = np.repeat(out, 3, axis=0) if len(out) == 1 else out
    if len(rgb) == 2:
        rgb = np.concatenate([rgb, rgb[:1]])
    return np.ascontiguousarray(np.moveaxis(rgb[:3], 0, -1))


#: A GeoTIFF larger than this many pixels a side and without overviews is not decimated for a
#: thumbnail: that would decode every tile of the scene.
_DECIMATE_LIMIT = 4096


def _costly_to_decimate(path: Path) -> bool:
    if detect_format(path) is not FileFormat.GEOTIFF:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            large = max(dataset.height, dataset.width) > _DECIMATE_LIMIT
            return large and not dataset.overviews(1)


def _fit(array: NDArray[Any], shape: tuple[int, int]) -> NDArray[Any]:
    """``array`` (2D) resized to ``shape`` with nearest neighbours."""
    if array.shape == shape:
        return array
    rows = (np.arange(shape[0]) * array.shape[0] // shape[0]).clip(0, array.shape[0] - 1)
    cols = (np.arange(shape[1]) * array.shape[1] // shape[1]).clip(0, array.shape[1] - 1)
    return array[np.ix_(rows, cols)]


def overlay_thumbnail(source: Path, mask: Path, *, side: int = THUMBNAIL_SIDE) -> bytes:
    """PNG bytes of ``source`` with the outline of each class of ``mask`` drawn on it.

    Raises:
        CorruptFileError: the source or the mask cannot be read.
    """
    try:
        index = _busiest_slice(mask)
        labels = _planes(mask, side, index)[0]
        if _costly_to_decimate(source):  # the outlines on grey, rather than minutes of decoding
            rgb = np.full((*labels.shape, 3), 96, dtype=np.uint8)
        else:
            rgb = _to_rgb(_planes(source, side, index))
    except (OSError, ValueError, IndexError) as error:
        raise CorruptFileError(f"cannot be previewed ({error})", path=source) from error
    scale = max(rgb.shape[:2]) / side  # small images are enlarged, so outlines show
    shape = (max(1, round(rgb.shape[0] / scale)), max(1, round(rgb.shape[1] / scale)))
    rgb = np.stack([_fit(rgb[..., c], shape) for c in range(3)], axis=-1)
    labels = _fit(np.asarray(labels), shape)
    boundaries = find_boundaries(labels, mode="thick")  # type: ignore[no-untyped-call]
    edges = boundaries & (labels != 0) & (labels != _MASK_NODATA)
    for value in np.unique(labels[edges]):
        rgb[edges & (labels == value)] = _OUTLINE[(int(value) - 1) % len(_OUTLINE)]
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def footprint(mask: Path) -> dict[str, Any] | None:
    """The outline of a georeferenced raster as a GeoJSON polygon in WGS 84 (RFC 7946), or
    ``None`` for a file without a CRS or not a GeoTIFF."""
    if detect_format(mask) is not FileFormat.GEOTIFF:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(mask) as dataset:
            if dataset.crs is None:
                return None
            left, bottom, right, top = dataset.bounds
            ring = [(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]
            shape = {"type": "Polygon", "coordinates": [ring]}
            return dict(transform_geom(dataset.crs, "EPSG:4326", shape))
