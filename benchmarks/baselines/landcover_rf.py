"""Pinned land-cover baseline (``nc_landsat7_landcover``): scikit-image trainable segmentation.

The recipe of scikit-image's gallery example "Trainable segmentation using local features and
random forests" (``doc/examples/segmentation/plot_trainable_segmentation.py``), applied to the
6 Landsat bands:

* features: ``skimage.feature.multiscale_basic_features(image (H, W, 6), intensity=True,
  edges=False, texture=True, sigma_min=1, sigma_max=16, channel_axis=-1)`` (per band);
* classifier: ``sklearn.ensemble.RandomForestClassifier(n_estimators=50, n_jobs=-1,
  max_depth=10, max_samples=0.05)`` (seeded), fitted once by ``skimage.future.fit_segmenter``
  on every labelled pixel of the training tiles (label 0 = no label / nodata is not trained on,
  which is ``fit_segmenter``'s own convention), predicted by ``predict_segmenter``;
* score: mean IoU over the classes present in the truth, pixels labelled 0 ignored
  (:func:`pipelines.metrics.semantic_scores`).

There is no training loop: the budget is only recorded against the fitting time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from skimage.feature import multiscale_basic_features
from skimage.future import fit_segmenter, predict_segmenter
from sklearn.ensemble import RandomForestClassifier

from benchmarks.baselines.common import BaselineResult, configure_torch, mean_score
from data_contracts import Case
from data_contracts.errors import UsageError
from pipelines.io.raster import bounded_gdal_env, open_raster
from pipelines.metrics import semantic_scores

METHOD = "random-forest-multiscale"
METRIC = "miou"
IGNORE = 0
FEATURES: dict[str, Any] = {
    "intensity": True,
    "edges": False,
    "texture": True,
    "sigma_min": 1,
    "sigma_max": 16,
}
FOREST: dict[str, Any] = {
    "n_estimators": 50,
    "n_jobs": -1,
    "max_depth": 10,
    "max_samples": 0.05,
}


def load_case(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """``((H, W, bands) float32, (H, W) int64 labels)`` of one tile (0 = no label)."""
    if case.label is None:
        raise UsageError(f"case {case.case_id} has no label", hint="pass labelled cases")
    with bounded_gdal_env():
        with open_raster(case.channels[0].path) as source:
            pixels = source.read()
        with open_raster(case.label.path) as source:
            label = source.read(1)
    return np.moveaxis(pixels, 0, -1).astype(np.float32), label.astype(np.int64)


def features_of(image: np.ndarray) -> np.ndarray:
    """Per-pixel multiscale features ``(H, W, F)`` of an ``(H, W, bands)`` image."""
    return multiscale_basic_features(image, channel_axis=-1, **FEATURES)


def miou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean IoU over the classes present in ``truth`` (``IGNORE`` pixels do not count)."""
    present = [int(v) for v in np.unique(truth) if v != IGNORE]
    if not present:
        raise UsageError("the truth holds no labelled pixel", hint="hold out a labelled tile")
    scores = semantic_scores(prediction, truth, present, ignore_value=IGNORE)
    return float(np.mean([scores[str(v)]["iou"] for v in present]))


def run(
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    *,
    budget_minutes: float,
    seed: int = 0,
) -> BaselineResult:
    """Fit the pinned random forest once on ``train_cases``; mean IoU on ``val_cases``."""
    configure_torch(seed)  # seeds NumPy too; the forest has its own seed below
    started = time.monotonic()
    features, labels = [], []
    for case in train_cases:
        image, label = load_case(case)
        stack = features_of(image)
        features.append(stack.reshape(-1, stack.shape[-1]))
        labels.append(label.reshape(-1))
    feature_seconds = time.monotonic() - started
    forest = RandomForestClassifier(random_state=seed, **FOREST)
    started = time.monotonic()
    fit_segmenter(np.concatenate(labels), np.concatenate(features), forest)
    fit_seconds = time.monotonic() - started
    started = time.monotonic()
    per_case = {}
    for case in val_cases:
        image, truth = load_case(case)
        prediction = np.asarray(predict_segmenter(features_of(image), forest))
        per_case[case.case_id] = miou(prediction, truth)
    train_seconds = feature_seconds + fit_seconds
    return BaselineResult(
        task="landcover",
        method=METHOD,
        metric=METRIC,
        score=mean_score(per_case),
        per_case=per_case,
        train_seconds=train_seconds,
        details={
            "features": FEATURES,
            "forest": FOREST,
            "n_features": int(features[0].shape[-1]) if features else 0,
            "train_pixels": int(sum((lab != IGNORE).sum() for lab in labels)),
            "feature_seconds": round(feature_seconds, 2),
            "fit_seconds": round(fit_seconds, 2),
            "eval_seconds": round(time.monotonic() - started, 2),
            "budget_seconds": 60.0 * budget_minutes,
            "over_budget": train_seconds > 60.0 * budget_minutes,
            "train_cases": [case.case_id for case in train_cases],
        },
    )
