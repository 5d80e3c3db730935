"""Receptive fields of stacked (atrous) convolutions and pooling layers, along one axis."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

from torch import nn

__all__ = ["effective_kernel_size", "receptive_field"]

Layer = int | Sequence[int]
"""A kernel size ``k``, or ``(k, dilation)``, or ``(k, dilation, stride)``."""


def effective_kernel_size(kernel_size: int, dilation: int = 1) -> int:
    """Span of one atrous kernel: ``dilation * (kernel_size - 1) + 1`` (3 at rate 2 spans 5).

    Args:
        kernel_size: taps along the axis.
        dilation: atrous rate (1 = ordinary convolution).

    Returns:
        The number of input positions between the first and last tap, inclusive.
    """
    if kernel_size < 1 or dilation < 1:
        raise ValueError("kernel_size and dilation must be positive")
    return dilation * (kernel_size - 1) + 1


def receptive_field(layers: Iterable[Layer] | nn.Module) -> int:
    """Receptive field, along one axis, of a stack of layers applied one after the other.

    ``r = 1 + Σ_i (k_eff_i − 1) · Π_{j<i} s_j``, with ``k_eff = d (k − 1) + 1``. So one 3×3 kernel
    at rate 2 covers 5×5, two of them 9×9, and a 3×3 conv after a stride-2 layer adds 4.

    Args:
        layers: kernel sizes, ``(kernel, dilation)`` or ``(kernel, dilation, stride)`` tuples, or
            a module whose convolution and pooling layers, in registration order, form a chain
            (``nn.Sequential`` of them; branching networks are not chains). Square kernels only:
            the first axis of a module's kernel is used.

    Returns:
        The receptive field in input pixels.
    """
    field, jump = 1, 1
    for kernel, dilation, stride in _geometry(layers):
        field += (effective_kernel_size(kernel, dilation) - 1) * jump
        jump *= stride
    return field


def _geometry(layers: Iterable[Layer] | nn.Module) -> list[tuple[int, int, int]]:
    if isinstance(layers, nn.Module):
        return [_module_geometry(m) for m in layers.modules() if _has_window(m)]
    out = []
    for layer in layers:
        spec = (layer,) if isinstance(layer, int) else tuple(layer)
        if not 1 <= len(spec) <= 3:
            raise ValueError(f"a layer is k, (k, dilation) or (k, dilation, stride); got {layer!r}")
        kernel, dilation, stride = (*spec, 1, 1)[:3]
        out.append((int(kernel), int(dilation), int(stride)))
    return out


_WINDOWED = (
    nn.modules.conv._ConvNd,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
)


def _has_window(module: nn.Module) -> bool:
    return isinstance(module, _WINDOWED) and not isinstance(
        module, nn.modules.conv._ConvTransposeNd
    )


def _first(value: int | Sequence[int]) -> int:
    return int(value) if isinstance(value, int) else int(value[0])


def _module_geometry(module: nn.Module) -> tuple[int, int, int]:
    kernel = _first(cast(int | Sequence[int], module.kernel_size))
    dilation = _first(cast(int | Sequence[int], getattr(module, "dilation", 1)))
    stride = _first(cast(int | Sequence[int], module.stride))
    return kernel, dilation, stride
