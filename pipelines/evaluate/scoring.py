"""Scoring one predicted label map against its truth, and averaging over cases.

Per pair (a pair that cannot be read or whose shapes or spacings differ fails alone, and the
batch goes on): semantic maps get Dice, IoU and HD95 (in physical units) for every non-zero
value present in either map, via :func:`pipelines.metrics.semantic_scores`; instance maps get
the DSB-2018 score, AP@[.5:.95] and F1@.5 via :func:`pipelines.metrics.instance_scores`.
Without an explicit choice, a pair is scored as instances when it is 2D and either map holds
more than :data:`INSTANCE_AUTO_VALUES` distinct non-zero values (semantic label sets are small;
instance maps number every object).

HD95 is ``inf`` when exactly one map lacks a class.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from data_contracts import GeometryMismatchError
from pipelines.evaluate.label_maps import LabelMap, read_label_map
from pipelines.metrics import instance_scores, semantic_scores

__all__ = [
    "INSTANCE_AUTO_VALUES",
    "INSTANCE_METRICS",
    "SEMANTIC_METRICS",
    "evaluate_case",
    "summarise",
]

#: A 2D pair with more distinct non-zero values than this (in either map) is scored as instances.
INSTANCE_AUTO_VALUES = 20
SEMANTIC_METRICS = ("dice", "iou", "hd95")
INSTANCE_METRICS = ("dsb2018", "ap_50_95", "f1_50")

_SPACING_RTOL = 1e-3


def evaluate_case(
    prediction: str | Path, truth: str | Path, *, instance: bool | None = None
) -> dict[str, Any]:
    """Metrics of one predicted label map against its truth.

    Args:
        prediction: predicted label map file.
        truth: reference label map file on the same grid.
        instance: score as instances (True), semantic classes (False) or decide from the
            maps (None, see the module notes).

    Returns:
        ``mode``, ``shape``, ``spacing``, ``units``, ``ignored_pixels``, the two file paths,
        and ``classes`` (``{value: {dice, iou, hd95}}``) or ``instance`` (``{dsb2018,
        ap_50_95, f1_50}`` with the object counts).

    Raises:
        InputError: a file cannot be read, or the two are not on one grid.
    """
    paths = (Path(prediction), Path(truth))
    pred = read_label_map(paths[0])
    grid = _common_grid(pred, read_label_map(paths[1]), paths)
    valid = None if grid.ignored is None else ~grid.ignored
    pred_values = np.unique(pred.values if valid is None else pred.values[valid])
    true_values = np.unique(grid.values if valid is None else grid.values[valid])
    present = sorted((set(pred_values.tolist()) | set(true_values.tolist())) - {0})
    if instance is None:
        most = max(np.count_nonzero(pred_values), np.count_nonzero(true_values))
        instance = bool(pred.values.ndim == 2 and most > INSTANCE_AUTO_VALUES)
    result: dict[str, Any] = {
        "prediction": str(paths[0]),
        "truth": str(paths[1]),
        "mode": "instance" if instance else "semantic",
        "shape": list(grid.values.shape),
        "spacing": None if grid.spacing is None else list(grid.spacing),
        "units": grid.units,
        "ignored_pixels": 0 if grid.ignored is None else int(grid.ignored.sum()),
    }
    if instance:
        result["instance"] = _instance_metrics(pred.values, grid.values, grid.ignored)
        return result
    sentinel = min(int(pred_values.min(initial=0)), int(true_values.min(initial=0))) - 1
    truth_values = (
        grid.values if grid.ignored is None else np.where(grid.ignored, sentinel, grid.values)
    )
    result["classes"] = semantic_scores(
        pred.values, truth_values, present, spacing=grid.spacing, ignore_value=sentinel
    )
    return result


def _common_grid(pred: LabelMap, true: LabelMap, paths: tuple[Path, Path]) -> LabelMap:
    """Check one grid; return the truth's spacing (or the prediction's) and the joint nodata."""
    pred_path, truth_path = paths
    if pred.values.shape != true.values.shape:
        raise GeometryMismatchError(
            f"has shape {pred.values.shape} but the truth {truth_path} has shape "
            f"{true.values.shape}",
            path=pred_path,
        )
    if (
        pred.spacing is not None
        and true.spacing is not None
        and not np.allclose(pred.spacing, true.spacing, rtol=_SPACING_RTOL)
    ):
        raise GeometryMismatchError(
            f"has spacing {pred.spacing} but the truth {truth_path} has spacing {true.spacing}",
            path=pred_path,
        )
    masks = [m for m in (pred.ignored, true.ignored) if m is not None]
    ignored = np.logical_or.reduce(masks) if masks else None
    physical = true if true.spacing is not None else pred
    return LabelMap(true.values, physical.spacing, physical.units, ignored)


def _instance_metrics(
    pred: np.ndarray, true: np.ndarray, ignored: np.ndarray | None
) -> dict[str, Any]:
    if ignored is not None:
        pred, true = np.where(ignored, 0, pred), np.where(ignored, 0, true)
    scores: dict[str, Any] = dict(instance_scores(pred, true))
    scores["objects_prediction"] = int(np.count_nonzero(np.unique(pred)))
    scores["objects_truth"] = int(np.count_nonzero(np.unique(true)))
    return scores


def _means(rows: list[Mapping[str, float]], metrics: tuple[str, ...]) -> dict[str, float]:
    return {m: float(np.mean([r[m] for r in rows])) for m in metrics} | {"cases": len(rows)}


def summarise(cases: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Means per class and metric over the semantic cases, and per metric over instance cases.

    ``overall`` averages every (case, class) row; an ``inf`` HD95 keeps its mean ``inf``.
    """
    per_class: dict[str, list[Mapping[str, float]]] = {}
    instances = [c["instance"] for c in cases.values() if "instance" in c]
    for case in cases.values():
        for name, scores in case.get("classes", {}).items():
            per_class.setdefault(name, []).append(scores)
    summary: dict[str, Any] = {
        "classes": {
            name: _means(rows, SEMANTIC_METRICS)
            for name, rows in sorted(per_class.items(), key=lambda item: int(item[0]))
        }
    }
    every_row = [row for rows in per_class.values() for row in rows]
    if every_row:
        summary["overall"] = _means(every_row, SEMANTIC_METRICS)
    if instances:
        summary["instance"] = _means(instances, INSTANCE_METRICS)
    return summary
