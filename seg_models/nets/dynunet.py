"""MONAI's DynUNet (the nnU-Net architecture) with padding so any input size works."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.dynunet import DynUNet
from torch import nn

from seg_models.nets._spatial import crop_to, pad_to_multiple

__all__ = ["PaddedDynUNet"]


class PaddedDynUNet(nn.Module):
    """MONAI ``DynUNet`` with isotropic 3×3 kernels and ×2 strides, padded to fit any size.

    The first level keeps full resolution, each of the ``depth`` next levels halves it; inputs
    are zero-padded at the end of every axis to a multiple of ``2**depth`` and the logits are
    cropped back. Deep supervision is off (the training loop expects one logits tensor).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (classes, 1 for a binary head).
        depth: number of downsampling steps.
        filters: widths per level (``depth + 1`` values); MONAI's nnU-Net default
            ``32, 64, …`` capped at 320 (3D) or 512 (2D) when omitted.
        res_block: residual blocks instead of plain conv blocks.
        norm_name: MONAI norm name, e.g. ``"instance"`` (nnU-Net) or ``"batch"``.

    Shape:
        ``(B, in_channels, *spatial)`` → ``(B, out_channels, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        depth: int = 4,
        filters: Sequence[int] | None = None,
        res_block: bool = False,
        norm_name: str = "instance",
    ) -> None:
        super().__init__()
        if filters is not None and len(filters) != depth + 1:
            raise ValueError(f"filters needs depth + 1 = {depth + 1} values, got {len(filters)}")
        strides = [1] + [2] * depth
        self.depth = depth
        self.net = DynUNet(
            spatial_dims,
            in_channels,
            out_channels,
            kernel_size=[3] * (depth + 1),
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=list(filters) if filters is not None else None,
            norm_name=(norm_name, {"affine": True}),
            res_block=res_block,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` of shape ``(B, in_channels, *spatial)``."""
        size = x.shape[2:]
        out: torch.Tensor = self.net(pad_to_multiple(x, 2**self.depth))
        return crop_to(out, size)
