"""Sliding-window inference over a raster of any size, streamed one strip of windows at a time.

Windows are laid out exactly as MONAI's ``sliding_window_inference`` lays them out (same stride,
last window flush with the edge, a scene smaller than the ROI padded with zeros around its
centre) and blended with the same importance map, so the result equals MONAI's on the whole
image. Unlike MONAI, only one strip of window rows is held: its source rows
(:class:`pipelines.infer.strips.StripReader`, each tile decoded once) and an accumulator of
``roi`` rows by the scene's width. When a strip is done, the rows that no later window touches
are divided by their weights and handed to a ``sink``; the overlap rows are carried to the next
strip. Memory is therefore O((K + C) × roi × width), independent of the scene's height.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import torch
from monai.data.utils import compute_importance_map
from numpy.typing import NDArray
from rasterio.windows import Window

from data_contracts import InferenceOptions, ModelError, UsageError
from pipelines.infer.strips import (
    Layout,
    Normalizer,
    StripReader,
    batch_patches,
    iter_batches,
    threaded_handle,
    window_starts,
)

__all__ = [
    "Normalizer",
    "Predictor",
    "Sink",
    "StreamSummary",
    "stream_raster",
    "window_starts",
]

logger = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""``(B, C, h, w)`` normalised float32 patches → ``(B, K, h, w)`` probabilities."""

Sink = Callable[[Window, NDArray[np.float32], NDArray[np.bool_]], None]
"""Receives ``(window, probabilities (K, rows, width), valid (rows, width))`` per finished band."""

_BLOCK_CACHE_FLOOR = 96 * 2**20


@dataclass(frozen=True)
class StreamSummary:
    """What one streamed inference did.

    Attributes:
        windows: windows predicted.
        batches: predictor calls.
        peak_band_bytes: bytes of the row accumulator (weighted probabilities and weights) and
            of the strip's source rows; it depends on the scene's width and the ROI, never on
            its height.
        seconds: wall time of the whole stream, sink included.
        partial_pixels: pixels handed to the sink as valid while some of their bands are
            nodata/masked (only with ``predict_partial``; 0 otherwise).
    """

    windows: int
    batches: int
    peak_band_bytes: int
    seconds: float
    partial_pixels: int = 0


