"""GeoTIFF / COG rasters via rasterio: header geometry, and pixel data by windows."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from data_contracts import CorruptFileError, GeoreferenceError, RasterGeometry
from pipelines.io.formats import detect_format

_WINDOW_BYTES = 32 * 1024**2
GDAL_CACHE_MB = 64


def bounded_gdal_env() -> rasterio.Env:
    """A GDAL environment whose block cache is small (GDAL's default is 5 % of RAM), so that
    streaming a large scene does not grow the process by the size of the cache.

    rasterio hands an integer ``GDAL_CACHEMAX`` to ``GDALSetCacheMax64``, which counts bytes
    (GDAL's "under 100000 means megabytes" rule applies only to the config string).
    """
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20)


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open a raster for reading (header only; pixels are read by window later).

    Raises:
        EmptyFileError, NotAnImageError: the file is empty or not a TIFF.
        CorruptFileError: GDAL cannot decode the header (truncated, damaged IFD).
    """
    path = Path(path)
    detect_format(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as error:
        raise CorruptFileError(f"cannot be opened by GDAL: {error}", path=path) from error


def is_georeferenced(dataset: rasterio.DatasetReader) -> bool:
    """True when the raster has a CRS and a transform other than the identity."""
    return dataset.crs is not None and not dataset.transform.is_identity


def raster_geometry(
    dataset: rasterio.DatasetReader, path: str | Path, *, allow_ungeoreferenced: bool = False
) -> RasterGeometry:
    """Geometry of an opened raster, validated.

    Raises:
        GeoreferenceError: no CRS or no transform (unless ``allow_ungeoreferenced``), or a
            rotated/sheared transform, which segflow does not resample.
    """
    crs = dataset.crs
    transform = dataset.transform
    if not allow_ungeoreferenced:
        if crs is None:
            raise GeoreferenceError("has no CRS", path=path)
        if transform.is_identity:
            raise GeoreferenceError("has no geotransform (identity pixel grid)", path=path)
    if transform.b != 0 or transform.d != 0:
        raise GeoreferenceError(
            f"has a rotated or sheared transform (b={transform.b}, d={transform.d})",
            path=path,
            hint="warp it to a north-up grid first (gdalwarp)",
        )
    block_rows, block_cols = dataset.block_shapes[0]
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    nodata = dataset.nodata
    return RasterGeometry(
        width=dataset.width,
        height=dataset.height,
        count=dataset.count,
        dtype=str(dataset.dtypes[0]),
        crs_wkt=crs.to_wkt() if crs is not None else None,
        epsg=crs.to_epsg() if crs is not None else None,
        transform=(a, b, c, d, e, f),
        nodata=float(nodata) if nodata is not None else None,
        block_size=(int(block_rows), int(block_cols)),
        resolution=(abs(float(transform.a)), abs(float(transform.e))),
    )


def read_raster_geometry(
    path: str | Path, *, allow_ungeoreferenced: bool = False
) -> RasterGeometry:
    """Open ``path`` and return its validated geometry."""
    with open_raster(path) as dataset:
        return raster_geometry(dataset, path, allow_ungeoreferenced=allow_ungeoreferenced)


def row_windows(
    dataset: rasterio.DatasetReader, *, max_bytes: int = _WINDOW_BYTES
) -> Iterator[Window]:
    """Full-width windows of whole block rows, each at most about ``max_bytes`` per band."""
    block_rows = dataset.block_shapes[0][0]
    itemsize = max(np.dtype(dataset.dtypes[0]).itemsize, 1)
    rows = max(1, max_bytes // max(dataset.width * itemsize, 1))
    rows = max(block_rows, rows - rows % block_rows)
    for top in range(0, dataset.height, rows):
        yield Window(0, top, dataset.width, min(rows, dataset.height - top))


def iter_band_windows(
    dataset: rasterio.DatasetReader,
    path: str | Path,
    band: int = 1,
    *,
    max_bytes: int = _WINDOW_BYTES,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield ``(values, valid)`` for one band window by window; ``valid`` is False at nodata.

    Raises:
        CorruptFileError: a window cannot be decoded (truncated or damaged file).
    """
    nodata = dataset.nodata
    for window in row_windows(dataset, max_bytes=max_bytes):
        try:
            values = dataset.read(band, window=window)
        except RasterioIOError as error:
            raise CorruptFileError(
                f"pixel data cannot be read at {window}: {error}", path=path
            ) from error
        if nodata is None:
            yield values, None
        elif np.isnan(nodata):
            yield values, ~np.isnan(values)
        else:
            yield values, values != nodata
