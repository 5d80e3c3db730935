"""Instance segmentation of images larger than a network's input: Mask R-CNN on overlapping tiles.

The image is cut into ``tile`` × ``tile`` windows that overlap by at least ``overlap`` pixels
(spread evenly, the first flush with the top/left edge and the last flush with the bottom/right
edge; an axis shorter than a tile gets one zero-padded tile). Each tile's detections are kept
above ``score_threshold``, their masks cut at ``mask_threshold`` and stored as a box plus the
cropped boolean mask, so memory grows with the objects found, not with image × detections.

Two detections from different tiles are the same object when they have the same class and,
inside the area the two tiles share, their masks overlap with IoU > ``merge_iou`` or one holds
more than :data:`CONTAINMENT` of the other. The match graph's connected components
(``scipy.sparse.csgraph``) become the objects: union of the masks, maximum score. A detection
touching an inner tile edge (a tile edge that is not the image border) is cut off by the tile;
it survives only when merged with a detection of a neighbouring tile, which saw the rest of the
object, so cut objects are neither duplicated nor kept as fragments.

The objects are painted in ascending score order, so the most confident wins where masks
overlap, and numbered 1..N in descending score order; objects painted over entirely are
dropped and the numbering stays dense.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torchvision.ops import box_iou

from data_contracts import ModelError, ModelSpec, TrainingPlan, UsageError
from seg_models import predict_instances

__all__ = [
    "CONTAINMENT",
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

#: Share of the smaller mask (inside the shared tile area) the other must cover to merge them.
CONTAINMENT = 0.8

Box = tuple[int, int, int, int]  # top, left, bottom, right in image pixels; bottom/right exclusive


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


@dataclass(frozen=True)
class _Piece:
    """One detection, or one merged object, in image coordinates."""

    box: Box
    mask: np.ndarray  # bool, the box's shape
    score: float
    label: int
    tile: int
    cut: bool  # touches an inner tile edge


@dataclass(frozen=True)
class _Grid:
    """Tile extents along each axis (start, stop), clipped to the image; tiles row-major."""

    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]

    @property
    def windows(self) -> list[Box]:
        return [
            (top, left, bottom, right) for top, bottom in self.rows for left, right in self.cols
        ]


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
    grid = _Grid(
        rows=[(s, min(s + config.tile, shape[0])) for s in tile_starts(shape[0], *layout)],
        cols=[(s, min(s + config.tile, shape[1])) for s in tile_starts(shape[1], *layout)],
    )
    windows = grid.windows
    pieces: list[_Piece] = []
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
    objects = _merge(pieces, grid, config)
    return _paint(objects, shape)


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
) -> list[_Piece]:
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
        pieces.append(_Piece(box, mask[ys, xs].copy(), float(score), int(label), index, cut))
    return pieces


def _intersect(a: Box, b: Box) -> Box | None:
    box = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return box if box[0] < box[2] and box[1] < box[3] else None


def _hull(boxes: Sequence[Box]) -> Box:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _paste(piece: _Piece, frame: Box, into: np.ndarray | None = None) -> np.ndarray:
    """OR the part of ``piece`` inside ``frame`` into a boolean array of the frame's shape."""
    out = np.zeros((frame[2] - frame[0], frame[3] - frame[1]), bool) if into is None else into
    common = _intersect(piece.box, frame)
    if common is not None:
        top, left, bottom, right = common
        (y0, x0), (fy, fx) = piece.box[:2], frame[:2]
        source = piece.mask[top - y0 : bottom - y0, left - x0 : right - x0]
        out[top - fy : bottom - fy, left - fx : right - fx] |= source
    return out


def _same_object(p: _Piece, q: _Piece, shared: Box, config: TileConfig) -> bool:
    """Mask IoU (or containment) of two detections inside the area their tiles share."""
    frame = _intersect(_hull([p.box, q.box]), shared)
    if frame is None:
        return False
    a, b = _paste(p, frame), _paste(q, frame)
    inter = int(np.count_nonzero(a & b))
    if inter == 0:
        return False
    area_a, area_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    iou = inter / (area_a + area_b - inter)
    return iou > config.merge_iou or inter / min(area_a, area_b) > CONTAINMENT


