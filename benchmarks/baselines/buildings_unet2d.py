"""Pinned buildings baseline (``spacenet4_atlanta_buildings``): a plain MONAI 2D U-Net.

* input: the 1-band uint16 panchromatic tile, nodata 0, scaled per image to [0, 1] between its
  1st and 99th percentiles over valid pixels (nodata → 0); labels: the ``_mask`` rasters, 0/1;
* network: ``UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64, 128,
  256), strides=(2, 2, 2, 2), num_res_units=2)`` (MONAI's 2D tutorial network, default norm);
* ``DiceCELoss(to_onehot_y=True, softmax=True)``, Adam 1e-3 (MONAI's 2D tutorial), batches of 8
  random 256² crops with flips and 90° rotations, until the wall-clock budget is spent;
* whole tiles by sliding windows (256², overlap 0.25), argmax;
* score: IoU of class 1 (building), :func:`pipelines.metrics.semantic_scores`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from benchmarks.baselines.common import (
    BaselineResult,
    Budget,
    UNet2DConfig,
    configure_torch,
    mean_score,
    percentile_scale,
    predict_unet2d,
    train_unet2d,
)
from data_contracts import Case
from data_contracts.errors import UsageError
from pipelines.io.raster import bounded_gdal_env, open_raster
from pipelines.metrics import semantic_scores

METHOD = "monai-unet2d"
METRIC = "building_iou"
BUILDING = 1
PINNED = UNet2DConfig(in_channels=1, out_channels=2, crop=256, batch_size=8)


def load_case(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """``((1, H, W) float32 in [0, 1], (H, W) uint8 0/1)`` of one tile."""
    if case.label is None:
        raise UsageError(f"case {case.case_id} has no label", hint="pass labelled cases")
    with bounded_gdal_env():
        with open_raster(case.channels[0].path) as source:
            pixels, nodata = source.read(), source.nodata
        with open_raster(case.label.path) as source:
            label = source.read(1)
    valid = np.ones(label.shape, bool) if nodata is None else (pixels != nodata).all(axis=0)
    if not np.isin(label, (0, BUILDING)).all():
        raise UsageError(
            f"labels of {case.case_id} are not 0/1",
            path=case.label.path,
            hint="ingest with --label-suffix _mask",
        )
    return percentile_scale(pixels.astype(np.float32), valid), label.astype(np.uint8)


def run(
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    *,
    budget_minutes: float,
    seed: int = 0,
    config: UNet2DConfig = PINNED,
) -> BaselineResult:
    """Train the pinned 2D U-Net for ``budget_minutes``; mean building IoU on ``val_cases``."""
    threads = configure_torch(seed)
    started = time.monotonic()
    train = [load_case(case) for case in train_cases]
    load_seconds = time.monotonic() - started
    model, log = train_unet2d(
        [image for image, _ in train],
        [label for _, label in train],
        config,
        Budget(budget_minutes),
        seed,
    )
    started = time.monotonic()
    per_case = {}
    for case in val_cases:
        image, truth = load_case(case)
        prediction = predict_unet2d(model, image, config).argmax(axis=0)
        scores = semantic_scores(prediction, truth, [BUILDING])
        per_case[case.case_id] = scores[str(BUILDING)]["iou"]
    return BaselineResult(
        task="buildings",
        method=METHOD,
        metric=METRIC,
        score=mean_score(per_case),
        per_case=per_case,
        train_seconds=log.seconds,
        details={
            **log.summary(),
            "config": asdict(config),
            "torch_threads": threads,
            "load_seconds": round(load_seconds, 2),
            "eval_seconds": round(time.monotonic() - started, 2),
            "train_cases": [case.case_id for case in train_cases],
        },
    )
