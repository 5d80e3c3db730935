"""Merging the detections of overlapping tiles into objects, and painting them into a label map.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torchvision.ops import box_iou

__all__ = ["CONTAINMENT", "Box", "TileGrid", "TilePiece", "merge_pieces", "paint_objects"]

#: Share of the smaller mask (inside the shared tile area) the other must cover to merge them.
CONTAINMENT = 0.8

Box = tuple[int, int, int, int]  # top, left, bottom, right in image pixels; bottom/right exclusive


@dataclass(frozen=True)
class TilePiece:
    """One detection, or one merged object, in image coordinates."""

    box: Box
    mask: np.ndarray  # bool, the box's shape
    score: float
    label: int
    tile: int
    cut: bool  # touches an inner tile edge


@dataclass(frozen=True)
class TileGrid:
    """Tile extents along each axis (start, stop), clipped to the image; tiles row-major."""

    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]

    @property
    def windows(self) -> list[Box]:
        """Every tile's box, row-major."""
        return [
            (top, left, bottom, right) for top, bottom in self.rows for left, right in self.cols
        ]


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


def _paste(piece: TilePiece, frame: Box, into: np.ndarray | None = None) -> np.ndarray:
    """OR the part of ``piece`` inside ``frame`` into a boolean array of the frame's shape."""
    out = np.zeros((frame[2] - frame[0], frame[3] - frame[1]), bool) if into is None else into
    common = _intersect(piece.box, frame)
    if common is not None:
        top, left, bottom, right = common
        (y0, x0), (fy, fx) = piece.box[:2], frame[:2]
        source = piece.mask[top - y0 : bottom - y0, left - x0 : right - x0]
        out[top - fy : bottom - fy, left - fx : right - fx] |= source
    return out


def _same_object(p: TilePiece, q: TilePiece, shared: Box, merge_iou: float) -> bool:
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
    return iou > merge_iou or inter / min(area_a, area_b) > CONTAINMENT


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


def _neighbour_tiles(grid: TileGrid) -> Iterator[tuple[int, int, Box]]:
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
    pieces: Sequence[TilePiece], grid: TileGrid, merge_iou: float
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
            if p.label == q.label and _same_object(p, q, shared, merge_iou):
                sources.append(first[a])
                targets.append(second[b])
    return sources, targets


def merge_pieces(
    pieces: Sequence[TilePiece], grid: TileGrid, *, merge_iou: float
) -> list[TilePiece]:
    """Objects: connected components of the match graph, minus unconfirmed cut detections.

    Two detections of neighbouring tiles match when their classes agree and, inside the area
    the tiles share, their mask IoU exceeds ``merge_iou`` or one holds :data:`CONTAINMENT` of
    the other.
    """
    if not pieces:
        return []
    sources, targets = _match_edges(pieces, grid, merge_iou)
    graph = coo_matrix((np.ones(len(sources)), (sources, targets)), shape=(len(pieces),) * 2)
    count, component = connected_components(graph, directed=False)
    members: list[list[TilePiece]] = [[] for _ in range(count)]
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
        objects.append(TilePiece(box, mask, best.score, best.label, best.tile, False))
    return objects


def paint_objects(
    objects: Sequence[TilePiece], shape: tuple[int, int]
) -> tuple[np.ndarray, list[TilePiece]]:
    """Paint in ascending score order; ids 1..N in descending score order, dense.

    Returns:
        The int32 label map, and the objects still visible in it: object ``i`` has id ``i + 1``.
    """
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
    return labels, kept
