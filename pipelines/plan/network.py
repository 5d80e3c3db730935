"""``--model auto``: the plan chooses the network from the data, the budget and the device.

The rules, nnU-Net's where it has one (each stays overridable with ``--model``,
``--model-option`` and ``--plan``):

- **Family.** nnU-Net's U-Net (MONAI's ``DynUNet``, :class:`seg_models.nets.PaddedDynUNet`) for
  semantic labels and for the interior/boundary route of instance labels. That route is the
  better instance route on a CPU (``BENCHMARKS.md`` A3 vs A3m: 0.318 vs 0.166); Mask R-CNN was
  never measured better on CUDA, so it is chosen only by name.
- **Depth.** Pool while the deepest feature map of a patch keeps at least
  :data:`MIN_FEATURE_MAP` pixels on its shortest axis (at least 2 poolings, at most 5 in 2D and
  4 in 3D).
- **Normalisation** (:func:`network_norm`). Instance norm for volumes and 2D images, whose
  intensities are relative (MR scans, fluorescence and bright-field in one set): each patch
  gets its own statistics. Batch norm for georeferenced rasters, whose calibrated band values
  carry the class: instance norm takes each window's own mean away, so a window mostly of one
  class (a town) looks like the training tiles' mix, and the class is lost (``BENCHMARKS.md``
  A1: developed land IoU 0.02-0.04 with instance norm, 0.26 with batch norm).
- **Width from a budget.** A probe times a few training steps per candidate width on this
  device (:mod:`pipelines.train.probe`); the widest of :data:`WIDTHS` whose steps reach
  :data:`MIN_STEPS` within the training seconds of the budget is chosen. When even the
  narrowest falls short, the patch's largest axis shrinks (step time taken as proportional to
  the patch's voxels) until it reaches them, or the smallest patch is kept. Without
  ``--max-minutes`` the budget is :data:`UNBUDGETED_MINUTES` and the steps are the configured
  epochs' steps.

This module holds the rules only (no torch); the probe measures, :func:`choose_network` decides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from data_contracts import NetworkChoice, TrainingPlan
from pipelines.kinds import kind_adapter
from pipelines.plan.planner import patch_divisor

__all__ = [
    "AUTO_MODEL",
    "MIN_FEATURE_MAP",
    "MIN_STEPS",
    "UNBUDGETED_MINUTES",
    "WIDTHS",
    "Budget",
    "choose_network",
    "filters_for",
    "network_depth",
    "network_norm",
]

AUTO_MODEL = "auto"
FAMILY = "dynunet"
#: Candidate features of the first level, narrowest first.
WIDTHS = (8, 16, 24, 32)
#: Feature maps are capped here (nnU-Net's caps: 320 in 3D, 512 in 2D).
MAX_FEATURES = {2: 512, 3: 320}
MAX_DEPTH = {2: 5, 3: 4}
MIN_DEPTH = 2
MIN_FEATURE_MAP = 8
#: Fewest optimiser steps a width must reach within the budget: a 3D patch holds ~100× the
#: voxels of a 2D one, so it teaches more per step. BraTS in 20 minutes on 2 cores
#: (``BENCHMARKS.md`` A4): width 8 scored the same held-out whole-tumour Dice after 300 and 509
#: steps (0.567, 0.565) and width 16 0.710 after 278, but width 24 only 0.609 after 224 with
#: the validation Dice still rising; so a width pays only once it gets ~400 steps. In 2D,
#: nuclei in 20 minutes scored 0.318 (DSB) with width 16 and 0.278 with width 24 at 1,281 steps
#: (A3), and augmented chips (:mod:`pipelines.preprocess.transforms`) take longer to learn.
MIN_STEPS = {2: 2000, 3: 400}
UNBUDGETED_MINUTES = 60.0
_MIN_PATCH_MULTIPLES = 3

#: ``probe(patch_size, base_width, depth) -> seconds per training step`` on the device.
StepProbe = Callable[[Sequence[int], int, int], float]


@dataclass(frozen=True)
class Budget:
    """The time a training gets.

    Attributes:
        minutes: the whole budget (``--max-minutes``, or :data:`UNBUDGETED_MINUTES`).
        train_seconds: the part of it left for optimiser steps.
        steps_wanted: steps the width must reach: :data:`MIN_STEPS` with a budget, the
            configured epochs' steps without one.
        given: whether the user gave the budget.
    """

    minutes: float
    train_seconds: float
    steps_wanted: int
    given: bool


def network_depth(patch_size: Sequence[int], spatial_dims: int) -> int:
    """Poolings while the shortest patch axis stays ≥ :data:`MIN_FEATURE_MAP`, at least
    :data:`MIN_DEPTH` (MONAI's DynUNet needs two; plan patches are multiples of 16 or 32)."""
    shortest = min(patch_size)
    depth = math.floor(math.log2(max(shortest, 1) / MIN_FEATURE_MAP))
    return max(MIN_DEPTH, min(MAX_DEPTH[spatial_dims], depth))


def network_norm(plan: TrainingPlan) -> str:
    """The kind's normalisation layers (``KindAdapter.network_norm``): ``"batch"`` for
    georeferenced rasters (absolute band values), ``"instance"`` for volumes and images."""
    return kind_adapter(plan.kind).network_norm


def filters_for(base_width: int, depth: int, spatial_dims: int) -> list[int]:
    """Features per level: ``base_width`` doubled at every pooling, capped."""
    return [min(base_width * 2**level, MAX_FEATURES[spatial_dims]) for level in range(depth + 1)]


def _shrunk_patch(patch: Sequence[int], divisor: int) -> tuple[int, ...] | None:
    """The patch with its largest axis one divisor shorter, or ``None`` at the smallest."""
    floor = divisor * _MIN_PATCH_MULTIPLES
    axes = [axis for axis, size in enumerate(patch) if size - divisor >= floor]
    if not axes:
        return None
    largest = max(axes, key=lambda axis: patch[axis])
    return tuple(size - divisor if axis == largest else size for axis, size in enumerate(patch))


def _steps(train_seconds: float, seconds_per_step: float) -> int:
    return int(train_seconds / max(seconds_per_step, 1e-6))


def choose_network(
    plan: TrainingPlan,
    budget: Budget,
    probe: StepProbe,
    *,
    device: str = "cpu",
    precision: str = "32-true",
) -> tuple[TrainingPlan, NetworkChoice]:
    """Choose the widest network (and if needed a smaller patch) that reaches the budget's steps.

    Args:
        plan: the data's plan (patch, batch, channels, classes).
        budget: the time the training gets and the steps it needs.
        probe: times one training step of a width on this device (see :data:`StepProbe`).
        device: where the probe runs, for the record.
        precision: the training's Lightning precision, which the probe ran under, for the record.

    Returns:
        The plan (patch possibly shrunk, ``network`` set) and the choice.
    """
    dims = plan.spatial_dims
    depth = network_depth(plan.patch_size, dims)
    timings: dict[int, float] = {}
    chosen = WIDTHS[0]
    for width in WIDTHS:
        timings[width] = probe(plan.patch_size, width, depth)
        if _steps(budget.train_seconds, timings[width]) < budget.steps_wanted:
            break  # wider ones are slower still
        chosen = width
    patch = tuple(plan.patch_size)
    per_step = timings[chosen]
    short = _steps(budget.train_seconds, per_step) < budget.steps_wanted
    if short and "patch_size" not in plan.overrides:  # the user's patch is kept as given
        patch, per_step = _fit_patch_to_budget(patch, per_step, budget, patch_divisor(dims))
        depth = min(depth, network_depth(patch, dims))
    probed_on = (device, precision)
    choice = _describe(plan, patch, depth, chosen, per_step, timings, budget, probed_on)
    return plan.model_copy(update={"patch_size": patch, "network": choice}), choice


def _fit_patch_to_budget(
    patch: tuple[int, ...], per_step: float, budget: Budget, divisor: int
) -> tuple[tuple[int, ...], float]:
    voxels = math.prod(patch)
    while _steps(budget.train_seconds, per_step) < budget.steps_wanted:
        smaller = _shrunk_patch(patch, divisor)
        if smaller is None:
            break
        per_step *= math.prod(smaller) / voxels
        patch, voxels = smaller, math.prod(smaller)
    return patch, per_step


def _describe(
    plan: TrainingPlan,
    patch: Sequence[int],
    depth: int,
    width: int,
    per_step: float,
    timings: Mapping[int, float],
    budget: Budget,
    probed_on: tuple[str, str],
) -> NetworkChoice:
    dims = plan.spatial_dims
    filters = filters_for(width, depth, dims)
    norm = network_norm(plan)
    steps = _steps(budget.train_seconds, per_step)
    if not budget.given:
        steps = min(steps, budget.steps_wanted)
    source = "budget" if budget.given else "no --max-minutes: budget"
    probe_text = ", ".join(f"{w} → {s:.2f} s/step" for w, s in timings.items())
    device, precision = probed_on
    rule = (
        f"{source} {budget.minutes:g} min ({budget.train_seconds:.0f} s of training), probe on "
        f"{device} ({precision}): {probe_text} → {steps:,} steps → "
        f"U-Net {'-'.join(map(str, filters))} (DynUNet, {norm} norm, {depth} poolings), "
        f"patch {'×'.join(map(str, patch))}, batch {plan.batch_size}; widest width reaching {budget.steps_wanted:,} steps"
    )
    return NetworkChoice(
        model=FAMILY,
        options={"depth": depth, "filters": list(filters), "norm": norm},
        depth=depth,
        base_width=width,
        budget_minutes=budget.minutes,
        train_seconds=round(budget.train_seconds, 1),
        seconds_per_step={str(w): round(s, 4) for w, s in timings.items()},
        planned_steps=steps,
        min_steps=budget.steps_wanted,
        device=device,
        precision=precision,
        rule=rule,
    )
