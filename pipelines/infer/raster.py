"""Segment a GeoTIFF of any size into a georeferenced COG mask, streamed band by band.

:func:`segment_raster` drives :func:`pipelines.infer.stream.stream_raster` (windows with a halo,
gaussian blending in an accumulator that covers only a band of rows) and writes each finished
band into :class:`pipelines.write.geotiff.GeoTiffMaskWriter`, which turns the tiled GTiff into
a COG with nearest-neighbour overviews. Source nodata stays nodata in the mask. Memory is
bounded by the band, never the scene.

Post-processing that looks at connected components (minimum object size, holes, opening) runs
on blocks of rows with a halo of rows above and below, so an object is judged on everything
within :data:`POSTPROCESS_HALO_ROWS` rows of the block; keep-largest-component needs the whole
scene and is applied only to scenes up to :data:`WHOLE_SCENE_PIXELS` pixels.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window

from data_contracts import (
    ChannelCountError,
    FileQuality,
    InferenceOptions,
    PostprocessConfig,
    TrainingPlan,
)
from pipelines.infer.confidence import ConfidenceAccumulator
from pipelines.infer.in_memory import class_values_of
from pipelines.infer.loaded_model import LoadedModel, network_on
from pipelines.infer.sliding import choose_device, probability_predictor, window_options
from pipelines.infer.stream import stream_raster
from pipelines.io.raster import bounded_gdal_env, open_raster
from pipelines.postprocess.decision import class_indices, foreground_cut
from pipelines.postprocess.labels import pixel_area, postprocess_labels
from pipelines.preprocess.array import normalize_channels
from pipelines.write.geotiff import GeoTiffMaskWriter, mask_dtype

__all__ = ["POSTPROCESS_HALO_ROWS", "RasterOutputs", "segment_raster"]

logger = logging.getLogger(__name__)

POSTPROCESS_BLOCK_ROWS = 2048
POSTPROCESS_HALO_ROWS = 256
WHOLE_SCENE_PIXELS = 1 << 26
MASK_NODATA = 255
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RasterOutputs:
    """Files written for one raster: the mask COG and, when asked, the probability and
    entropy COGs; and the scene's confidence measures."""

    mask: Path
    probabilities: Path | None = None
    uncertainty: Path | None = None
    quality: FileQuality | None = None


class _BlockPostprocessor:
    """Buffers finished bands; post-processes blocks of rows with a halo, then writes them."""

    def __init__(
        self,
        write: Callable[[np.ndarray, np.ndarray, int], None],
        config: PostprocessConfig,
        spacing: tuple[float, float],
        block_rows: int,
    ) -> None:
        self.write, self.config, self.spacing = write, config, spacing
        self.block_rows = block_rows
        self.labels: list[np.ndarray] = []
        self.valid: list[np.ndarray] = []
        self.start = 0  # first buffered row that is not written yet, minus the kept halo
        self.halo = 0  # rows at the buffer's top that were written already (context only)

    def add(self, labels: np.ndarray, valid: np.ndarray) -> None:
        self.labels.append(labels)
        self.valid.append(valid)
        buffered = sum(len(block) for block in self.labels)
        if buffered - self.halo >= self.block_rows + POSTPROCESS_HALO_ROWS:
            self._emit(final=False)

    def finish(self) -> None:
        if self.labels:
            self._emit(final=True)

    def _emit(self, *, final: bool) -> None:
        labels, valid = np.concatenate(self.labels), np.concatenate(self.valid)
        cleaned = postprocess_labels(labels, self.config, spacing=self.spacing, valid=valid)
        stop = len(labels) if final else len(labels) - POSTPROCESS_HALO_ROWS
        self.write(cleaned[self.halo : stop], valid[self.halo : stop], self.start + self.halo)
        keep = max(0, stop - POSTPROCESS_HALO_ROWS)
        self.labels, self.valid = [labels[keep:]], [valid[keep:]]
        self.start, self.halo = self.start + keep, stop - keep


def _check_bands(count: int, model: LoadedModel, path: Path) -> None:
    if count != model.plan.in_channels:
        names = f" ({', '.join(model.channel_names)})" if model.channel_names else ""
        raise ChannelCountError(
            f"has {count} band(s); the model expects {model.plan.in_channels}{names}", path=path
        )


