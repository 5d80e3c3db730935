"""A model ready for inference: its network, spec, plan and processing, prepared once.

:class:`LoadedModel` is what every inference step takes. The services that load models
(:mod:`pipelines.services.model_loading`, from MLflow) build one and call
:func:`prepare_for_inference` once; inference steps only read it afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import seg_models
from data_contracts import ModelSpec, TrainingPlan
from pipelines.precision import channels_last_helps

logger = logging.getLogger(__name__)

__all__ = ["LoadedModel", "ModelCard", "network_on", "prepare_for_inference"]


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded for segflow's inference.

    Attributes:
        network: the ``nn.Module``, in eval mode on the CPU.
        spec: its model spec.
        plan: the training plan (preprocessing to apply before ``network``).
        class_names: one name per class index.
        channel_names: one name per input channel.
        processing: pre/post-processing config.
        name: registered model name (``None`` for run or logged-model URIs).
        version: registry version (``None`` likewise).
        uri: the URI or folder it was loaded from.
        device: where ``network`` lives (it was made ready for inference there, once: see
            :func:`prepare_for_inference`).
    """

    network: nn.Module
    spec: ModelSpec
    plan: TrainingPlan
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    processing: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    version: str | None = None
    uri: str = ""
    device: str = "cpu"

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, K, *spatial)`` for a preprocessed ``(B, C, *spatial)`` batch."""
        return seg_models.predict(self.network, x, self.spec)


@dataclass(frozen=True)
class ModelCard:
    """What a model is, without its network: what a batch needs to decide from its ledger
    which cases the model must segment (identity, spec, plan, classes, processing).

    Attributes are those of :class:`LoadedModel` of the same name.
    """

    spec: ModelSpec
    plan: TrainingPlan
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    processing: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    version: str | None = None
    uri: str = ""


def prepare_for_inference(model: LoadedModel, device: str | None = None) -> LoadedModel:
    """Make a freshly built model ready for inference, once, before anyone shares it.

    Eval mode, no gradients, the device, channels-last memory for convolutional networks where
    it is faster (:func:`pipelines.precision.channels_last_helps`; numbers differ from the
    default layout only in float rounding) and, for detectors, the score threshold of the
    model's processing config. Inference code only reads the network afterwards: task threads
    of a batch share one model, and converting its parameters in place while another thread
    runs it crashed the process (SIGSEGV).

    Args:
        model: a model whose network nobody else uses yet.
        device: ``cpu``, ``cuda``, ``cuda:1``… (default: CUDA when present, else the CPU).

    Returns:
        The same model with :attr:`LoadedModel.device` set.
    """
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network = model.network.to(target).eval().requires_grad_(False)
    if model.spec.task == "semantic" and channels_last_helps(target):
        fmt = torch.channels_last_3d if model.spec.spatial_dims == 3 else torch.channels_last
        network = network.to(memory_format=fmt)
    heads = getattr(network, "roi_heads", None)
    threshold = model.processing.get("score_threshold")
    if heads is not None and threshold is not None and hasattr(heads, "score_thresh"):
        heads.score_thresh = max(float(heads.score_thresh), float(threshold))
    return dataclasses.replace(model, network=network, device=str(target))


def network_on(model: LoadedModel, device: str | torch.device | None) -> nn.Module:
    """The model's network on ``device`` without touching the shared one.

    ``None`` or the model's own device gives :attr:`LoadedModel.network` itself; another
    device gives a prepared copy (slow: load the model with ``device=`` instead).
    """
    if device is None or torch.device(device) == torch.device(model.device):
        return model.network
    logger.warning(
        "model %s was loaded for %s; copying it to %s for this call (pass device= to load_model)",
        model.uri,
        model.device,
        device,
    )
    copied = dataclasses.replace(model, network=copy.deepcopy(model.network))
    return prepare_for_inference(copied, str(device)).network
