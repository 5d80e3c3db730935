"""Sliding-window inference over a raster of any size, streamed one strip of windows at a time.

Windows are laid out exactly as MONAI's ``sliding_window_inference`` lays them out (same stride,
last window flush with the edge, a scene smaller than the ROI padded with zeros around its
centre) and blended with the same importance map, so the result equals MONAI's on the whole
image. Unlike MONAI, only one strip of window rows is held: an accumulator of ``roi`` rows by
the scene's width. When a strip is done, the rows that no later window touches are divided by
their weights and handed to a ``sink``; the overlap rows are carried to the next strip.
Memory is therefore O(K × roi × width), independent of the scene's height.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np
import rasterio
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from numpy.typing import NDArray
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from data_contracts import CorruptFileError, ModelError, UsageError
from pipelines.io.raster import bounded_gdal_env

__all__ = [
    "Normalizer",
    "Predictor",
    "Sink",
    "StreamConfig",
    "StreamSummary",
    "stream_raster",
    "window_starts",
]

logger = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""``(B, C, h, w)`` normalised float32 patches → ``(B, K, h, w)`` probabilities."""

Normalizer = Callable[[torch.Tensor], torch.Tensor]
"""``(C, h, w)`` float32 pixels, NaN where nodata/masked → normalised ``(C, h, w)``."""

Sink = Callable[[Window, NDArray[np.float32], NDArray[np.bool_]], None]
"""Receives ``(window, probabilities (K, rows, width), valid (rows, width))`` per finished band."""

_BLEND_MODES = ("gaussian", "constant")
_VALUE_MASKS = {MaskFlags.nodata, MaskFlags.all_valid}  # masks computed from the pixel values


@dataclass(frozen=True)
class StreamConfig:
    """How windows are laid out and blended (the arguments of MONAI's sliding window).

    Attributes:
        roi: window (patch) size in pixels, ``(rows, columns)``.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        batch_size: windows per predictor call.
        mode: ``gaussian`` (less weight near window edges) or ``constant``.
        sigma_scale: standard deviation of the gaussian, as a fraction of the window size.
        read_ahead: batches whose pixels are read on a background thread while the model runs;
            worth it when the model leaves CPU idle (GPU, or fewer torch threads than cores).
            Keep 0 when torch uses every core: a third busy thread stalls its OpenMP team.
    """

    roi: tuple[int, int]
    overlap: float = 0.25
    batch_size: int = 8
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    read_ahead: int = 0

    def __post_init__(self) -> None:
        if len(self.roi) != 2 or min(self.roi) < 1:
            raise UsageError(f"roi must be two positive sizes (rows, columns), got {self.roi}")
        if not 0 <= self.overlap < 1:
            raise UsageError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.mode not in _BLEND_MODES:
            raise UsageError(f"mode must be one of {_BLEND_MODES}, got {self.mode!r}")
        if self.sigma_scale <= 0:
            raise UsageError(f"sigma_scale must be positive, got {self.sigma_scale}")
        if self.read_ahead < 0:
            raise UsageError(f"read_ahead must be 0 or more, got {self.read_ahead}")


