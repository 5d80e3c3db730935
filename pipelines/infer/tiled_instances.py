"""Instance segmentation of images larger than a network's input: Mask R-CNN on overlapping tiles.

The image is cut into ``tile`` × ``tile`` windows that overlap by at least ``overlap`` pixels
(spread evenly, the first flush with the top/left edge and the last flush with the bottom/right
edge; an axis shorter than a tile gets one zero-padded tile). Each tile's detections are kept
above ``score_threshold``, their masks cut at ``mask_threshold`` and stored as a box plus the
cropped boolean mask, so memory grows with the objects found, not with image × detections.

Detections of neighbouring tiles are merged into objects, and the objects painted into one
label map, by :mod:`pipelines.infer.instance_merging`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from data_contracts import ModelError, ModelSpec, TrainingPlan, UsageError
from pipelines.infer.instance_merging import (
    Box,
    TileGrid,
    TilePiece,
    merge_pieces,
    paint_objects,
)
from seg_models import predict_instances

__all__ = [
    "Detector",
    "InstanceResult",
    "TileConfig",
    "segment_instances_tiled",
    "segment_with_network",
    "tile_starts",
]

#: Takes normalised tiles ``(B, C, h, w)``; returns per tile ``scores`` (N,), ``labels`` (N,)
#: and ``masks`` (N, 1, h, w) probabilities, as torchvision's Mask R-CNN does in eval mode
#: (``lambda batch: model(list(batch))``) or ``partial(seg_models.predict_instances, net,
#: spec=spec)``.
Detector = Callable[[torch.Tensor], list[dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class TileConfig:
    """How tiles are laid out and detections filtered and merged.

    Attributes:
        tile: tile side in pixels.
        overlap: minimum pixels shared by neighbouring tiles; make it larger than the objects
            are wide so that each object is seen whole by at least one tile.
        batch_size: tiles per detector call.
        score_threshold: minimum detection score kept.
        mask_threshold: mask probability above which a pixel belongs to the detection.
        merge_iou: mask IoU, inside the shared tile area, above which two detections of
            neighbouring tiles are one object.
    """

    tile: int = 512
    overlap: int = 64
    batch_size: int = 2
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    merge_iou: float = 0.3

    def __post_init__(self) -> None:
        problems = []
        if self.tile < 1:
            problems.append(f"tile must be positive, got {self.tile}")
        if not 0 < self.overlap < self.tile:  # without a shared strip cut objects cannot merge
            problems.append(f"overlap must be in [1, tile={self.tile}), got {self.overlap}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be positive, got {self.batch_size}")
        for name in ("score_threshold", "mask_threshold", "merge_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {value}")
        if problems:
            raise UsageError("; ".join(problems), hint="fix the tiling options")

    @classmethod
    def for_chips(
        cls, chip: int, *, score_threshold: float = 0.5, mask_threshold: float = 0.5
    ) -> TileConfig:
        """Tiles the size of the training chips (the scale the detector learnt), overlapping
        by an eighth (at least 16 px)."""
        return cls(
            tile=chip,
            overlap=max(16, chip // 8),
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
        )

    @classmethod
    def for_model(cls, plan: TrainingPlan, processing: Mapping[str, Any]) -> TileConfig:
        """Tiles of a trained model: its plan's patch size, the thresholds of its
        ``processing`` config (0.5 each when absent)."""
        return cls.for_chips(
            max(plan.patch_size),
            score_threshold=float(processing.get("score_threshold", 0.5)),
            mask_threshold=float(processing.get("mask_threshold", 0.5)),
        )


@dataclass(frozen=True)
class InstanceResult:
    """Objects found in one image.

    Attributes:
        labels: int32 ``(H, W)``: 0 background, 1..N objects in descending score order.
        scores: object id → detection score (the best of its merged detections).
        classes: object id → class label of the detector.
    """

    labels: np.ndarray
    scores: dict[int, float]
    classes: dict[int, int]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: evenly spread, first at 0, last at ``size - tile``.

    Neighbours share at least ``overlap`` pixels; an axis no longer than a tile has one start.
    """
    if size <= tile:
        return [0]
    count = math.ceil((size - tile) / (tile - overlap)) + 1
    return [int(s) for s in np.round(np.linspace(0, size - tile, count))]


