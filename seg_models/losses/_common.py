"""What every loss shares: target checks, sigmoid/softmax mode, and the ignore mask."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Prepared",
    "SegLoss",
    "class_weights_per_pixel",
    "masked_mean",
    "per_pixel_ce",
    "prepare",
]


@dataclass(frozen=True)
class Prepared:
    """Logits and target in the forms the losses need.

    Attributes:
        logits: ``(B, C, *S)`` raw scores.
        probs: ``(B, C, *S)`` sigmoid (C = 1) or softmax probabilities, zero at ignored pixels.
        onehot: ``(B, C, *S)`` float target (C = 1: the 0/1 mask), zero at ignored pixels.
        index: ``(B, 1, *S)`` integer class per pixel, 0 at ignored pixels.
        valid: ``(B, 1, *S)`` 1.0 where the pixel counts, 0.0 where it is ignored.
        binary: True in sigmoid mode (one channel).
    """

    logits: torch.Tensor
    probs: torch.Tensor
    onehot: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor
    binary: bool

    def two_class(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and one-hot target with an explicit background channel in binary mode.

        Returns:
            ``(probs, onehot)``, ``(B, max(C, 2), *S)``, both zero at ignored pixels.
        """
        if not self.binary:
            return self.probs, self.onehot
        probs = torch.cat([(1 - self.probs) * self.valid, self.probs], dim=1)
        onehot = torch.cat([(1 - self.onehot) * self.valid, self.onehot], dim=1)
        return probs, onehot


def prepare(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> Prepared:
    """Checks shapes and values and builds the :class:`Prepared` forms.

    Args:
        logits: ``(B, C, *S)``; C = 1 is binary (sigmoid) mode, C ≥ 2 multiclass (softmax).
        target: ``(B, 1, *S)`` or ``(B, *S)`` class indices (binary: 0/1), integer or float.
        ignore_index: target value of pixels that no loss sees (e.g. nodata), or None.

    Returns:
        The prepared tensors.

    Raises:
        ValueError: on mismatched shapes or target values outside the classes.
    """
    if logits.ndim < 3:
        raise ValueError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}")
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape[1] != 1 or target.shape[2:] != logits.shape[2:] or len(target) != len(logits):
        raise ValueError(
            f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            "expected (B, 1, *spatial) or (B, *spatial) class indices"
        )
    channels = logits.shape[1]
    binary = channels == 1
    if ignore_index is None:
        valid_bool = torch.ones_like(target, dtype=torch.bool)
    else:
        valid_bool = target != ignore_index
    kept = torch.where(valid_bool, target, torch.zeros_like(target))
    if kept.is_floating_point() and bool((kept != kept.round()).any()):
        raise ValueError("target must hold integer class values, not probabilities")
    index = kept.long()
    top = 1 if binary else channels - 1
    if bool(((index < 0) | (index > top)).any()):
        raise ValueError(f"target values must lie in 0..{top} (or be ignore_index={ignore_index})")
    valid = valid_bool.to(logits.dtype)
    if binary:
        probs = torch.sigmoid(logits) * valid
        onehot = index.to(logits.dtype) * valid
    else:
        probs = torch.softmax(logits, dim=1) * valid
        onehot = F.one_hot(index[:, 0], channels).movedim(-1, 1).to(logits.dtype) * valid
    return Prepared(logits, probs, onehot, index, valid, binary)


def masked_mean(per_pixel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_pixel`` ``(B, 1, *S)`` over valid pixels only (0 when none is valid)."""
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1.0)


class SegLoss(nn.Module, ABC):
    """Base of every segflow loss: ``loss(logits, target)`` → scalar.

    Subclasses implement :meth:`compute` on the :class:`Prepared` tensors, so sums of losses
    prepare once.

    Args:
        ignore_index: target value removed from every sum and mean (nodata), or None.
    """

    def __init__(self, *, ignore_index: int | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss for logits ``(B, C, *S)`` and target ``(B, 1, *S)`` or ``(B, *S)``."""
        return self.compute(prepare(logits, target, self.ignore_index))

    @abstractmethod
    def compute(self, p: Prepared) -> torch.Tensor:
        """The loss on prepared tensors."""


def per_pixel_ce(p: Prepared) -> torch.Tensor:
    """Cross-entropy per pixel ``(B, 1, *S)``; ignored pixels hold finite values to be masked."""
    if p.binary:
        return F.binary_cross_entropy_with_logits(p.logits, p.onehot, reduction="none")
    return F.cross_entropy(p.logits, p.index[:, 0], reduction="none").unsqueeze(1)


def class_weights_per_pixel(p: Prepared, weights: torch.Tensor) -> torch.Tensor:
    """Looks up ``weights[class]`` for every pixel: ``(B, 1, *S)``."""
    return weights.to(p.logits)[p.index]