@dataclass(frozen=True)
class StreamSummary:
    """What one streamed inference did.

    Attributes:
        windows: windows predicted.
        batches: predictor calls.
        peak_band_bytes: bytes of the row accumulator (probabilities, weights, validity); it
            depends on the scene's width and the ROI, never on its height.
        seconds: wall time of the whole stream, sink included.
    """

    windows: int
    batches: int
    peak_band_bytes: int
    seconds: float


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window offsets along one axis, as MONAI's ``sliding_window_inference`` places them.

    Offsets are in padded coordinates: an axis shorter than ``roi`` is first padded to ``roi``.
    The stride is ``int(roi * (1 - overlap))`` (at least 1) and the last window ends at the edge.
    """
    padded = max(size, roi)
    stride = roi if roi == padded else max(int(roi * (1 - overlap)), 1)
    return [int(window[0].start) for window in dense_patch_slices((padded,), (roi,), (stride,))]


@dataclass(frozen=True)
class _Layout:
    """Window grid of one scene; ``pad_*`` is the zero padding MONAI adds before each axis."""

    height: int
    width: int
    roi: tuple[int, int]
    pad_top: int
    pad_left: int
    rows: list[int]
    cols: list[int]

    @classmethod
    def of(cls, height: int, width: int, config: StreamConfig) -> _Layout:
        (roi_rows, roi_cols), overlap = config.roi, config.overlap
        pad_top, pad_left = max(roi_rows - height, 0) // 2, max(roi_cols - width, 0) // 2
        rows = window_starts(height, roi_rows, overlap)
        cols = window_starts(width, roi_cols, overlap)
        return cls(height, width, config.roi, pad_top, pad_left, rows, cols)

    @property
    def padded_width(self) -> int:
        return max(self.width, self.roi[1])

    def jobs(self, batch_size: int) -> Iterator[_Job]:
        """The batches of windows in row-major order; a batch never spans two strips."""
        for strip, top in enumerate(self.rows):
            for first in range(0, len(self.cols), batch_size):
                yield _Job(strip, top, self.cols[first : first + batch_size])

    def band_end(self, strip: int) -> int:
        """Padded row after the last row that strip ``strip`` is the last to touch."""
        if strip + 1 < len(self.rows):
            return self.rows[strip + 1]
        return max(self.height, self.roi[0])


@dataclass(frozen=True)
class _Job:
    """Consecutive windows of one strip, predicted in one batch."""

    strip: int
    top: int
    cols: list[int]


@dataclass(frozen=True)
class _Region:
    """The source pixels a job's windows cover: NaN where masked, and their validity.

    ``rows`` are rows of the strip (0 = its top) and ``cols`` padded columns: the place of
    ``values`` in the padded scene; the rest of the windows is zero padding.
    """

    job: _Job
    values: NDArray[np.float32]
    valid: NDArray[np.bool_]
    rows: slice
    cols: slice


class _RegionReader:
    """Reads the pixels of each job (GDAL and NumPy only, so it can run on a worker thread).

    Nodata masks are computed from the values (GDAL's nodata mask band costs about three times
    the read itself); other masks (internal mask band, alpha) are read.
    """

    def __init__(self, dataset: rasterio.DatasetReader, bands: list[int], layout: _Layout) -> None:
        self._dataset, self._bands, self._layout = dataset, bands, layout
        flags = [set(dataset.mask_flag_enums[band - 1]) for band in bands]
        nodata = [dataset.nodatavals[band - 1] for band in bands]
        self._nodata = [
            (i, nodata[i]) for i, found in enumerate(flags) if MaskFlags.nodata in found
        ]
        self._read_masks = [i for i, found in enumerate(flags) if not _VALUE_MASKS & found]

    def read(self, job: _Job) -> _Region:
        layout = self._layout
        row0 = max(job.top - layout.pad_top, 0)
        row1 = min(job.top + layout.roi[0] - layout.pad_top, layout.height)
        col0 = max(job.cols[0] - layout.pad_left, 0)
        col1 = min(job.cols[-1] + layout.roi[1] - layout.pad_left, layout.width)
        window = Window(col0, row0, col1 - col0, row1 - row0)
        try:
            data = self._dataset.read(self._bands, window=window)
            masked = np.zeros(data.shape, dtype=bool)
            for index in self._read_masks:
                masked[index] = self._dataset.read_masks(self._bands[index], window=window) == 0
        except RasterioIOError as error:
            raise CorruptFileError(
                f"pixel data cannot be read at {window}: {str(error).rstrip('.')}",
                path=self._dataset.name,
            ) from error
        for index, nodata in self._nodata:
            band = data[index]
            masked[index] = np.isnan(band) if np.isnan(nodata) else band == band.dtype.type(nodata)
        values, invalid = data.astype(np.float32), np.logical_or.reduce(masked, axis=0)
        if invalid.any():
            np.copyto(values, np.float32(np.nan), where=masked)
        rows = slice(row0 + layout.pad_top - job.top, row1 + layout.pad_top - job.top)
        cols = slice(col0 + layout.pad_left, col1 + layout.pad_left)
        return _Region(job, values, ~invalid, rows, cols)


def _regions(
    reader: _RegionReader, jobs: Iterator[_Job], read_ahead: int
) -> Generator[_Region, None, None]:
    """Read the jobs' regions in order, up to ``read_ahead`` of them on a background thread."""
    if read_ahead == 0:
        yield from map(reader.read, jobs)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segflow-read-ahead")
    try:
        pending = deque(pool.submit(reader.read, job) for job in islice(jobs, read_ahead))
        while pending:
            region = pending.popleft().result()
            pending.extend(pool.submit(reader.read, job) for job in islice(jobs, 1))
            yield region
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _patches(region: _Region, normalize: Normalizer, roi: tuple[int, int]) -> torch.Tensor:
    """Normalise a region and cut it into ``(B, C, *roi)`` windows, zero-padded like MONAI."""
    image = np.asarray(normalize(torch.from_numpy(region.values)).cpu(), dtype=np.float32)
    if image.shape != region.values.shape:
        raise UsageError(f"normalize returned shape {image.shape} for input {region.values.shape}")
    left, cols = region.job.cols[0], region.job.cols
    width = cols[-1] + roi[1] - left
    padded = image
    if image.shape[1:] != (roi[0], width):
        padded = np.zeros((image.shape[0], roi[0], width), dtype=np.float32)
        padded[:, region.rows, region.cols.start - left : region.cols.stop - left] = image
    return torch.from_numpy(np.stack([padded[:, :, c - left : c - left + roi[1]] for c in cols]))


