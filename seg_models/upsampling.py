"""The upsampling family: fixed unpooling rules, max unpooling and learnable transposed convs.

Every function takes channels-first batches ``(B, C, *spatial)`` with 1, 2 or 3 spatial axes and
an integer scale applied to every spatial axis.

Worked examples (2D, one batch item, one channel):

- ``nearest_upsample([[1, 3], [2, 0]], 2)`` → ``[[1,1,3,3],[1,1,3,3],[2,2,0,0],[2,2,0,0]]``
- ``bed_of_nails([[1, 4], [3, 2]], 2)`` → ``[[1,0,4,0],[0,0,0,0],[3,0,2,0],[0,0,0,0]]``
- ``max_pool_with_indices([[1,4,4,8],[7,0,3,2],[3,1,2,1],[2,0,3,5]], 2)`` → ``[[7,8],[3,5]]``;
  ``max_unpool([[1,3],[2,4]], indices, (4, 4))`` → ``[[0,0,0,3],[1,0,0,0],[2,0,0,0],[0,0,0,4]]``
- ``transposed_conv([[0,2],[3,1]], kernel [[0,1],[2,3]])`` → ``[[0,0,2],[0,7,7],[6,11,3]]``
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TransposedConvUpsample",
    "bed_of_nails",
    "bilinear_kernel",
    "max_pool_with_indices",
    "max_unpool",
    "nearest_upsample",
    "transposed_conv",
]

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_MAX_UNPOOL = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_CONV_T_LAYER: dict[int, type[nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d]] = {
    1: nn.ConvTranspose1d,
    2: nn.ConvTranspose2d,
    3: nn.ConvTranspose3d,
}


def _spatial_dims(x: torch.Tensor) -> int:
    dims = x.ndim - 2
    if dims not in (1, 2, 3):
        raise ValueError(f"expected a (B, C, *spatial) tensor with 1-3 spatial axes, got {x.shape}")
    return dims


def _check_scale(scale: int) -> int:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def nearest_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Repeats every value ``scale`` times along every spatial axis.

    Args:
        x: ``(B, C, *spatial)``.
        scale: integer factor.

    Returns:
        ``(B, C, *(s * scale for s in spatial))``.
    """
    dims, scale = _spatial_dims(x), _check_scale(scale)
    out = x
    for axis in range(2, 2 + dims):
        out = out.repeat_interleave(scale, dim=axis)
    return out


