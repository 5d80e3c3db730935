"""The pixels of one strip of windows at a time, for :mod:`pipelines.infer.stream`.

:class:`StripReader` holds the source rows that the current strip of windows covers (every band,
the full width, in the source dtype). Moving to the next strip keeps the rows both strips share
and reads only the new ones, in one full-width read that GDAL can decode on several threads;
with a block cache that holds a row of tiles, each tile is decoded once (reading a few windows at
a time without that cache decoded every tile three to four times). :func:`batch_patches` cuts a
batch of windows out of those rows, marks masked pixels NaN, normalises them in one call and
returns ``(B, C, h, w)`` float32 patches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Self, cast

import numpy as np
import rasterio
import torch
from monai.data.utils import dense_patch_slices
from numpy.typing import NDArray
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from data_contracts import CorruptFileError, UsageError

__all__ = [
    "Layout",
    "Normalizer",
    "StripReader",
    "batch_patches",
    "iter_batches",
    "threaded_handle",
    "window_starts",
]

Normalizer = Callable[[torch.Tensor], torch.Tensor]
"""``(C, h, w)`` float32 pixels, NaN where nodata/masked → normalised ``(C, h, w)``."""

_VALUE_MASKS = {MaskFlags.nodata, MaskFlags.all_valid}  # masks computed from the pixel values
_Pixels = tuple[NDArray[np.generic], NDArray[np.bool_]]
_VALID_ROWS = 32  # validity of finished rows is computed this many rows at a time


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window offsets along one axis, as MONAI's ``sliding_window_inference`` places them.

    Offsets are in padded coordinates: an axis shorter than ``roi`` is first padded to ``roi``.
    The stride is ``int(roi * (1 - overlap))`` (at least 1) and the last window ends at the edge.
    """
    padded = max(size, roi)
    stride = roi if roi == padded else max(int(roi * (1 - overlap)), 1)
    return [int(window[0].start) for window in dense_patch_slices((padded,), (roi,), (stride,))]


@dataclass(frozen=True)
class Layout:
    """Window grid of one scene; ``pad_*`` is the zero padding MONAI adds before each axis."""

    height: int
    width: int
    roi: tuple[int, int]
    pad_top: int
    pad_left: int
    rows: list[int]
    cols: list[int]

    @classmethod
    def of(cls, height: int, width: int, roi: tuple[int, int], overlap: float) -> Layout:
        """The grid MONAI lays over a ``height`` × ``width`` scene."""
        pad_top, pad_left = max(roi[0] - height, 0) // 2, max(roi[1] - width, 0) // 2
        rows = window_starts(height, roi[0], overlap)
        cols = window_starts(width, roi[1], overlap)
        return cls(height, width, roi, pad_top, pad_left, rows, cols)

    @property
    def padded_width(self) -> int:
        return max(self.width, self.roi[1])

    def source_rows(self, strip: int) -> tuple[int, int]:
        """First and end source row that strip ``strip`` covers."""
        base = self.rows[strip] - self.pad_top
        return max(base, 0), min(base + self.roi[0], self.height)

    def overlaps(self, strip: int) -> tuple[int, ...]:
        """How far above strip ``strip`` the earlier strips that overlap it start."""
        top, found = self.rows[strip], []
        for earlier in range(strip - 1, -1, -1):
            if self.rows[earlier] + self.roi[0] <= top:
                break
            found.append(top - self.rows[earlier])
        return tuple(found)

    def band_end(self, strip: int) -> int:
        """Padded row after the last row that strip ``strip`` is the last to touch."""
        if strip + 1 < len(self.rows):
            return self.rows[strip + 1]
        return max(self.height, self.roi[0])


def threaded_handle(
    dataset: rasterio.DatasetReader, threads: int
) -> contextlib.AbstractContextManager[rasterio.DatasetReader]:
    """A second handle on ``dataset``'s file whose reads decode tiles on ``threads`` threads.

    GDAL reads ``GDAL_NUM_THREADS`` when a file is opened, so a handle opened without it decodes
    on one thread. Falls back to ``dataset`` itself (one thread) when it is not a plain GTiff
    opened for reading or the new handle does not show the same raster.
    """
    if threads < 2 or dataset.mode != "r" or dataset.driver != "GTiff":
        return contextlib.nullcontext(dataset)
    try:
        with rasterio.Env(GDAL_NUM_THREADS=str(threads)):
            handle = rasterio.open(dataset.name, **dataset.options)
    except RasterioError:
        return contextlib.nullcontext(dataset)
    same = ("shape", "count", "dtypes", "transform", "nodatavals", "mask_flag_enums")
    if any(getattr(handle, key) != getattr(dataset, key) for key in same):
        handle.close()
        return contextlib.nullcontext(dataset)
    return cast("contextlib.AbstractContextManager[rasterio.DatasetReader]", handle)


