"""The foreground cut chosen on the validation cases, for plans that decide foreground first.

A network trained for a few hundred steps is rarely calibrated: its foreground probability may
sit below 0.5 at the edge of a tumour it has found (BraTS in 20 CPU minutes: edema within a few
voxels of the predicted region, ``BENCHMARKS.md`` A4). For plans whose segmentation starts with
"foreground or not" (two classes with a background, or one foreground region split into
sub-classes, see :mod:`pipelines.postprocess.decision`) the validation cases score the
foreground region at each of :data:`CANDIDATE_CUTS`; the best cut becomes the model's
``postprocess.threshold`` when it beats 0.5 by at least :data:`MIN_GAIN` of Dice (a noisy
validation slab should not move it for nothing). A threshold the user set is kept as given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from data_contracts import TrainingPlan
from pipelines.postprocess.decision import one_foreground_region
from pipelines.preprocess.array import IGNORE_INDEX

__all__ = [
    "CANDIDATE_CUTS",
    "DEFAULT_CUT",
    "MIN_GAIN",
    "CutChoice",
    "choose_cut",
    "plan_with_cut",
    "region_dice_by_cut",
    "tunes_foreground_cut",
]

CANDIDATE_CUTS = (0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_CUT = 0.5
MIN_GAIN = 0.01


@dataclass(frozen=True)
class CutChoice:
    """The validated foreground cut.

    Attributes:
        cut: the cut the model keeps (``DEFAULT_CUT`` unless another one gained enough).
        dice: mean foreground-region Dice of the validation cases at ``cut``.
        default_dice: the same at ``DEFAULT_CUT``.
        dice_by_cut: every candidate cut → its mean Dice.
    """

    cut: float
    dice: float
    default_dice: float
    dice_by_cut: dict[float, float]

    @property
    def moved(self) -> bool:
        """True when the cut differs from :data:`DEFAULT_CUT`."""
        return self.cut != DEFAULT_CUT

    def describe(self) -> str:
        """One line for the console and the run's tags."""
        if not self.moved:
            return f"foreground cut 0.5 kept (validation region Dice {self.dice:.3f})"
        return (
            f"foreground cut {self.cut:g} chosen on validation (region Dice "
            f"{self.dice:.3f}, {self.default_dice:.3f} at 0.5)"
        )


def tunes_foreground_cut(plan: TrainingPlan) -> bool:
    """True for semantic plans that decide foreground first and have no threshold set."""
    if plan.label_kind != "semantic" or plan.postprocess.threshold is not None:
        return False
    if tuple(plan.class_values[:1]) != (0,):
        return False
    return plan.num_classes == 2 or one_foreground_region(plan.postprocess, plan)


def region_dice_by_cut(probabilities: np.ndarray, truth: np.ndarray) -> dict[float, float]:
    """Dice of the foreground region (every class but index 0) at each candidate cut.

    Args:
        probabilities: ``(K, *S)`` class probabilities of one case.
        truth: ``(*S)`` class indices, :data:`IGNORE_INDEX` where no metric looks.

    Returns:
        Cut → Dice (1.0 when neither the truth nor the prediction holds foreground).
    """
    labelled = truth != IGNORE_INDEX
    inside = (truth > 0) & labelled
    foreground = 1.0 - np.asarray(probabilities[0], dtype=np.float32)
    truth_count = int(np.count_nonzero(inside))
    scores: dict[float, float] = {}
    for cut in CANDIDATE_CUTS:
        predicted = (foreground >= cut) & labelled
        total = truth_count + int(np.count_nonzero(predicted))
        overlap = int(np.count_nonzero(predicted & inside))
        scores[cut] = 2.0 * overlap / total if total else 1.0
    return scores


def choose_cut(per_case: Sequence[Mapping[float, float]]) -> CutChoice | None:
    """The cut with the best mean Dice over the cases, if it gains :data:`MIN_GAIN` over 0.5.

    Returns:
        The choice, or ``None`` without any case.
    """
    if not per_case:
        return None
    mean = {cut: float(np.mean([case[cut] for case in per_case])) for cut in CANDIDATE_CUTS}
    best = max(CANDIDATE_CUTS, key=lambda cut: (mean[cut], -abs(cut - DEFAULT_CUT)))
    default = mean[DEFAULT_CUT]
    cut = best if mean[best] - default >= MIN_GAIN else DEFAULT_CUT
    return CutChoice(cut=cut, dice=mean[cut], default_dice=default, dice_by_cut=mean)


def plan_with_cut(plan: TrainingPlan, choice: CutChoice | None) -> TrainingPlan:
    """``plan`` with the chosen cut as its post-processing threshold, when it moved."""
    if choice is None or not choice.moved:
        return plan
    postprocess = plan.postprocess.model_copy(update={"threshold": choice.cut})
    return TrainingPlan.model_validate(plan.model_dump() | {"postprocess": postprocess})
