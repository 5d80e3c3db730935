"""Fully convolutional networks FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell, 2015)."""

from __future__ import annotations

import torch
from torch import nn

from seg_models.nets._spatial import crop_to, pad_to_multiple
from seg_models.nets.backbones import ResNetBackbone, VGGBackbone
from seg_models.upsampling import TransposedConvUpsample

__all__ = ["FCN"]


class FCN(nn.Module):
    """FCN with the output stride as a parameter: 32 (FCN-32s), 16 (FCN-16s) or 8 (FCN-8s).

    A 1×1 score layer turns the deepest features (VGG16's fc7, or ResNet's layer4) into class
    scores at stride 32. FCN-32s upsamples them ×32 in one transposed convolution. FCN-16s
    upsamples ×2, adds the scores of pool4 (stride 16) and upsamples ×16; FCN-8s also adds
    pool3 (stride 8) before a final ×8. Every transposed convolution starts as bilinear
    interpolation and is learnt; the skip score layers start at zero, so a fresh FCN-8s computes
    what FCN-32s computes until training moves them.

    Inputs of any size are zero-padded at the bottom/right to a multiple of 32 and the output is
    cropped back, so the logits always match the input size.

    Args:
        in_channels: input bands.
        num_classes: output channels (1 for a binary head).
        stride: 32, 16 or 8.
        backbone: ``vgg16`` (torchvision's architecture) or a ResNet name.
        width_divisor: divides the VGG16 widths (tests and CPU); must be 1 for ResNets.
        batch_norm: VGG16 with batch norm (``vgg16_bn`` layout).

    Shape:
        ``(B, in_channels, H, W)`` → logits ``(B, num_classes, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stride: int = 8,
        *,
        backbone: str = "vgg16",
        width_divisor: int = 1,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if stride not in (32, 16, 8):
            raise ValueError(f"FCN stride must be 32, 16 or 8, got {stride}")
        self.stride = stride
        self.backbone: VGGBackbone | ResNetBackbone
        if backbone == "vgg16":
            self.backbone = VGGBackbone(
                in_channels, width_divisor=width_divisor, batch_norm=batch_norm
            )
        else:
            if width_divisor != 1:
                raise ValueError("width_divisor applies to the vgg16 backbone only")
            self.backbone = ResNetBackbone(backbone, in_channels, output_stride=32)
        ch3, ch4, ch5 = self.backbone.channels
        self.score_fr = nn.Conv2d(ch5, num_classes, 1)
        self.score_pool4 = _zero_conv(ch4, num_classes) if stride <= 16 else None
        self.score_pool3 = _zero_conv(ch3, num_classes) if stride == 8 else None
        self.up2 = _bilinear_up(num_classes, 2) if stride <= 16 else None
        self.up2_pool4 = _bilinear_up(num_classes, 2) if stride == 8 else None
        self.up_final = _bilinear_up(num_classes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for ``x`` of shape ``(B, in_channels, H, W)``."""
        size = x.shape[2:]
        pool3, pool4, deep = self.backbone(pad_to_multiple(x, 32))
        score = self.score_fr(deep)
        if self.score_pool4 is not None and self.up2 is not None:
            score = self.up2(score) + self.score_pool4(pool4)
        if self.score_pool3 is not None and self.up2_pool4 is not None:
            score = self.up2_pool4(score) + self.score_pool3(pool3)
        return crop_to(self.up_final(score), size)


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _bilinear_up(channels: int, factor: int) -> TransposedConvUpsample:
    return TransposedConvUpsample(channels, scale_factor=factor, bias=False, bilinear_init=True)