def segment_raster(
    model: LoadedModel,
    source: str | Path,
    mask_path: str | Path,
    *,
    probabilities_path: str | Path | None = None,
    uncertainty_path: str | Path | None = None,
    options: InferenceOptions | None = None,
    postprocess: PostprocessConfig | None = None,
    tags: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> RasterOutputs:
    """Segment one GeoTIFF into a COG mask in the source CRS and grid.

    Args:
        model: a loaded raster model (semantic).
        source: the scene; only read.
        mask_path: the mask COG to write (uint8, uint16 past 254 classes; nodata 255/65535).
        probabilities_path: also write class probabilities as a uint8 COG (scale 1/255).
        uncertainty_path: also write the normalised entropy as a uint8 COG (scale 1/255).
        options: window overlap and batch size (unset: the raster kind's defaults), blending,
            reads and device (TTA is not applied to streamed rasters).
        postprocess: clean-up in map units (default: the model's, else none).
        tags: extra GeoTIFF tags (lineage).
        progress: called with (windows done, windows in total).

    Raises:
        ChannelCountError: the scene has another number of bands than the model.
        InputError: the scene cannot be read.
        OutputError: a mask cannot be written or fails its post-write check.
    """
    options = window_options(options, model.plan.kind)
    postprocess = postprocess or PostprocessConfig()
    plan, source = model.plan, Path(source)
    target = choose_device(options.device or model.device)
    predictor = probability_predictor(
        network_on(model, target),
        model.spec,
        channels_last=options.channels_last,
        amp=options.amp,
    )

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return predictor(batch.to(target)).float().cpu()

    n_classes = len(plan.class_values)
    with bounded_gdal_env(), open_raster(source) as dataset:
        _check_bands(dataset.count, model, source)
        dtype = mask_dtype(max(plan.class_values) + 1)
        nodata = int(np.iinfo(dtype).max)
        all_tags = {"model_classes": json.dumps(dict(enumerate(plan.class_names))), **(tags or {})}
        mask = GeoTiffMaskWriter(
            Path(mask_path),
            dataset.profile,
            class_names=_names_by_value(model),
            nodata=nodata,
            dtype=dtype,
            tags=all_tags,
        )
        probability_writer = (
            _probability_writer(Path(probabilities_path), dataset.profile, plan.class_names, tags)
            if probabilities_path
            else None
        )
        entropy_writer = (
            _entropy_writer(Path(uncertainty_path), dataset.profile, tags)
            if uncertainty_path
            else None
        )
        confidence = ConfidenceAccumulator()
        width = dataset.width

        def write_labels(labels: np.ndarray, valid: np.ndarray, row: int) -> None:
            block = np.where(valid, labels, nodata).astype(dtype)
            mask.write(block, Window(0, row, width, len(block)))

        cut = foreground_cut(postprocess, plan)
        postprocess, block_rows = _block_plan(postprocess, dataset.width, dataset.height, source)
        writer = (
            None
            if not postprocess.changes_labels
            else _BlockPostprocessor(
                write_labels, postprocess, _pixel_spacing(dataset.transform), block_rows
            )
        )

        def sink(window: Window, probabilities: np.ndarray, valid: np.ndarray) -> None:
            classes = class_indices(probabilities, foreground_cut=cut)
            entropy = confidence.add(probabilities, valid, classes != 0)
            if entropy_writer is not None:
                scaled_entropy = np.rint(entropy * 255).astype(np.uint8)
                entropy_writer.write(scaled_entropy * valid, window)
            labels = class_values_of(classes, plan)
            if writer is None:
                write_labels(labels, valid, int(window.row_off))
            else:
                writer.add(labels, valid.copy())  # the stream reuses its buffers
            if probability_writer is not None:
                scaled = np.clip(np.rint(probabilities * 255), 0, 255).astype(np.uint8)
                probability_writer.write(scaled * valid, window)

        with contextlib.ExitStack() as stack:
            stack.enter_context(mask)
            if probability_writer is not None:
                stack.enter_context(probability_writer)
            if entropy_writer is not None:
                stack.enter_context(entropy_writer)
            summary = stream_raster(
                dataset,
                predict,
                n_classes,
                (plan.patch_size[0], plan.patch_size[1]),
                options,
                normalize=lambda tile: normalize_channels(tile, plan.normalization),
                sink=sink,
                predict_partial=plan.missing_channels == "predict",
                progress=progress,
            )
            if writer is not None:
                writer.finish()
            quality = _with_missing_channels(confidence, summary.partial_pixels, plan)
            mask.update_tags(**_quality_tags(all_tags, quality))
    return RasterOutputs(
        Path(mask_path),
        Path(probabilities_path) if probabilities_path else None,
        Path(uncertainty_path) if uncertainty_path else None,
        quality,
    )


def _with_missing_channels(
    confidence: ConfidenceAccumulator, partial_pixels: int, plan: TrainingPlan
) -> FileQuality:
    """The confidence measures, with the share of pixels predicted with a band missing when
    the plan predicts them (``missing_channels = "predict"``)."""
    quality = confidence.quality()
    if plan.missing_channels != "predict" or not confidence.pixels:
        return quality
    share = min(partial_pixels / confidence.pixels, 1.0)
    return quality.model_copy(update={"missing_channel_fraction": round(share, 6)})


def _probability_writer(
    path: Path, profile: Any, class_names: Sequence[str], tags: dict[str, str] | None
) -> GeoTiffMaskWriter:
    """The probability COG: one uint8 band per class, value / 255."""
    return GeoTiffMaskWriter(
        path,
        profile,
        class_names=list(class_names),
        nodata=None,
        dtype="uint8",
        count=len(class_names),
        band_descriptions=list(class_names),
        tags={"scale": "1/255", **(tags or {})},
    )


def _entropy_writer(path: Path, profile: Any, tags: dict[str, str] | None) -> GeoTiffMaskWriter:
    """The entropy COG (``--write-uncertainty``): one uint8 band, value / 255, grey ramp."""
    return GeoTiffMaskWriter(
        path,
        profile,
        class_names=["entropy"],
        nodata=None,
        dtype="uint8",
        band_descriptions=["normalised entropy"],
        colormap={value: (value, value, value, 255) for value in range(256)},
        tags={"scale": "1/255", **(tags or {})},
    )


def _quality_tags(tags: dict[str, str], quality: FileQuality) -> dict[str, str]:
    """``segflow_quality`` (the scene's confidence measures), also merged into the
    ``quality`` of the lineage tag when there is one (its drift fields are kept)."""
    measures = quality.model_dump(mode="json", exclude={"drift_status", "drift"})
    updated = {"segflow_quality": json.dumps(measures, sort_keys=True)}
    if "segflow_lineage" in tags:
        lineage = json.loads(tags["segflow_lineage"])
        lineage["quality"] = {**(lineage.get("quality") or {}), **measures}
        updated["segflow_lineage"] = json.dumps(lineage, sort_keys=True, default=str)
    return updated


def _block_plan(
    config: PostprocessConfig, width: int, height: int, source: Path
) -> tuple[PostprocessConfig, int]:
    """Rows per post-processing block: the whole scene when keep-largest needs it and fits."""
    if not config.needs_whole_map:
        return config, POSTPROCESS_BLOCK_ROWS
    if width * height <= WHOLE_SCENE_PIXELS:
        return config, height
    logger.warning(
        "%s: %d×%d px is too large to keep only the largest component; that step is skipped",
        source,
        width,
        height,
    )
    whole_map_off = {"keep_largest": (), "keep_largest_foreground": False}
    return config.model_copy(update=whole_map_off), POSTPROCESS_BLOCK_ROWS


def _pixel_spacing(transform: Any) -> tuple[float, float]:
    """Pixel (row, column) size in map units; their product is the pixel area."""
    area = pixel_area(transform)
    column = float(np.hypot(transform.a, transform.d)) or 1.0
    return (area / column, column)


def _names_by_value(model: LoadedModel) -> list[str]:
    """Class names indexed by label value (gaps named ``class_<value>``)."""
    names = {
        value: name
        for value, name in zip(model.plan.class_values, model.plan.class_names, strict=True)
    }
    return [names.get(value, f"class_{value}") for value in range(max(names) + 1)]
