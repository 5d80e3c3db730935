"""Encoders built from torchvision's VGG16 and ResNet architectures (``weights=None``).

Both return the features at strides 8, 16 and 32 of the input (the ``pool3``/``pool4``/``pool5``
taps of FCN); a ResNet built with ``output_stride`` 8 or 16 replaces the later strides by
dilation (atrous convolution), as DeepLab and PSPNet do.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torchvision
from torch import nn
from torchvision.models import vgg as tv_vgg

__all__ = ["RESNETS", "ResNetBackbone", "VGGBackbone"]

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


class VGGBackbone(nn.Module):
    """VGG16 (configuration "D" of Simonyan & Zisserman) with fc6/fc7 as convolutions, as in FCN.

    fc6 is a 7×7 convolution with padding 3 (FCN's "same"-padded variant rather than its
    100-pixel input padding), fc7 a 1×1 convolution, each followed by ReLU and dropout.

    Args:
        in_channels: input bands; the first convolution is sized for them.
        width_divisor: divides every width (64…512 and 4096), for tests and CPU runs.
        batch_norm: use torchvision's ``vgg16_bn`` layout instead of plain ``vgg16``.
        fc_channels: width of fc6/fc7 before the divisor.
        dropout: dropout probability after fc6 and fc7.

    Shape:
        input ``(B, C, H, W)`` with H, W divisible by 32; outputs ``(pool3, pool4, fc7)`` at
        strides 8, 16, 32 with :attr:`channels` channels.
    """

    def __init__(
        self,
        in_channels: int = 3,
        *,
        width_divisor: int = 1,
        batch_norm: bool = False,
        fc_channels: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        cfg: list[str | int] = [
            v if isinstance(v, str) else max(1, v // width_divisor) for v in tv_vgg.cfgs["D"]
        ]
        features = tv_vgg.make_layers(cfg, batch_norm=batch_norm)
        first = cast(nn.Conv2d, features[0])  # VGG's configuration "D" starts with a conv
        features[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        self.to_pool3 = features[: pools[2] + 1]
        self.to_pool4 = features[pools[2] + 1 : pools[3] + 1]
        self.to_pool5 = features[pools[3] + 1 :]
        width5, fc = _last_width(self.to_pool5), max(1, fc_channels // width_divisor)
        self.fc = nn.Sequential(
            nn.Conv2d(width5, fc, 7, padding=3),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(fc, fc, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.channels = (_last_width(self.to_pool3), _last_width(self.to_pool4), fc)
        self.total_stride = 32

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(pool3, pool4, fc7)`` features of ``x``."""
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        return pool3, pool4, self.fc(self.to_pool5(pool4))


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier, optionally dilated.

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        in_channels: input bands; ``conv1`` is replaced when not 3.
        output_stride: 32 (plain), 16 (layer4 dilated ×2) or 8 (layer3 ×2, layer4 ×4).

    Shape:
        input ``(B, C, H, W)``; outputs ``(layer2, layer3, layer4)`` features with
        :attr:`channels` channels at strides ``(8, 16, 32)`` capped by ``output_stride``.
    """

    def __init__(
        self,
        name: str = "resnet50",
        in_channels: int = 3,
        *,
        output_stride: Literal[8, 16, 32] = 32,
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; choose one of {RESNETS}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        net = getattr(torchvision.models, name)(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layer2, self.layer3, self.layer4 = net.layer2, net.layer3, net.layer4
        if output_stride <= 16:
            _dilate(self.layer4, 2 if output_stride == 16 else 4)
        if output_stride == 8:
            _dilate(self.layer3, 2)
        self.channels = tuple(_last_width(m) for m in (self.layer2, self.layer3, self.layer4))
        self.total_stride = output_stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(layer2, layer3, layer4)`` features of ``x``."""
        c2 = self.layer2(self.stem(x))
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)


def _dilate(layer: nn.Module, dilation: int) -> None:
    """Turns a strided ResNet stage into a dilated one with stride 1 (atrous convolution).

    Works for BasicBlock and Bottleneck alike (torchvision's own ``replace_stride_with_dilation``
    refuses BasicBlock); every 3×3 convolution of the stage gets the same rate.
    """
    for module in layer.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation = (dilation, dilation)
                module.padding = (dilation, dilation)


def _last_width(module: nn.Module) -> int:
    """Output channels of the last convolution inside ``module``."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels
