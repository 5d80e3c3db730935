"""Mixed precision where the hardware computes it natively.

Training and inference run in a reduced precision by default when the device has fast native
kernels for it: bfloat16 (or float16 on GPUs without bf16) on CUDA, and bfloat16 on CPUs with
AVX-512 BF16 or AMX instructions, where oneDNN's bf16 convolutions ran 1.5–2.8× the float32
speed for training steps and 2.0–2.3× for inference (``BENCHMARKS.md``, T1 and the A-tasks'
probe figures). Other CPUs would only emulate bf16, more slowly than float32, so they keep it.
Weights stay float32 (Lightning's ``bf16-mixed``), and losses and probabilities are computed
from float32 logits.
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "autocast",
    "autocast_dtype",
    "channels_last_helps",
    "native_cpu_bf16",
    "training_autocast_dtype",
    "training_precision",
]

_NATIVE_BF16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
_AUTOCAST_OF_PRECISION = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX tiles)."""
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in _NATIVE_BF16_CHECKS)


def autocast(device_type: str, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device_type``; a no-op when ``dtype`` is ``None``."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def autocast_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """The reduced precision inference runs in on ``device`` when ``amp`` is on, else ``None``.

    float16 on CUDA (nnU-Net's choice for inference), bfloat16 on a CPU with native bf16
    instructions, ``None`` (float32) elsewhere.
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and native_cpu_bf16():
        return torch.bfloat16
    return None


def channels_last_helps(device: torch.device) -> bool:
    """Whether channels-last memory makes convolutions faster on ``device`` for inference.

    Yes on CUDA and on CPUs that run float32 (about 5 % for the plan's 2D U-Nets); no on CPUs
    with native bf16, where oneDNN's bf16 kernels ran the plan's U-Nets 10–13 % faster in the
    default layout (256² windows: 41 vs 46 ms; 80³: 311 vs 338 ms, 2 cores).
    """
    return device.type != "cpu" or not native_cpu_bf16()


def training_precision(device_type: str) -> str:
    """Lightning's precision for training on ``cpu`` or ``cuda`` when the config says ``auto``.

    ``bf16-mixed`` on CUDA with bf16 and on CPUs with native bf16, ``16-mixed`` on older GPUs,
    ``32-true`` on other CPUs.
    """
    if device_type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if native_cpu_bf16() else "32-true"


def training_autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast type of a Lightning precision string (``None``: no autocast)."""
    return _AUTOCAST_OF_PRECISION.get(precision)
