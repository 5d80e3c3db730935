"""Tiled Mask R-CNN inference: detections cut by tile edges are merged, never duplicated."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from data_contracts import ModelError, UsageError
from pipelines.infer.tiled_instances import (
    InstanceResult,
    TileConfig,
    segment_instances_tiled,
    tile_starts,
)

CONFIG = TileConfig(tile=64, overlap=24, batch_size=2)


def threshold_detector(batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Each connected component of ``channel 0 > 0.5`` is one detection.

    Its score is the component's mean value in channel 0 and its class the rounded mean of
    channel 1 (1 when there is one channel), so tests can set both through the image.
    """
    results = []
    for tile in batch.numpy():
        components, count = ndi.label(tile[0] > 0.5)
        ids = np.arange(1, count + 1)
        scores = ndi.mean(tile[0], components, ids) if count else np.zeros(0)
        classes = ndi.mean(tile[1], components, ids) if tile.shape[0] > 1 and count else None
        masks = components[None] == ids[:, None, None]
        results.append(
            {
                "scores": torch.as_tensor(np.asarray(scores), dtype=torch.float32),
                "labels": torch.as_tensor(
                    np.ones(count) if classes is None else np.round(classes), dtype=torch.int64
                ),
                "masks": torch.from_numpy(masks[:, None].astype(np.float32)),
            }
        )
    return results


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - centre[0], xx - centre[1]) <= radius


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def run(image: np.ndarray, config: TileConfig = CONFIG) -> InstanceResult:
    return segment_instances_tiled(image[None].astype(np.float32), threshold_detector, config)


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "expected"),
    [
        (50, 64, 8, [0]),
        (64, 64, 8, [0]),
        (100, 64, 24, [0, 36]),
        (150, 64, 24, [0, 29, 57, 86]),
    ],
)
def test_tiles_overlap_enough_and_end_flush(
    size: int, tile: int, overlap: int, expected: list[int]
) -> None:
    starts = tile_starts(size, tile, overlap)
    assert starts == expected
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_blob_across_tile_borders_is_one_instance() -> None:
    # Tiles start at 0, 29, 57, 86 on both axes; the disc is wider and the bar longer than a
    # tile, so no tile sees either of them whole.
    truth_disc = disc((150, 150), (64, 64), 35)
    truth_bar = np.zeros((150, 150), bool)
    truth_bar[120:126, 5:145] = True
    result = run((truth_disc | truth_bar).astype(np.float32))
    assert result.labels.max() == 2
    found = [result.labels == i for i in (1, 2)]
    assert max(iou(f, truth_disc) for f in found) > 0.95
    assert max(iou(f, truth_bar) for f in found) > 0.95
    assert result.scores == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}


def test_separate_blobs_in_an_overlap_stay_separate() -> None:
    # Both discs lie in the strip shared by the first two tiles (x 36..64), 3 pixels apart.
    truth = [
        disc((64, 100), (20, 44), 5),
        disc((64, 100), (20, 57), 5),
        disc((64, 100), (50, 10), 6),
    ]
    result = run(np.logical_or.reduce(truth).astype(np.float32))
    assert len(result.scores) == 3
    for blob in truth:
        assert max(iou(result.labels == i, blob) for i in result.scores) == 1.0


def test_blobs_at_the_edges_of_an_odd_sized_image_are_found() -> None:
    shape = (97, 131)
    blobs = [
        disc(shape, (0, 0), 6),
        disc(shape, (96, 130), 7),
        disc(shape, (50, 130), 5),
        disc(shape, (96, 60), 5),
    ]
    result = run(np.logical_or.reduce(blobs).astype(np.float32))
    assert result.labels.shape == shape and result.labels.dtype == np.int32
    assert len(result.scores) == 4
    for blob in blobs:
        assert max(iou(result.labels == i, blob) for i in result.scores) > 0.95


