"""Array operations behind the dictionary transforms: normalisation, label mapping, sampling.

Each function takes and returns torch tensors (MONAI ``MetaTensor`` subclasses keep their
metadata), channel first: images ``(C, *S)``, labels ``(1, *S)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from data_contracts import ChannelNormalization, LabelValueError

__all__ = [
    "IGNORE_INDEX",
    "foreground_indices",
    "map_labels",
    "mark_nonfinite",
    "normalize_channel",
    "normalize_channels",
    "patch_centre_indices",
]

IGNORE_INDEX = -100
"""Label value of pixels that no loss or metric sees (nodata, ignore value), after mapping.

It is PyTorch's ``cross_entropy`` default and what ``seg_models.build_loss(ignore_index=...)``
and ``pipelines.train`` use."""

_EPS = 1e-8


def normalize_channel(x: torch.Tensor, norm: ChannelNormalization) -> torch.Tensor:
    """Normalise one channel ``(*S)`` as a :class:`ChannelNormalization` says.

    - ``ct``: clip to [lower, upper], then ``(x - mean) / std``.
    - ``zscore``: ``(x - mean) / std`` with the plan's (dataset) statistics.
    - ``zscore_nonzero``: mean and std of this image inside its non-zero, finite mask (MRI,
      nnU-Net's per-case z-score); the plan's mean/std are not used; outside the mask → 0.
    - ``percentile``: scale [lower, upper] to [0, 1] and clip (per-image p0.5/p99.5 when the
      bounds are unset).
    - ``none``: unchanged.

    Non-finite values stay non-finite (callers mask them afterwards).
    """
    x = x.float()
    if norm.scheme == "ct":
        low = -torch.inf if norm.lower is None else norm.lower
        high = torch.inf if norm.upper is None else norm.upper
        return (x.clamp(low, high) - norm.mean) / norm.std
    if norm.scheme == "zscore":
        return (x - norm.mean) / norm.std
    if norm.scheme == "zscore_nonzero":
        mask = (x != 0) & torch.isfinite(x)
        if int(mask.sum()) < 2:
            return torch.where(mask, x, torch.zeros_like(x))
        inside = x[mask]
        mean, std = inside.mean(), inside.std().clamp(min=_EPS)
        return torch.where(mask, (x - mean) / std, torch.where(torch.isfinite(x), 0.0, x))
    if norm.scheme == "percentile":
        if norm.lower is not None and norm.upper is not None:
            low, high = norm.lower, norm.upper
        else:
            low, high = _percentiles(x)
        return ((x - low) / max(high - low, _EPS)).clamp(0.0, 1.0)
    return x


def _percentiles(x: torch.Tensor) -> tuple[float, float]:
    """p0.5 and p99.5 of the finite values of ``x`` ((0, 1) when there are none)."""
    finite = x[torch.isfinite(x)]
    if finite.numel() == 0:
        return 0.0, 1.0
    low, high = torch.quantile(finite, torch.tensor([0.005, 0.995])).tolist()
    return float(low), float(high)


def normalize_channels(image: torch.Tensor, norms: Sequence[ChannelNormalization]) -> torch.Tensor:
    """Normalise every channel of ``image`` ``(C, *S)``; non-finite results become 0.

    Raises:
        ValueError: the image does not have one channel per normalisation entry.
    """
    if image.shape[0] != len(norms):
        raise ValueError(
            f"image has {image.shape[0]} channels, the plan normalises {len(norms)}: "
            f"shape {tuple(image.shape)}"
        )
    out = image.float().clone()
    for channel, norm in enumerate(norms):
        out[channel] = normalize_channel(image[channel], norm)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def map_labels(
    label: torch.Tensor,
    class_values: Sequence[int],
    ignore_value: int | None,
    *,
    source: str | None = None,
) -> torch.Tensor:
    """File label values → class indices ``0..K-1`` (plan order); ignore → :data:`IGNORE_INDEX`.

    Values already equal to :data:`IGNORE_INDEX` (set by an earlier step) stay so.

    Args:
        label: ``(1, *S)`` label values (any dtype; floats must be integer-valued).
        class_values: label value of each class index.
        ignore_value: label value meaning "no label", or None.
        source: the label file, for the error message.

    Returns:
        ``(1, *S)`` int64 class indices.

    Raises:
        LabelValueError: the label holds a value that is neither a class nor the ignore value.
    """
    out = torch.full_like(label, IGNORE_INDEX, dtype=torch.int64)
    known = label == IGNORE_INDEX
    for index, value in enumerate(class_values):
        hit = label == value
        out[hit] = index
        known |= hit
    if ignore_value is not None:
        known |= label == ignore_value
    if not bool(known.all()):
        extra = sorted({float(v) for v in torch.unique(label[~known]).tolist()})[:10]
        raise LabelValueError(
            f"holds label values {extra} outside the plan's classes {list(class_values)}",
            path=source,
            hint="declare them at ingest (--labels) or set the plan's ignore_value",
        )
    return out


def mark_nonfinite(
    image: torch.Tensor, label: torch.Tensor, *, every_channel: bool = False
) -> torch.Tensor:
    """Label ``(1, *S)`` with :data:`IGNORE_INDEX` wherever any channel of ``image`` is NaN/inf
    (with ``every_channel``: wherever all of them are).

    Raises:
        ValueError: the spatial shapes differ.
    """
    if image.shape[1:] != label.shape[1:]:
        raise ValueError(
            f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in spatial shape"
        )
    finite = torch.isfinite(image)
    bad = ~(finite.any(dim=0, keepdim=True) if every_channel else finite.all(dim=0, keepdim=True))
    if not bool(bad.any()):
        return label
    return torch.where(bad, torch.full_like(label, IGNORE_INDEX), label)


def foreground_indices(class_values: Sequence[int]) -> list[int]:
    """Class indices of the foreground: every class but the one whose label value is 0.

    Datasets whose value 0 is ignored (land cover: 0 = no data) have no background class, so
    all their classes count.
    """
    return [index for index, value in enumerate(class_values) if value != 0]


def _subsample(index: NDArray[np.int64], max_count: int, rng: np.random.Generator) -> torch.Tensor:
    if index.size > max_count:
        index = np.sort(rng.choice(index, size=max_count, replace=False))
    return torch.from_numpy(index.astype(np.int64))


def patch_centre_indices(
    label: torch.Tensor,
    foreground: Sequence[int],
    *,
    max_count: int = 100_000,
    seed: int = 0,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Flat voxel indices that patch centres are drawn from, for a class-index label ``(1, *S)``.

    Returns one list per class of ``foreground`` (in that order) and the rest: the voxels of
    every other class (the background) or, when there are none (a dataset without a background
    class, a case that is all foreground), every labelled voxel; every voxel when nothing is
    labelled. Ignored voxels are never in a foreground list. Each list is subsampled to
    ``max_count`` with a fixed seed, so the result is deterministic and can be cached; int64
    tensors (``torch.load(weights_only=True)`` reads them back from a disk cache).
    """
    flat = np.asarray(label.detach().cpu()).reshape(-1)
    rng = np.random.default_rng(seed)
    per_class = [_subsample(np.flatnonzero(flat == index), max_count, rng) for index in foreground]
    labelled = flat != IGNORE_INDEX
    rest = labelled & ~np.isin(flat, np.asarray(list(foreground), dtype=flat.dtype))
    for candidate in (rest, labelled):
        if candidate.any():
            return per_class, _subsample(np.flatnonzero(candidate), max_count, rng)
    return per_class, torch.arange(flat.size, dtype=torch.int64)
