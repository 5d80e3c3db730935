"""Padding and cropping helpers shared by the networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads the end of every spatial axis up to the next multiple of ``multiple``.

    Args:
        x: ``(B, C, *spatial)``.
        multiple: the network's total stride.

    Returns:
        ``(B, C, *padded)`` with every padded size divisible by ``multiple``; the original
        content sits at the start of every axis, so :func:`crop_to` undoes it.
    """
    pads: list[int] = []
    for size in reversed(x.shape[2:]):
        pads += [0, -size % multiple]
    return F.pad(x, pads) if any(pads) else x


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Keeps the first ``size`` elements of every spatial axis (inverse of :func:`pad_to_multiple`).

    Args:
        x: ``(B, C, *spatial)``.
        size: target spatial size, each at most the current one.

    Returns:
        ``(B, C, *size)``.
    """
    return x[(slice(None), slice(None), *(slice(0, s) for s in size))]


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crops the centre ``size`` region of every spatial axis (the `valid` U-Net skip crop).

    Args:
        x: ``(B, C, *spatial)``.
        size: target spatial size, each at most the current one.

    Returns:
        ``(B, C, *size)``.
    """
    slices = []
    for have, want in zip(x.shape[2:], size, strict=True):
        if want > have:
            raise ValueError(f"cannot centre-crop {tuple(x.shape[2:])} to {tuple(size)}")
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[(slice(None), slice(None), *slices)]
