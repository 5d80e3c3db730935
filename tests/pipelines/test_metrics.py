"""Metrics: hand-checkable semantic and instance cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data_contracts import UsageError
from pipelines.metrics import (
    IOU_THRESHOLDS,
    average_precision,
    dsb2018_score,
    f1_at,
    instance_iou,
    instance_scores,
    mean_foreground_dice,
    region_dice,
    semantic_scores,
)


def _square(
    shape: tuple[int, ...], corner: tuple[int, ...], size: int, value: int = 1
) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int64)
    out[tuple(slice(c, c + size) for c in corner)] = value
    return out


# ---------------------------------------------------------------------------------------------
# Semantic
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_identical_maps_score_perfectly(shape: tuple[int, ...]) -> None:
    truth = _square(shape, (2,) * len(shape), 6, 1) + _square(shape, (9,) * len(shape), 5, 2)
    scores = semantic_scores(truth.copy(), truth, [1, 2], class_names=["a", "b"])
    assert scores == {
        "a": {"dice": 1.0, "iou": 1.0, "hd95": 0.0},
        "b": {"dice": 1.0, "iou": 1.0, "hd95": 0.0},
    }


def test_known_shift_gives_known_dice_and_iou() -> None:
    truth = _square((32, 32), (10, 10), 10)
    prediction = _square((32, 32), (10, 12), 10)  # 2 columns right: overlap 10 x 8
    scores = semantic_scores(prediction, truth, [1])["1"]
    assert scores["dice"] == pytest.approx(2 * 80 / 200)
    assert scores["iou"] == pytest.approx(80 / 120)


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [(None, 3.0), ((1.0, 1.0), 3.0), ((2.0, 2.0), 6.0), ((5.0, 0.5), 1.5), ((0.5, 5.0), 15.0)],
)
def test_hd95_is_in_physical_units(spacing: tuple[float, float] | None, expected: float) -> None:
    truth, prediction = np.zeros((9, 9), int), np.zeros((9, 9), int)
    truth[4, 2] = prediction[4, 5] = 1  # one pixel each, 3 pixels apart along axis 1
    assert semantic_scores(prediction, truth, [1], spacing=spacing)["1"]["hd95"] == pytest.approx(
        expected
    )


def test_doubling_spacing_doubles_hd95_in_3d() -> None:
    rng = np.random.default_rng(0)
    truth = _square((20, 20, 20), (4, 4, 4), 9)
    prediction = _square((20, 20, 20), (5, 6, 4), 8) | (rng.random((20, 20, 20)) > 0.995)
    single = semantic_scores(prediction, truth, [1], spacing=(1.0, 1.5, 3.0))["1"]["hd95"]
    double = semantic_scores(prediction, truth, [1], spacing=(2.0, 3.0, 6.0))["1"]["hd95"]
    assert single > 0
    assert double == pytest.approx(2 * single)


@pytest.mark.parametrize(
    ("pred_value", "truth_value", "expected"),
    [
        (0, 0, {"dice": 1.0, "iou": 1.0, "hd95": 0.0}),
        (1, 0, {"dice": 0.0, "iou": 0.0, "hd95": math.inf}),
        (0, 1, {"dice": 0.0, "iou": 0.0, "hd95": math.inf}),
    ],
)
def test_empty_cases(pred_value: int, truth_value: int, expected: dict[str, float]) -> None:
    prediction = _square((16, 16), (4, 4), 4, pred_value)
    truth = _square((16, 16), (4, 4), 4, truth_value)
    assert semantic_scores(prediction, truth, [1])["1"] == expected


def test_empty_hd95_can_be_chosen() -> None:
    prediction, truth = _square((16, 16), (4, 4), 4), np.zeros((16, 16), int)
    assert semantic_scores(prediction, truth, [1], empty_hd95=22.6)["1"]["hd95"] == 22.6


def test_ignored_pixels_count_nowhere() -> None:
    truth = _square((32, 32), (8, 8), 8)
    truth[:, 16:] = 255  # unlabelled stripe right of the object
    prediction = _square((32, 32), (8, 8), 8)
    prediction[8:16, 16:24] = 1  # the object runs on into the stripe
    prediction[0:5, 25:30] = 1  # and a blob sits inside it
    scores = semantic_scores(prediction, truth, [1], ignore_value=255)["1"]
    assert scores == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    # Without the ignore value the same pixels are errors.
    assert semantic_scores(prediction, truth, [1])["1"]["dice"] < 1.0
    assert region_dice(prediction, truth, [1], ignore_value=255) == 1.0


def test_regions_merge_classes() -> None:
    truth = _square((24, 24), (4, 4), 8, 1) + _square((24, 24), (14, 14), 6, 2)
    prediction = np.where(truth == 1, 2, np.where(truth == 2, 1, 0))  # classes swapped
    scores = semantic_scores(prediction, truth, [1, 2], regions={"whole": [1, 2]})
    assert scores["1"]["dice"] == scores["2"]["dice"] == 0.0
    assert scores["whole"] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    assert region_dice(prediction, truth, [1, 2]) == 1.0
    assert mean_foreground_dice(prediction, truth, [1, 2]) == 0.0


def test_mean_foreground_dice_averages_classes() -> None:
    truth = _square((24, 24), (4, 4), 8, 1) + _square((24, 24), (14, 14), 6, 2)
    prediction = np.where(truth == 2, 0, truth)  # class 2 missed entirely
    assert (
        mean_foreground_dice(torch.from_numpy(prediction), torch.from_numpy(truth), [1, 2]) == 0.5
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: semantic_scores(np.zeros((4, 4)), np.zeros((4, 5)), [1]), "shape"),
        (lambda: semantic_scores(np.zeros((4, 4)), np.zeros((4, 4)), [1], spacing=(1,)), "spacing"),
        (lambda: semantic_scores(np.zeros((4, 4)), np.zeros((4, 4)), [1], class_names=[]), "names"),
        (lambda: mean_foreground_dice(np.zeros((4, 4)), np.zeros((4, 4)), []), "no class"),
        (lambda: dsb2018_score(np.full((4, 4), 0.5), np.zeros((4, 4), int)), "integer"),
        (lambda: dsb2018_score(-np.ones((4, 4), int), np.zeros((4, 4), int)), "negative"),
    ],
)
def test_misuse_raises_usage_error(call: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call()  # type: ignore[operator]


# ---------------------------------------------------------------------------------------------
# Instances
# ---------------------------------------------------------------------------------------------


def _two_objects() -> np.ndarray:
    truth = _square((32, 32), (2, 2), 10, 7) + _square((32, 32), (18, 18), 10, 300)
    return truth


def test_iou_matrix_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 6, (20, 20))
    prediction = rng.integers(0, 5, (20, 20)) * 3
    iou, truth_ids, pred_ids = instance_iou(prediction, truth)
    assert truth_ids.tolist() == [1, 2, 3, 4, 5] and pred_ids.tolist() == [3, 6, 9, 12]
    for r, t in enumerate(truth_ids):
        for c, p in enumerate(pred_ids):
            inter = np.sum((truth == t) & (prediction == p))
            union = np.sum((truth == t) | (prediction == p))
            assert iou[r, c] == pytest.approx(inter / union)


def test_identical_instances_score_one() -> None:
    truth = _two_objects()
    relabelled = np.where(truth == 7, 1, np.where(truth == 300, 2, 0))  # ids do not matter
    assert instance_scores(relabelled, truth) == {"dsb2018": 1.0, "ap_50_95": 1.0, "f1_50": 1.0}


def test_dsb2018_worked_example() -> None:
    truth = _two_objects()  # objects A (id 7) and B (id 300)
    prediction = np.where(truth == 7, 1, 0) + _square((32, 32), (2, 20), 8, 2)  # A + false pos.
    # TP = 1, FP = 1 (the new square), FN = 1 (B) at every threshold: 1 / 3.
    assert dsb2018_score(prediction, truth) == pytest.approx(1 / 3)
    assert f1_at(prediction, truth) == pytest.approx(0.5)
    # Equal scores: one PR point (recall 0.5, precision 0.5) → 0.5 for 51 of 101 recall points.
    assert average_precision(prediction, truth) == pytest.approx(0.5 * 51 / 101)
    # The true positive ranked first: precision 1 up to recall 0.5.
    assert average_precision(prediction, truth, [0.9, 0.1]) == pytest.approx(51 / 101)
    assert average_precision(prediction, truth, {1: 0.1, 2: 0.9}) == pytest.approx(0.5 * 51 / 101)


def test_thresholds_are_strict_for_dsb_and_inclusive_for_ap() -> None:
    truth = _square((20, 20), (5, 5), 10)
    prediction = np.zeros_like(truth)
    prediction[5:15, 5:13] = 1  # IoU 80 / 100 = 0.8
    assert IOU_THRESHOLDS.tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert dsb2018_score(prediction, truth) == pytest.approx(0.6)  # IoU > t for t <= 0.75
    assert average_precision(prediction, truth) == pytest.approx(0.7)  # IoU >= t for t <= 0.8


@pytest.mark.parametrize(
    ("pred_empty", "truth_empty", "expected"),
    [(True, True, 1.0), (True, False, 0.0), (False, True, 0.0)],
)
def test_instance_empty_cases(pred_empty: bool, truth_empty: bool, expected: float) -> None:
    objects = _two_objects()
    prediction = np.zeros_like(objects) if pred_empty else objects
    truth = np.zeros_like(objects) if truth_empty else objects
    assert instance_scores(prediction, truth) == {
        "dsb2018": expected,
        "ap_50_95": expected,
        "f1_50": expected,
    }


def test_low_threshold_matching_stays_one_to_one() -> None:
    truth = _square((10, 10), (0, 0), 4)
    prediction = np.zeros_like(truth)
    prediction[0:4, 0:2], prediction[0:4, 2:4] = 1, 2  # two halves, IoU 0.5 each
    assert f1_at(prediction, truth, threshold=0.3) == pytest.approx(2 * 1 / 3)


def test_missing_scores_are_refused() -> None:
    truth = _two_objects()
    with pytest.raises(UsageError, match="no score"):
        average_precision(truth, truth, [0.5])
    with pytest.raises(UsageError, match="no score"):
        average_precision(truth, truth, {7: 0.5})
