"""Segmentation metrics: plain floats from label maps (numpy arrays or torch tensors).

Semantic models (label maps of the dataset's label values, 2D ``(H, W)`` or 3D ``(X, Y, Z)``):
per class Dice, IoU (MONAI ``compute_dice``/``compute_iou``) and HD95 in physical units (MONAI's
edge surface distances with the voxel spacing), and the same scores for merged regions such as
BraTS "whole tumour". Edge cases, per class or region: truth and prediction both empty give
Dice 1, IoU 1, HD95 0; exactly one empty gives Dice 0, IoU 0 and HD95 ``empty_hd95`` (default
``inf``: the worst distance, which survives means and maxima instead of being skipped like NaN;
pass e.g. the image diagonal for the BraTS convention).

Pixels whose truth equals ``ignore_value`` count nowhere: they are zeroed in both masks for
Dice/IoU, and for HD95 the truth takes the prediction's value there and surface points inside the
ignored area are dropped, so the ignored area neither adds nor hides boundary errors.

Instance models (instance label maps, 0 background, one positive id per object): the DSB-2018
score, COCO-style AP@[.5:.95] and F1@.5, all from one IoU matrix computed by a joint histogram
of the paired labels. Objects in a label map do not overlap, so at IoU > 0.5 each truth object
can match at most one prediction and vice versa; matching still uses a maximum-cardinality
assignment (``scipy.optimize.linear_sum_assignment``) so thresholds below 0.5 stay one-to-one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics.meandice import compute_dice
from monai.metrics.meaniou import compute_iou
from monai.metrics.utils import get_edge_surface_distance
from scipy.optimize import linear_sum_assignment

from data_contracts.errors import UsageError

__all__ = [
    "IOU_THRESHOLDS",
    "average_precision",
    "dsb2018_score",
    "f1_at",
    "instance_iou",
    "instance_scores",
    "mean_foreground_dice",
    "region_dice",
    "semantic_scores",
]

#: IoU thresholds 0.50, 0.55, …, 0.95 of the DSB-2018 score and COCO AP@[.5:.95].
IOU_THRESHOLDS: np.ndarray = np.round(np.linspace(0.5, 0.95, 10), 2)

ArrayLike = np.ndarray | torch.Tensor
Scores = Sequence[float] | np.ndarray | Mapping[int, float]


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _pair(prediction: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred, true = _numpy(prediction), _numpy(truth)
    if pred.shape != true.shape:
        raise UsageError(
            f"prediction shape {pred.shape} differs from truth shape {true.shape}",
            hint="pass label maps of one image on the same grid (argmax the probabilities first)",
        )
    return pred, true


def _hd95(
    pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None, spacing: Sequence[float] | None
) -> float:
    """Symmetric 95th-percentile surface distance of two non-empty boolean masks."""
    if valid is not None:
        true = np.where(valid, true, pred)  # no truth surface inside the ignored area
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated argument internally; nothing for us to change.
        warnings.filterwarnings("ignore", ".*always_return_as_numpy", FutureWarning)
        _, distances, _ = get_edge_surface_distance(
            torch.from_numpy(pred),
            torch.from_numpy(true),
            spacing=None if spacing is None else [float(s) for s in spacing],
            symmetric=True,
            mask=None if valid is None else torch.from_numpy(valid),
            warn_empty=False,
        )
    per_direction = [np.percentile(d.numpy(), 95) for d in distances if d.numel() > 0]
    return float(max(per_direction)) if per_direction else 0.0


def _binary_scores(
    pred: np.ndarray,
    true: np.ndarray,
    valid: np.ndarray | None,
    spacing: Sequence[float] | None,
    empty_hd95: float | None,
) -> dict[str, float]:
    """Dice, IoU and (unless ``empty_hd95`` is None) HD95 of two boolean masks."""
    if valid is not None:
        pred_c, true_c = pred & valid, true & valid
    else:
        pred_c, true_c = pred, true
    y_pred = torch.from_numpy(pred_c)[None, None]
    y = torch.from_numpy(true_c)[None, None]
    scores = {
        "dice": float(compute_dice(y_pred, y, ignore_empty=False)),
        "iou": float(compute_iou(y_pred, y, ignore_empty=False)),
    }
    if empty_hd95 is None:
        return scores
    n_pred, n_true = int(pred_c.sum()), int(true_c.sum())
    if n_pred == 0 and n_true == 0:
        scores["hd95"] = 0.0
    elif n_pred == 0 or n_true == 0:
        scores["hd95"] = float(empty_hd95)
    else:
        scores["hd95"] = _hd95(pred, true, valid, spacing)
    return scores


def _valid_mask(true: np.ndarray, ignore_value: int | None) -> np.ndarray | None:
    if ignore_value is None:
        return None
    valid = true != ignore_value
    return None if valid.all() else valid


def semantic_scores(
    prediction: ArrayLike,
    truth: ArrayLike,
    class_values: Sequence[int],
    *,
    spacing: Sequence[float] | None = None,
    ignore_value: int | None = None,
    class_names: Sequence[str] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    empty_hd95: float = math.inf,
) -> dict[str, dict[str, float]]:
    """Per-class Dice, IoU and HD95 of one predicted label map against the truth.

    Args:
        prediction: label map ``(H, W)`` or ``(X, Y, Z)`` of label values.
        truth: label map of the same shape.
        class_values: the label values to score (the foreground classes; background is scored
            too if it is listed).
        spacing: pixel/voxel size per axis (mm for volumes, CRS units for rasters); HD95 is in
            these units. ``None`` means 1 per axis (HD95 in pixels).
        ignore_value: truth value meaning "no label"; those pixels count in no metric.
        class_names: names of ``class_values``, in order; default the values as strings.
        regions: extra merged regions, name → values (e.g. ``{"whole_tumour": [1, 2, 3, 4]}``).
        empty_hd95: HD95 when exactly one of truth and prediction is empty.

    Returns:
        ``{name: {"dice": d, "iou": i, "hd95": h}}`` for each class, then each region.

    Raises:
        UsageError: shapes differ, or ``spacing``/``class_names`` lengths do not fit.
    """
    pred, true = _pair(prediction, truth)
    if spacing is not None and len(spacing) != pred.ndim:
        raise UsageError(f"spacing {tuple(spacing)} has {len(spacing)} values for {pred.ndim} axes")
    if class_names is not None and len(class_names) != len(class_values):
        raise UsageError(f"{len(class_names)} class names for {len(class_values)} class values")
    names = [str(v) for v in class_values] if class_names is None else list(class_names)
    targets: dict[str, Sequence[int]] = {
        name: [v] for name, v in zip(names, class_values, strict=True)
    }
    targets.update(regions or {})
    valid = _valid_mask(true, ignore_value)
    return {
        name: _binary_scores(
            np.isin(pred, values), np.isin(true, values), valid, spacing, empty_hd95
        )
        for name, values in targets.items()
    }


def region_dice(
    prediction: ArrayLike,
    truth: ArrayLike,
    values: Sequence[int],
    *,
    ignore_value: int | None = None,
) -> float:
    """Dice of the region made of all ``values`` merged (e.g. BraTS whole tumour = 1, 2, 3, 4).

    Both empty gives 1.0, one empty 0.0; truth pixels equal to ``ignore_value`` do not count.
    """
    pred, true = _pair(prediction, truth)
    valid = _valid_mask(true, ignore_value)
    scores = _binary_scores(np.isin(pred, values), np.isin(true, values), valid, None, None)
    return scores["dice"]


def mean_foreground_dice(
    prediction: ArrayLike,
    truth: ArrayLike,
    class_values: Sequence[int],
    *,
    ignore_value: int | None = None,
) -> float:
    """Mean over ``class_values`` (the foreground classes) of the per-class Dice; no HD95.

    This is the cheap score for validation curves, early stopping and champion comparison.
    """
    if len(class_values) == 0:
        raise UsageError("no class values to average", hint="pass the foreground label values")
    dices = [region_dice(prediction, truth, [v], ignore_value=ignore_value) for v in class_values]
    return float(np.mean(dices))


def instance_iou(
    prediction: ArrayLike, truth: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every truth object with every predicted object, from a joint label histogram.

    Args:
        prediction: instance label map (any shape), 0 background, non-negative integer ids.
        truth: instance label map of the same shape.

    Returns:
        ``(iou, truth_ids, pred_ids)``: ``iou`` is ``(T, P)`` float64; the ids are the original
        label values of its rows and columns, ascending.
    """
    pred, true = _pair(prediction, truth)
    if pred.dtype.kind not in "iub" or true.dtype.kind not in "iub":
        raise UsageError("instance maps must hold integer ids", hint="label the masks first")
    if (pred.size and pred.min() < 0) or (true.size and true.min() < 0):
        raise UsageError(
            "instance maps hold negative ids", hint="use 0 for background, 1.. for objects"
        )
    pred_seq, pred_ids = _sequential(pred)
    true_seq, true_ids = _sequential(true)
    n_pred, n_true = len(pred_ids), len(true_ids)
    joint = np.bincount(
        (true_seq.ravel() * (n_pred + 1) + pred_seq.ravel()).astype(np.int64),
        minlength=(n_true + 1) * (n_pred + 1),
    ).reshape(n_true + 1, n_pred + 1)
    area_true, area_pred = joint.sum(axis=1)[1:], joint.sum(axis=0)[1:]
    inter = joint[1:, 1:].astype(np.float64)
    union = area_true[:, None] + area_pred[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou, true_ids, pred_ids


def _sequential(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered 0, 1..K (0 stays background) and the K original ids, ascending."""
    ids = np.unique(labels)
    ids = ids[ids != 0].astype(np.int64)
    return np.searchsorted(ids, labels, side="left") + (labels != 0), ids


def _match_count(iou: np.ndarray, threshold: float) -> int:
    """Largest number of one-to-one pairs with IoU > threshold."""
    candidates = iou > threshold
    if not candidates.any():
        return 0
    if (candidates.sum(axis=0) <= 1).all() and (candidates.sum(axis=1) <= 1).all():
        return int(candidates.sum())  # already one-to-one (always the case at IoU > 0.5)
    rows, cols = linear_sum_assignment(candidates, maximize=True)
    return int(candidates[rows, cols].sum())


def _dsb2018(iou: np.ndarray) -> float:
    n_true, n_pred = iou.shape
    if n_true == 0 and n_pred == 0:
        return 1.0
    per_threshold = []
    for t in IOU_THRESHOLDS:
        tp = _match_count(iou, float(t))
        per_threshold.append(tp / (n_true + n_pred - tp))  # TP / (TP + FP + FN)
    return float(np.mean(per_threshold))


def _f1(iou: np.ndarray, threshold: float) -> float:
    n_true, n_pred = iou.shape
    if n_true == 0 and n_pred == 0:
        return 1.0
    return float(2 * _match_count(iou, threshold) / (n_true + n_pred))


def _score_vector(pred_ids: np.ndarray, scores: Scores | None) -> np.ndarray:
    if scores is None:
        return np.ones(len(pred_ids))
    if isinstance(scores, Mapping):
        missing = [int(i) for i in pred_ids if int(i) not in scores]
        if missing:
            raise UsageError(f"no score for predicted ids {missing[:5]}")
        return np.array([float(scores[int(i)]) for i in pred_ids])
    values = np.asarray(scores, dtype=np.float64)
    if len(pred_ids) and pred_ids.max() > len(values):
        raise UsageError(
            f"predicted id {int(pred_ids.max())} has no score ({len(values)} scores given)",
            hint="scores[k - 1] is the score of the object labelled k",
        )
    per_object: np.ndarray = values[pred_ids - 1]
    return per_object


def _ap_at(iou: np.ndarray, sorted_scores: np.ndarray, threshold: float) -> float:
    """COCO AP at one IoU threshold; ``iou`` columns are sorted by descending score."""
    n_true, n_pred = iou.shape
    taken = np.zeros(n_true, dtype=bool)
    tp = np.zeros(n_pred, dtype=bool)
    for j in range(n_pred):  # greedy in score order, best free truth with IoU >= t (COCO)
        column = np.where(taken, -1.0, iou[:, j])
        best = int(np.argmax(column))
        if column[best] >= threshold:
            taken[best] = tp[j] = True
    # One precision/recall point per distinct score: tied predictions enter together.
    ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    tp_cum = np.cumsum(tp)[ends]
    recall = tp_cum / n_true
    precision = np.maximum.accumulate((tp_cum / (ends + 1))[::-1])[::-1]
    index = np.searchsorted(recall, np.linspace(0.0, 1.0, 101), side="left")
    sampled = np.where(index < len(recall), precision[np.minimum(index, len(recall) - 1)], 0.0)
    return float(sampled.mean())


def _average_precision(iou: np.ndarray, score_vector: np.ndarray) -> float:
    n_true, n_pred = iou.shape
    if n_true == 0 or n_pred == 0:
        return 1.0 if n_true == n_pred else 0.0
    order = np.argsort(-score_vector, kind="stable")
    ranked, ranked_scores = iou[:, order], score_vector[order]
    return float(np.mean([_ap_at(ranked, ranked_scores, float(t)) for t in IOU_THRESHOLDS]))


def dsb2018_score(prediction: ArrayLike, truth: ArrayLike) -> float:
    """Kaggle DSB-2018 score of one image: mean over IoU thresholds .50:.05:.95 of TP/(TP+FP+FN).

    A pair matches at threshold t when its IoU > t, one-to-one. Both maps empty gives 1.0; one
    empty gives 0.0.
    """
    iou, _, _ = instance_iou(prediction, truth)
    return _dsb2018(iou)


def f1_at(prediction: ArrayLike, truth: ArrayLike, threshold: float = 0.5) -> float:
    """F1 = 2TP / (2TP + FP + FN) with one-to-one matches at IoU > ``threshold``; both empty → 1."""
    iou, _, _ = instance_iou(prediction, truth)
    return _f1(iou, threshold)


def average_precision(
    prediction: ArrayLike, truth: ArrayLike, scores: Scores | None = None
) -> float:
    """COCO-style mask AP@[.5:.95] of one image.

    Predictions are ranked by score and matched greedily to the best free truth object with
    IoU >= t (as pycocotools does); precision is made monotone and read at 101 recall points,
    then averaged over the 10 thresholds. Predictions with equal scores enter the
    precision/recall curve together (one point per distinct score), so without ``scores`` (all
    equal) AP at t is precision × the share of recall points up to the recall reached — the
    result never depends on the order of the ids. No truth and no prediction gives 1.0; only one
    of them empty gives 0.0.

    Args:
        prediction: instance label map, 0 background.
        truth: instance label map of the same shape.
        scores: confidence per predicted object: a sequence where ``scores[k - 1]`` belongs to
            id ``k`` (as :func:`pipelines.instance_targets.detections_to_instance_map` numbers them),
            or a mapping id → score.
    """
    iou, _, pred_ids = instance_iou(prediction, truth)
    return _average_precision(iou, _score_vector(pred_ids, scores))


def instance_scores(
    prediction: ArrayLike, truth: ArrayLike, scores: Scores | None = None
) -> dict[str, float]:
    """``{"dsb2018", "ap_50_95", "f1_50"}`` of one image, from a single IoU matrix."""
    iou, _, pred_ids = instance_iou(prediction, truth)
    return {
        "dsb2018": _dsb2018(iou),
        "ap_50_95": _average_precision(iou, _score_vector(pred_ids, scores)),
        "f1_50": _f1(iou, 0.5),
    }