class _RowAccumulator:
    """Weighted probability sums and weights for the ``roi`` rows of the current strip.

    NumPy rather than torch: these small element-wise steps are single-threaded and do not
    compete with the model for torch's thread pool (a two-thread ``addcmul_`` per window is
    faster on an idle machine but tens of times slower when another process takes a core).
    NumPy also asks for huge pages for large arrays, which matters here: each window touches
    ``roi`` rows a whole scene width apart.

    The weights channel does not depend on the data: when a strip overlaps earlier strips at
    the same offsets as the strip before it (every strip but the first and the last, with a
    regular stride), its summed weights are those the previous strip ended with, bit for bit.
    :meth:`shift` then keeps that channel and :meth:`add` stops adding weights to it.
    """

    def __init__(self, n_classes: int, weights: NDArray[np.float32], width: int) -> None:
        rows = weights.shape[0]
        # Channels 0..K-1 hold sum(weight * probability), channel K holds sum(weight).
        self.sums = np.zeros((n_classes + 1, rows, width), dtype=np.float32)
        self._weights = weights
        self._weighted = np.empty((n_classes, *weights.shape), dtype=np.float32)
        self._classes = n_classes
        self._weights_done = False  # the weights channel already holds this strip's sums

    @property
    def nbytes(self) -> int:
        return self.sums.nbytes

    def add(self, cols: list[int], probabilities: NDArray[np.float32]) -> None:
        """Blend ``(B, K, h, w)`` probabilities of windows at padded columns ``cols``."""
        width, classes = self._weights.shape[1], self._classes
        for patch, col in zip(probabilities, cols, strict=True):
            np.multiply(patch, self._weights, out=self._weighted)
            self.sums[:classes, :, col : col + width] += self._weighted
            if not self._weights_done:
                self.sums[classes, :, col : col + width] += self._weights

    def finish(self, rows: slice, cols: slice) -> NDArray[np.float32]:
        """Divide ``rows`` by their weights in place; a view, valid until :meth:`shift`."""
        done = self.sums[:, rows]
        np.divide(done[: self._classes], done[self._classes], out=done[: self._classes])
        return done[: self._classes, :, cols]

    def shift(self, rows: int, *, same_weights: bool) -> None:
        """Drop the first ``rows`` rows, move the rest to the top, zero the freed rows.

        With ``same_weights`` (the next strip's weights equal this one's) the weights channel
        is kept as it is and not summed again.
        """
        kept = self.sums.shape[1] - rows
        channels = self.sums[: self._classes] if same_weights else self.sums
        for channel in channels:  # one channel at a time keeps NumPy's overlap copy small
            channel[:kept] = channel[rows:]
            channel[kept:] = 0
        self._weights_done = same_weights


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
    roi: tuple[int, int],
    options: InferenceOptions,
    *,
    normalize: Normalizer,
    sink: Sink,
    bands: Sequence[int] | None = None,
    predict_partial: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> StreamSummary:
    """Run ``predictor`` over ``dataset`` in sliding windows; hand finished bands to ``sink``.

    Args:
        dataset: an open raster; its pixels are read window by window.
        predictor: ``(B, C, h, w)`` normalised float32 CPU patches → ``(B, K, h, w)``
            probabilities (on any device); it is called under ``torch.inference_mode()``.
        n_classes: ``K``, the number of probability channels the predictor returns.
        roi: window (patch) size in pixels, ``(rows, columns)``.
        options: overlap and batch size (both set), blending, ``read_ahead`` and
            ``read_threads`` (reads run between model calls, when torch's threads are idle,
            unless ``read_ahead`` moves them beside the model: keep it 0 when torch uses every
            core, a third busy thread stalls its OpenMP team).
        normalize: ``(C, h, w)`` float32 pixels, NaN where the source is nodata/masked →
            normalised ``(C, h, w)``, called on the calling thread; it must act pixel by pixel
            (e.g. ``normalize_channels`` with fixed bounds) for results not to depend on windows.
        sink: called in row order with ``(window, probabilities, valid)`` for each finished band
            of full-width rows: ``probabilities`` float32 ``(K, rows, width)``, blended and
            divided by the summed weights; ``valid`` bool ``(rows, width)``, False where any
            read band is nodata/masked (every band, with ``predict_partial``). The arrays are
            reused afterwards: copy to keep them.
        bands: 1-based band indexes to read (default: all).
        predict_partial: a pixel with some bands nodata and others not is valid (its missing
            bands reach ``normalize`` as NaN, which it fills).
        progress: called with ``(windows done, windows in all)`` after each batch.

    Returns:
        Counts, the size of the strip's buffers and the elapsed time.

    Raises:
        UsageError: a bad ROI, unset overlap or batch size, bad band indexes, or
            ``normalize`` changed the shape.
        ModelError: the predictor returned something other than ``(B, K, h, w)``.
        CorruptFileError: a window of the raster cannot be decoded.
    """
    started = time.perf_counter()
    if n_classes < 1:
        raise UsageError(f"n_classes must be at least 1, got {n_classes}")
    if len(roi) != 2 or min(roi) < 1:
        raise UsageError(f"roi must be two positive sizes (rows, columns), got {roi}")
    overlap, batch_size = options.window_settings()
    layout = Layout.of(dataset.height, dataset.width, roi, overlap)
    bands = _check_bands(dataset, bands)
    weights = compute_importance_map(roi, options.mode, options.sigma_scale, device="cpu")
    accumulator = _RowAccumulator(n_classes, weights.numpy(), layout.padded_width)
    total, done, batches, partial = len(layout.rows) * len(layout.cols), 0, 0, 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=_block_cache_bytes(dataset)))
        stack.enter_context(torch.inference_mode())
        handle = stack.enter_context(threaded_handle(dataset, _threads(options.read_threads)))
        strips = stack.enter_context(StripReader(handle, bands, layout, options.read_ahead))
        for strip in range(len(layout.rows)):
            strips.load(strip)
            for cols in iter_batches(layout.cols, batch_size):
                patches = batch_patches(strips, cols, normalize)
                accumulator.add(cols, _predict(predictor, patches, n_classes))
                done, batches = done + len(cols), batches + 1
                if progress is not None:
                    progress(done, total)
            partial += _hand_off(accumulator, strips, strip, sink, any_band=predict_partial)
    nbytes = accumulator.nbytes + strips.pixels.nbytes + strips.masked.nbytes
    summary = StreamSummary(done, batches, nbytes, time.perf_counter() - started, partial)
    logger.debug("streamed %s: %s", dataset.name, summary)
    return summary


def _block_cache_bytes(dataset: rasterio.DatasetReader) -> int:
    """GDAL's block cache while streaming: two rows of source blocks, and at least 96 MiB.

    A strip's new rows cut through a row of tiles that the next two or three strips read as
    well: unless the cache holds that whole row of tiles (every band: pixel-interleaved tiles
    are decoded for all of them), each tile is decoded again by every strip that reads it,
    about three times over. The floor leaves room for the mask writer's blocks. An integer
    ``GDAL_CACHEMAX`` is a number of bytes for rasterio, so the size is given in bytes.
    """
    block_rows = int(dataset.block_shapes[0][0])
    itemsize: int = max(np.dtype(dtype).itemsize for dtype in dataset.dtypes)
    source_bytes = 2 * block_rows * int(dataset.width) * int(dataset.count) * itemsize
    return max(_BLOCK_CACHE_FLOOR, source_bytes)


def _threads(requested: int | None) -> int:
    return requested if requested is not None else os.cpu_count() or 1


def _hand_off(
    accumulator: _RowAccumulator, strips: StripReader, strip: int, sink: Sink, *, any_band: bool
) -> int:
    """Give ``sink`` the rows that strip ``strip`` finished, then make room for the next one.

    Returns the pixels handed over as valid with some band missing (``any_band`` only).
    """
    layout = strips.layout
    partial = 0
    top, end = layout.rows[strip], layout.band_end(strip)
    first, last = max(top - layout.pad_top, 0), min(end - layout.pad_top, layout.height)
    if last > first:
        rows = slice(first + layout.pad_top - top, last + layout.pad_top - top)
        cols = slice(layout.pad_left, layout.pad_left + layout.width)
        probabilities = accumulator.finish(rows, cols)
        valid, partial = strips.valid_any_band(rows) if any_band else (strips.valid(rows), 0)
        sink(Window(0, first, layout.width, last - first), probabilities, valid)
    same = strip + 1 < len(layout.rows) and layout.overlaps(strip + 1) == layout.overlaps(strip)
    accumulator.shift(end - top, same_weights=same)
    return partial
