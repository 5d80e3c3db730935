"""Reading label maps for scoring, with their spacing and nodata.

NIfTI through nibabel, with the voxel spacing from the header zooms (mm unless the header says
otherwise); GeoTIFF through rasterio, with the pixel size from the transform (CRS units); PNG
and TIFFs without georeference as plain images (spacing 1, pixels). A raster's declared nodata,
in TRUTH or PRED, marks pixels that count in no metric. Note that a label raster declaring
``nodata=0`` thereby ignores its whole background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_contracts import InputError, NonFiniteLabelError, NonIntegerLabelError
from pipelines.io.formats import FileFormat, detect_format
from pipelines.io.image2d import read_image
from pipelines.io.nifti import load_volume
from pipelines.io.raster import is_georeferenced, open_raster

__all__ = ["LabelMap", "read_label_map"]


@dataclass(frozen=True)
class LabelMap:
    """A label map read from disk.

    Attributes:
        values: int64 ``(H, W)`` or ``(X, Y, Z)``.
        spacing: physical size of a pixel/voxel per axis, or ``None`` for plain images.
        units: unit of ``spacing`` (``mm``, ``metre``, …; ``pixels`` without spacing).
        ignored: True at declared nodata, or ``None`` when there is none.
    """

    values: np.ndarray
    spacing: tuple[float, ...] | None
    units: str
    ignored: np.ndarray | None


def read_label_map(path: str | Path) -> LabelMap:
    """Read a NIfTI, GeoTIFF, TIFF or PNG label map with its spacing and nodata.

    Raises:
        InputError: unreadable, not a label map (non-integer or several channels), or of a
            format segflow does not read (subclasses name which).
    """
    path = Path(path)
    file_format = detect_format(path)
    if file_format is FileFormat.NIFTI:
        return _read_nifti(path)
    if file_format is FileFormat.VECTOR:
        raise InputError("is a vector file, not a label map", path=path)
    values, nodata, spacing, units = None, None, None, "pixels"
    if file_format is FileFormat.GEOTIFF:
        values, nodata, spacing, units = _read_raster(path)
    if values is None:
        values = _single_band(read_image(path), path)
    ignored = _nodata_mask(values, nodata)
    return LabelMap(_integer_labels(values, ignored, path), spacing, units, ignored)


def _integer_labels(values: np.ndarray, ignored: np.ndarray | None, path: Path) -> np.ndarray:
    """Labels as int64; float maps must hold whole numbers outside nodata."""
    if values.dtype.kind in "iub":
        return values.astype(np.int64, copy=False)
    checked = values if ignored is None else np.where(ignored, 0, values)
    if not np.isfinite(checked).all():
        raise NonFiniteLabelError("holds NaN or infinite values outside nodata", path=path)
    if not np.array_equal(checked, np.round(checked)):
        raise NonIntegerLabelError("holds non-integer values: it is not a label map", path=path)
    return checked.astype(np.int64)


def _nodata_mask(values: np.ndarray, nodata: float | None) -> np.ndarray | None:
    if nodata is None:
        return None
    mask = np.isnan(values) if math.isnan(nodata) else values == nodata
    return mask if mask.any() else None


def _read_nifti(path: Path) -> LabelMap:
    data, image = load_volume(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    unit = image.header.get_xyzt_units()[0]  # type: ignore[no-untyped-call]
    spacing = tuple(float(z) for z in image.header.get_zooms()[: data.ndim])  # type: ignore[no-untyped-call]
    units = "mm" if unit == "unknown" else unit
    return LabelMap(_integer_labels(np.asarray(data), None, path), spacing, units, None)


def _read_raster(
    path: Path,
) -> tuple[np.ndarray | None, float | None, tuple[float, float] | None, str]:
    """Pixels, nodata, pixel size and units of a GeoTIFF; no pixels for a plain TIFF."""
    with open_raster(path) as dataset:
        if not is_georeferenced(dataset):
            return None, dataset.nodata, None, "pixels"
        if dataset.count != 1:
            raise InputError(f"has {dataset.count} bands; a label map has one", path=path)
        linear = dataset.crs.linear_units if dataset.crs.is_projected else "unknown"
        size = (abs(float(dataset.transform.e)), abs(float(dataset.transform.a)))
        return dataset.read(1), dataset.nodata, size, "CRS units" if linear == "unknown" else linear


def _single_band(values: np.ndarray, path: Path) -> np.ndarray:
    """A 2D image as ``(H, W)``; grey images stored as RGB(A) keep their first channel."""
    if values.ndim == 3 and (values == values[..., :1]).all():
        values = values[..., 0]
    if values.ndim != 2:
        raise InputError(
            f"has shape {values.shape}; a 2D label map has one channel",
            path=path,
            hint="save labels as a single-channel (grey or indexed) image",
        )
    return values
