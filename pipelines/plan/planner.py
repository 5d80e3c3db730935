"""``make_plan``: from a fingerprint to a :class:`TrainingPlan`, nnU-Net style.

Rules (each one overridable afterwards with :func:`apply_overrides`); what differs by data
kind (dimensionality, resampling, normalisation) comes from its adapter (:mod:`pipelines.kinds`):

- **Dimensionality**: volumes are planned in 3D, rasters and images in 2D. A volume forced to
  2D is trained on axial slices (the S axis of RAS); its target spacing is the in-plane (R, A)
  one and the through-plane spacing stays native.
- **Target spacing** (volumes): the median spacing per axis; when the data is strongly
  anisotropic (largest/smallest median spacing > 3) the low-resolution axis takes the 10th
  percentile of its spacings instead, as nnU-Net does. Order: R, A, S (see
  :mod:`pipelines.plan.fingerprint`). 2D data keeps its native grid (``None``).
- **Patch size**: volumes start from the median shape after resampling, rounded up to a
  multiple of 16 (3D, 4 poolings) or 32 (2D, 5 poolings); 2D data starts from 256×256 capped to
  the median image size. While :func:`estimate_memory_mb` for a batch of 2 exceeds the budget,
  the physically largest axis shrinks by one multiple.
- **Batch size**: as many patches as fit the budget, at most 5 % of the dataset's voxels per
  batch, never fewer than 2.
- **Normalisation** per channel: CT channels (by name or Hounsfield-like range) → ``ct`` with the
  foreground [p0.5, p99.5] window and foreground mean/std; other volume channels → per-image
  ``zscore_nonzero``; raster bands and image channels → ``percentile`` with p0.5/p99.5.
- **Classes**: label values sorted, background (0) first; instance labels become the
  background/interior/boundary classes of the nuclei route.
- **Post-processing**: keep only the largest foreground component when the training labels
  hold one foreground region per case (:mod:`pipelines.plan.components`).
- **Missing channels**: when at least :data:`PARTIAL_NODATA_SHARE` of the sampled pixels have
  some channels nodata and others not (a band with gaps of its own), such pixels are trained on
  and predicted, the missing channel set to 0 after normalisation (``predict``); otherwise
  a pixel with any channel missing is nodata, as GDAL's per-band masks say (``nodata``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from data_contracts import (
    ChannelNormalization,
    ChannelStats,
    ConfigError,
    DatasetFingerprint,
    DatasetManifest,
    MissingChannels,
    TrainingPlan,
)
from pipelines.kinds import KindAdapter, kind_adapter
from pipelines.plan.components import planned_postprocess

__all__ = [
    "BASE_WIDTH",
    "INSTANCE_CLASS_NAMES",
    "PARTIAL_NODATA_SHARE",
    "estimate_memory_mb",
    "intensity_window",
    "make_plan",
    "patch_divisor",
]

logger = logging.getLogger(__name__)

BASE_WIDTH = 32
"""Features of the first U-Net level the memory estimate assumes."""
_MAX_WIDTH = 320
_MAPS_PER_LEVEL = 12
_BYTES_PER_VALUE = 4
_DEPTH = {2: 5, 3: 4}
_PATCH_2D = 256
_ANISOTROPY = 3.0
_DATASET_FRACTION = 0.05
_MIN_BATCH = 2
INSTANCE_CLASS_NAMES = ("background", "interior", "boundary")
PARTIAL_NODATA_SHARE = 0.01
"""Share of pixels with some (not all) channels missing from which the plan predicts them."""


def patch_divisor(spatial_dims: int) -> int:
    """Every patch axis is a multiple of this: 2**poolings (16 in 3D, 32 in 2D)."""
    return int(2 ** _DEPTH[spatial_dims])


def estimate_memory_mb(
    patch_size: Sequence[int], batch_size: int = 1, *, base_width: int = BASE_WIDTH
) -> float:
    """Activation memory of one training step of a U-Net, in MiB.

    Formula: ``batch × 4 bytes × 12 × Σ_l voxels / 2**(dims·l) × min(base·2**l, 320)`` over
    the levels l = 0..depth (depth 4 in 3D, 5 in 2D): every level keeps about 12 feature maps
    for the backward pass (two convolutions with normalisation and activation outputs, in the
    encoder and the decoder, plus the skip concatenation), in float32. For a 3D patch this is
    about ``voxels × base_width × 1.33 × 12 × 4 bytes × batch``. It is an estimate to compare
    patch sizes against a budget, not a measurement; weights and workspace are not included.

    Args:
        patch_size: spatial patch size (2 or 3 axes), voxels.
        batch_size: patches per step.
        base_width: features of the first level.

    Returns:
        Estimated MiB.
    """
    dims = len(patch_size)
    voxels = float(np.prod(patch_size))
    per_voxel = sum(
        min(base_width * 2**level, _MAX_WIDTH) / 2 ** (dims * level)
        for level in range(_DEPTH[dims] + 1)
    )
    return float(batch_size * _BYTES_PER_VALUE * _MAPS_PER_LEVEL * voxels * per_voxel / 2**20)


def _target_spacing(fingerprint: DatasetFingerprint) -> tuple[float, ...]:
    spacings = np.array(fingerprint.spacings or (fingerprint.median_spacing,), dtype=float)
    target = np.median(spacings, axis=0)
    if target.max() / target.min() > _ANISOTROPY:
        low_res = int(np.argmax(target))
        target[low_res] = np.percentile(spacings[:, low_res], 10)
    return tuple(float(v) for v in target)


def _resampled_shapes(
    adapter: KindAdapter,
    manifest: DatasetManifest,
    fingerprint: DatasetFingerprint,
    target: Sequence[float],
) -> np.ndarray:
    """Per labelled case, shape after resampling to ``target`` (network axis order; (n, 3))."""
    rows = []
    for case in manifest.labelled_cases:
        shape, spacing = adapter.grid_axes(case.geometry)
        rows.append(np.array(shape) * np.array(spacing) / np.array(target))
    if not rows:
        median = np.array(fingerprint.median_shape) * np.array(fingerprint.median_spacing)
        rows.append(median / np.array(target))
    return np.round(np.array(rows))


def _round_up(value: float, divisor: int) -> int:
    return max(divisor, math.ceil(value / divisor) * divisor)


def _fit_patch(
    patch: list[int], spacing: Sequence[float], divisor: int, budget_mb: int
) -> tuple[int, ...]:
    """Shrink the physically largest axis by ``divisor`` until a batch of 2 fits the budget."""
    while estimate_memory_mb(patch, _MIN_BATCH) > budget_mb:
        shrinkable = [i for i, size in enumerate(patch) if size > divisor]
        if not shrinkable:
            logger.warning(
                "the smallest patch %s needs %.0f MiB for a batch of %d, over the %d MiB budget",
                patch,
                estimate_memory_mb(patch, _MIN_BATCH),
                _MIN_BATCH,
                budget_mb,
            )
            break
        axis = max(shrinkable, key=lambda i: (patch[i] * spacing[i], patch[i]))
        patch[axis] -= divisor
    return tuple(patch)


def _batch_size(patch: Sequence[int], budget_mb: int, dataset_voxels: float) -> int:
    fits = int(budget_mb // max(estimate_memory_mb(patch, 1), 1e-9))
    cap = int(_DATASET_FRACTION * dataset_voxels // float(np.prod(patch)))
    return max(_MIN_BATCH, min(fits, cap))


_SEED_FRACTION = 0.1


def intensity_window(stats: ChannelStats) -> tuple[float, float]:
    """``(p0.5, p99.5)`` of a channel, widened to one unit when the channel is constant."""
    lower, upper = stats.percentile_00_5, stats.percentile_99_5
    return lower, upper if upper > lower else lower + 1.0


def _normalization(
    adapter: KindAdapter, fingerprint: DatasetFingerprint
) -> tuple[ChannelNormalization, ...]:
    return tuple(adapter.channel_normalization(stats) for stats in fingerprint.channels)


def _classes(manifest: DatasetManifest) -> tuple[tuple[int, ...], tuple[str, ...]]:
    if manifest.label_kind == "instance":
        return (0, 1, 2), INSTANCE_CLASS_NAMES
    names = {value: name for name, value in manifest.labels.items()}
    if not names:
        for case in manifest.labelled_cases:
            for value in case.label_stats.values if case.label_stats else ():
                names.setdefault(value, "background" if value == 0 else f"class_{value}")
    names.pop(manifest.ignore_value, None)  # type: ignore[arg-type]
    if not names:
        raise ConfigError(
            "the dataset declares no label values",
            path=manifest.source,
            hint="ingest with --labels name=value,...",
        )
    values = sorted(names, key=lambda v: (v != 0, v))
    return tuple(values), tuple(names[v] for v in values)


def _spatial_plan(
    adapter: KindAdapter,
    fingerprint: DatasetFingerprint,
    manifest: DatasetManifest,
    dims: int,
    budget_mb: int,
) -> tuple[tuple[float, ...] | None, tuple[int, ...], float]:
    """Target spacing, patch size and dataset voxels (after resampling)."""
    divisor = patch_divisor(dims)
    if adapter.target_spacing_unit is not None:  # a kind resampled to a target spacing
        target = _target_spacing(fingerprint)
        shapes = _resampled_shapes(adapter, manifest, fingerprint, target)
        start = [_round_up(v, divisor) for v in np.median(shapes, axis=0)[:dims]]
        patch = _fit_patch(start, target[:dims], divisor, budget_mb)
        return target[:dims], patch, float(np.prod(shapes, axis=1).sum())
    median = fingerprint.median_shape
    start = [max(divisor, min(_PATCH_2D, size) // divisor * divisor) for size in median]
    patch = _fit_patch(start, (1.0, 1.0), divisor, budget_mb)
    return None, patch, float(np.prod(median)) * max(fingerprint.n_cases, 1)


def make_plan(
    fingerprint: DatasetFingerprint,
    manifest: DatasetManifest,
    *,
    memory_budget_mb: int = 2048,
    spatial_dims: Literal[2, 3] | None = None,
) -> TrainingPlan:
    """Derive a training plan from a fingerprint (see the module docstring for the rules).

    Args:
        fingerprint: from :func:`pipelines.plan.compute_fingerprint` on ``manifest``.
        manifest: the dataset (labels, ignore value, per-case geometry).
        memory_budget_mb: activation memory (MiB) the patch and batch size must fit.
        spatial_dims: force 2D (volumes: axial slices) or 3D; ``None`` decides from the kind.

    Returns:
        The plan.

    Raises:
        ConfigError: 3D asked for 2D data, or the dataset declares no label values.
    """
    adapter = kind_adapter(fingerprint.kind)
    dims = spatial_dims or adapter.spatial_dims
    if dims > adapter.spatial_dims:
        raise ConfigError(f"{fingerprint.kind} data cannot be planned in 3D", hint="use 2D")
    target, patch, dataset_voxels = _spatial_plan(
        adapter, fingerprint, manifest, dims, memory_budget_mb
    )
    class_values, class_names = _classes(manifest)
    return TrainingPlan(
        dataset_name=fingerprint.dataset_name,
        kind=fingerprint.kind,
        label_kind=manifest.label_kind,
        spatial_dims=dims,
        target_spacing=target,
        patch_size=patch,
        batch_size=_batch_size(patch, memory_budget_mb, dataset_voxels),
        in_channels=len(fingerprint.channels),
        class_values=class_values,
        class_names=class_names,
        ignore_value=manifest.ignore_value,
        normalization=_normalization(adapter, fingerprint),
        memory_budget_mb=memory_budget_mb,
        min_instance_seed=_min_instance_seed(fingerprint),
        postprocess=planned_postprocess(fingerprint),
        missing_channels=_missing_channels(fingerprint),
    )


def _missing_channels(fingerprint: DatasetFingerprint) -> MissingChannels:
    """``predict`` where the training data itself shows pixels with a channel missing: the
    network then learns them from labelled examples (26 % of the labelled pixels of the
    Landsat 7 land-cover tiles, band 7 only); a network that never saw one guesses."""
    several = len(fingerprint.channels) >= 2
    return (
        "predict"
        if several and fingerprint.partial_nodata_fraction >= PARTIAL_NODATA_SHARE
        else "nodata"
    )


def _min_instance_seed(fingerprint: DatasetFingerprint) -> int:
    """A tenth of the median object: smaller interior regions are noise, not objects."""
    if not fingerprint.median_object_size:
        return 0
    return round(_SEED_FRACTION * fingerprint.median_object_size)
