"""Segment one volume or 2D image that fits in memory, back in the source's own grid.

Volumes go through the plan's deterministic preprocessing (load, reorient to RAS, resample to
the target spacing, crop to the non-zero box, normalise), sliding windows, then MONAI's
``Invertd`` undoes the crop, resampling and reorientation on the *probabilities* (bilinear), so
that labels, taken by argmax afterwards, are never interpolated. A volume plan made for 2D runs
slice by slice along the last (RAS: superior) axis. 2D images (PNG/TIFF) need no inversion:
their preprocessing does not move pixels.

Instance plans (U-Net with an interior/boundary head) turn the probabilities into instance ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from data_contracts import (
    ChannelCountError,
    FileQuality,
    InferenceOptions,
    TrainingPlan,
)
from pipelines.infer.confidence import ConfidenceAccumulator
from pipelines.infer.loaded_model import LoadedModel, network_on
from pipelines.infer.sliding import (
    Predictor,
    choose_device,
    probability_predictor,
    sliding_probabilities,
    window_options,
)
from pipelines.instance_targets import three_class_to_instances
from pipelines.io.nifti import open_volume
from pipelines.postprocess.decision import class_indices
from pipelines.preprocess.loaders import LoadImage2Dd
from pipelines.preprocess.transforms import IMAGE_KEY, planar_transforms, volume_transforms

__all__ = [
    "Prediction",
    "class_values_of",
    "predict_image",
    "predict_volume",
]

_PRED_KEY = "pred"


@dataclass(frozen=True)
class Prediction:
    """A model's output for one case, in the source grid.

    Attributes:
        classes: class indices ``(*S)`` (0..K-1, plan order) — or instance ids for instance plans.
        probabilities: ``(K, *S)`` float32, or ``None`` when not kept.
        instance: ``classes`` holds instance ids (0 background, 1..N objects).
        quality: the confidence measures of the probabilities.
        entropy: ``S``-shaped normalised entropy when asked for (``options.uncertainty``).
    """

    classes: np.ndarray
    probabilities: np.ndarray | None
    instance: bool = False
    quality: FileQuality | None = None
    entropy: np.ndarray | None = None


def class_values_of(classes: np.ndarray, plan: TrainingPlan) -> np.ndarray:
    """Class indices → the label values of the training files (``plan.class_values``)."""
    values = np.asarray(plan.class_values, dtype=np.int64)
    dtype = np.uint8 if values.max(initial=0) <= 255 else np.uint16
    return np.asarray(values[classes], dtype=dtype)


def _check_channels(count: int, plan: TrainingPlan, path: Path, names: Sequence[str]) -> None:
    if count != plan.in_channels:
        expected = f" ({', '.join(names)})" if names else ""
        raise ChannelCountError(
            f"has {count} channel(s); the model expects {plan.in_channels}{expected}", path=path
        )


def _volume_channels(paths: Sequence[str | Path]) -> int:
    """Channels of a case from the headers: 1 per 3D file, the 4th dimension of a 4D file."""
    shapes = [open_volume(path).shape for path in paths]
    return sum(shape[3] if len(shape) > 3 else 1 for shape in shapes)


def _slicewise(
    predictor: Predictor,
    image: torch.Tensor,
    plan: TrainingPlan,
    options: InferenceOptions,
    device: torch.device,
) -> torch.Tensor:
    """Probabilities ``(K, X, Y, Z)`` of a volume, one axial slice ``(C, X, Y)`` at a time."""
    n_classes = len(plan.class_values)
    slices = [
        sliding_probabilities(
            predictor, image[..., z], plan.patch_size, n_classes, options, device=device
        )
        for z in range(image.shape[-1])
    ]
    return torch.stack(slices, dim=-1)


def _finish(
    probabilities: torch.Tensor,
    plan: TrainingPlan,
    keep: bool,
    uncertainty: bool = False,
    foreground_cut: float | None = None,
) -> Prediction:
    array = probabilities.numpy().astype(np.float32, copy=False)
    confidence = ConfidenceAccumulator()
    entropy = confidence.add(array)
    quality, kept = confidence.quality(), array if keep else None
    uncertain = entropy if uncertainty else None
    if plan.label_kind == "instance":
        instances = three_class_to_instances(array, min_seed_size=plan.min_instance_seed)
        return Prediction(instances, kept, instance=True, quality=quality, entropy=uncertain)
    classes = class_indices(array, foreground_cut=foreground_cut)
    return Prediction(classes, kept, quality=quality, entropy=uncertain)


def predict_volume(
    model: LoadedModel,
    channels: Sequence[str | Path],
    options: InferenceOptions | None = None,
    *,
    keep_probabilities: bool = False,
    foreground_cut: float | None = None,
) -> Prediction:
    """Segment one NIfTI case (one file per channel, or one 4D file) in its source grid.

    Args:
        model: a loaded volume model.
        channels: the case's channel files, in the model's channel order.
        options: sliding windows (unset overlap and batch size: the kind's defaults), TTA,
            device (default: CUDA when present).
        keep_probabilities: also return the probabilities (source grid).
        foreground_cut: decide the foreground first, where ``1 − P(class 0)`` reaches this
            (:func:`pipelines.postprocess.decision.foreground_cut`); ``None``: the argmax.

    Raises:
        ChannelCountError: the case has another number of channels than the model.
        InputError: a file cannot be read.
    """
    options = window_options(options, model.plan.kind)
    plan, target = model.plan, choose_device(options.device or model.device)
    _check_channels(_volume_channels(channels), plan, Path(channels[0]), model.channel_names)
    transform: Compose = volume_transforms(plan, train=False)
    item = transform({IMAGE_KEY: [str(path) for path in channels]})
    image = item[IMAGE_KEY]
    predictor = probability_predictor(
        network_on(model, target),
        model.spec,
        channels_last=options.channels_last,
        amp=options.amp,
    )
    plain = image.as_tensor() if isinstance(image, MetaTensor) else image
    if plan.spatial_dims == 2:
        probabilities = _slicewise(predictor, plain, plan, options, target)
    else:
        n_classes = len(plan.class_values)
        probabilities = sliding_probabilities(
            predictor, plain, plan.patch_size, n_classes, options, device=target
        )
    item[_PRED_KEY] = MetaTensor(
        probabilities, meta=dict(image.meta), applied_operations=list(image.applied_operations)
    )
    inverted = Invertd(_PRED_KEY, transform=transform, orig_keys=IMAGE_KEY, nearest_interp=False)(
        item
    )[_PRED_KEY]
    source = torch.as_tensor(inverted).float()
    return _finish(source, plan, keep_probabilities, options.uncertainty, foreground_cut)


def predict_image(
    model: LoadedModel,
    path: str | Path,
    options: InferenceOptions | None = None,
    *,
    keep_probabilities: bool = False,
    foreground_cut: float | None = None,
) -> Prediction:
    """Segment one 2D image (PNG/TIFF) held in memory; pixels keep their places.

    ``options``, ``keep_probabilities``, ``foreground_cut``: as for :func:`predict_volume`.

    Raises:
        ChannelCountError: the image's channels cannot be matched to the model's.
        InputError: the file cannot be read.
    """
    options = window_options(options, model.plan.kind)
    plan, target = model.plan, choose_device(options.device or model.device)
    item = planar_transforms(plan, LoadImage2Dd, train=False)({IMAGE_KEY: [str(path)]})
    image = item[IMAGE_KEY]
    _check_channels(image.shape[0], plan, Path(path), model.channel_names)
    predictor = probability_predictor(
        network_on(model, target),
        model.spec,
        channels_last=options.channels_last,
        amp=options.amp,
    )
    plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    probabilities = sliding_probabilities(
        predictor, plain, plan.patch_size, len(plan.class_values), options, device=target
    )
    return _finish(probabilities, plan, keep_probabilities, options.uncertainty, foreground_cut)