def bed_of_nails(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Puts every value at the first corner of its ``scale``-wide block, zeros elsewhere.

    Args:
        x: ``(B, C, *spatial)``.
        scale: integer factor.

    Returns:
        ``(B, C, *(s * scale for s in spatial))``.
    """
    dims, scale = _spatial_dims(x), _check_scale(scale)
    out = x.new_zeros((*x.shape[:2], *(s * scale for s in x.shape[2:])))
    out[(slice(None), slice(None), *([slice(None, None, scale)] * dims))] = x
    return out


def max_pool_with_indices(x: torch.Tensor, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max pooling with stride = kernel that also returns where each maximum was.

    Args:
        x: ``(B, C, *spatial)``.
        kernel_size: window and stride.

    Returns:
        ``(pooled, indices)``, both ``(B, C, *(s // k for s in spatial))``; ``indices`` are flat
        positions in each input plane, as :func:`max_unpool` expects.
    """
    dims = _spatial_dims(x)
    pooled, indices = _MAX_POOL[dims](x, kernel_size, stride=kernel_size, return_indices=True)
    return pooled, indices


def max_unpool(x: torch.Tensor, indices: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
    """Puts every value back where :func:`max_pool_with_indices` found the maximum; zeros elsewhere.

    Args:
        x: ``(B, C, *pooled_spatial)`` values to place (e.g. decoder features).
        indices: the indices returned by :func:`max_pool_with_indices`, same shape as ``x``.
        output_size: spatial size of the tensor that was pooled.

    Returns:
        ``(B, C, *output_size)``.
    """
    dims = _spatial_dims(x)
    if len(output_size) != dims:
        raise ValueError(f"output_size needs {dims} values, got {tuple(output_size)}")
    if indices.shape != x.shape:
        raise ValueError(f"indices {tuple(indices.shape)} do not match x {tuple(x.shape)}")
    kernel = [max(1, o // s) for o, s in zip(output_size, x.shape[2:], strict=True)]
    return _MAX_UNPOOL[dims](x, indices, kernel, stride=kernel, output_size=list(output_size))


def transposed_conv(
    x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0
) -> torch.Tensor:
    """Transposed convolution: every input value scales the kernel, overlaps are summed.

    Args:
        x: ``(B, C_in, *spatial)``.
        weight: ``(C_in, C_out, *kernel)`` (PyTorch's transposed-conv layout) or, for one
            channel, just ``kernel`` with as many axes as ``x`` has spatial axes.
        stride: step between the kernel copies in the output.
        padding: rows/columns removed from every side of the full output.

    Returns:
        ``(B, C_out, *((s - 1) * stride - 2 * padding + k))``.
    """
    dims = _spatial_dims(x)
    if weight.ndim == dims:
        weight = weight[None, None]
    return _CONV_T[dims](x, weight.to(x.dtype), stride=stride, padding=padding)


def bilinear_kernel(size: int, spatial_dims: int = 2) -> torch.Tensor:
    """The (bi/tri)linear interpolation filter of FCN (Long et al., 2015) for a transposed conv.

    Args:
        size: kernel width, ``2 * factor - factor % 2`` for an upsampling ``factor``.
        spatial_dims: 1, 2 or 3.

    Returns:
        ``(size,) * spatial_dims`` separable tent filter.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    tent = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    kernel = tent
    for _ in range(spatial_dims - 1):
        kernel = kernel[..., None] * tent
    return kernel


class TransposedConvUpsample(nn.Module):
    """Learnable upsampling by an integer factor with a transposed convolution.

    With the defaults (kernel ``2f - f % 2``, stride ``f``, padding ``ceil((f - 1) / 2)``) the
    output is exactly ``f`` times the input along every axis. With ``bilinear_init`` the weights
    start as channel-wise bilinear interpolation (``C_in == C_out`` required), as in FCN; the bias
    starts at zero.

    Args:
        in_channels: input channels.
        out_channels: output channels (default: ``in_channels``).
        scale_factor: integer upsampling factor ``f``.
        spatial_dims: 1, 2 or 3.
        bilinear_init: start from bilinear interpolation instead of random weights.
        bias: learn an additive bias.
        kernel_size: override the kernel width (then also consider ``padding``).
        padding: override the padding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        scale_factor: int = 2,
        spatial_dims: int = 2,
        *,
        bilinear_init: bool = True,
        bias: bool = True,
        kernel_size: int | None = None,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        f = _check_scale(scale_factor)
        out_channels = in_channels if out_channels is None else out_channels
        kernel_size = 2 * f - f % 2 if kernel_size is None else kernel_size
        padding = math.ceil((f - 1) / 2) if padding is None else padding
        if bilinear_init and in_channels != out_channels:
            raise ValueError("bilinear_init needs in_channels == out_channels")
        self.scale_factor = f
        self.conv = _CONV_T_LAYER[spatial_dims](
            in_channels, out_channels, kernel_size, stride=f, padding=padding, bias=bias
        )
        if bilinear_init:
            self.reset_bilinear()

    @torch.no_grad()
    def reset_bilinear(self) -> None:
        """Sets the weights to channel-wise bilinear interpolation and the bias to zero."""
        weight = self.conv.weight
        dims = weight.ndim - 2
        weight.zero_()
        kernel = bilinear_kernel(weight.shape[-1], dims).to(weight.device, weight.dtype)
        for c in range(min(weight.shape[0], weight.shape[1])):
            weight[c, c] = kernel
        if self.conv.bias is not None:
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsamples ``(B, C_in, *spatial)`` to ``(B, C_out, *(s * f for s in spatial))``."""
        upsampled: torch.Tensor = self.conv(x)
        return upsampled
