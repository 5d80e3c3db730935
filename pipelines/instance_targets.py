"""Instance label maps ↔ training targets, for the two nuclei routes.

* U-Net + boundary route: an instance map becomes a three-class map (0 background, 1 interior,
  2 boundary — the inner rim of every object, so touching objects are split by their rims); the
  network predicts those classes; instances are the connected interior regions, grown back over
  the rim so object size is not eroded.
* Mask R-CNN route: an instance map becomes torchvision's target dict (``boxes``, ``labels``,
  ``masks``); detections become an instance map again, higher scores winning overlaps.

Instance maps are ``(H, W)`` integer arrays, 0 background, one positive id per object.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.measure import label
from skimage.morphology import remove_small_objects
from skimage.segmentation import find_boundaries, relabel_sequential, watershed

from data_contracts.errors import UsageError

__all__ = [
    "BACKGROUND",
    "BOUNDARY",
    "INTERIOR",
    "detections_to_instance_map",
    "instances_to_three_class",
    "maskrcnn_targets",
    "three_class_to_instances",
]

logger = logging.getLogger(__name__)

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def _instance_map(instance_map: np.ndarray, name: str = "instance_map") -> np.ndarray:
    array = np.asarray(instance_map)
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise UsageError(
            f"{name} must be a 2D integer array (H, W), got {array.dtype} of shape {array.shape}"
        )
    if array.size and array.min() < 0:
        raise UsageError(f"{name} holds negative ids", hint="use 0 for background, 1.. for objects")
    return array


def instances_to_three_class(instance_map: np.ndarray, boundary_width: int = 1) -> np.ndarray:
    """Three-class target of an instance map: 0 background, 1 interior, 2 boundary.

    The boundary is the inner rim of each object (``find_boundaries(mode="inner")``): pixels with
    a 4-neighbour of another id or of background, peeled ``boundary_width`` times. Objects thinner
    than twice the width have no interior left and cannot be recovered by
    :func:`three_class_to_instances`.

    Args:
        instance_map: ``(H, W)`` integer ids, 0 background.
        boundary_width: rim thickness in pixels, >= 1.

    Returns:
        ``(H, W)`` uint8 class map.
    """
    remaining = _instance_map(instance_map).copy()
    if boundary_width < 1:
        raise UsageError(f"boundary_width must be >= 1, got {boundary_width}")
    classes = (remaining > 0).astype(np.uint8) * INTERIOR
    for _ in range(boundary_width):
        rim = find_boundaries(remaining, connectivity=1, mode="inner")  # type: ignore[no-untyped-call]
        classes[rim] = BOUNDARY
        remaining[rim] = 0
    return classes


def three_class_to_instances(
    class_map_or_probabilities: np.ndarray | torch.Tensor,
    *,
    min_size: int = 0,
    min_seed_size: int = 0,
    interior_threshold: float | None = None,
    connectivity: int = 1,
) -> np.ndarray:
    """Instances from a three-class map or from the network's class probabilities.

    Seeds are the connected interior regions (``skimage.measure.label``); a watershed grows them
    over the whole foreground (interior + boundary), so every object gets its rim back and
    touching objects split along the rim between them. With a class map the watershed floods
    by distance to the nearest seed; with probabilities it floods ``1 - p(interior)``, so the
    split follows the network's least-interior pixels.

    Args:
        class_map_or_probabilities: integer ``(H, W)`` class map (0/1/2), or float ``(3, H, W)``
            probabilities (background, interior, boundary; softmax output).
        min_size: objects with fewer pixels are removed (0 keeps all).
        min_seed_size: interior regions with fewer pixels are not seeds (a network's speckles
            would each become an object); their pixels join a neighbour's watershed or vanish.
        interior_threshold: with probabilities, seeds are ``p(interior) > threshold``; ``None``
            means the argmax is interior. Foreground is always "argmax is not background".
        connectivity: connectivity of the seed labelling (1: 4-connected, 2: 8-connected).

    Returns:
        ``(H, W)`` int32 instance map, ids 1..N consecutive.
    """
    array = (
        class_map_or_probabilities.detach().cpu().numpy()
        if isinstance(class_map_or_probabilities, torch.Tensor)
        else np.asarray(class_map_or_probabilities)
    )
    if array.ndim == 2 and array.dtype.kind in "iub":
        interior, foreground = array == INTERIOR, array != BACKGROUND
        elevation = ndi.distance_transform_edt(~interior)
    elif array.ndim == 3 and array.shape[0] == 3 and array.dtype.kind == "f":
        winner = array.argmax(axis=0)
        foreground = winner != BACKGROUND
        if interior_threshold is None:
            interior = winner == INTERIOR
        else:
            interior = array[INTERIOR] > interior_threshold
        elevation = 1.0 - array[INTERIOR]
    else:
        raise UsageError(
            f"expected an integer (H, W) class map or float (3, H, W) probabilities, "
            f"got {array.dtype} of shape {array.shape}"
        )
    seeds = label(interior & foreground, connectivity=connectivity)  # type: ignore[no-untyped-call]
    if min_seed_size > 0:
        seeds = label(  # type: ignore[no-untyped-call]
            remove_small_objects(seeds, max_size=min_seed_size - 1) > 0, connectivity=connectivity
        )
    instances = watershed(elevation, markers=seeds, mask=foreground).astype(np.int32)  # type: ignore[no-untyped-call]
    if min_size > 0:
        instances = remove_small_objects(instances, max_size=min_size - 1)
    relabelled: np.ndarray = relabel_sequential(instances)[0]  # type: ignore[no-untyped-call]
    return relabelled.astype(np.int32)


def maskrcnn_targets(
    instance_map: np.ndarray,
    semantic_map: np.ndarray | None = None,
    *,
    min_pixels: int = 1,
) -> dict[str, torch.Tensor]:
    """torchvision Mask R-CNN target of one image.

    Args:
        instance_map: ``(H, W)`` integer ids, 0 background.
        semantic_map: optional ``(H, W)`` class map; each object's class is the most frequent
            non-zero class under it (objects with none are dropped, with a warning). Without it
            every object is class 1.
        min_pixels: objects with fewer pixels are dropped.

    Returns:
        ``boxes`` ``(N, 4)`` float32 ``[x_min, y_min, x_max + 1, y_max + 1]`` in pixels,
        ``labels`` ``(N,)`` int64 (>= 1), ``masks`` ``(N, H, W)`` uint8; objects in ascending
        id order. No objects gives ``(0, 4)``, ``(0,)`` and ``(0, H, W)``.
    """
    instances = _instance_map(instance_map)
    sequential, _, inverse = relabel_sequential(instances)  # type: ignore[no-untyped-call]
    n_objects = int(sequential.max(initial=0))
    ids = np.arange(1, n_objects + 1)
    areas = np.bincount(sequential.ravel(), minlength=n_objects + 1)[1:]
    keep = areas >= min_pixels
    if semantic_map is not None:
        classes = _majority_class(sequential, n_objects, semantic_map)
        unlabelled = keep & (classes == 0)
        if unlabelled.any():
            dropped = [int(inverse[i]) for i in ids[unlabelled][:5]]
            logger.warning("instances %s have no foreground semantic label; dropped", dropped)
        keep &= classes > 0
    else:
        classes = np.ones(n_objects, dtype=np.int64)
    kept = ids[keep]
    slices = ndi.find_objects(sequential)
    boxes = [
        [s[1].start, s[0].start, s[1].stop, s[0].stop]
        for s in (slices[i - 1] for i in kept)
        if s is not None
    ]
    masks = sequential[None] == kept[:, None, None]
    height, width = instances.shape
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.from_numpy(classes[keep].astype(np.int64)),
        "masks": torch.from_numpy(masks.astype(np.uint8)).reshape(-1, height, width),
    }


def _majority_class(sequential: np.ndarray, n_objects: int, semantic_map: np.ndarray) -> np.ndarray:
    """Most frequent non-zero semantic value under each object 1..n (0 when there is none)."""
    semantic = np.asarray(semantic_map)
    if semantic.shape != sequential.shape or semantic.dtype.kind not in "iu":
        raise UsageError(
            f"semantic_map must be an integer array of shape {sequential.shape}, "
            f"got {semantic.dtype} of shape {semantic.shape}"
        )
    if semantic.size and semantic.min() < 0:
        raise UsageError("semantic_map holds negative class values")
    n_classes = int(semantic.max(initial=0)) + 1
    joint = np.bincount(
        sequential.ravel().astype(np.int64) * n_classes + semantic.ravel(),
        minlength=(n_objects + 1) * n_classes,
    ).reshape(n_objects + 1, n_classes)[1:]
    joint[:, 0] = 0  # background never wins
    return np.where(joint.max(axis=1) > 0, joint.argmax(axis=1), 0).astype(np.int64)


def detections_to_instance_map(
    detections: Mapping[str, torch.Tensor | np.ndarray],
    *,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    shape: tuple[int, int],
) -> np.ndarray:
    """Instance map from one image's Mask R-CNN output.

    Detections with score >= ``score_threshold`` are painted in ascending score order, so the
    higher score wins where masks overlap. Detection ``k`` (0-based, in the given order) gets id
    ``k + 1``, so ``detections["scores"]`` lines up with the ids for
    :func:`pipelines.metrics.average_precision`; dropped or fully covered detections leave their
    id unused.

    Args:
        detections: ``masks`` ``(N, 1, H, W)`` or ``(N, H, W)`` probabilities, ``scores`` ``(N,)``.
        score_threshold: minimum score kept.
        mask_threshold: mask probability above which a pixel belongs to the object.
        shape: ``(H, W)`` of the output.

    Returns:
        ``(H, W)`` int32 instance map.
    """
    masks = _array(detections["masks"])
    scores = _array(detections["scores"]).astype(np.float64).reshape(-1)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3 or masks.shape[0] != scores.shape[0] or masks.shape[1:] != tuple(shape):
        raise UsageError(
            f"detections masks {masks.shape} do not fit {scores.shape[0]} scores "
            f"and image shape {tuple(shape)}"
        )
    instances = np.zeros(shape, dtype=np.int32)
    for k in np.argsort(scores, kind="stable"):
        if scores[k] >= score_threshold:
            instances[masks[k] > mask_threshold] = k + 1
    return instances


def _array(value: torch.Tensor | np.ndarray) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
