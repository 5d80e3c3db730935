"""Region-based losses: Dice, log-cosh Dice, sensitivity-specificity, exponential-logarithmic.

Ignored pixels have zero probability and zero target (see :func:`prepare`), so they add nothing
to the sums Σpg, Σp², Σg²; ratios that need complements use the valid mask explicitly.
"""

from __future__ import annotations

import torch
from monai.losses.dice import DiceLoss as MonaiDiceLoss

from seg_models.losses._common import Prepared, SegLoss, class_weights_per_pixel, masked_mean

__all__ = ["DiceLoss", "ExpLogLoss", "LogCoshDiceLoss", "SensitivitySpecificityLoss"]


class DiceLoss(SegLoss):
    """Soft Dice loss ``1 − 2Σpg / (Σp² + Σg²)`` (Milletari et al., V-Net, 3DV 2016), via MONAI.

    Computed per image and class, then averaged (or over the whole batch with ``batch=True``).
    A perfect prediction gives 0, a disjoint one 1 (up to MONAI's 1e-5 smoothing).

    Args:
        include_background: in multiclass mode, include channel 0 (binary mode always uses its
            single channel).
        batch: sum the statistics over the batch before dividing.
        smooth: added to numerator and denominator.
        foreground_region: with three classes or more, also score every class but 0 together
            as one region (probability ``1 − p₀``), one more term of the mean: the outer region
            of region-based training (nnU-Net's BraTS whole tumour), for labels whose
            foreground is one object split into sub-classes.
        ignore_index: target value to ignore.
    """

    def __init__(
        self,
        *,
        include_background: bool = True,
        batch: bool = False,
        smooth: float = 1e-5,
        foreground_region: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(ignore_index=ignore_index)
        self.include_background = include_background
        self.batch = batch
        self.smooth = smooth
        self.foreground_region = foreground_region

    def compute(self, p: Prepared) -> torch.Tensor:
        """Mean Dice loss over images and classes."""
        dice = MonaiDiceLoss(
            include_background=self.include_background or p.binary,
            squared_pred=True,
            smooth_nr=self.smooth,
            smooth_dr=self.smooth,
            batch=self.batch,
        )
        probs, onehot = p.probs, p.onehot
        if self.foreground_region and not p.binary and probs.shape[1] > 2:
            # ignored pixels are zero in both, so the region's sums skip them too
            probs = torch.cat([probs, probs[:, 1:].sum(dim=1, keepdim=True)], dim=1)
            onehot = torch.cat([onehot, onehot[:, 1:].sum(dim=1, keepdim=True)], dim=1)
        loss: torch.Tensor = dice(probs, onehot)
        return loss


class LogCoshDiceLoss(DiceLoss):
    """``log(cosh(Dice loss))`` (Jadon, "A survey of loss functions for semantic segmentation",
    CIBCB 2020): the Dice loss smoothed near zero. Takes :class:`DiceLoss`'s arguments.
    """

    def compute(self, p: Prepared) -> torch.Tensor:
        """``log(cosh(dice))``."""
        return torch.log(torch.cosh(super().compute(p)))


class SensitivitySpecificityLoss(SegLoss):
    """Weighted sum of squared errors on positives and on negatives (Brosch et al., MICCAI 2015).

    Per class ``c``: ``r · Σ(g−p)²g / Σg + (1 − r) · Σ(g−p)²(1−g) / Σ(1−g)``, sums over the batch
    and valid pixels, then the mean over classes (binary mode: the foreground channel).

    Args:
        r: weight of the sensitivity term; the paper's 0.05 favours specificity.
        smooth: added to the denominators.
        ignore_index: target value to ignore.
    """

    def __init__(
        self, *, r: float = 0.05, smooth: float = 1e-5, ignore_index: int | None = None
    ) -> None:
        super().__init__(ignore_index=ignore_index)
        self.r = r
        self.smooth = smooth

    def compute(self, p: Prepared) -> torch.Tensor:
        """Mean over classes of the weighted sensitivity and specificity errors."""
        axes = [0, *range(2, p.probs.ndim)]
        err = (p.onehot - p.probs) ** 2
        negatives = (1 - p.onehot) * p.valid
        sens = (err * p.onehot).sum(axes) / (p.onehot.sum(axes) + self.smooth)
        spec = (err * negatives).sum(axes) / (negatives.sum(axes) + self.smooth)
        return (self.r * sens + (1 - self.r) * spec).mean()


class ExpLogLoss(SegLoss):
    """Exponential logarithmic loss (Wong et al., MICCAI 2018) for very unbalanced object sizes.

    ``w_dice · mean_c (−ln Dice_c)^γ_dice + w_cross · mean_x w_l (−ln p_l(x))^γ_cross`` with
    ``Dice_c = (2Σpg + 1)/(Σp + Σg + 1)`` over the batch and the label weights
    ``w_l = (Σ_k f_k / f_l)^½`` from the class frequencies ``f`` of the batch (the paper uses the
    training set's). Binary mode treats background and foreground as the two labels of the
    cross term and uses the foreground for the Dice term.

    Args:
        w_dice: weight of the Dice term (0.8 in the paper).
        w_cross: weight of the cross-entropy term (0.2).
        gamma_dice: exponent of the Dice term (0.3).
        gamma_cross: exponent of the cross term (0.3).
        ignore_index: target value to ignore.
    """

    def __init__(
        self,
        *,
        w_dice: float = 0.8,
        w_cross: float = 0.2,
        gamma_dice: float = 0.3,
        gamma_cross: float = 0.3,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(ignore_index=ignore_index)
        self.w_dice, self.w_cross = w_dice, w_cross
        self.gamma_dice, self.gamma_cross = gamma_dice, gamma_cross

    def compute(self, p: Prepared) -> torch.Tensor:
        """The combined exponential-logarithmic loss."""
        axes = [0, *range(2, p.probs.ndim)]
        inter = (p.probs * p.onehot).sum(axes)
        dice = (2 * inter + 1) / (p.probs.sum(axes) + p.onehot.sum(axes) + 1)
        dice_term = _soft_pow(-torch.log(dice), self.gamma_dice).mean()
        probs, onehot = p.two_class()
        counts = onehot.detach().sum(axes).clamp(min=1.0)
        weight = (counts.sum() / counts).sqrt()
        p_true = (probs * onehot).sum(dim=1, keepdim=True).clamp(min=1e-7)
        cross = _soft_pow(-torch.log(p_true), self.gamma_cross)
        cross_term = masked_mean(class_weights_per_pixel(p, weight) * cross, p.valid)
        return self.w_dice * dice_term + self.w_cross * cross_term


def _soft_pow(x: torch.Tensor, gamma: float, eps: float = 1e-6) -> torch.Tensor:
    """``x**gamma`` for ``x ≥ 0`` with a finite slope at 0 (``gamma < 1`` has an infinite one)."""
    shift: float = eps**gamma
    return (x + eps).pow(gamma) - shift
