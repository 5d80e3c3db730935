"""U-Net (Ronneberger, Fischer & Brox, 2015) in 2D and 3D, with `same` or the original `valid` convs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from seg_models.nets._spatial import center_crop, crop_to, pad_to_multiple

__all__ = ["UNet", "unet_output_size"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_UP = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class DoubleConv(nn.Sequential):
    """Two 3×3 convolutions, each followed by batch norm (optional) and ReLU."""

    def __init__(
        self, spatial_dims: int, in_ch: int, out_ch: int, padding: int, batch_norm: bool
    ) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            layers.append(
                _CONV[spatial_dims](c_in, out_ch, 3, padding=padding, bias=not batch_norm)
            )
            if batch_norm:
                layers.append(_NORM[spatial_dims](out_ch))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """The classical U-Net: contracting path, bottleneck, expanding path with skips, 1×1 head.

    With the default ``features`` (64, 128, 256, 512, 1024) there are 4 contracting blocks (two
    3×3 convs + BN + ReLU, then 2×2 max pooling), a 1024-feature bottleneck, and 4 expanding
    blocks (2×2 transposed conv halving the features, concatenation with the skip, two 3×3
    convs). Depth is ``len(features) - 1``.

    ``padding="same"`` (default): zero-padded convolutions; inputs of any size are padded at the
    end of every axis to a multiple of ``2**depth`` and the output is cropped back, so logits
    have the input's spatial size. ``padding="valid"``: the paper's unpadded convolutions with
    centre-cropped skips; the output is smaller than the input, see :func:`unet_output_size`
    (572×572 → 388×388 at depth 4).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (classes, 1 for a binary head).
        features: widths from the first block to the bottleneck.
        padding: ``"same"`` or ``"valid"``.
        batch_norm: batch norm after every convolution (the 2015 paper had none).

    Shape:
        ``(B, in_channels, *spatial)`` → ``(B, out_channels, *spatial)`` (``same``) or
        ``(B, out_channels, *unet_output_size(spatial, depth))`` (``valid``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        *,
        padding: Literal["same", "valid"] = "same",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(features) < 2:
            raise ValueError("features needs at least two widths (one block and the bottleneck)")
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        self.spatial_dims, self.padding, self.depth = spatial_dims, padding, len(features) - 1
        pad = 1 if padding == "same" else 0
        widths = [in_channels, *features]
        self.down = nn.ModuleList(
            DoubleConv(spatial_dims, widths[i], widths[i + 1], pad, batch_norm)
            for i in range(self.depth)
        )
        self.pool = _POOL[spatial_dims](2)
        self.bottleneck = DoubleConv(spatial_dims, features[-2], features[-1], pad, batch_norm)
        self.up = nn.ModuleList(
            _UP[spatial_dims](features[i + 1], features[i], 2, stride=2)
            for i in reversed(range(self.depth))
        )
        self.up_conv = nn.ModuleList(
            DoubleConv(spatial_dims, 2 * features[i], features[i], pad, batch_norm)
            for i in reversed(range(self.depth))
        )
        self.head = _CONV[spatial_dims](features[0], out_channels, 1)

    def output_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """Spatial size of the logits for an input of spatial ``size``."""
        if self.padding == "same":
            return tuple(size)
        return unet_output_size(size, self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` of shape ``(B, in_channels, *spatial)``."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"expected {self.spatial_dims + 2}-D input, got shape {tuple(x.shape)}"
            )
        size = x.shape[2:]
        if self.padding == "same":
            x = pad_to_multiple(x, 2**self.depth)
        else:
            self.output_size(size)  # raises early when the input is too small
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips), strict=True):
            x = up(x)
            x = conv(torch.cat([center_crop(skip, x.shape[2:]), x], dim=1))
        logits = self.head(x)
        return crop_to(logits, size) if self.padding == "same" else logits


def unet_output_size(size: Sequence[int], depth: int = 4) -> tuple[int, ...]:
    """Output size of a `valid` U-Net: every 3×3 conv loses 2, pools halve, up-convs double.

    Args:
        size: input spatial size.
        depth: number of pooling steps.

    Returns:
        Output spatial size (572 → 388 at depth 4).

    Raises:
        ValueError: when the input is too small for the network.
    """

    def one(s: int) -> int:
        for _ in range(depth):
            s = (s - 4) // 2
            if s < 1:
                break
        s -= 4
        for _ in range(depth):
            s = 2 * s - 4
        return s

    out = tuple(one(int(s)) for s in size)
    if min(out) < 1:
        raise ValueError(f"input {tuple(size)} is too small for a valid U-Net of depth {depth}")
    return out
