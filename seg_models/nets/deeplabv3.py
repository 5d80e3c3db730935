"""DeepLabV3 (Chen et al., 2017): a dilated ResNet and atrous spatial pyramid pooling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from seg_models.nets.backbones import ResNetBackbone

__all__ = ["DeepLabV3"]


class DeepLabV3(nn.Module):
    """DeepLabV3: dilated ResNet encoder, ASPP (torchvision's), bilinear upsampling to the input.

    ASPP runs a 1×1 convolution, three 3×3 atrous convolutions and image-level pooling in
    parallel on the encoder's features and fuses them with a 1×1 convolution. The paper uses
    rates 6/12/18 at output stride 16 and doubles them at output stride 8; that is the default
    here (``atrous_rates=None``).

    Train with batches of 2 or more: the image-pooling branch applies batch norm to a 1×1 map.

    Args:
        in_channels: input bands.
        num_classes: output channels (1 for a binary head).
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        output_stride: 16 (layer4 dilated) or 8 (layer3 and layer4 dilated).
        atrous_rates: the three ASPP rates; default (6, 12, 18) × (16 / output_stride).
        aspp_channels: width of every ASPP branch and of the head.

    Shape:
        ``(B, in_channels, H, W)`` → ``(B, num_classes, H, W)``, any H, W.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        backbone: str = "resnet50",
        output_stride: Literal[8, 16] = 16,
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"DeepLabV3 output_stride must be 8 or 16, got {output_stride}")
        if atrous_rates is None:
            atrous_rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
        self.atrous_rates = tuple(atrous_rates)
        self.backbone = ResNetBackbone(backbone, in_channels, output_stride=output_stride)
        self.head = nn.Sequential(
            ASPP(self.backbone.channels[-1], self.atrous_rates, aspp_channels),
            nn.Conv2d(aspp_channels, aspp_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(aspp_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(aspp_channels, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for ``x`` of shape ``(B, in_channels, H, W)``."""
        features = self.backbone(x)[-1]
        logits = self.head(features)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
