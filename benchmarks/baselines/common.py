"""What every pinned baseline shares: the result record, the split, the budget, the step loop.

"Same CPU time budget" (training issue, acceptance point 2) is enforced as the same **wall-clock**
budget on the same machine, with torch set to the same number of threads on both sides
(:func:`configure_torch` uses ``os.cpu_count()``; segflow's side must do the same). Wall clock
(``time.monotonic()``) rather than ``time.process_time()`` because process time adds up the
time of every thread, so a side that used more threads would be stopped sooner, not fairer.

The budget covers training only: loading the arrays before it and scoring the held-out cases
after it are timed separately and reported in ``details``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.utils import set_determinism

from data_contracts import Case
from data_contracts.errors import UsageError

__all__ = [
    "BaselineResult",
    "Budget",
    "Task",
    "TrainLog",
    "UNet2DConfig",
    "build_unet2d",
    "configure_torch",
    "flip_rotate",
    "mean_score",
    "percentile_scale",
    "predict_unet2d",
    "random_crop",
    "split_cases",
    "train_unet2d",
    "train_until",
]

logger = logging.getLogger(__name__)

Task = Literal["brats", "nuclei", "buildings", "landcover", "spinalcord"]


@dataclass(frozen=True)
class BaselineResult:
    """Score of one pinned baseline on the held-out cases.

    Attributes:
        task: ``"brats"``, ``"nuclei"``, ``"buildings"`` or ``"landcover"``.
        method: the pinned configuration, e.g. ``"monai-unet3d-dicece-96"``.
        metric: ``"whole_tumour_dice"``, ``"dsb2018"``, ``"building_iou"`` or ``"miou"``.
        score: mean of ``per_case`` (in [0, 1]).
        per_case: case id → score.
        train_seconds: wall-clock seconds spent training (fitting, for the random forest).
        details: steps, losses, evaluation time, the pinned settings.
    """

    task: str
    method: str
    metric: str
    score: float
    per_case: dict[str, float]
    train_seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def split_cases(
    cases: Sequence[Case], *, n_val: int = 1, seed: int = 0
) -> tuple[tuple[Case, ...], tuple[Case, ...]]:
    """Deterministic train/validation split, shared by segflow's side and the baselines.

    The cases are sorted by id, permuted with ``numpy.random.default_rng(seed)``, and the first
    ``n_val`` of the permutation are held out. The input order never matters.

    Args:
        cases: labelled cases (at least ``n_val + 1``).
        n_val: held-out cases.
        seed: permutation seed.

    Returns:
        ``(train, val)``, each sorted by case id.

    Raises:
        UsageError: ``n_val`` is not in ``1 .. len(cases) - 1``, or case ids repeat.
    """
    ordered = sorted(cases, key=lambda case: case.case_id)
    if len({case.case_id for case in ordered}) != len(ordered):
        raise UsageError("case ids repeat", hint="split the cases of one manifest")
    if not 1 <= n_val < len(ordered):
        raise UsageError(
            f"cannot hold out {n_val} of {len(ordered)} cases",
            hint="n_val must leave at least one training case and hold out at least one",
        )
    order = np.random.default_rng(seed).permutation(len(ordered))
    held = set(order[:n_val].tolist())
    val = tuple(case for i, case in enumerate(ordered) if i in held)
    train = tuple(case for i, case in enumerate(ordered) if i not in held)
    return train, val


class Budget:
    """A wall-clock training budget, started when it is made.

    Args:
        minutes: the budget (``0`` expires at once).
    """

    def __init__(self, minutes: float) -> None:
        if not math.isfinite(minutes) or minutes < 0:
            raise UsageError(f"budget must be a finite number of minutes >= 0, got {minutes}")
        self.seconds = 60.0 * minutes
        self._start = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the budget started."""
        return time.monotonic() - self._start

    def expired(self) -> bool:
        """True once the budget is spent."""
        return self.elapsed() >= self.seconds


def configure_torch(seed: int) -> int:
    """Seed Python, NumPy and torch (MONAI's ``set_determinism``) and use every CPU core.

    Returns:
        The torch thread count set (``os.cpu_count()``).
    """
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    set_determinism(seed=seed)
    return threads


@dataclass
class TrainLog:
    """What :func:`train_until` did: steps taken, wall seconds, loss trace (one per step)."""

    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    skipped_nonfinite: int = 0

    def summary(self) -> dict[str, Any]:
        """Steps, seconds and the mean loss of the first and last 10 steps."""
        return {
            "steps": self.steps,
            "train_seconds": round(self.seconds, 2),
            "first_loss": float(np.mean(self.losses[:10])) if self.losses else None,
            "last_loss": float(np.mean(self.losses[-10:])) if self.losses else None,
            "skipped_nonfinite_steps": self.skipped_nonfinite,
        }


def train_until(budget: Budget, step: Callable[[], float]) -> TrainLog:
    """Call ``step`` (one optimiser step, returning its loss) until ``budget`` expires.

    The clock is checked before every step, so training overruns the budget by at most one
    step. A step whose loss is not finite is counted in ``skipped_nonfinite`` (``step`` must
    skip the update itself).
    """
    log = TrainLog()
    start = time.monotonic()
    while not budget.expired():
        loss = step()
        log.steps += 1
        if math.isfinite(loss):
            log.losses.append(loss)
        else:
            log.skipped_nonfinite += 1
    log.seconds = time.monotonic() - start
    logger.info("trained %d steps in %.1f s", log.steps, log.seconds)
    return log


