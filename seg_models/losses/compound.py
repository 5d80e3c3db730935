"""Compound losses: the combo loss and weighted sums of losses by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from seg_models.losses._common import (
    Prepared,
    SegLoss,
    class_weights_per_pixel,
    masked_mean,
    per_pixel_ce,
)
from seg_models.losses.overlap import DiceLoss

__all__ = ["ComboLoss", "SumLoss"]


class ComboLoss(SegLoss):
    """Combo loss (Taghanaki et al., Comput. Med. Imaging Graph. 2019).

    ``α · L_wCE(β) + (1 − α) · L_Dice`` where ``L_wCE`` weighs positives (non-background
    classes) by β and negatives by 1 − β, i.e. ``WeightedCrossEntropyLoss`` with weights
    ``[1 − β, β, …, β]``, and ``L_Dice`` is :class:`DiceLoss`. The paper subtracts the Dice
    coefficient instead of adding the Dice loss: the two differ by the constant 1 − α and have
    the same gradients. So α = 1 is the weighted cross-entropy and α = 0 the Dice loss.

    Args:
        alpha: weight of the cross-entropy term, in [0, 1].
        beta: weight of positives inside the cross-entropy, in [0, 1]; > 0.5 penalises false
            negatives more.
        include_background: passed to the Dice term.
        ignore_index: target value to ignore.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        beta: float = 0.5,
        include_background: bool = True,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(ignore_index=ignore_index)
        if not (0 <= alpha <= 1 and 0 <= beta <= 1):
            raise ValueError("combo alpha and beta must lie in [0, 1]")
        self.alpha, self.beta = alpha, beta
        self.dice = DiceLoss(include_background=include_background, ignore_index=ignore_index)

    def compute(self, p: Prepared) -> torch.Tensor:
        """``α · wCE + (1 − α) · Dice``."""
        classes = 2 if p.binary else p.logits.shape[1]
        weight = torch.tensor([1 - self.beta] + [self.beta] * (classes - 1))
        ce = masked_mean(class_weights_per_pixel(p, weight) * per_pixel_ce(p), p.valid)
        return self.alpha * ce + (1 - self.alpha) * self.dice.compute(p)


class SumLoss(SegLoss):
    """Weighted sum of losses that share one ignore value: ``Σ_k w_k · L_k``.

    Built by :func:`seg_models.losses.build_loss` from names such as ``"dice+focal"`` or
    ``"0.5*dice+ce"``; the target is prepared once for all terms.

    Args:
        losses: the terms.
        weights: one weight per term.
        ignore_index: target value to ignore (must match the terms').
    """

    def __init__(
        self,
        losses: Sequence[SegLoss],
        weights: Sequence[float],
        *,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(ignore_index=ignore_index)
        if len(losses) != len(weights) or not losses:
            raise ValueError("SumLoss needs one weight per loss and at least one loss")
        self.losses = nn.ModuleList(losses)
        self.weights = [float(w) for w in weights]

    def compute(self, p: Prepared) -> torch.Tensor:
        """The weighted sum of the terms."""
        total = torch.zeros((), dtype=p.logits.dtype, device=p.logits.device)
        for weight, loss in zip(self.weights, self.losses, strict=True):
            total = total + weight * cast(SegLoss, loss).compute(p)
        return total