def segment_instances_tiled(
    image: np.ndarray | torch.Tensor,
    detector: Detector,
    config: TileConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> InstanceResult:
    """Detect objects tile by tile and merge them into one instance map.

    Args:
        image: normalised ``(C, H, W)`` image (numpy or torch; tiles are cut on its device).
        detector: see :data:`Detector`.
        config: tiling, thresholds and merging.
        progress: called with ``(tiles done, tiles in all)`` after each batch.

    Returns:
        The instance map with each object's score and class.

    Raises:
        UsageError: ``image`` is not ``(C, H, W)``.
        ModelError: the detector's output breaks the :data:`Detector` contract.
    """
    pixels = torch.as_tensor(image)
    if pixels.ndim != 3 or min(pixels.shape) < 1:
        raise UsageError(
            f"image must be (C, H, W), got shape {tuple(pixels.shape)}",
            hint="add a channel axis to a 2D image (image[None])",
        )
    pixels = pixels.float()
    layout = (config.tile, config.overlap)
    shape = (int(pixels.shape[1]), int(pixels.shape[2]))
    grid = TileGrid(
        rows=[(s, min(s + config.tile, shape[0])) for s in tile_starts(shape[0], *layout)],
        cols=[(s, min(s + config.tile, shape[1])) for s in tile_starts(shape[1], *layout)],
    )
    windows = grid.windows
    pieces: list[TilePiece] = []
    for indices, batch in _batches(pixels, windows, config):
        with torch.inference_mode():
            outputs = detector(batch)
        if len(outputs) != len(indices):
            raise ModelError(
                f"the detector returned {len(outputs)} results for {len(indices)} tiles"
            )
        for index, output in zip(indices, outputs, strict=True):
            pieces.extend(_tile_pieces(output, index, windows[index], shape, config))
        if progress is not None:
            progress(indices[-1] + 1, len(windows))
    objects = merge_pieces(pieces, grid, merge_iou=config.merge_iou)
    labels, kept = paint_objects(objects, shape)
    return InstanceResult(
        labels=labels,
        scores={i: p.score for i, p in enumerate(kept, start=1)},
        classes={i: p.label for i, p in enumerate(kept, start=1)},
    )


def segment_with_network(
    network: torch.nn.Module,
    spec: ModelSpec,
    image: np.ndarray | torch.Tensor,
    config: TileConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> InstanceResult:
    """:func:`segment_instances_tiled` with an instance model of the factory as the detector.

    Tiles go to the network's device; detections under ``config.score_threshold`` are dropped
    before the mask head runs (``predict_instances(min_score=…)``).
    """
    device = next(network.parameters()).device

    def detect(batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        found = predict_instances(network, batch.to(device), spec, min_score=config.score_threshold)
        return [{key: value.cpu() for key, value in detections.items()} for detections in found]

    return segment_instances_tiled(image, detect, config, progress=progress)


def _batches(
    pixels: torch.Tensor, windows: Sequence[Box], config: TileConfig
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Tiles in batches, zero-padded to ``tile`` × ``tile`` where the image is smaller."""
    for start in range(0, len(windows), config.batch_size):
        indices = list(range(start, min(start + config.batch_size, len(windows))))
        crops = []
        for top, left, bottom, right in (windows[i] for i in indices):
            crop = pixels[:, top:bottom, left:right]
            pad = (0, config.tile - (right - left), 0, config.tile - (bottom - top))
            crops.append(F.pad(crop, pad) if any(pad) else crop)
        yield indices, torch.stack(crops)


def _tile_pieces(
    output: dict[str, torch.Tensor],
    index: int,
    window: Box,
    shape: tuple[int, int],
    config: TileConfig,
) -> list[TilePiece]:
    """One tile's kept detections, as boxes and cropped masks in image coordinates."""
    missing = {"scores", "labels", "masks"} - output.keys()
    if missing:
        raise ModelError(f"the detector's output lacks {sorted(missing)}")
    scores = output["scores"].detach().float().cpu().reshape(-1)
    labels = output["labels"].detach().cpu().reshape(-1)
    masks = output["masks"].detach()
    masks = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks
    tile = (config.tile, config.tile)
    if (
        masks.ndim != 3
        or tuple(masks.shape[1:]) != tile
        or not len(masks) == len(scores) == len(labels)
    ):
        raise ModelError(
            f"detector output does not fit {len(scores)} detections on a {tile} tile: masks "
            f"{tuple(output['masks'].shape)}, scores {tuple(scores.shape)}, labels {tuple(labels.shape)}",
            hint="return masks (N, 1, h, w) of the tile's size, as torchvision's Mask R-CNN does",
        )
    top, left, bottom, right = window
    keep = scores >= config.score_threshold
    binary = masks[keep.to(masks.device), : bottom - top, : right - left] > config.mask_threshold
    pieces = []
    for mask, score, label in zip(
        binary.cpu().numpy(), scores[keep].tolist(), labels[keep].tolist(), strict=True
    ):
        found = ndi.find_objects(mask.astype(np.uint8))
        if not found or found[0] is None:
            continue  # empty mask
        ys, xs = found[0]
        box = (top + ys.start, left + xs.start, top + ys.stop, left + xs.stop)
        cut = (  # touches a tile edge that is not the image border
            (box[0] == top > 0)
            or (box[1] == left > 0)
            or (box[2] == bottom < shape[0])
            or (box[3] == right < shape[1])
        )
        pieces.append(TilePiece(box, mask[ys, xs].copy(), float(score), int(label), index, cut))
    return pieces
