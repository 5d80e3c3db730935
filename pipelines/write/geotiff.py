"""Georeferenced masks and probability maps: a tiled GeoTIFF written by windows, then a COG.

The grid (CRS, transform, size) always comes from the source raster's profile and is checked
again on the finished file. Blocks go into a temporary tiled GTiff beside the destination (opening
the COG driver for writing would buffer the whole raster in memory); on a clean exit it gets
nearest-neighbour overviews (the COG default, cubic, invents class values), is copied to a Cloud
Optimized GeoTIFF and renamed into place. On an error nothing is left.

When a COG is published the work file is left uncompressed: the COG step compresses every block
anyway, so compressing the work file too would only double the work (and the COG driver would
decompress it again). Its overviews are built on that uncompressed file, where nearest-neighbour
resampling is a cheap strided read, and the COG driver copies them instead of computing its own
through compressed temporary files. The price is disk space: the work file is as large as the
raster's raw pixels (1 GiB for a 32768² uint8 mask) until the COG is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
import rasterio
import rasterio.shutil
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from data_contracts import OutputError, UsageError
from pipelines.files import atomic_output
from pipelines.io.raster import bounded_gdal_env

__all__ = [
    "PROBABILITY_TAGS",
    "GeoTiffMaskWriter",
    "default_colormap",
    "mask_dtype",
    "overview_factors",
    "quantize_probabilities",
]

Colormap = Mapping[int, tuple[int, int, int, int]]

BLOCK_SIZE = 512
WORK_DEFLATE_LEVEL = 1
COG_DEFLATE_LEVEL = 1
"""Deflate level of the COG, and of the GTiff when no COG is wanted. Level 1 compresses a noisy
4096² mask 3-6x faster than GDAL's default 6, for files about 20 % larger; smooth masks compress
fast and small at any level."""
PROBABILITY_TAGS: Mapping[str, str] = {"scale": "1/255", "offset": "0"}
"""Tags for a probability raster written with :func:`quantize_probabilities`."""

_DTYPES = ("uint8", "uint16")
_PUBLISH_CACHE = 64 * 2**20  # bytes: an integer GDAL_CACHEMAX is bytes for rasterio
_NODATA_COLOUR = (0, 0, 0, 0)
# Tableau 20: distinct, colour-blind-aware colours; classes past 20 reuse them in order.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip


def mask_dtype(n_classes: int) -> Literal["uint8", "uint16"]:
    """Smallest dtype for class values ``0..n_classes-1`` that keeps 255 (uint8) free for nodata.

    Raises:
        UsageError: fewer than 1 or more than 65,535 classes (65,535 is the uint16 nodata).
    """
    if not 1 <= n_classes <= 65_535:
        raise UsageError(f"n_classes must be in 1..65535, got {n_classes}")
    return "uint8" if n_classes <= 255 else "uint16"


def default_colormap(n_classes: int) -> dict[int, tuple[int, int, int, int]]:
    """An opaque RGBA colour for each class value ``0..n_classes-1`` from a fixed palette."""
    return {value: (*_PALETTE[value % len(_PALETTE)], 255) for value in range(n_classes)}


def quantize_probabilities(probabilities: NDArray[np.floating[Any]]) -> NDArray[np.uint8]:
    """Probabilities in [0, 1] → uint8 ``round(p * 255)``; tag the raster with PROBABILITY_TAGS."""
    scaled = np.clip(probabilities, 0.0, 1.0) * 255.0
    rounded: NDArray[np.floating[Any]] = np.rint(scaled)
    return rounded.astype(np.uint8)


class GeoTiffMaskWriter:
    """Write a raster on the source's grid window by window; publish it atomically on exit.

    Example::

        with GeoTiffMaskWriter(out, source.profile, class_names=names) as writer:
            writer.write(labels, window)

    Args:
        destination: final path of the GeoTIFF/COG.
        profile: the source dataset's profile; ``crs``, ``transform``, ``width`` and ``height``
            are copied, everything else is set here.
        class_names: one name per class value ``0..K-1``; stored as tags.
        nodata: declared nodata value (None: none). For a single-band mask it must not be a
            class value (use 65535 with uint16 masks).
        dtype: ``uint8`` or ``uint16`` (see :func:`mask_dtype`).
        count: bands; ``K`` for a probability raster.
        band_descriptions: one per band; default ``("class",)`` for a mask and the class names
            when ``count`` equals the number of classes.
        colormap: RGBA per value for a single-band uint8 mask (default :func:`default_colormap`);
            nodata is added as transparent black.
        tags: extra dataset tags (e.g. :data:`PROBABILITY_TAGS`).
        cog: publish a Cloud Optimized GeoTIFF (otherwise the tiled GTiff itself).

    Raises:
        UsageError: inconsistent arguments (a class value that does not fit, nodata equal to a
            class value, a profile without a grid).
        OutputError: the folder cannot be written, or the written file does not match the source.
    """

    def __init__(
        self,
        destination: Path,
        profile: Mapping[str, Any],
        *,
        class_names: Sequence[str],
        nodata: int | None = 255,
        dtype: str = "uint8",
        count: int = 1,
        band_descriptions: Sequence[str] | None = None,
        colormap: Colormap | None = None,
        tags: Mapping[str, str] | None = None,
        cog: bool = True,
    ) -> None:
        self.destination = Path(destination)
        self.class_names = tuple(class_names)
        self.nodata, self.dtype, self.count, self.cog = nodata, dtype, count, cog
        self._grid = _source_grid(profile)
        self._check_arguments()
        self.band_descriptions = self._descriptions(band_descriptions)
        self.colormap = self._colormap(colormap)
        self.tags = {**_class_tags(self.class_names), **(tags or {})}
        self._work: Path | None = None
        self._dataset: Any = None
        self._stack = contextlib.ExitStack()

    def _check_arguments(self) -> None:
        if not self.class_names:
            raise UsageError("class_names is empty: a mask needs at least one class")
        if self.dtype not in _DTYPES:
            raise UsageError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.count < 1:
            raise UsageError(f"count must be at least 1, got {self.count}")
        top = int(np.iinfo(self.dtype).max)
        if self.nodata is not None and not 0 <= self.nodata <= top:
            raise UsageError(f"nodata {self.nodata} does not fit {self.dtype}")
        if self.count == 1 and len(self.class_names) - 1 > top:
            raise UsageError(
                f"{len(self.class_names)} classes do not fit {self.dtype}",
                hint="use mask_dtype(n_classes) for the dtype",
            )
        if self.count == 1 and self.nodata is not None and self.nodata < len(self.class_names):
            raise UsageError(
                f"nodata {self.nodata} is also a class value (0..{len(self.class_names) - 1})",
                hint="use 255 for uint8 masks and 65535 for uint16 masks",
            )

    def _descriptions(self, given: Sequence[str] | None) -> tuple[str, ...] | None:
        if given is not None:
            if len(given) != self.count:
                raise UsageError(f"{len(given)} band descriptions for {self.count} bands")
            return tuple(given)
        if self.count == 1:
            return ("class",)
        return self.class_names if self.count == len(self.class_names) else None

    def _colormap(self, given: Colormap | None) -> dict[int, tuple[int, int, int, int]] | None:
        if self.count != 1 or self.dtype != "uint8":
            if given is not None:
                raise UsageError("a colour map needs a single-band uint8 mask")
            return None
        colours = dict(given) if given is not None else default_colormap(len(self.class_names))
        if self.nodata is not None:
            colours.setdefault(self.nodata, _NODATA_COLOUR)
        return colours

    def __enter__(self) -> Self:
        with contextlib.ExitStack() as stack:
            self._work = _work_path(self.destination)
            stack.callback(self._work.unlink, missing_ok=True)
            stack.enter_context(bounded_gdal_env())
            self._dataset = stack.enter_context(self._open(self._work))
            self._stack = stack.pop_all()
        return self

    def _open(self, path: Path) -> Any:
        try:
            compression = {} if self.cog else {"compress": "deflate", "zlevel": WORK_DEFLATE_LEVEL}
            dataset = rasterio.open(
                path, "w", driver="GTiff", **self._grid, count=self.count, dtype=self.dtype,
                nodata=self.nodata, tiled=True, blockxsize=BLOCK_SIZE, blockysize=BLOCK_SIZE,
                num_threads="ALL_CPUS", BIGTIFF="IF_SAFER", **compression,
            )  # fmt: skip
            dataset.update_tags(**self.tags)
            if self.band_descriptions is not None:
                dataset.descriptions = self.band_descriptions
            if self.colormap is not None:
                dataset.write_colormap(1, self.colormap)
        except (OSError, RasterioError) as error:
            raise OutputError(f"cannot be created: {error}", path=self.destination) from error
        return dataset

    def update_tags(self, **tags: str) -> None:
        """Add or replace dataset tags before the file is published (known only at the end,
        such as the confidence of the whole scene).

        Raises:
            UsageError: outside the ``with`` block.
        """
        if self._dataset is None:
            raise UsageError("GeoTiffMaskWriter.update_tags() called outside its `with` block")
        self.tags.update(tags)
        self._dataset.update_tags(**tags)

    def write(self, block: NDArray[Any], window: Window) -> None:
        """Write ``block`` (``(h, w)``, or ``(count, h, w)``) at ``window`` of the source grid.

        Raises:
            UsageError: outside the ``with`` block, a shape that does not match the window, a
                window outside the raster, or values that do not fit the dtype.
        """
        if self._dataset is None:
            raise UsageError("GeoTiffMaskWriter.write() called outside its `with` block")
        data = np.asarray(block)
        data = data[None] if data.ndim == 2 else data
        expected = (self.count, int(window.height), int(window.width))
        if data.shape != expected:
            raise UsageError(f"block has shape {data.shape}, the window needs {expected}")
        if (
            window.col_off < 0
            or window.row_off < 0
            or window.col_off + window.width > self._grid["width"]
            or window.row_off + window.height > self._grid["height"]
        ):
            raise UsageError(
                f"{window} lies outside the {self._grid['width']}×{self._grid['height']} raster"
            )
        self._dataset.write(_cast(data, self.dtype), window=window)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        dataset, self._dataset = self._dataset, None
        with self._stack:  # leaves the GDAL env and removes the work file, whatever happens
            dataset.close()
            if exc_type is None and self._work is not None:
                self._publish(self._work)

    def _publish(self, work: Path) -> None:
        with atomic_output(self.destination) as temp, rasterio.Env(GDAL_CACHEMAX=_PUBLISH_CACHE):
            if self.cog:
                grid = self._grid
                _build_overviews(work, overview_factors(grid["width"], grid["height"]))
                rasterio.shutil.copy(
                    work, temp, driver="COG", BLOCKSIZE=BLOCK_SIZE, COMPRESS="DEFLATE",
                    LEVEL=COG_DEFLATE_LEVEL, OVERVIEW_RESAMPLING="NEAREST",
                    NUM_THREADS="ALL_CPUS", BIGTIFF="IF_SAFER",
                )  # fmt: skip
            else:
                os.replace(work, temp)
            self._verify(temp)

    def _verify(self, path: Path) -> None:
        with rasterio.open(path) as written:
            found = {"crs": written.crs, "transform": written.transform}
            found |= {"width": written.width, "height": written.height}
            found |= {"count": written.count, "dtype": written.dtypes[0]}
        wanted = {**self._grid, "count": self.count, "dtype": self.dtype}
        differ = [key for key in wanted if found[key] != wanted[key]]
        if differ:
            detail = "; ".join(f"{key} {found[key]} instead of {wanted[key]}" for key in differ)
            raise OutputError(
                f"the written raster does not match the source grid: {detail}",
                path=self.destination,
                hint="report this as a bug: the writer must copy the source geometry",
            )


def overview_factors(width: int, height: int) -> list[int]:
    """Decimation factors 2, 4, … until a level fits one block, as the COG driver chooses them."""
    factors: list[int] = []
    while max(width, height) > BLOCK_SIZE:
        width, height = width // 2, height // 2
        factors.append(2 ** (len(factors) + 1))
    return factors


def _build_overviews(path: Path, factors: list[int]) -> None:
    """Nearest-neighbour overviews inside the (uncompressed) work file, for the COG to copy."""
    if not factors:
        return
    with rasterio.open(path, "r+") as dataset:
        dataset.build_overviews(factors, Resampling.nearest)


def _source_grid(profile: Mapping[str, Any]) -> dict[str, Any]:
    missing = [key for key in ("transform", "width", "height") if profile.get(key) is None]
    if missing:
        raise UsageError(f"the source profile lacks {missing}: pass the source dataset's profile")
    crs = profile.get("crs")
    return {
        "crs": CRS.from_user_input(crs) if crs is not None else None,
        "transform": profile["transform"],
        "width": int(profile["width"]),
        "height": int(profile["height"]),
    }


def _class_tags(class_names: Sequence[str]) -> dict[str, str]:
    tags = {"class_names": json.dumps(list(class_names))}
    tags |= {f"class_{value}": name for value, name in enumerate(class_names)}
    return tags


def _work_path(destination: Path) -> Path:
    """An empty temporary ``.tif`` beside ``destination`` (same file system as the result)."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=".work.tif", dir=destination.parent
        )
        os.close(handle)
    except OSError as error:
        raise OutputError(
            f"cannot create a file here ({error.strerror})", path=destination
        ) from error
    return Path(name)


def _cast(data: NDArray[Any], dtype: str) -> NDArray[Any]:
    """``data`` as ``dtype``; integers are range-checked, floats must be quantised first."""
    if data.dtype == dtype:
        return data
    if data.dtype.kind not in "biu":
        raise UsageError(
            f"block has dtype {data.dtype}; write integer class values (argmax) or "
            "quantize_probabilities(...) output"
        )
    info = np.iinfo(dtype)
    if data.size and (int(data.min()) < info.min or int(data.max()) > info.max):
        raise UsageError(f"block values {data.min()}..{data.max()} do not fit {dtype}")
    return data.astype(dtype)