def test_image_smaller_than_a_tile_is_one_padded_tile() -> None:
    shape = (20, 30)
    seen: list[tuple[int, ...]] = []

    def recording(batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        seen.append(tuple(batch.shape))
        return threshold_detector(batch)

    image = disc(shape, (10, 15), 4).astype(np.float32)[None]
    result = segment_instances_tiled(image, recording, CONFIG)
    assert seen == [(1, 1, 64, 64)]
    np.testing.assert_array_equal(result.labels, disc(shape, (10, 15), 4).astype(np.int32))


def test_result_does_not_depend_on_batch_size() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((170, 140), np.float32)
    for centre in rng.uniform(0, 170, (25, 2)):
        image[disc(image.shape, (centre[0], centre[1] * 140 / 170), rng.uniform(3, 12))] = 0.7
    calls: list[tuple[int, int]] = []
    results = [
        segment_instances_tiled(
            image[None],
            threshold_detector,
            TileConfig(tile=64, overlap=24, batch_size=size),
            progress=lambda done, total: calls.append((done, total)),
        )
        for size in (1, 3)
    ]
    np.testing.assert_array_equal(results[0].labels, results[1].labels)
    assert results[0].scores == results[1].scores
    assert calls[-1] == (12, 12) and len(calls) == 12 + 4  # 4 × 3 tiles, batches of 1 then 3


class Scripted:
    """A detector that returns given detections, in image coordinates, tile after tile.

    ``per_tile[k]`` lists ``(mask, score, label)`` of the k-th tile (row-major), each mask a
    boolean array of the image's shape; the detector cuts it to the tile and pads it.
    """

    def __init__(
        self, per_tile: list[list[tuple[np.ndarray, float, int]]], config: TileConfig
    ) -> None:
        self.per_tile, self.config, self.calls = per_tile, config, 0

    def __call__(self, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        shape = self.per_tile[0][0][0].shape
        size = self.config.tile
        rows = tile_starts(shape[0], size, self.config.overlap)
        cols = tile_starts(shape[1], size, self.config.overlap)
        outputs = []
        for _ in batch:
            top, left = rows[self.calls // len(cols)], cols[self.calls % len(cols)]
            detections = self.per_tile[self.calls]
            self.calls += 1
            masks = np.zeros((len(detections), 1, size, size), np.float32)
            for k, (mask, _, _) in enumerate(detections):
                crop = mask[top : top + size, left : left + size]
                masks[k, 0, : crop.shape[0], : crop.shape[1]] = crop
            outputs.append(
                {
                    "scores": torch.tensor([d[1] for d in detections], dtype=torch.float32),
                    "labels": torch.tensor([d[2] for d in detections], dtype=torch.int64),
                    "masks": torch.from_numpy(masks),
                }
            )
        return outputs


def box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def test_most_confident_wins_and_ids_follow_scores() -> None:
    shape = (60, 60)  # one tile
    low, high = box(shape, slice(10, 30), slice(10, 30)), box(shape, slice(20, 40), slice(20, 40))
    hidden, weak = box(shape, slice(25, 35), slice(25, 35)), box(shape, slice(45, 55), slice(5, 15))
    detector = Scripted([[(low, 0.6, 1), (hidden, 0.7, 3), (high, 0.9, 2), (weak, 0.3, 1)]], CONFIG)
    result = segment_instances_tiled(np.zeros((3, *shape), np.float32), detector, CONFIG)
    assert result.scores == {1: pytest.approx(0.9), 2: pytest.approx(0.6)}
    assert result.classes == {1: 2, 2: 1}
    np.testing.assert_array_equal(result.labels, np.where(high, 1, np.where(low, 2, 0)))


@pytest.mark.parametrize(("second_class", "expected"), [(1, 1), (2, 2)])
def test_only_detections_of_one_class_merge(second_class: int, expected: int) -> None:
    # Tiles x 0..64 and 36..100 share x 36..64; each sees the object whole, slightly shifted.
    shape = (64, 100)
    first, second = (
        box(shape, slice(10, 30), slice(40, 55)),
        box(shape, slice(12, 30), slice(42, 56)),
    )
    detector = Scripted([[(first, 0.8, 1)], [(second, 0.9, second_class)]], CONFIG)
    result = segment_instances_tiled(np.zeros((1, *shape), np.float32), detector, CONFIG)
    assert len(result.scores) == expected
    if expected == 1:
        np.testing.assert_array_equal(result.labels, (first | second).astype(np.int32))
        assert result.scores == {1: pytest.approx(0.9)}


def test_cut_fragment_without_a_neighbour_match_is_dropped() -> None:
    shape = (64, 100)
    bar = box(shape, slice(20, 40), slice(55, 70))  # crosses the first tile's edge x = 64
    confirmed = Scripted([[(bar, 0.9, 1)], [(bar, 0.8, 1)]], CONFIG)
    result = segment_instances_tiled(np.zeros((1, *shape), np.float32), confirmed, CONFIG)
    np.testing.assert_array_equal(result.labels, bar.astype(np.int32))
    unconfirmed = Scripted([[(bar, 0.9, 1)], []], CONFIG)
    result = segment_instances_tiled(np.zeros((1, *shape), np.float32), unconfirmed, CONFIG)
    assert result.scores == {} and not result.labels.any()


def test_bad_inputs_are_reported() -> None:
    for overlap in (0, 64):
        with pytest.raises(UsageError, match="overlap"):
            TileConfig(tile=64, overlap=overlap)
    with pytest.raises(UsageError, match=r"\(C, H, W\)"):
        segment_instances_tiled(np.zeros((10, 10)), threshold_detector, CONFIG)

    def wrong_masks(batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [
            {"scores": torch.ones(1), "labels": torch.ones(1), "masks": torch.ones(1, 1, 8, 8)}
            for _ in batch
        ]

    with pytest.raises(ModelError, match="masks"):
        segment_instances_tiled(np.zeros((1, 10, 10)), wrong_masks, CONFIG)


def test_torchvision_maskrcnn_fits_the_detector_contract() -> None:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=2,
        min_size=64,
        max_size=64,
        box_detections_per_img=5,  # random weights: keep the mask head's work small
        rpn_post_nms_top_n_test=50,
    ).eval()
    result = segment_instances_tiled(
        torch.rand(3, 64, 72),  # two tiles, so merging runs too
        lambda batch: model(list(batch)),
        TileConfig(tile=64, overlap=16, batch_size=2, score_threshold=0.0),
    )
    assert result.labels.shape == (64, 72) and result.labels.dtype == np.int32
    ids = set(np.unique(result.labels).tolist()) - {0}
    assert ids == set(result.scores) == set(result.classes) == set(range(1, len(ids) + 1))
    assert all(c == 1 for c in result.classes.values())
