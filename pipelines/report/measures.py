"""What a written mask holds: class areas (rasters, m²), volumes (volumes, ml) or object counts.

Masks are read by their format (NIfTI, GeoTIFF, PNG), as written by :mod:`pipelines.write`;
no kind is asked, since a written mask says its own grid.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

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


#: Rows of a raster mask read at a time (a mask of a 32768² scene is never held whole).
STRIP_ROWS = 1024


def _raster_unit(dataset: rasterio.DatasetReader) -> tuple[float, str]:
    if dataset.crs is None:
        return 1.0, "px"
    metres = dataset.crs.linear_units in ("metre", "meter")
    return pixel_area(dataset.transform), "m²" if metres else "CRS units²"


def _raster_strips(path: Path) -> Iterator[np.ndarray]:
    """The valid (not nodata) label values of a raster mask, strip by strip."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            for row in range(0, dataset.height, STRIP_ROWS):
                height = min(STRIP_ROWS, dataset.height - row)
                band = dataset.read(1, window=Window(0, row, dataset.width, height), masked=True)
                yield np.asarray(band.data)[~np.ma.getmaskarray(band)]


def read_mask(path: Path) -> tuple[Iterable[np.ndarray], float, str]:
    """A mask's label values where it has data, in blocks; the size of one pixel/voxel and its
    unit. The blocks are read as they are iterated.

    Raises:
        CorruptFileError: the mask cannot be read.
    """
    try:
        file_format = detect_format(path)
        if file_format is FileFormat.NIFTI:
            image = open_volume(path)
            zooms = image.header.get_zooms()[:3]  # type: ignore[no-untyped-call]
            return [np.asanyarray(image.dataobj)], float(np.prod(zooms)) / 1000.0, "ml"
        if file_format is FileFormat.GEOTIFF:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as dataset:
                    area, unit = _raster_unit(dataset)
            return _raster_strips(path), area, unit
        with Image.open(path) as picture:
            return [np.asarray(picture)], 1.0, "px"
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
    blocks, unit_size, unit = read_mask(path)
    counts = np.zeros(0, dtype=np.int64)
    ids: set[int] = set()
    try:
        for block in blocks:
            values = np.asarray(block).ravel().astype(np.int64)
            if instance:
                ids.update(int(value) for value in np.unique(values))
                continue
            found = np.bincount(values)
            counts = np.pad(counts, (0, max(0, len(found) - len(counts))))
            counts[: len(found)] += found
    except (OSError, ValueError) as error:
        raise CorruptFileError(
            f"mask cannot be read for the report ({error})", path=path
        ) from error
    if instance:
        return MaskMeasures({}, unit, len(ids - set(background)))
    sizes = {
        value: round(float(count) * unit_size, 6)
        for value, count in enumerate(counts)
        if count and value not in background
    }
    return MaskMeasures(sizes, unit)
