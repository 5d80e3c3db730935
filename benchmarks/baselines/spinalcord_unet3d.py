"""Pinned spinal-cord baseline: MONAI 3D U-Net, DiceCE, 64³ patches on a common RAS 1 mm grid.

The recipe of :mod:`benchmarks.baselines.brats_unet3d` (MONAI's spleen tutorial network and
patch sampler, DiceCE, Adam 1e-3) for ``sct_spinalcord_mri``: four contrasts of one subject
(one channel each, labels 0 background / 1 cord) on grids that differ in orientation (RAS, PSR,
LAS) and spacing (1 mm isotropic down to 0.5 × 0.5 × 7.5 and 0.84 × 0.84 × 17 mm). So, unlike
BraTS, every case is first brought to one grid, MONAI's way:

* ``LoadImaged`` → ``Orientationd("RAS")`` → ``Spacingd(1 mm, bilinear image / nearest label)``
  → ``NormalizeIntensityd(nonzero=True)`` (z-score over the non-zero voxels: the contrasts have
  unrelated intensity scales);
* network: ``UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128,
  256), strides=(2, 2, 2, 2), num_res_units=2, norm=BATCH)``;
* loss ``DiceCELoss(to_onehot_y=True, softmax=True)``; ``Adam`` lr ``1e-3``;
* each step: one training case, padded to the patch, ``RandCropByPosNegLabeld`` 64³ (the
  resampled volumes are 25–77 voxels a side, so 96³ would be mostly padding), ``pos=1, neg=1,
  num_samples=2`` → a batch of 2 patches; until the wall-clock budget is spent;
* ``sliding_window_inference(roi 64³, sw_batch_size=2, overlap=0.25)`` on the 1 mm RAS volume,
  softmax, then MONAI's ``Invertd`` takes the **probabilities** back through the spacing and
  orientation onto the held-out image's own grid (which its label shares), argmax there;
* score: Dice of label 1 (:func:`pipelines.metrics.region_dice`) on the label's grid.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.layers import Norm
from monai.networks.nets import UNet
from monai.transforms import (
    CastToTyped,
    Compose,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    Spacingd,
)

from benchmarks.baselines.brats_unet3d import train_on_patches
from benchmarks.baselines.common import (
    BaselineResult,
    Budget,
    TrainLog,
    configure_torch,
    mean_score,
)
from data_contracts import Case
from data_contracts.errors import GeometryMismatchError, UsageError
from pipelines.io.nifti import load_volume
from pipelines.metrics import region_dice

METHOD = "monai-unet3d-dicece-ras1mm-64"
METRIC = "cord_dice"
OUT_CHANNELS = 2  # background, spinal cord
CORD = 1
CHANNELS = (16, 32, 64, 128, 256)
STRIDES = (2, 2, 2, 2)
#: Axis labels meaning RAS as nibabel means it (MONAI's default for ``Orientationd``).
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class SpinalCordConfig:
    """Pinned settings (tests shrink ``patch`` for speed; the benchmark uses the defaults)."""

    patch: tuple[int, int, int] = (64, 64, 64)
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    num_samples: int = 2
    learning_rate: float = 1e-3
    sw_batch_size: int = 2
    overlap: float = 0.25


PINNED = SpinalCordConfig()


def to_common_grid(config: SpinalCordConfig, *, with_label: bool) -> Compose:
    """Load → RAS → ``config.spacing_mm`` → z-score of the image (and nearest label)."""
    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    steps: list[Any] = [
        LoadImaged(keys, image_only=True, ensure_channel_first=True),
        Orientationd(keys, axcodes="RAS", labels=RAS_LABELS),
        Spacingd(keys, pixdim=config.spacing_mm, mode=modes),
        NormalizeIntensityd("image", nonzero=True),
    ]
    if with_label:
        steps.append(CastToTyped("label", dtype=torch.int64))
    return Compose(steps)


def load_case(case: Case, config: SpinalCordConfig) -> dict[str, torch.Tensor]:
    """``{"image": (1, X, Y, Z) float32, "label": (1, X, Y, Z) int64}`` on the common grid."""
    if case.label is None:
        raise UsageError(f"case {case.case_id} has no label", hint="pass labelled cases")
    if len(case.channels) != 1:
        raise UsageError(f"case {case.case_id} has {len(case.channels)} channels, not 1")
    data = to_common_grid(config, with_label=True)(
        {"image": str(case.channels[0].path), "label": str(case.label.path)}
    )
    label = torch.as_tensor(data["label"])
    if int(label.min()) < 0 or int(label.max()) >= OUT_CHANNELS:
        raise UsageError(f"case {case.case_id} has labels outside 0..1", path=case.label.path)
    return {"image": torch.as_tensor(data["image"]).float(), "label": label}


def build_model() -> UNet:
    """The pinned 3D U-Net (batch norm, as the spleen tutorial), one input channel."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=OUT_CHANNELS,
        channels=CHANNELS,
        strides=STRIDES,
        num_res_units=2,
        norm=Norm.BATCH,
    )


def train(
    cases: Sequence[dict[str, torch.Tensor]], config: SpinalCordConfig, budget: Budget, seed: int
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


def segment(model: UNet, case: Case, config: SpinalCordConfig) -> np.ndarray:
    """Label map of ``case``'s image on the image's own grid (shape and affine of the file).

    Windows run on the common grid; the class probabilities are taken back through the
    spacing and orientation by ``Invertd`` (bilinear), and the argmax is taken there.
    """
    transform = to_common_grid(config, with_label=False)
    data = transform({"image": str(case.channels[0].path)})
    with torch.no_grad():
        logits = sliding_window_inference(
            torch.as_tensor(data["image"]).float()[None],
            roi_size=config.patch,
            sw_batch_size=config.sw_batch_size,
            predictor=model,
            overlap=config.overlap,
        )
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"sliding_window_inference returned {type(logits).__name__}")
        data["pred"] = torch.softmax(torch.as_tensor(logits)[0], dim=0)
        inverted = Invertd(
            keys="pred", transform=transform, orig_keys="image", nearest_interp=False
        )(data)
    return torch.as_tensor(inverted["pred"]).argmax(dim=0).numpy()


def score_case(model: UNet, case: Case, config: SpinalCordConfig) -> float:
    """Cord Dice of ``case``'s prediction against its label, on the label's grid.

    Raises:
        GeometryMismatchError: the prediction did not come back onto the label's grid.
    """
    if case.label is None:
        raise UsageError(f"case {case.case_id} has no label", hint="pass labelled cases")
    prediction = segment(model, case, config)
    truth = np.rint(np.asarray(load_volume(case.label.path)[0])).astype(np.int64)
    if prediction.shape != truth.shape:
        raise GeometryMismatchError(
            f"prediction of {case.case_id} has shape {prediction.shape}, label {truth.shape}",
            path=case.label.path,
            hint="the inversion to the image grid failed: check image and label share a grid",
        )
    return region_dice(prediction, truth, (CORD,))


def run(
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    *,
    budget_minutes: float,
    seed: int = 0,
    config: SpinalCordConfig = PINNED,
) -> BaselineResult:
    """Train the pinned 3D U-Net for ``budget_minutes`` and score cord Dice."""
    threads = configure_torch(seed)
    started = time.monotonic()
    train_data = [load_case(case, config) for case in train_cases]
    load_seconds = time.monotonic() - started
    model, log = train(train_data, config, Budget(budget_minutes), seed)
    started = time.monotonic()
    per_case = {case.case_id: score_case(model, case, config) for case in val_cases}
    return BaselineResult(
        task="spinalcord",
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
