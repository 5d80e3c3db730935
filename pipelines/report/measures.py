"""What a written mask holds: class areas (rasters, m²), volumes (volumes, ml) or object counts.

Masks are read by their format (NIfTI, GeoTIFF, PNG), as written by :mod:`pipelines.write`;
no kind is asked, since a written mask says its own grid.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from data_contracts import CorruptFileError
from pipelines.io.formats import FileFormat, detect_format
from pipelines.io.nifti import open_volume
from pipelines.postprocess.labels import pixel_area

__all__ = ["MaskMeasures", "measure_mask", "read_mask"]


@dataclass(frozen=True)
class MaskMeasures:
    """Sizes of a mask's classes, or its object count.

    Attributes:
        sizes: class value → size in ``unit`` (background left out); empty for instance masks.
        unit: ``ml``, ``m²`` (``CRS units²`` for a CRS not in metres) or ``px``.
        objects: number of objects of an instance mask, else ``None``.
    """

    sizes: dict[int, float]
    unit: str
    objects: int | None = None


def read_mask(path: Path) -> tuple[np.ndarray, np.ndarray | None, float, str]:
    """A mask's labels, where it has data (``None``: everywhere), the size of one
    pixel/voxel and its unit.

    Raises:
        CorruptFileError: the mask cannot be read.
    """
    try:
        file_format = detect_format(path)
        if file_format is FileFormat.NIFTI:
            image = open_volume(path)
            zooms = image.header.get_zooms()[:3]  # type: ignore[no-untyped-call]
            return np.asanyarray(image.dataobj), None, float(np.prod(zooms)) / 1000.0, "ml"
        if file_format is FileFormat.GEOTIFF:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as dataset:
                    band = dataset.read(1, masked=True)
                    georeferenced = dataset.crs is not None
                    metres = georeferenced and dataset.crs.linear_units in ("metre", "meter")
                    area = pixel_area(dataset.transform) if georeferenced else 1.0
            unit = "m²" if metres else ("CRS units²" if georeferenced else "px")
            valid = ~np.ma.getmaskarray(band)
            return np.asarray(band.data), valid, area, unit
        with Image.open(path) as picture:
            return np.asarray(picture), None, 1.0, "px"
    except (OSError, ValueError) as error:
        raise CorruptFileError(
            f"mask cannot be read for the report ({error})", path=path
        ) from error


def measure_mask(
    path: Path, *, instance: bool = False, background: Sequence[int] = (0,)
) -> MaskMeasures:
    """Class sizes (or the object count, for ``instance`` masks) of a written mask.

    Raises:
        CorruptFileError: the mask cannot be read.
    """
    labels, valid, unit_size, unit = read_mask(path)
    values = labels if valid is None else labels[valid]
    if instance:
        ids = np.unique(values)
        return MaskMeasures({}, unit, int(np.count_nonzero(~np.isin(ids, background))))
    counts = np.bincount(values.ravel().astype(np.int64))
    sizes = {
        value: round(float(count) * unit_size, 6)
        for value, count in enumerate(counts)
        if count and value not in background
    }
    return MaskMeasures(sizes, unit)