class StripReader:
    """The source rows of the current strip: ``pixels`` ``(C, roi rows, width)``, source dtype.

    Buffer row ``i`` is padded row ``top + i`` of the strip; ``rows`` are those that hold source
    pixels (all of them, unless the scene is shorter than the ROI). With ``read_ahead`` > 0 the
    new rows of the next strips are read on a background thread while the current one is used.

    Nodata masks are computed from the values (GDAL's nodata mask band costs about three times
    the read itself); other masks (internal mask band, alpha) are read and kept beside the rows.
    """

    def __init__(
        self, dataset: rasterio.DatasetReader, bands: list[int], layout: Layout, read_ahead: int
    ) -> None:
        self._dataset, self._bands, self.layout = dataset, bands, layout
        flags = [set(dataset.mask_flag_enums[band - 1]) for band in bands]
        nodata = [dataset.nodatavals[band - 1] for band in bands]
        self.nodata = [(i, nodata[i]) for i, found in enumerate(flags) if MaskFlags.nodata in found]
        self.read_masks = [i for i, found in enumerate(flags) if not _VALUE_MASKS & found]
        dtype = np.result_type(*(dataset.dtypes[band - 1] for band in bands))
        shape = (layout.roi[0], layout.width)
        self.pixels = np.zeros((len(bands), *shape), dtype=dtype)
        self.masked = np.zeros((len(self.read_masks), *shape), dtype=bool)
        self.rows = slice(0, 0)
        self._base, self._held = 0, (0, 0)
        self._read_ahead = read_ahead
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future[_Pixels]] = {}

    def __enter__(self) -> Self:
        if self._read_ahead:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segflow-read-ahead")
            for strip in range(min(self._read_ahead, len(self.layout.rows))):
                self._schedule(strip)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _new_rows(self, strip: int) -> tuple[int, int]:
        """The source rows strip ``strip`` adds to those of the strip before it."""
        first, last = self.layout.source_rows(strip)
        if strip > 0:
            first = max(first, self.layout.source_rows(strip - 1)[1])
        return first, max(first, last)

    def _schedule(self, strip: int) -> None:
        if self._pool is not None and strip < len(self.layout.rows):
            first, last = self._new_rows(strip)
            self._pending[strip] = self._pool.submit(self._fetch, first, last)

    def _fetch(self, first: int, last: int) -> _Pixels:
        pixels = np.empty((len(self._bands), last - first, self.layout.width), self.pixels.dtype)
        masked = np.empty((len(self.read_masks), *pixels.shape[1:]), dtype=bool)
        self._read(first, last, pixels, masked)
        return pixels, masked

    def _read(
        self, first: int, last: int, pixels: NDArray[np.generic], masked: NDArray[np.bool_]
    ) -> None:
        if last <= first:
            return
        window = Window(0, first, self.layout.width, last - first)
        try:
            self._dataset.read(self._bands, window=window, out=pixels)
            for slot, index in enumerate(self.read_masks):
                masked[slot] = self._dataset.read_masks(self._bands[index], window=window) == 0
        except RasterioIOError as error:
            raise CorruptFileError(
                f"pixel data cannot be read at {window}: {str(error).rstrip('.')}",
                path=self._dataset.name,
            ) from error

    def load(self, strip: int) -> None:
        """Make the buffer hold strip ``strip``: keep the shared rows, add the new ones."""
        layout = self.layout
        base = layout.rows[strip] - layout.pad_top
        first, last = layout.source_rows(strip)
        kept = (max(first, self._held[0]), min(last, self._held[1]))
        for array in (self.pixels, self.masked):
            for channel in array:  # one channel at a time keeps NumPy's overlap copy small
                if kept[1] > kept[0]:
                    channel[kept[0] - base : kept[1] - base] = channel[
                        kept[0] - self._base : kept[1] - self._base
                    ]
        new_first, new_last = self._new_rows(strip)
        target = slice(new_first - base, new_last - base)
        if strip in self._pending:
            pixels, masked = self._pending.pop(strip).result()
            self._schedule(strip + self._read_ahead)
            self.pixels[:, target], self.masked[:, target] = pixels, masked
        else:
            self._read(new_first, new_last, self.pixels[:, target], self.masked[:, target])
        self._base, self._held = base, (first, last)
        self.rows = slice(first - base, last - base)

    def masked_pixels(self, cols: slice) -> NDArray[np.bool_] | None:
        """``(C, rows, cols)``: True where a band is nodata/masked; None when nothing is."""
        if not self.nodata and not self.read_masks:
            return None
        masked = self._masked(self.rows, cols)
        return masked if masked.any() else None

    def valid(self, rows: slice, *, any_band: bool = False) -> NDArray[np.bool_]:
        """``(rows, width)``: True where no band is nodata/masked (with ``any_band``: where
        some band is not), for buffer rows ``rows``."""
        return self._validity(rows, any_band=any_band)[0]

    def valid_any_band(self, rows: slice) -> tuple[NDArray[np.bool_], int]:
        """:meth:`valid` with ``any_band``, and how many of its valid pixels have some band
        nodata/masked, in one pass over the masks."""
        return self._validity(rows, any_band=True)

    def _validity(self, rows: slice, *, any_band: bool) -> tuple[NDArray[np.bool_], int]:
        start, stop, _ = rows.indices(self.pixels.shape[1])
        valid = np.ones((stop - start, self.layout.width), dtype=bool)
        partial = 0
        if self.nodata or self.read_masks:
            for first in range(start, stop, _VALID_ROWS):  # small temporaries
                chunk = slice(first, min(first + _VALID_ROWS, stop))
                masked = self._masked(chunk, slice(None))
                some = np.logical_or.reduce(masked, axis=0)
                if any_band:
                    every = np.logical_and.reduce(masked, axis=0)
                    partial += int(np.count_nonzero(some)) - int(np.count_nonzero(every))
                    some = every
                valid[first - start : chunk.stop - start] = ~some
        return valid, partial

    def _masked(self, rows: slice, cols: slice) -> NDArray[np.bool_]:
        pixels = self.pixels[:, rows, cols]
        masked = np.zeros(pixels.shape, dtype=bool)
        for index, value in self.nodata:
            band = pixels[index]
            if np.isnan(value):
                np.isnan(band, out=masked[index])
            else:
                np.equal(band, band.dtype.type(value), out=masked[index])
        for slot, index in enumerate(self.read_masks):
            masked[index] = self.masked[slot, rows, cols]
        return masked