class _RowAccumulator:
    """Weighted probability sums and weights for the ``roi`` rows of the current strip.

    NumPy rather than torch: these small element-wise steps are single-threaded and do not
    compete with the model for torch's thread pool.
    """

    def __init__(self, n_classes: int, weights: NDArray[np.float32], width: int) -> None:
        rows = weights.shape[0]
        # Channels 0..K-1 hold sum(weight * probability), channel K holds sum(weight).
        self.sums = np.zeros((n_classes + 1, rows, width), dtype=np.float32)
        self.valid = np.zeros((rows, width), dtype=bool)
        self._weights = weights
        self._weighted = np.empty((n_classes, *weights.shape), dtype=np.float32)
        self._classes = n_classes

    @property
    def nbytes(self) -> int:
        return self.sums.nbytes + self.valid.nbytes

    def add(self, region: _Region, probabilities: NDArray[np.float32]) -> None:
        width = self._weights.shape[1]
        for patch, col in zip(probabilities, region.job.cols, strict=True):
            np.multiply(patch, self._weights, out=self._weighted)
            self.sums[: self._classes, :, col : col + width] += self._weighted
            self.sums[self._classes, :, col : col + width] += self._weights
        self.valid[region.rows, region.cols] = region.valid

    def finish(self, rows: slice, cols: slice) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Divide ``rows`` by their weights in place; views valid until :meth:`shift`."""
        done = self.sums[:, rows]
        np.divide(done[: self._classes], done[self._classes], out=done[: self._classes])
        return done[: self._classes, :, cols], self.valid[rows, cols]

    def shift(self, rows: int) -> None:
        """Drop the first ``rows`` rows, move the rest to the top, zero the freed rows."""
        kept = self.sums.shape[1] - rows
        for channel in self.sums:  # one channel at a time keeps NumPy's overlap copy small
            channel[:kept] = channel[rows:]
            channel[kept:] = 0


def _predict(predictor: Predictor, patches: torch.Tensor, n_classes: int) -> NDArray[np.float32]:
    output = predictor(patches)
    expected = (patches.shape[0], n_classes, *patches.shape[2:])
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(
            f"the predictor returned {shape} for patches {tuple(patches.shape)}; "
            f"expected {expected} ({n_classes} class probabilities per pixel)"
        )
    return np.asarray(output.detach().cpu(), dtype=np.float32)


def _check_bands(dataset: rasterio.DatasetReader, bands: Sequence[int] | None) -> list[int]:
    indexes = list(bands) if bands is not None else list(range(1, dataset.count + 1))
    if not indexes or any(not 1 <= band <= dataset.count for band in indexes):
        raise UsageError(
            f"bands {indexes} are not a non-empty subset of 1..{dataset.count}",
            path=dataset.name,
        )
    return indexes


def stream_raster(
    dataset: rasterio.DatasetReader,
    predictor: Predictor,
    n_classes: int,
    config: StreamConfig,
    *,
    normalize: Normalizer,
    sink: Sink,
    bands: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StreamSummary:
    """Run ``predictor`` over ``dataset`` in sliding windows; hand finished bands to ``sink``.

    Args:
        dataset: an open raster; its pixels are read window by window.
        predictor: ``(B, C, h, w)`` normalised float32 CPU patches → ``(B, K, h, w)``
            probabilities (on any device); it is called under ``torch.inference_mode()``.
        n_classes: ``K``, the number of probability channels the predictor returns.
        config: window size, overlap, batch size and blending.
        normalize: ``(C, h, w)`` float32 pixels, NaN where the source is nodata/masked →
            normalised ``(C, h, w)``, called on the calling thread; it must act pixel by pixel
            (e.g. ``normalize_channels`` with fixed bounds) for results not to depend on windows.
        sink: called in row order with ``(window, probabilities, valid)`` for each finished band
            of full-width rows: ``probabilities`` float32 ``(K, rows, width)``, blended and
            divided by the summed weights; ``valid`` bool ``(rows, width)``, False where any
            read band is nodata/masked. The arrays are reused afterwards: copy to keep them.
        bands: 1-based band indexes to read (default: all).
        progress: called with ``(windows done, windows in all)`` after each batch.

    Returns:
        Counts, the accumulator's size and the elapsed time.

    Raises:
        UsageError: bad band indexes, or ``normalize`` changed the shape.
        ModelError: the predictor returned something other than ``(B, K, h, w)``.
        CorruptFileError: a window of the raster cannot be decoded.
    """
    started = time.perf_counter()
    if n_classes < 1:
        raise UsageError(f"n_classes must be at least 1, got {n_classes}")
    layout = _Layout.of(dataset.height, dataset.width, config)
    reader = _RegionReader(dataset, _check_bands(dataset, bands), layout)
    regions = _regions(reader, layout.jobs(config.batch_size), config.read_ahead)
    weights = compute_importance_map(config.roi, config.mode, config.sigma_scale, device="cpu")
    accumulator = _RowAccumulator(n_classes, weights.numpy(), layout.padded_width)
    total, done, batches, strip = len(layout.rows) * len(layout.cols), 0, 0, 0
    with bounded_gdal_env(), torch.inference_mode(), contextlib.closing(regions):
        for region in regions:
            if region.job.strip != strip:
                _hand_off(accumulator, layout, strip, sink)
                strip = region.job.strip
            patches = _patches(region, normalize, config.roi)
            accumulator.add(region, _predict(predictor, patches, n_classes))
            done, batches = done + len(region.job.cols), batches + 1
            if progress is not None:
                progress(done, total)
        _hand_off(accumulator, layout, strip, sink)
    summary = StreamSummary(done, batches, accumulator.nbytes, time.perf_counter() - started)
    logger.debug("streamed %s: %s", dataset.name, summary)
    return summary


def _hand_off(accumulator: _RowAccumulator, layout: _Layout, strip: int, sink: Sink) -> None:
    """Give ``sink`` the rows that strip ``strip`` finished, then make room for the next one."""
    top, end = layout.rows[strip], layout.band_end(strip)
    first, last = max(top - layout.pad_top, 0), min(end - layout.pad_top, layout.height)
    if last > first:
        rows = slice(first + layout.pad_top - top, last + layout.pad_top - top)
        cols = slice(layout.pad_left, layout.pad_left + layout.width)
        probabilities, valid = accumulator.finish(rows, cols)
        sink(Window(0, first, layout.width, last - first), probabilities, valid)
    accumulator.shift(end - top)