def mean_score(per_case: Mapping[str, float]) -> float:
    """Mean of the per-case scores (raises when there are none)."""
    if not per_case:
        raise UsageError("no held-out case was scored", hint="pass at least one validation case")
    return float(np.mean(list(per_case.values())))


def percentile_scale(
    image: np.ndarray, valid: np.ndarray | None = None, low: float = 1.0, high: float = 99.0
) -> np.ndarray:
    """Per-band percentile scaling to [0, 1] (clipped), percentiles taken over valid pixels.

    Args:
        image: ``(C, H, W)``.
        valid: ``(H, W)`` boolean, False on nodata; nodata pixels become 0.
        low: lower percentile.
        high: upper percentile.

    Returns:
        ``(C, H, W)`` float32.
    """
    mask = np.ones(image.shape[1:], bool) if valid is None else valid
    scaled = np.zeros(image.shape, np.float32)
    for band in range(image.shape[0]):
        values = image[band][mask]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, [low, high])
        scaled[band] = np.clip((image[band] - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    scaled[:, ~mask] = 0.0
    return scaled


def random_crop(
    rng: np.random.Generator, image: np.ndarray, label: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` × ``size`` crop of ``image`` ``(C, H, W)`` and ``label`` ``(H, W)``.

    Sides shorter than ``size`` are zero-padded first (label 0).
    """
    pad_h, pad_w = max(0, size - label.shape[0]), max(0, size - label.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)))
        label = np.pad(label, ((0, pad_h), (0, pad_w)))
    top = int(rng.integers(0, label.shape[0] - size + 1))
    left = int(rng.integers(0, label.shape[1] - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    return image[(slice(None), *window)], label[window]


def flip_rotate(
    rng: np.random.Generator, image: np.ndarray, label: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal/vertical flips and 90° rotation of ``(C, H, W)`` and ``(H, W)``."""
    k = int(rng.integers(0, 4))
    image, label = np.rot90(image, k, axes=(1, 2)), np.rot90(label, k)
    if rng.random() < 0.5:
        image, label = image[:, :, ::-1], label[:, ::-1]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


# --- the plain 2D MONAI U-Net recipe (nuclei three-class route, buildings) ----------------------

#: MONAI's 2D segmentation tutorial network (``2d_segmentation/torch/unet_training_dict.py``).
UNET_CHANNELS = (16, 32, 64, 128, 256)
UNET_STRIDES = (2, 2, 2, 2)


@dataclass(frozen=True)
class UNet2DConfig:
    """The pinned 2D U-Net recipe: MONAI ``UNet`` (default norm), DiceCE, Adam.

    Attributes:
        in_channels: image channels.
        out_channels: classes (softmax).
        crop: side of the random square training crops (pixels).
        batch_size: crops per optimiser step.
        learning_rate: Adam learning rate (1e-3, as MONAI's 2D tutorial).
        sw_batch_size: windows per forward pass at inference.
        overlap: sliding-window overlap at inference.
    """

    in_channels: int
    out_channels: int
    crop: int = 256
    batch_size: int = 8
    learning_rate: float = 1e-3
    sw_batch_size: int = 4
    overlap: float = 0.25


def build_unet2d(config: UNet2DConfig) -> torch.nn.Module:
    """MONAI ``UNet(spatial_dims=2, channels 16..256, strides 2×4, num_res_units=2)``."""
    return UNet(
        spatial_dims=2,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        channels=UNET_CHANNELS,
        strides=UNET_STRIDES,
        num_res_units=2,
    )


def train_unet2d(
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    config: UNet2DConfig,
    budget: Budget,
    seed: int,
) -> tuple[torch.nn.Module, TrainLog]:
    """Train the pinned 2D U-Net on random crops (+ flips, 90° rotations) until the budget ends.

    Args:
        images: ``(C, H, W)`` float32 images.
        targets: ``(H, W)`` class maps (0..out_channels-1).
        config: the recipe.
        budget: wall-clock training budget.
        seed: seeds crop positions and augmentation.

    Returns:
        The model (in eval mode) and the training log.
    """
    model = build_unet2d(config)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), config.learning_rate)
    rng = np.random.default_rng(seed)

    def step() -> float:
        pairs = []
        for _ in range(config.batch_size):
            index = int(rng.integers(len(images)))
            crop = random_crop(rng, images[index], targets[index], config.crop)
            pairs.append(flip_rotate(rng, *crop))
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))[:, None]
        model.train()
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            return float("nan")
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    log = train_until(budget, step)
    return model.eval(), log


def predict_unet2d(model: torch.nn.Module, image: np.ndarray, config: UNet2DConfig) -> np.ndarray:
    """Softmax probabilities ``(classes, H, W)`` of a whole ``(C, H, W)`` image (sliding window)."""
    with torch.inference_mode():
        logits = sliding_window_inference(
            torch.from_numpy(np.ascontiguousarray(image))[None],
            roi_size=(config.crop, config.crop),
            sw_batch_size=config.sw_batch_size,
            predictor=model,
            overlap=config.overlap,
        )
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"sliding_window_inference returned {type(logits).__name__}")
    return torch.softmax(logits, dim=1)[0].numpy()
