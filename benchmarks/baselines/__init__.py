"""Pinned plain baselines for ``benchmarks/accuracy.py`` (training issue, acceptance point 2).

Each task has a fixed yardstick, trained in the same run as segflow, on the same split
(:func:`split_cases`) and with the same wall-clock budget (:class:`Budget`, torch threads =
``os.cpu_count()`` on both sides):

| task | method (first = the floor) | metric |
|---|---|---|
| ``brats`` | ``monai-unet3d-dicece-96`` | whole-tumour Dice |
| ``nuclei`` | ``monai-unet2d-3class``, ``otsu-watershed``, ``maskrcnn-r50-scratch`` | DSB-2018 |
| ``buildings`` | ``monai-unet2d`` | building IoU |
| ``landcover`` | ``random-forest-multiscale`` | mIoU |
| ``spinalcord`` | ``monai-unet3d-dicece-ras1mm-64`` | spinal-cord Dice (label 1) |

Design rule: this package may use ``pipelines.metrics``, ``pipelines.instance_targets``, the readers
in ``pipelines.io`` and manifests' case lists, but never ``pipelines.train``,
``pipelines.plan``, ``pipelines.preprocess`` or ``seg_models`` — a yardstick must not move
when segflow's own training code changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.baselines.common import BaselineResult, Budget, split_cases
from data_contracts import Case
from data_contracts.errors import UsageError

__all__ = [
    "DEFAULT_BUDGET_MINUTES",
    "METHODS",
    "METRICS",
    "BaselineResult",
    "Budget",
    "run_baseline",
    "split_cases",
]

#: Pinned methods per task; the first is the default and the one the floor compares against.
METHODS: dict[str, tuple[str, ...]] = {
    "brats": ("monai-unet3d-dicece-96",),
    "nuclei": ("monai-unet2d-3class", "otsu-watershed", "maskrcnn-r50-scratch"),
    "buildings": ("monai-unet2d",),
    "landcover": ("random-forest-multiscale",),
    "spinalcord": ("monai-unet3d-dicece-ras1mm-64",),
}
METRICS = {
    "brats": "whole_tumour_dice",
    "nuclei": "dsb2018",
    "buildings": "building_iou",
    "landcover": "miou",
    "spinalcord": "cord_dice",
}
#: The issue's budgets (minutes, each side).
DEFAULT_BUDGET_MINUTES = {
    "brats": 20.0,
    "nuclei": 20.0,
    "buildings": 10.0,
    "landcover": 10.0,
    "spinalcord": 10.0,
}


def run_baseline(
    task: str,
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    *,
    budget_minutes: float,
    seed: int = 0,
    method: str | None = None,
) -> BaselineResult:
    """Train the pinned baseline ``method`` of ``task`` and score it on ``val_cases``.

    Args:
        task: ``"brats"``, ``"nuclei"``, ``"buildings"``, ``"landcover"`` or ``"spinalcord"``.
        train_cases: labelled training cases (from the task's manifest).
        val_cases: labelled held-out cases.
        budget_minutes: wall-clock training budget (recorded only for the random forest, which
            is fitted once; ignored by Otsu + watershed, which does not train).
        seed: seeds Python, NumPy, torch, crops and the forest.
        method: one of ``METHODS[task]``; default the first (the floor's baseline).

    Returns:
        The held-out score, per case, training seconds and details.

    Raises:
        UsageError: unknown task or method, or cases that do not fit the task.
    """
    if task not in METHODS:
        raise UsageError(f"unknown task {task!r}", hint=f"one of {sorted(METHODS)}")
    chosen = method or METHODS[task][0]
    if chosen not in METHODS[task]:
        raise UsageError(f"unknown {task} baseline {chosen!r}", hint=f"one of {METHODS[task]}")
    if not train_cases and chosen != "otsu-watershed":
        raise UsageError(f"no training case for the {task} baseline")
    if task == "brats":
        from benchmarks.baselines import brats_unet3d

        return brats_unet3d.run(train_cases, val_cases, budget_minutes=budget_minutes, seed=seed)
    if task == "nuclei":
        from benchmarks.baselines import nuclei

        return nuclei.run(
            train_cases, val_cases, method=chosen, budget_minutes=budget_minutes, seed=seed
        )
    if task == "buildings":
        from benchmarks.baselines import buildings_unet2d

        return buildings_unet2d.run(
            train_cases, val_cases, budget_minutes=budget_minutes, seed=seed
        )
    if task == "spinalcord":
        from benchmarks.baselines import spinalcord_unet3d

        return spinalcord_unet3d.run(
            train_cases, val_cases, budget_minutes=budget_minutes, seed=seed
        )
    from benchmarks.baselines import landcover_rf

    return landcover_rf.run(train_cases, val_cases, budget_minutes=budget_minutes, seed=seed)
