"""Label clean-up in physical units (probabilities → labels: :mod:`.decision`).

Every function here is an array operation: no files, no geometry objects beyond a spacing or an
affine transform. Sizes are physical (mm³, CRS units², pixels for plain images) so that one
:class:`~data_contracts.PostprocessConfig` means the same thing at every resolution.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from rasterio.transform import Affine
from scipy import ndimage as ndi
from skimage.measure import label as label_components
from skimage.morphology import ball, disk, opening, remove_small_objects

from data_contracts import PostprocessConfig, UsageError

__all__ = [
    "largest_component",
    "pixel_area",
    "postprocess_labels",
    "voxel_volume",
]

logger = logging.getLogger(__name__)


def pixel_area(transform: Affine) -> float:
    """Area of one pixel in CRS units² (``|a·e − b·d|``; exact for rotated or sheared grids)."""
    return float(abs(transform.a * transform.e - transform.b * transform.d))


def voxel_volume(spacing: Sequence[float]) -> float:
    """Size of one pixel/voxel in physical units: the product of the spacing.

    Raises:
        UsageError: a spacing is not finite and positive.
    """
    values = [float(value) for value in spacing]
    if not values or any(not math.isfinite(value) or value <= 0 for value in values):
        raise UsageError(f"spacing must be finite and positive, got {tuple(values)}")
    return math.prod(values)


def postprocess_labels(
    labels: np.ndarray,
    config: PostprocessConfig,
    *,
    spacing: Sequence[float],
    background: int = 0,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Clean a label map class by class, in physical units.

    First, with ``keep_largest_foreground``, every foreground class together is one region and
    only its largest connected component stays. Then, for each foreground class value, in
    ascending order:

    1. **opening** with a disk (2D) or ball (3D) of ``opening_radius`` pixels/voxels: removes
       specks and thin spurs;
    2. **small objects**: connected components smaller than ``min_object_size`` (pixel count ×
       product of ``spacing``) become background;
    3. **holes**: background cavities enclosed by the class take its value (other classes are
       never overwritten);
    4. **keep largest**: for the values in ``keep_largest``, only the largest component stays.

    Pixels removed from a class become ``background``. Pixels outside ``valid`` are treated as
    background while cleaning and are returned unchanged.

    Args:
        labels: ``(H, W)`` or ``(X, Y, Z)`` integer class values.
        config: which steps to run.
        spacing: physical size of a pixel along each axis: mm for volumes, CRS units for
            rasters (``(abs(e), abs(a))`` of the transform; ``(pixel_area(t), 1.0)`` for rotated
            grids), 1 for plain images.
        background: the value of background pixels.
        valid: boolean mask of pixels with data (``True`` = valid), same shape as ``labels``.

    Returns:
        A new array of the same shape and dtype; ``labels`` is not modified.

    Raises:
        UsageError: not a 2D/3D integer array, or a spacing/valid that does not fit it.
    """
    array = np.asarray(labels)
    inside = _check_inputs(array, spacing, valid)
    if not config.changes_labels:
        return array.copy()
    work = array.copy() if inside is None else np.where(inside, array, array.dtype.type(background))
    connectivity = array.ndim if config.connectivity is None else config.connectivity
    connectivity = min(connectivity, array.ndim)
    max_removed = _largest_removed_size(config.min_object_size, voxel_volume(spacing))
    if config.keep_largest_foreground:
        foreground = work != background
        work[foreground & ~largest_component(foreground, connectivity)] = background
    for value in np.unique(work):
        if value == background:
            continue
        mask = _clean_class(work == value, config, connectivity, max_removed)
        work[(work == value) & ~mask] = background
        if config.fill_holes:
            work[ndi.binary_fill_holes(mask) & (work == background)] = value
        if int(value) in config.keep_largest:
            work[(work == value) & ~largest_component(work == value, connectivity)] = background
    result = work if inside is None else np.where(inside, work, array)
    logger.debug("post-processing changed %d pixels", int(np.count_nonzero(result != array)))
    return result


def _check_inputs(
    labels: np.ndarray, spacing: Sequence[float], valid: np.ndarray | None
) -> np.ndarray | None:
    if labels.ndim not in (2, 3) or labels.dtype.kind not in "iu":
        raise UsageError(
            f"labels must be a 2D or 3D integer array, got {labels.dtype} of shape {labels.shape}"
        )
    if len(spacing) != labels.ndim:
        raise UsageError(
            f"spacing {tuple(spacing)} has {len(spacing)} values for {labels.ndim}D labels"
        )
    voxel_volume(spacing)
    if valid is None:
        return None
    inside = np.asarray(valid, dtype=bool)
    if inside.shape != labels.shape:
        raise UsageError(f"valid mask {inside.shape} does not match labels {labels.shape}")
    return inside


def _largest_removed_size(min_object_size: float, unit: float) -> int:
    """Largest pixel count whose physical size is below ``min_object_size`` (0 = none)."""
    if min_object_size <= 0:
        return 0
    ratio = min_object_size / unit
    # A size that equals the threshold up to rounding (e.g. 0.1 mm × 1000) is kept.
    return max(0, math.ceil(ratio * (1 - 1e-9)) - 1)


def _clean_class(
    mask: np.ndarray, config: PostprocessConfig, connectivity: int, max_removed: int
) -> np.ndarray:
    """Opening then small-object removal of one class's mask."""
    if config.opening_radius > 0:
        shape = disk if mask.ndim == 2 else ball
        mask = opening(mask, shape(config.opening_radius), mode="ignore")  # type: ignore[no-untyped-call]
    if max_removed > 0:
        mask = remove_small_objects(mask, max_size=max_removed, connectivity=connectivity)
    return np.asarray(mask, dtype=bool)


def largest_component(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """The largest connected component of ``mask`` (the first one on ties)."""
    components = label_components(mask, connectivity=connectivity)  # type: ignore[no-untyped-call]
    sizes = np.bincount(components.ravel())
    if sizes.size <= 2:
        return mask
    sizes[0] = 0
    return np.asarray(components == int(np.argmax(sizes)))
