"""Distribution-based losses: cross-entropy, weighted, balanced and focal.

Binary mode (one logit channel) uses the sigmoid; multiclass mode the softmax over channels.
Every per-pixel value is averaged over valid (non-ignored) pixels only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses.focal_loss import FocalLoss as MonaiFocalLoss

from seg_models.losses._common import (
    Prepared,
    SegLoss,
    class_weights_per_pixel,
    masked_mean,
    per_pixel_ce,
)

__all__ = ["BalancedCrossEntropyLoss", "CrossEntropyLoss", "FocalLoss", "WeightedCrossEntropyLoss"]


class CrossEntropyLoss(SegLoss):
    """Binary cross-entropy (sigmoid) or categorical cross-entropy (softmax), per pixel.

    Source: the standard maximum-likelihood loss; see Jadon, "A survey of loss functions for
    semantic segmentation", CIBCB 2020.
    """

    def compute(self, p: Prepared) -> torch.Tensor:
        """Mean cross-entropy over valid pixels."""
        return masked_mean(per_pixel_ce(p), p.valid)


class WeightedCrossEntropyLoss(SegLoss):
    """Cross-entropy with a fixed weight per class: ``mean_i w[y_i] · CE_i``.

    Binary mode takes ``[w_negative, w_positive]``. The mean divides by the number of valid
    pixels, not by the sum of weights (PyTorch's ``weight=`` divides by the latter), so weights
    scale the loss as written. Source: weighted cross-entropy as in Ronneberger et al., "U-Net",
    MICCAI 2015 (class-balancing part of their weight map); Jadon 2020 survey.

    Args:
        weight: one weight per class (two in binary mode).
        ignore_index: target value to ignore.
    """

    def __init__(self, *, weight: Sequence[float], ignore_index: int | None = None) -> None:
        super().__init__(ignore_index=ignore_index)
        self.register_buffer("weight", torch.as_tensor(list(weight), dtype=torch.float32))

    def compute(self, p: Prepared) -> torch.Tensor:
        """Weighted mean cross-entropy over valid pixels."""
        weight = self.get_buffer("weight")
        needed = 2 if p.binary else p.logits.shape[1]
        if weight.numel() != needed:
            raise ValueError(f"weight needs {needed} values, got {weight.numel()}")
        w = class_weights_per_pixel(p, weight)
        return masked_mean(w * per_pixel_ce(p), p.valid)


class BalancedCrossEntropyLoss(SegLoss):
    """Cross-entropy weighted by the batch's own class balance (Xie & Tu, HED, ICCV 2015).

    Binary: positives weigh β = |Y−|/|Y| and negatives 1 − β, counted over the valid pixels of
    the batch. Multiclass generalises this to ``w_c = 1 − f_c`` for class frequency ``f_c``.
    The weights are constants (no gradient).
    """

    def compute(self, p: Prepared) -> torch.Tensor:
        """Balanced mean cross-entropy over valid pixels."""
        _, onehot = p.two_class()
        counts = onehot.detach().sum(dim=[0, *range(2, onehot.ndim)])
        weight = 1 - counts / counts.sum().clamp(min=1.0)
        return masked_mean(class_weights_per_pixel(p, weight) * per_pixel_ce(p), p.valid)


class FocalLoss(SegLoss):
    """Focal loss ``−α_t (1 − p_t)^γ log p_t`` (Lin et al., ICCV 2017), via MONAI's ``FocalLoss``.

    γ = 0 without α is the cross-entropy. Sigmoid in binary mode, softmax in multiclass mode.

    Args:
        gamma: focusing parameter.
        alpha: scalar weight of the positive (binary) or non-background classes (background gets
            1 − α), or one weight per class; None for no weighting.
        ignore_index: target value to ignore.
    """

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(ignore_index=ignore_index)
        self.gamma = gamma
        self.alpha = alpha if alpha is None or isinstance(alpha, float | int) else list(alpha)

    def compute(self, p: Prepared) -> torch.Tensor:
        """Mean focal loss over valid pixels."""
        monai_loss = MonaiFocalLoss(
            gamma=self.gamma, alpha=self.alpha, use_softmax=not p.binary, reduction="none"
        )
        per_class = monai_loss(p.logits, p.onehot)
        return masked_mean(per_class.sum(dim=1, keepdim=True), p.valid)
