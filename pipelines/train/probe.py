"""The probe behind ``--model auto``: time a few training steps of a candidate width here.

:func:`pipelines.plan.network.choose_network` asks for the seconds one optimiser step of a
candidate network takes on this device, with the plan's patch and batch; this module builds
that network, runs a warm-up step and then a few timed steps (forward, ``dice+ce`` loss,
backward, AdamW) on random data, under the same precision the training uses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch
from pydantic import JsonValue

from data_contracts import ModelSpec, TrainingPlan
from pipelines.plan.network import FAMILY, filters_for, network_norm
from pipelines.precision import autocast, training_autocast_dtype
from seg_models import build_loss, build_model

__all__ = ["probe_device", "step_probe"]

logger = logging.getLogger(__name__)

#: Timed steps at most, and the seconds after which no further step is timed. The fastest
#: timed step counts: another process starting on the same cores (the shared Prefect API on a
#: first command) slows some steps, never speeds one up.
_TIMED_STEPS = 5
_TIMED_SECONDS = 3.0


def probe_device(accelerator: str) -> str:
    """``cuda`` when CUDA is present and not refused by ``accelerator``, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() and accelerator != "cpu" else "cpu"


def step_probe(
    plan: TrainingPlan, device: str = "cpu", precision: str = "32-true"
) -> Callable[[Sequence[int], int, int], float]:
    """A probe for :func:`~pipelines.plan.network.choose_network`: seconds per training step.

    Args:
        plan: channels, classes and batch size of the training.
        device: ``cpu`` or ``cuda``.
        precision: the training's Lightning precision (``bf16-mixed`` steps run under
            autocast, as Lightning runs them).

    Returns:
        ``probe(patch_size, base_width, depth)``.
    """

    def probe(patch_size: Sequence[int], base_width: int, depth: int) -> float:
        filters = filters_for(base_width, depth, plan.spatial_dims)
        spec = ModelSpec(
            name=FAMILY,
            spatial_dims=plan.spatial_dims,
            in_channels=plan.in_channels,
            num_classes=plan.num_classes,
            options={
                "depth": depth,
                "filters": list[JsonValue](filters),
                "norm": network_norm(plan),
            },
        )
        seconds = _time_steps(spec, tuple(patch_size), plan.batch_size, device, precision)
        logger.info(
            "probe: width %d, depth %d, patch %s, batch %d → %.3f s/step on %s",
            base_width,
            depth,
            "×".join(map(str, patch_size)),
            plan.batch_size,
            seconds,
            device,
        )
        return seconds

    return probe


def _time_steps(
    spec: ModelSpec, patch: tuple[int, ...], batch: int, device: str, precision: str
) -> float:
    generator = torch.Generator().manual_seed(0)
    network = build_model(spec).to(device)
    loss_fn = build_loss("dice+ce")
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-4)
    images = torch.randn((batch, spec.in_channels, *patch), generator=generator).to(device)
    labels = torch.randint(0, spec.num_classes, (batch, 1, *patch), generator=generator)
    labels = labels.to(device)
    network.train()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast(device, training_autocast_dtype(precision)):
            loss = loss_fn(network(images).float(), labels)
        loss.backward()
        optimiser.step()

    step()  # warm-up: allocations and kernel choice
    _synchronize(device)
    timed: list[float] = []
    while len(timed) < _TIMED_STEPS and sum(timed) < _TIMED_SECONDS:
        started = time.perf_counter()
        step()
        _synchronize(device)
        timed.append(time.perf_counter() - started)
    return min(timed)


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
