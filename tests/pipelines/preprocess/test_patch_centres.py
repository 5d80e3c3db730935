"""Patch centres: nnU-Net's class-balanced oversampling (PatchCentresd + RandClassPatchd)."""

from __future__ import annotations

import torch
from monai.transforms import Compose

from pipelines.preprocess.array import IGNORE_INDEX, foreground_indices, patch_centre_indices
from pipelines.preprocess.dictionary import PatchCentresd, RandClassPatchd

PATCH = (8, 8)


def _label() -> torch.Tensor:
    """64² class indices: background, a large class 1 block, a single voxel of class 2."""
    label = torch.zeros((1, 64, 64), dtype=torch.int64)
    label[0, 40:60, 40:60] = 1
    label[0, 10, 10] = 2
    label[0, :, 63] = IGNORE_INDEX
    return label


def _sampler(foreground: list[int], oversample: float, seed: int = 0) -> Compose:
    keys = ["image", "label"]
    steps = [
        PatchCentresd("label", foreground),
        RandClassPatchd(keys, "label", PATCH, oversample),
    ]
    return Compose(steps).set_random_state(seed)


def _share_holding(sampler: Compose, label: torch.Tensor, index: int, draws: int = 400) -> float:
    item = {"image": label.float(), "label": label}
    hits = sum(bool((sampler(item)["label"] == index).any()) for _ in range(draws))
    return hits / draws


def test_lists_split_foreground_classes_and_leave_out_ignored_voxels() -> None:
    label = _label()
    per_class, rest = patch_centre_indices(label, [1, 2])
    flat = label.reshape(-1)
    assert [int(v.numel()) for v in per_class] == [400, 1]
    assert set(flat[per_class[0]].tolist()) == {1} and flat[per_class[1]].tolist() == [2]
    assert set(flat[rest].tolist()) == {0}
    assert int(rest.numel()) == 64 * 63 - 401


def test_without_a_background_class_the_rest_is_every_labelled_voxel() -> None:
    label = _label()
    per_class, rest = patch_centre_indices(label, [0, 1, 2])
    assert len(per_class) == 3
    assert int(rest.numel()) == 64 * 63 and IGNORE_INDEX not in label.reshape(-1)[rest].tolist()
    nothing = torch.full((1, 4, 4), IGNORE_INDEX)
    assert patch_centre_indices(nothing, [1])[1].tolist() == list(range(16))


def test_lists_are_capped_by_a_seeded_subsample() -> None:
    label = _label()
    first = patch_centre_indices(label, [1], max_count=50)
    again = patch_centre_indices(label, [1], max_count=50)
    assert int(first[0][0].numel()) == 50 and int(first[1].numel()) == 50
    assert torch.equal(first[0][0], again[0][0]) and torch.equal(first[1], again[1])


def test_foreground_leaves_out_only_the_class_of_value_zero() -> None:
    assert foreground_indices((0, 1, 4)) == [1, 2]
    assert foreground_indices((1, 2, 3)) == [0, 1, 2]


def test_a_rare_class_is_centred_as_often_as_a_common_one() -> None:
    label = _label()
    share = _share_holding(_sampler([1, 2], oversample=1.0), label, index=2)
    # one voxel of 4,000: picked as a class half of the time
    assert 0.4 < share < 0.6


def test_the_rest_is_sampled_by_area_without_a_background_class() -> None:
    """Land cover (value 0 is nodata): class index 0 is a class like the others, not background."""
    label = torch.full((1, 64, 64), 2, dtype=torch.int64)
    label[0, 20:24, 20:24] = 0
    share = _share_holding(_sampler([0, 1, 2], oversample=0.0), label, index=0)
    # 16 of 4,096 voxels: a patch reaches them ~4 % of the time (it always did before the fix)
    assert share < 0.2
    balanced = _share_holding(_sampler([0, 1, 2], oversample=1.0), label, index=0)
    assert 0.4 < balanced < 0.6  # classes 0 and 2 present: each picked half of the time


def test_same_seed_same_patches() -> None:
    label = _label()
    item = {"image": torch.rand((1, 64, 64)), "label": label}
    first, again = _sampler([1, 2], 0.5, seed=3), _sampler([1, 2], 0.5, seed=3)
    patches = [(first(item), again(item)) for _ in range(5)]
    assert all(torch.equal(a["image"], b["image"]) for a, b in patches)
    assert all(a["image"].shape[1:] == PATCH for a, _ in patches)
    assert all(not str(key).startswith("_") for a, _ in patches for key in a)
