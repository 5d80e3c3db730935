"""PSPNet (Zhao et al., 2017): a dilated ResNet and a pyramid pooling module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from seg_models.nets.backbones import ResNetBackbone

__all__ = ["PSPNet", "PyramidPooling"]


class PyramidPooling(nn.Module):
    """Average-pools the features into ``bins × bins`` grids, reduces, upsamples, concatenates.

    Args:
        in_channels: feature channels.
        bins: grid sizes, (1, 2, 3, 6) in the paper.

    Shape:
        ``(B, C, H, W)`` → ``(B, C + len(bins) * (C // len(bins)), H, W)``.
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        reduced = max(1, in_channels // len(bins))
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduced, 1, bias=False),
                nn.BatchNorm2d(reduced),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.out_channels = in_channels + len(bins) * reduced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features concatenated with their upsampled pyramid pools."""
        size = x.shape[2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(nn.Module):
    """PSPNet: dilated ResNet, pyramid pooling (bins 1, 2, 3, 6), 3×3 conv head, bilinear upsampling.

    The auxiliary loss of the paper is left out. Train with batches of 2 or more: the 1×1 bin
    applies batch norm to a 1×1 map.

    Args:
        in_channels: input bands.
        num_classes: output channels (1 for a binary head).
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        output_stride: 8 (paper) or 16.
        bins: pyramid grid sizes.
        head_channels: width of the 3×3 convolution after the pyramid.
        dropout: dropout before the classifier.

    Shape:
        ``(B, in_channels, H, W)`` → ``(B, num_classes, H, W)``, any H, W.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        backbone: str = "resnet50",
        output_stride: Literal[8, 16] = 8,
        bins: Sequence[int] = (1, 2, 3, 6),
        head_channels: int = 512,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"PSPNet output_stride must be 8 or 16, got {output_stride}")
        self.backbone = ResNetBackbone(backbone, in_channels, output_stride=output_stride)
        self.pyramid = PyramidPooling(self.backbone.channels[-1], bins)
        self.head = nn.Sequential(
            nn.Conv2d(self.pyramid.out_channels, head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(head_channels, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for ``x`` of shape ``(B, in_channels, H, W)``."""
        features = self.backbone(x)[-1]
        logits = self.head(self.pyramid(features))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
