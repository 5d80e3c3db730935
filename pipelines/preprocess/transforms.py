"""MONAI dictionary-transform pipelines built from a :class:`TrainingPlan`.

Items are dicts with ``image`` (a list of channel files, stacked as channels), ``label`` (one
file; absent at inference) and ``case_id`` (see :func:`pipelines.preprocess.case_to_item`).

Every pipeline is a deterministic part (load, reorient, resample, crop to the non-zero region,
map labels, mark nodata, normalise), cacheable, followed for training by a random part (pad to
the patch, one patch centred with probability ``plan.foreground_oversample`` on a foreground
class picked uniformly among the case's, nnU-Net's oversampling, else on the background; flips
on every axis, 90° rotations in a plane where the patch is square; for volumes
intensity scaling/shifting, for planar data nnU-Net's rotation, scaling, noise, blur,
brightness and gamma). Output: ``image`` ``(C, *S)`` float32, ``label`` ``(1, *S)``
int64 class indices (``0..K-1`` in plan order, :data:`IGNORE_INDEX` where no loss may look),
and for instance labels ``instances`` ``(1, *S)`` int64 object ids.

Volumes are reoriented to RAS, so ``plan.target_spacing`` and ``plan.patch_size`` are in R, A,
S order (as :mod:`pipelines.plan` reports them). A volume plan forced to 2D trains on axial
slices: patches are ``(X, Y, 1)`` crops squeezed to ``(C, X, Y)``; its validation items stay
whole volumes. Each kind's adapter (:mod:`pipelines.kinds`) picks its pipeline: volumes
:func:`volume_transforms`, rasters and images :func:`planar_transforms` with their loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    LoadImaged,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Spacingd,
    SpatialPadd,
    SqueezeDimd,
)

from data_contracts import TrainingPlan
from pipelines.kinds import kind_adapter
from pipelines.preprocess.array import IGNORE_INDEX, foreground_indices
from pipelines.preprocess.dictionary import (
    InstancesToClassesd,
    MapLabelsd,
    MarkNonFinited,
    NormalizeChannelsd,
    PatchCentresd,
    RandClassPatchd,
)
from pipelines.preprocess.loaders import LoadImage2Dd, LoadRasterd

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_KEY",
    "INSTANCE_KEY",
    "LABEL_KEY",
    "plan_transforms",
    "planar_transforms",
    "volume_transforms",
]

IMAGE_KEY, LABEL_KEY, INSTANCE_KEY = "image", "label", "instances"
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_AUGMENT_PROB = 0.5
_INTENSITY_PROB = 0.15
#: Planar chips are rotated by any angle and scaled (per axis) by 0.8-1.25 this often, as
#: nnU-Net's 2D spatial transform; its border is mirrored, so no empty corners are learned.
_AFFINE_PROB = 0.3
_SCALE_RANGE = (-0.2, 0.25)


def _nonzero(image: torch.Tensor) -> torch.Tensor:
    """Foreground of the crop: any voxel that is non-zero (nnU-Net crops to the non-zero box)."""
    return image != 0


def _spatial_keys(plan: TrainingPlan) -> list[str]:
    keys = [IMAGE_KEY, LABEL_KEY]
    return [*keys, INSTANCE_KEY] if plan.label_kind == "instance" else keys


def _label_and_intensity(plan: TrainingPlan) -> list[Any]:
    """Map labels, mark nodata as ignored, normalise: the end of every deterministic part."""
    if plan.label_kind == "instance":
        labels: Any = InstancesToClassesd(
            LABEL_KEY, plan.ignore_value, instance_key=INSTANCE_KEY, allow_missing_keys=True
        )
    else:
        labels = MapLabelsd(
            LABEL_KEY, plan.class_values, plan.ignore_value, allow_missing_keys=True
        )
    return [
        labels,
        MarkNonFinited(
            LABEL_KEY,
            image_key=IMAGE_KEY,
            every_channel=plan.missing_channels == "predict",
            allow_missing_keys=True,
        ),
        NormalizeChannelsd(IMAGE_KEY, plan.normalization),
    ]


def _rotation_plane(patch: Sequence[int]) -> tuple[int, int] | None:
    for first, second in ((0, 1), (0, 2), (1, 2)):
        if second < len(patch) and patch[first] == patch[second]:
            return first, second
    return None


def _random_part(plan: TrainingPlan, crop_size: Sequence[int], squeeze: bool) -> list[Any]:
    """Pad, sample one patch, (squeeze a 2D slice of a volume), flip, rotate."""
    keys = _spatial_keys(plan)
    steps: list[Any] = [
        SpatialPadd(IMAGE_KEY, crop_size, value=0),
        SpatialPadd(LABEL_KEY, crop_size, value=IGNORE_INDEX),
        SpatialPadd(INSTANCE_KEY, crop_size, value=0, allow_missing_keys=True),
        PatchCentresd(LABEL_KEY, foreground_indices(plan.class_values)),
        RandClassPatchd(
            keys, LABEL_KEY, crop_size, plan.foreground_oversample, allow_missing_keys=True
        ),
    ]
    if squeeze:
        steps.append(SqueezeDimd(keys, dim=len(crop_size), allow_missing_keys=True))
    patch = plan.patch_size
    steps += [
        RandFlipd(keys, prob=_AUGMENT_PROB, spatial_axis=axis, allow_missing_keys=True)
        for axis in range(len(patch))
    ]
    plane = _rotation_plane(patch)
    if plane is not None:
        steps.append(
            RandRotate90d(
                keys, prob=_AUGMENT_PROB, max_k=3, spatial_axes=plane, allow_missing_keys=True
            )
        )
    return steps


def _planar_augmentation(plan: TrainingPlan) -> list[Any]:
    """nnU-Net's 2D augmentations beyond flips: rotation and scaling, then noise, blur,
    brightness and gamma on the image.

    Planar sets are often a few scenes or a few dozen images, which a network memorises within
    a CPU budget (``BENCHMARKS.md`` A2: on one 450² scene the validation Dice peaked after 50
    steps without them). Volumes keep flips, 90° rotations and intensity jitter only: within
    the same budgets they are still under-trained (A4), where more augmentation slows learning.
    """
    keys = _spatial_keys(plan)
    label_keys = keys[1:]
    modes = ("bilinear", *("nearest",) * len(label_keys))
    return [
        RandAffined(
            keys,
            prob=_AFFINE_PROB,
            rotate_range=(torch.pi,),
            scale_range=(_SCALE_RANGE, _SCALE_RANGE),
            mode=modes,
            padding_mode="reflection",
            allow_missing_keys=True,
        ),
        # resampling returns float labels; the loss and the instance maps want integers
        CastToTyped(label_keys, dtype=torch.int64, allow_missing_keys=True),
        RandGaussianNoised(IMAGE_KEY, prob=0.1, std=0.1),
        RandGaussianSmoothd(IMAGE_KEY, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), prob=0.1),
        RandScaleIntensityd(IMAGE_KEY, factors=0.25, prob=_INTENSITY_PROB),
        RandAdjustContrastd(IMAGE_KEY, gamma=(0.7, 1.5), prob=_INTENSITY_PROB),
    ]


def volume_transforms(plan: TrainingPlan, *, train: bool) -> Compose:
    """NIfTI volumes: load, RAS, resample, crop to non-zero, labels, normalise (+ augment).

    Args:
        plan: a volume plan.
        train: add the random patch sampling and augmentations.

    Returns:
        The pipeline; its deterministic steps come first (``CacheDataset`` caches them).
    """
    keys = [IMAGE_KEY, LABEL_KEY]
    steps: list[Any] = [
        LoadImaged(
            keys, reader="NibabelReader", ensure_channel_first=True, allow_missing_keys=True
        ),
        Orientationd(keys, axcodes="RAS", labels=_RAS_LABELS, allow_missing_keys=True),
    ]
    if plan.target_spacing is not None:
        pixdim = (*plan.target_spacing, *(-1.0,) * (3 - len(plan.target_spacing)))
        steps.append(
            Spacingd(keys, pixdim=pixdim, mode=("bilinear", "nearest"), allow_missing_keys=True)
        )
    steps.append(
        CropForegroundd(
            keys,
            source_key=IMAGE_KEY,
            select_fn=_nonzero,
            allow_smaller=True,
            start_coord_key=None,
            end_coord_key=None,
            allow_missing_keys=True,
        )
    )
    steps += _label_and_intensity(plan)
    if train:
        slices = plan.spatial_dims == 2
        crop_size = (*plan.patch_size, 1) if slices else plan.patch_size
        steps += _random_part(plan, crop_size, squeeze=slices)
        steps += [
            RandScaleIntensityd(IMAGE_KEY, factors=0.1, prob=_INTENSITY_PROB),
            RandShiftIntensityd(IMAGE_KEY, offsets=0.1, prob=_INTENSITY_PROB),
        ]
    return Compose(steps)


def planar_transforms(
    plan: TrainingPlan, loader: type[LoadRasterd | LoadImage2Dd], *, train: bool
) -> Compose:
    """2D rasters and images: read with ``loader``, labels, normalise (+ chips).

    Args:
        plan: a raster or image plan.
        loader: :class:`LoadRasterd` (GeoTIFF bands, nodata → NaN → ignored) or
            :class:`LoadImage2Dd` (PNG/TIFF, alpha dropped, channels matched to the plan).
        train: add class-balanced chip sampling (chips are centred on labelled pixels only),
            flips, 90° rotations and :func:`_planar_augmentation`.
    """
    steps: list[Any] = [
        loader([IMAGE_KEY, LABEL_KEY], IMAGE_KEY, plan.in_channels, allow_missing_keys=True),
        *_label_and_intensity(plan),
    ]
    if train:
        steps += _random_part(plan, plan.patch_size, squeeze=False)
        steps += _planar_augmentation(plan)
    return Compose(steps)


def plan_transforms(plan: TrainingPlan, *, train: bool) -> Compose:
    """The pipeline for the plan's kind, from its adapter (:mod:`pipelines.kinds`)."""
    return kind_adapter(plan.kind).transforms(plan, train=train)
