"""Instance maps ↔ three-class targets and Mask R-CNN targets/detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import masks_to_boxes

from data_contracts import UsageError
from pipelines.instance_targets import (
    detections_to_instance_map,
    instances_to_three_class,
    maskrcnn_targets,
    three_class_to_instances,
)
from pipelines.metrics import dsb2018_score


def _touching_discs(seed: int, size: int = 96, n: int = 14) -> np.ndarray:
    """Discs of radius 5-9 that touch and overlap; each pixel belongs to its nearest centre."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(10, size - 10, (n, 2))
    radii = rng.uniform(5, 9, n)
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(yy[None] - centres[:, 0, None, None], xx[None] - centres[:, 1, None, None])
    inside = distance <= radii[:, None, None]
    nearest = np.where(inside, distance, np.inf).argmin(axis=0)
    return np.where(inside.any(axis=0), nearest + 1, 0).astype(np.int32)


def test_touching_squares_are_split_by_their_rims() -> None:
    instances = np.zeros((8, 10), np.int32)
    instances[1:7, 1:5], instances[1:7, 5:9] = 1, 2
    classes = instances_to_three_class(instances)
    expected = np.zeros((8, 10), np.uint8)
    expected[1:7, 1:9] = 2
    expected[2:6, 2:4] = expected[2:6, 6:8] = 1
    np.testing.assert_array_equal(classes, expected)
    np.testing.assert_array_equal(three_class_to_instances(classes), instances)


def test_wider_boundaries_peel_more() -> None:
    instances = np.zeros((12, 12), np.int32)
    instances[1:11, 1:11] = 5
    classes = instances_to_three_class(instances, boundary_width=2)
    assert (classes == 1).sum() == 36 and (classes == 2).sum() == 100 - 36
    np.testing.assert_array_equal(three_class_to_instances(classes), instances // 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("width", [1, 2])
def test_round_trip_recovers_touching_discs(seed: int, width: int) -> None:
    instances = _touching_discs(seed)
    classes = instances_to_three_class(instances, boundary_width=width)
    assert dsb2018_score(three_class_to_instances(classes), instances) >= 0.95
    # The same through soft "network" probabilities (smoothed one-hot).
    probabilities = np.eye(3, dtype=np.float32)[classes].transpose(2, 0, 1) * 0.8 + 0.2 / 3
    recovered = three_class_to_instances(torch.from_numpy(probabilities))
    assert dsb2018_score(recovered, instances) >= 0.95


def test_interior_threshold_and_min_size() -> None:
    probabilities = np.zeros((3, 20, 20), np.float32)
    probabilities[0] = 1.0
    probabilities[:, 2:10, 2:10] = [[[0.1]], [[0.6]], [[0.3]]]  # 64 px object
    probabilities[:, 14:16, 14:16] = [[[0.1]], [[0.6]], [[0.3]]]  # 4 px speck
    assert three_class_to_instances(probabilities).max() == 2
    kept = three_class_to_instances(probabilities, min_size=5)
    assert kept.max() == 1 and (kept == 1).sum() == 64
    assert three_class_to_instances(probabilities, interior_threshold=0.7).max() == 0


def test_bad_class_input_is_refused() -> None:
    with pytest.raises(UsageError, match=r"\(3, H, W\)"):
        three_class_to_instances(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(UsageError, match="2D integer"):
        instances_to_three_class(np.zeros((8, 8), np.float32))


def test_maskrcnn_targets_boxes_labels_masks() -> None:
    instances = np.zeros((16, 20), np.int32)
    instances[2:5, 3:9] = 4  # rows 2-4, columns 3-8
    instances[10:15, 12:13] = 9  # a one-pixel-wide column
    instances[0, 19] = 11  # one pixel
    semantic = np.zeros_like(instances)
    semantic[instances == 4] = 2
    semantic[10:12, 12] = 1
    semantic[12:15, 12] = 3  # majority of object 9 is class 3
    semantic[0, 19] = 0  # object 11 has no semantic foreground: dropped
    target = maskrcnn_targets(instances, semantic)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[3, 2, 9, 5], [12, 10, 13, 15]]
    assert target["labels"].tolist() == [2, 3]
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, 16, 20)
    np.testing.assert_array_equal(target["masks"][1].numpy(), instances == 9)
    # torchvision's inclusive extents, plus one on the far side.
    inclusive = masks_to_boxes(target["masks"].bool())
    assert torch.equal(target["boxes"], inclusive + torch.tensor([0, 0, 1, 1]))


def test_maskrcnn_targets_without_semantic_map_and_min_pixels() -> None:
    instances = np.zeros((8, 8), np.uint16)
    instances[1:4, 1:4], instances[6, 6] = 1, 2
    target = maskrcnn_targets(instances, min_pixels=2)
    assert target["labels"].tolist() == [1] and target["boxes"].tolist() == [[1, 1, 4, 4]]


def test_maskrcnn_targets_of_an_empty_map() -> None:
    target = maskrcnn_targets(np.zeros((6, 7), np.int32))
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (0, 6, 7) and target["masks"].dtype == torch.uint8


def test_detections_paint_by_ascending_score() -> None:
    masks = torch.zeros(3, 1, 10, 10)
    masks[0, 0, 0:6, 0:6] = 0.9  # score 0.6
    masks[1, 0, 3:9, 3:9] = 0.8  # score 0.9: wins the overlap
    masks[2, 0, 8:10, 0:2] = 0.9  # score 0.3: below the threshold
    detections = {"masks": masks, "scores": torch.tensor([0.6, 0.9, 0.3])}
    painted = detections_to_instance_map(detections, shape=(10, 10))
    assert painted.dtype == np.int32
    assert painted[4, 4] == 2 and painted[0, 0] == 1 and painted[9, 0] == 0
    assert set(np.unique(painted).tolist()) == {0, 1, 2}
    with pytest.raises(UsageError, match="do not fit"):
        detections_to_instance_map(detections, shape=(9, 10))


def test_targets_round_trip_through_detections() -> None:
    instances = _touching_discs(3, size=48, n=5)
    target = maskrcnn_targets(instances)
    n = len(target["labels"])
    detections = {"masks": target["masks"].float()[:, None], "scores": torch.linspace(0.6, 1, n)}
    assert dsb2018_score(detections_to_instance_map(detections, shape=(48, 48)), instances) == 1.0


def test_speckle_seeds_do_not_become_objects() -> None:
    probabilities = np.zeros((3, 40, 40), np.float32)
    probabilities[0] = 1.0
    probabilities[:, 5:25, 5:25] = np.array([0.0, 0.9, 0.1])[:, None, None]  # one nucleus
    rim = np.zeros((40, 40), bool)
    rim[5:8, 22] = True  # a spurious boundary cuts a 2×2 corner off its interior
    rim[7, 22:25] = True
    probabilities[1][rim], probabilities[2][rim] = 0.1, 0.9
    assert three_class_to_instances(probabilities).max() == 2  # the corner became an object
    merged = three_class_to_instances(probabilities, min_seed_size=10)
    assert merged.max() == 1 and (merged > 0).sum() == 400  # it joined the nucleus
