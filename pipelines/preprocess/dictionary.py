"""Dictionary transforms driven by a plan: thin keyed wrappers over :mod:`.array`.

Like MONAI's own, each wrapper copies the dict, loops over its keys and never mutates the
input in place. Labels are ``(1, *S)``; images ``(C, *S)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandCropByPosNegLabeld, Randomizable

from data_contracts import ChannelNormalization
from pipelines.preprocess.array import (
    IGNORE_INDEX,
    map_labels,
    mark_nonfinite,
    normalize_channels,
    patch_centre_indices,
)

__all__ = [
    "InstancesToClassesd",
    "MapLabelsd",
    "MarkNonFinited",
    "NormalizeChannelsd",
    "PatchCentresd",
    "RandClassPatchd",
]

FG_KEY = "_fg_indices"
BG_KEY = "_bg_indices"
CLASSES_KEY = "_class_indices"


def _source(value: Any) -> str | None:
    meta = getattr(value, "meta", None)
    name = meta.get("filename_or_obj") if isinstance(meta, dict) else None
    return str(name) if name else None


class NormalizeChannelsd(MapTransform):
    """Normalise each image channel as the plan says (:func:`.array.normalize_channels`).

    Args:
        keys: image keys.
        normalization: one entry per channel (``plan.normalization``).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        normalization: Sequence[ChannelNormalization],
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalization = tuple(normalization)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = normalize_channels(torch.as_tensor(d[key]), self.normalization)
        return d


class MapLabelsd(MapTransform):
    """Label values → class indices in plan order; ignore value → ``IGNORE_INDEX`` (int64).

    Args:
        keys: label keys.
        class_values: ``plan.class_values``.
        ignore_value: ``plan.ignore_value``.
        allow_missing_keys: skip absent keys (inference items have no label).
    """

    def __init__(
        self,
        keys: KeysCollection,
        class_values: Sequence[int],
        ignore_value: int | None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.class_values = tuple(class_values)
        self.ignore_value = ignore_value

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            d[key] = map_labels(label, self.class_values, self.ignore_value, source=_source(label))
        return d


class InstancesToClassesd(MapTransform):
    """Instance map → background (0) / interior (1) / boundary (2) classes (the nuclei route).

    The instance map itself is kept under ``instance_key`` (int64, ignored pixels → 0) for
    instance metrics and Mask R-CNN targets. Pixels equal to ``ignore_value`` become
    ``IGNORE_INDEX`` in the class map.

    Args:
        keys: label keys holding ``(1, *S)`` instance maps (0 background, 1..N objects).
        ignore_value: ``plan.ignore_value``.
        boundary_width: boundary thickness in pixels.
        instance_key: where the instance map is copied to; ``None`` not to keep it.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ignore_value: int | None = None,
        boundary_width: int = 1,
        instance_key: str | None = "instances",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ignore_value = ignore_value
        self.boundary_width = boundary_width
        self.instance_key = instance_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from pipelines.instance_targets import instances_to_three_class  # written alongside, lazily

        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            instances = np.asarray(label.detach().cpu()).astype(np.int64)
            ignored = (
                np.zeros_like(instances, bool)
                if self.ignore_value is None
                else instances == self.ignore_value
            )
            instances[ignored] = 0
            classes = np.stack(
                [instances_to_three_class(m, self.boundary_width) for m in instances]
            )
            classes = np.where(ignored, IGNORE_INDEX, classes).astype(np.int64)
            d[key] = _like(label, classes)
            if self.instance_key is not None:
                d[self.instance_key] = _like(label, instances)
        return d


def _like(reference: torch.Tensor, array: np.ndarray) -> torch.Tensor:
    """``array`` as a tensor carrying ``reference``'s metadata when it has some."""
    tensor = torch.as_tensor(array)
    if hasattr(reference, "meta"):
        out = reference.clone().to(tensor.dtype)
        out.copy_(tensor)
        return out
    return tensor


class MarkNonFinited(MapTransform):
    """Set the label to ``IGNORE_INDEX`` wherever any image channel is NaN/inf (nodata), or
    only where every channel is.

    Run it after label mapping and before normalisation (which turns non-finite values to 0).

    Args:
        keys: label keys.
        image_key: the image whose non-finite pixels are looked at.
        every_channel: ignore only pixels where every channel is non-finite (a plan that
            predicts pixels with a missing channel, ``missing_channels="predict"``).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        *,
        every_channel: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.every_channel = every_channel

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = torch.as_tensor(d[self.image_key])
        for key in self.key_iterator(d):
            d[key] = mark_nonfinite(
                image, torch.as_tensor(d[key]), every_channel=self.every_channel
            )
        return d


class PatchCentresd(MapTransform):
    """Store the voxels patch centres are drawn from (deterministic, so cacheable).

    One index list per foreground class and one for the rest (see
    :func:`.array.patch_centre_indices`), read by :class:`RandClassPatchd`.

    Args:
        keys: the label key (class indices).
        foreground: the foreground class indices (``foreground_indices(plan.class_values)``).
        max_count: indices kept per list (a seeded subsample).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        foreground: Sequence[int],
        max_count: int = 100_000,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.foreground = list(foreground)
        self.max_count = max_count

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[CLASSES_KEY], d[BG_KEY] = patch_centre_indices(
                torch.as_tensor(d[key]), self.foreground, max_count=self.max_count
            )
        return d


class RandClassPatchd(Randomizable, MapTransform):
    """One random patch; with probability ``oversample`` centred on a class chosen uniformly.

    nnU-Net's foreground oversampling: a patch is centred, with probability ``oversample``, on a
    voxel of one foreground class picked uniformly among those the case holds, so a rare class
    is seen as often as a common one; otherwise on a voxel of the rest (the background, or any
    labelled voxel where every class is foreground). Wraps MONAI's ``RandCropByPosNegLabeld``
    (with the lists of :class:`PatchCentresd`) and returns a single dict instead of a list, so
    any ``DataLoader`` collates the samples.

    Args:
        keys: keys to crop (image, label, instances…).
        label_key: the label the indices were computed from.
        spatial_size: patch size; inputs must be at least this large (pad first).
        oversample: ``plan.foreground_oversample``.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        spatial_size: Sequence[int],
        oversample: float,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.cropper = RandCropByPosNegLabeld(
            keys=keys,
            label_key=label_key,
            spatial_size=list(spatial_size),
            pos=oversample,
            neg=1.0 - oversample,
            num_samples=1,
            fg_indices_key=FG_KEY,
            bg_indices_key=BG_KEY,
            allow_missing_keys=allow_missing_keys,
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandClassPatchd:
        """Seed the class choice and the wrapped cropper (``Compose`` and workers call this)."""
        super().set_random_state(None if seed is None else (seed + 1) % 2**32, state)
        self.cropper.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """The class is chosen in ``__call__``; the rest of the randomness is the cropper's."""

    def _class_voxels(self, per_class: Sequence[torch.Tensor]) -> torch.Tensor:
        present = [voxels for voxels in per_class if voxels.numel()]
        if not present:
            return torch.zeros(0, dtype=torch.int64)
        return present[int(self.R.randint(len(present)))]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[FG_KEY] = self._class_voxels(d.pop(CLASSES_KEY))
        with warnings.catch_warnings():
            # A case without foreground (or background) falls back to the other kind.
            warnings.filterwarnings("ignore", message="Num foregrounds")
            patches = self.cropper(d)
        patch: dict[Hashable, Any] = patches[0]
        return patch