def _overlapping(ranges: Sequence[tuple[int, int]]) -> list[list[int]]:
    """For each range along one axis (sorted by start), the indices of the ranges it overlaps."""
    return [
        [
            m
            for m, (start, stop) in enumerate(ranges)
            if start < ranges[k][1] and ranges[k][0] < stop
        ]
        for k in range(len(ranges))
    ]


def _neighbour_tiles(grid: _Grid) -> Iterator[tuple[int, int, Box]]:
    """Pairs ``(i, j)``, ``i < j``, of overlapping tiles with their shared area."""
    near_rows, near_cols = _overlapping(grid.rows), _overlapping(grid.cols)
    n_cols = len(grid.cols)
    windows = grid.windows
    for r, c in itertools.product(range(len(grid.rows)), range(n_cols)):
        i = r * n_cols + c
        for j in sorted(r2 * n_cols + c2 for r2 in near_rows[r] for c2 in near_cols[c]):
            if j > i and (shared := _intersect(windows[i], windows[j])) is not None:
                yield i, j, shared


def _match_edges(
    pieces: Sequence[_Piece], grid: _Grid, config: TileConfig
) -> tuple[list[int], list[int]]:
    """Index pairs of detections from neighbouring tiles that are one object."""
    by_tile: dict[int, list[int]] = {}
    for k, piece in enumerate(pieces):
        by_tile.setdefault(piece.tile, []).append(k)
    boxes = torch.tensor([(p.box[1], p.box[0], p.box[3], p.box[2]) for p in pieces]).float()
    sources: list[int] = []
    targets: list[int] = []
    for i, j, shared in _neighbour_tiles(grid):
        if i not in by_tile or j not in by_tile:
            continue
        first, second = by_tile[i], by_tile[j]
        touching = torch.nonzero(box_iou(boxes[first], boxes[second]) > 0).tolist()
        for a, b in touching:
            p, q = pieces[first[a]], pieces[second[b]]
            if p.label == q.label and _same_object(p, q, shared, config):
                sources.append(first[a])
                targets.append(second[b])
    return sources, targets


def _merge(pieces: Sequence[_Piece], grid: _Grid, config: TileConfig) -> list[_Piece]:
    """Objects: connected components of the match graph, minus unconfirmed cut detections."""
    if not pieces:
        return []
    sources, targets = _match_edges(pieces, grid, config)
    graph = coo_matrix((np.ones(len(sources)), (sources, targets)), shape=(len(pieces),) * 2)
    count, component = connected_components(graph, directed=False)
    members: list[list[_Piece]] = [[] for _ in range(count)]
    for piece, c in zip(pieces, component, strict=True):
        members[c].append(piece)
    objects = []
    for group in members:
        if len(group) == 1:
            if not group[0].cut:
                objects.append(group[0])
            continue
        box = _hull([p.box for p in group])
        mask = np.zeros((box[2] - box[0], box[3] - box[1]), bool)
        for piece in group:
            _paste(piece, box, into=mask)
        best = max(group, key=lambda p: p.score)
        objects.append(_Piece(box, mask, best.score, best.label, best.tile, False))
    return objects


def _paint(objects: Sequence[_Piece], shape: tuple[int, int]) -> InstanceResult:
    """Paint in ascending score order; ids 1..N in descending score order, dense."""
    order = sorted(range(len(objects)), key=lambda k: (-objects[k].score, objects[k].box))
    labels = np.zeros(shape, dtype=np.int32)
    for rank in reversed(range(len(order))):
        piece = objects[order[rank]]
        top, left, bottom, right = piece.box
        labels[top:bottom, left:right][piece.mask] = rank + 1
    visible = np.bincount(labels.ravel(), minlength=len(order) + 1)[1:] > 0
    lookup = np.zeros(len(order) + 1, dtype=np.int32)
    lookup[1:][visible] = np.arange(1, int(visible.sum()) + 1, dtype=np.int32)
    labels = lookup[labels]
    kept = [objects[order[rank]] for rank in np.flatnonzero(visible)]
    return InstanceResult(
        labels=labels,
        scores={i: p.score for i, p in enumerate(kept, start=1)},
        classes={i: p.label for i, p in enumerate(kept, start=1)},
    )
