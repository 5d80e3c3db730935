"""Whole-image logits during training's validation, by gaussian sliding window.

A plan can train a 2D network on a volume's axial slices (``spatial_dims = 2`` for volume
cases): its validation images stay whole volumes ``(B, C, X, Y, Z)`` while the network and its
windows are 2D. Such a volume is predicted slice by slice, the slices folded into the batch, as
``segflow segment`` predicts it (:func:`pipelines.infer.in_memory.predict_volume`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers.utils import sliding_window_inference

__all__ = ["window_logits"]

#: Windows per network call, and the overlap of neighbouring windows.
WINDOW_BATCH = 4
WINDOW_OVERLAP = 0.25


def window_logits(
    network: torch.nn.Module, images: torch.Tensor, roi: Sequence[int]
) -> torch.Tensor:
    """Logits ``(B, K, *S)`` of images ``(B, C, *S)`` with windows of ``roi``.

    Images with one spatial axis more than ``roi`` (volumes under a 2D plan) are cut into
    slices along their last axis, predicted as a batch of 2D images and stacked back.

    Raises:
        ValueError: ``roi`` has neither as many axes as the images nor one fewer.
        TypeError: MONAI's inferer returned no tensor.
    """
    spatial = images.ndim - 2
    if spatial == len(roi) + 1:
        batch, channels, *plane, depth = images.shape
        slices = images.movedim(-1, 1).reshape(batch * depth, channels, *plane)
        logits = window_logits(network, slices, roi)
        return logits.reshape(batch, depth, *logits.shape[1:]).movedim(1, -1)
    if spatial != len(roi):
        raise ValueError(f"windows of {len(roi)} axes cannot cover images of {spatial} axes")
    windowed = sliding_window_inference(
        images,
        tuple(int(size) for size in roi),
        sw_batch_size=WINDOW_BATCH,
        predictor=network,
        overlap=WINDOW_OVERLAP,
        mode="gaussian",
    )
    if not isinstance(windowed, torch.Tensor):
        raise TypeError("sliding_window_inference returned no tensor")
    return windowed
