"""Sliding-window probabilities of an in-memory image or volume (MONAI's inferer, tuned).

:func:`sliding_probabilities` is MONAI's ``sliding_window_inference`` (gaussian blending,
overlap, batched windows) with what makes it faster without doing less work: several windows
per forward pass, ``torch.inference_mode``, channels-last memory for convolutions, mixed
precision (:mod:`pipelines.precision`: float16 on CUDA, bfloat16 on CPUs with native bf16), and
stitching on the CPU when the blended output would not fit on the device. Optional test-time
augmentation averages the probabilities of the image flipped along each spatial axis
(``1 + dims`` passes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers.utils import sliding_window_inference
from torch import nn

from data_contracts import InferenceOptions, ModelSpec
from pipelines.interrupts import check_stop
from pipelines.kinds import kind_adapter
from pipelines.precision import autocast, autocast_dtype, channels_last_helps

__all__ = ["choose_device", "probability_predictor", "sliding_probabilities", "window_options"]

Predictor = Callable[[torch.Tensor], torch.Tensor]
_DEVICE_OUTPUT_FRACTION = 0.25  # of free device memory the blended output may take


def window_options(options: InferenceOptions | None, kind: str) -> InferenceOptions:
    """``options`` (default: all defaults) with an unset overlap and window batch size taken
    from the data kind's adapter (:func:`pipelines.kinds.kind_adapter`).

    Raises:
        ConfigError: ``kind`` is not a registered data kind.
    """
    adapter = kind_adapter(kind)
    return (options or InferenceOptions()).with_window_defaults(
        overlap=adapter.default_overlap, batch_size=adapter.default_window_batch
    )


def choose_device(requested: str | None = None) -> torch.device:
    """``requested`` if given (``cpu``, ``cuda``, ``cuda:1``), else CUDA when present, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _memory_format(dims: int) -> torch.memory_format:
    return torch.channels_last_3d if dims == 3 else torch.channels_last


def probability_predictor(
    network: nn.Module, spec: ModelSpec, *, channels_last: bool = True, amp: bool = False
) -> Predictor:
    """A window predictor: ``(B, C, *S)`` → probabilities ``(B, K, *S)`` (sigmoid or softmax).

    The network is only read: it was made ready once, when loaded
    (:func:`pipelines.services.model_loading.prepare_for_inference`), and threads may share it. Each
    call first checks for a stop request (:func:`pipelines.interrupts.check_stop`), so a
    SIGTERM ends a case at the next batch of windows. With ``amp`` (callers pass
    ``InferenceOptions.amp``) the network runs under autocast, in the precision
    :func:`pipelines.precision.autocast_dtype` gives the windows' device; probabilities are
    float32 either way.
    """
    memory_format = _memory_format(spec.spatial_dims)

    def predict(windows: torch.Tensor) -> torch.Tensor:
        check_stop()
        if channels_last and channels_last_helps(windows.device):  # as the network was loaded
            windows = windows.contiguous(memory_format=memory_format)
        with autocast(windows.device.type, autocast_dtype(windows.device, amp)):
            logits = network(windows).float()
        if spec.is_binary:
            foreground = torch.sigmoid(logits)
            return torch.cat([1 - foreground, foreground], dim=1)
        return torch.softmax(logits, dim=1)

    return predict


def _stitch_device(
    image: torch.Tensor, n_classes: int, device: torch.device
) -> tuple[torch.device, torch.device]:
    """(window device, stitching device): stitch on the CPU when the output would crowd CUDA."""
    if device.type != "cuda":
        return device, device
    free, _ = torch.cuda.mem_get_info(device)
    output_bytes = 4 * n_classes * image[0].numel() * 2  # blended output + weight map
    return device, device if output_bytes < _DEVICE_OUTPUT_FRACTION * free else torch.device("cpu")


def _flip_sets(dims: int, tta: bool) -> list[tuple[int, ...]]:
    """Spatial axes to flip (in ``(B, C, *S)`` indexing) for each pass."""
    return [()] + ([(axis + 2,) for axis in range(dims)] if tta else [])


def sliding_probabilities(
    predictor: Predictor,
    image: torch.Tensor,
    roi: Sequence[int],
    n_classes: int,
    options: InferenceOptions,
    *,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Blended class probabilities ``(K, *S)`` (float32, on the CPU) of one image ``(C, *S)``.

    Args:
        predictor: window predictor (see :func:`probability_predictor`), already on ``device``.
        image: the preprocessed image, channels first, on any device.
        roi: window size per spatial axis (the training patch size).
        n_classes: number of output channels ``K``.
        options: overlap and batch size (set: see :func:`window_options`), blending and TTA
            (the precision is the predictor's).
        device: where windows run (default: :func:`choose_device`).

    Raises:
        UsageError: the overlap or the batch size is unset.
    """
    overlap, batch_size = options.window_settings()
    device = device or choose_device()
    window_device, stitch_device = _stitch_device(image, n_classes, device)
    batch = image[None].float().to(stitch_device)
    total: torch.Tensor | None = None
    flips = _flip_sets(len(roi), options.tta)
    with torch.inference_mode():
        for axes in flips:
            source = torch.flip(batch, axes) if axes else batch
            output = sliding_window_inference(
                source,
                tuple(roi),
                sw_batch_size=batch_size,
                predictor=predictor,
                overlap=overlap,
                mode=options.mode,
                sigma_scale=options.sigma_scale,
                sw_device=window_device,
                device=stitch_device,
            )
            if not isinstance(output, torch.Tensor):
                raise TypeError("sliding_window_inference returned no tensor")
            output = torch.flip(output, axes) if axes else output
            total = output if total is None else total + output
    if total is None:  # unreachable: there is always the unflipped pass
        raise RuntimeError("no inference pass ran")
    return (total[0] / len(flips)).float().cpu()
