"""A model plugin for tests (``SEGFLOW_MODEL_PLUGINS=tests.crash_models``): ``crash_on_flat``,
a 1×1 convolution (``pixel_linear``'s weights load into it) whose forward pass takes its
process down natively when a window is flat (each channel constant), the mark of the test's bad
input: ``os.abort()`` (SIGABRT) or a NULL dereference through ctypes (SIGSEGV)."""

from __future__ import annotations

import ctypes
import os

import torch
from torch import nn

from data_contracts import ModelSpec
from seg_models._options import Options
from seg_models.network_catalog import register_model


class _CrashOnFlat(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int, how: str) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)
        self.how = how

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        values = windows.flatten(2)  # (B, C, pixels): flat when every channel is constant
        if bool((values == values[:, :, :1]).all(dim=2).all(dim=1).any()):
            if self.how == "segv":
                ctypes.string_at(0)  # reads address 0: SIGSEGV
            os.abort()
        return super().forward(windows)


@register_model(
    "crash_on_flat",
    spatial_dims=(2,),
    source="segflow tests",
    summary="1×1 convolution that crashes its process natively on a flat window (tests only)",
)
def _crash_on_flat(spec: ModelSpec, opt: Options) -> nn.Module:
    how = opt.choice("how", "abort", ["abort", "segv"])
    opt.finish()
    return _CrashOnFlat(spec.in_channels, spec.num_classes, how)
