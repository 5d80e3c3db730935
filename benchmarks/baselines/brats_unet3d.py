"""Pinned BraTS baseline: MONAI 3D U-Net, DiceCE, 96³ positive/negative patches.

The recipe of MONAI's spleen tutorial (``Project-MONAI/tutorials``,
``3d_segmentation/spleen_segmentation_3d.ipynb``: ``UNet(spatial_dims=3, channels=(16, 32, 64,
128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm=Norm.BATCH)``, ``RandCropByPosNegLabeld``
96³ ``pos=1, neg=1``, ``Adam(model.parameters(), 1e-4)``) with the DiceCE loss of its model-zoo
bundle (``spleen_ct_segmentation``: DiceCELoss, Adam 1e-4), for the BraTS set as delivered
(``brats2015_deepmedic``: FLAIR + T1c, already z-scored in the brain, 1 mm, labels 0..4):

* network: ``UNet(spatial_dims=3, in_channels=2, out_channels=5, channels=(16, 32, 64, 128, 256),
  strides=(2, 2, 2, 2), num_res_units=2, norm=BATCH)``;
* loss ``DiceCELoss(to_onehot_y=True, softmax=True)``; ``Adam`` lr ``1e-3`` — MONAI's 2D
  tutorial value rather than the spleen notebook's 1e-4: a 20-minute CPU budget is ~300 steps,
  and the issue's measured baseline (~0.88 whole-tumour Dice) is only reachable that fast with
  the larger rate, so the smaller one would weaken the yardstick;
* each step: one training case, ``RandCropByPosNegLabeld`` 96³, ``pos=1, neg=1,
  num_samples=2`` → a batch of 2 patches; negatives are drawn anywhere outside the tumour
  (no ``image_threshold``: the images are z-scored, so 0 is not background);
* train until the wall-clock budget is spent (clock checked every step);
* ``sliding_window_inference(roi 96³, sw_batch_size=2, overlap=0.25)``, argmax;
* score: whole-tumour Dice (labels 1..4 merged), :func:`pipelines.metrics.region_dice`.

No resampling or reorientation: every case shares the 1 mm grid of its channels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.layers import Norm
from monai.networks.nets import UNet
from monai.transforms import Compose, FgBgToIndicesd, RandCropByPosNegLabeld, SpatialPadd

from benchmarks.baselines.common import (
    BaselineResult,
    Budget,
    TrainLog,
    configure_torch,
    mean_score,
    train_until,
)
from data_contracts import Case
from data_contracts.errors import UsageError
from pipelines.io.nifti import load_volume
from pipelines.metrics import region_dice

METHOD = "monai-unet3d-dicece-96"
METRIC = "whole_tumour_dice"
IN_CHANNELS = 2  # FLAIR, T1c
OUT_CHANNELS = 5  # background, necrosis, edema, non-enhancing, enhancing
WHOLE_TUMOUR = (1, 2, 3, 4)
CHANNELS = (16, 32, 64, 128, 256)
STRIDES = (2, 2, 2, 2)


@dataclass(frozen=True)
class UNet3DConfig:
    """Pinned settings (tests shrink ``patch`` for speed; the benchmark uses the defaults)."""

    patch: tuple[int, int, int] = (96, 96, 96)
    num_samples: int = 2
    learning_rate: float = 1e-3
    sw_batch_size: int = 2
    overlap: float = 0.25


PINNED = UNet3DConfig()


def load_case(case: Case) -> dict[str, torch.Tensor]:
    """``{"image": (2, X, Y, Z) float32, "label": (1, X, Y, Z) int64}`` of one case."""
    if case.label is None:
        raise UsageError(f"case {case.case_id} has no label", hint="pass labelled cases")
    if len(case.channels) != IN_CHANNELS:
        raise UsageError(f"case {case.case_id} has {len(case.channels)} channels, not 2")
    image = np.stack([np.asarray(load_volume(c.path)[0], np.float32) for c in case.channels])
    label = np.rint(np.asarray(load_volume(case.label.path)[0])).astype(np.int64)
    if label.min() < 0 or label.max() >= OUT_CHANNELS:
        raise UsageError(f"case {case.case_id} has labels outside 0..4", path=case.label.path)
    return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)[None]}


def build_model() -> UNet:
    """The pinned 3D U-Net (batch norm, as the spleen tutorial)."""
    return UNet(
        spatial_dims=3,
        in_channels=IN_CHANNELS,
        out_channels=OUT_CHANNELS,
        channels=CHANNELS,
        strides=STRIDES,
        num_res_units=2,
        norm=Norm.BATCH,
    )


def train(
    cases: Sequence[dict[str, torch.Tensor]], config: UNet3DConfig, budget: Budget, seed: int
) -> tuple[UNet, TrainLog]:
    """Train on positive/negative patches of the loaded cases until the budget is spent."""
    model = build_model()
    log = train_on_patches(
        cases,
        model,
        patch=config.patch,
        num_samples=config.num_samples,
        learning_rate=config.learning_rate,
        budget=budget,
        seed=seed,
    )
    return model.eval(), log


def train_on_patches(
    cases: Sequence[dict[str, torch.Tensor]],
    model: UNet,
    *,
    patch: tuple[int, int, int],
    num_samples: int,
    learning_rate: float,
    budget: Budget,
    seed: int,
) -> TrainLog:
    """Adam + DiceCE on positive/negative ``patch`` crops of the cases until ``budget`` is spent
    (shared with the spinal-cord baseline)."""
    prepare = Compose(
        [
            SpatialPadd(keys=["image", "label"], spatial_size=patch),
            FgBgToIndicesd(keys="label"),
        ]
    )
    prepared = [prepare(dict(case)) for case in cases]
    sampler = RandCropByPosNegLabeld(
        keys=["image", "label"],
        label_key="label",
        spatial_size=patch,
        pos=1,
        neg=1,
        num_samples=num_samples,
        fg_indices_key="label_fg_indices",
        bg_indices_key="label_bg_indices",
    )
    sampler.set_random_state(seed=seed)
    rng = np.random.default_rng(seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), learning_rate)

    def step() -> float:
        patches = sampler(prepared[int(rng.integers(len(prepared)))])
        x = torch.stack([torch.as_tensor(p["image"]) for p in patches])
        y = torch.stack([torch.as_tensor(p["label"]) for p in patches])
        model.train()
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            return float("nan")
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return train_until(budget, step)


def segment(model: UNet, image: torch.Tensor, config: UNet3DConfig) -> np.ndarray:
    """Label map ``(X, Y, Z)`` of one ``(2, X, Y, Z)`` image, by sliding windows."""
    with torch.inference_mode():
        logits = sliding_window_inference(
            image[None],
            roi_size=config.patch,
            sw_batch_size=config.sw_batch_size,
            predictor=model,
            overlap=config.overlap,
        )
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"sliding_window_inference returned {type(logits).__name__}")
    return torch.as_tensor(logits).argmax(dim=1)[0].numpy()


def run(
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    *,
    budget_minutes: float,
    seed: int = 0,
    config: UNet3DConfig = PINNED,
) -> BaselineResult:
    """Train the pinned 3D U-Net for ``budget_minutes`` and score whole-tumour Dice."""
    threads = configure_torch(seed)
    started = time.monotonic()
    train_data = [load_case(case) for case in train_cases]
    load_seconds = time.monotonic() - started
    budget = Budget(budget_minutes)
    model, log = train(train_data, config, budget, seed)
    started = time.monotonic()
    per_case = {}
    for case in val_cases:
        data = load_case(case)
        prediction = segment(model, data["image"], config)
        per_case[case.case_id] = region_dice(prediction, data["label"][0].numpy(), WHOLE_TUMOUR)
    return BaselineResult(
        task="brats",
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