def batch_patches(strip: StripReader, cols: list[int], normalize: Normalizer) -> torch.Tensor:
    """Normalised ``(B, C, h, w)`` windows at padded columns ``cols`` of the current strip.

    The source pixels under the windows are normalised in one call (fewer pixels than the
    windows, which overlap) and the windows cut out of the result, zero-padded like MONAI.

    Raises:
        UsageError: ``normalize`` changed the shape.
    """
    layout, (height, width) = strip.layout, strip.layout.roi
    col0 = max(cols[0] - layout.pad_left, 0)
    col1 = min(cols[-1] + width - layout.pad_left, layout.width)
    values = strip.pixels[:, strip.rows, col0:col1].astype(np.float32)
    masked = strip.masked_pixels(slice(col0, col1))
    if masked is not None:
        np.copyto(values, np.float32(np.nan), where=masked)
    image = np.asarray(normalize(torch.from_numpy(values)).cpu(), dtype=np.float32)
    if image.shape != values.shape:
        raise UsageError(f"normalize returned shape {image.shape} for input {values.shape}")
    channels, left, span = len(values), cols[0], cols[-1] + width - cols[0]
    padded = image
    if image.shape[1:] != (height, span):
        start = col0 + layout.pad_left - left
        padded = np.zeros((channels, height, span), dtype=np.float32)
        padded[:, strip.rows, start : start + col1 - col0] = image
    patches = np.empty((len(cols), channels, height, width), dtype=np.float32)
    for slot, col in enumerate(cols):
        patches[slot] = padded[:, :, col - left : col - left + width]
    return torch.from_numpy(patches)


def iter_batches(cols: list[int], batch_size: int) -> Iterator[list[int]]:
    """The window columns of one strip in batches of ``batch_size``."""
    for first in range(0, len(cols), batch_size):
        yield cols[first : first + batch_size]
