"""The classical baselines, on their own terms: pixels classified, touching objects split."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from data_contracts import ModelError, ModelSpec
from seg_models import ClassicalSegmenter, OtsuWatershed, build_classical, model_info


def _blobs(shape: tuple[int, ...], centres: list[tuple[int, ...]], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i, centre in enumerate(centres, start=1):
        dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        labels[(dist2 < radius**2) & (labels == 0)] = i
    return labels


def _image(labels: np.ndarray, seed: int, bright: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = (labels > 0).astype(np.float32) * (1.0 if bright else -1.0)
    return (signal + 0.4 * rng.standard_normal(labels.shape)).astype(np.float32)[None]


def _spec(name: str, dims: int = 2, **options) -> ModelSpec:
    task = model_info(name).task
    return ModelSpec.model_validate(
        {
            "name": name,
            "spatial_dims": dims,
            "in_channels": 1,
            "num_classes": 2,
            "task": task,
            "options": options,
        }
    )


def test_random_forest_segments_unseen_images() -> None:
    train = [_blobs((48, 48), [(12, 12), (34, 30)], 8), _blobs((48, 48), [(24, 20)], 11)]
    test = _blobs((48, 48), [(14, 32), (32, 12)], 9)
    model = build_classical(_spec("random_forest", n_estimators=20, max_depth=8, sigma_max=8.0))
    assert isinstance(model, ClassicalSegmenter)
    model.fit([_image(lab, i) for i, lab in enumerate(train)], [lab > 0 for lab in train])
    pred = model.predict(_image(test, 9))
    assert pred.shape == test.shape and set(np.unique(pred)) <= {0, 1}
    truth = test > 0
    iou = (pred.astype(bool) & truth).sum() / (pred.astype(bool) | truth).sum()
    assert iou > 0.8


def test_random_forest_skips_ignored_pixels_and_works_in_3d() -> None:
    labels = (_blobs((16, 18, 14), [(8, 9, 7)], 5) > 0).astype(np.int32)
    labels[:, :, :3] = 255
    model = build_classical(
        _spec("random_forest", dims=3, ignore_index=255, n_estimators=10, sigma_max=4.0)
    )
    pred = model.fit([_image(labels == 1, 0)], [labels]).predict(_image(labels == 1, 1))
    assert pred.shape == labels.shape and set(np.unique(pred)) <= {0, 1}
    assert (pred[labels == 1] == 1).mean() > 0.8


def test_otsu_watershed_splits_touching_objects() -> None:
    truth = _blobs((64, 64), [(32, 22), (32, 42)], 11)  # two discs that touch
    model = build_classical(_spec("otsu_watershed"))
    pred = model.fit([_image(truth, 0)], [truth]).predict(_image(truth, 1))
    assert pred.shape == truth.shape
    assert ndimage.label(pred > 0)[1] == 1  # Otsu alone sees one object…
    assert len(np.unique(pred)) - 1 == 2  # …the watershed splits it in two
    foreground_iou = ((pred > 0) & (truth > 0)).sum() / ((pred > 0) | (truth > 0)).sum()
    assert foreground_iou > 0.8


def test_otsu_watershed_learns_dark_objects_and_works_in_3d() -> None:
    truth = _blobs((24, 24, 24), [(8, 8, 8), (16, 16, 16)], 5)
    model = OtsuWatershed()  # the spec allows instance tasks in 2D only; the class does 3D too
    model.fit([_image(truth, 0, bright=False)], [truth])
    assert model.bright_objects is False
    pred = model.predict(_image(truth, 1, bright=False))
    assert len(np.unique(pred)) - 1 == 2


def test_classical_and_neural_builders_do_not_mix() -> None:
    with pytest.raises(ModelError, match="neural network"):
        build_classical(ModelSpec(name="unet", in_channels=1, num_classes=2))
    with pytest.raises(ModelError, match="no option"):
        build_classical(_spec("otsu_watershed", trees=3))
    with pytest.raises(ModelError, match="instance"):
        build_classical(ModelSpec(name="otsu_watershed", in_channels=1, num_classes=2))
