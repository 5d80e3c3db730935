"""How a training runs: model, loss, budget, reproducibility, hardware."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue

from data_contracts._base import Contract


class TrainConfig(Contract):
    """Options of ``segflow train`` (the CLI flags and the YAML config map onto these fields).

    Attributes:
        model: ``auto`` (the plan chooses the network for the data, the budget and the
            device; see :mod:`pipelines.plan.network`) or a model name in the factory (``unet``,
            ``dynunet``, ``fcn8s``…).
        model_options: keyword options of the model (widths, backbone…); with ``auto`` they
            override the plan's choice.
        loss: loss name or sum of names (``dice+ce``).
        loss_options: keyword options of the loss.
        max_epochs: epochs at most.
        max_minutes: wall-clock budget of the whole command (planning, training, the final
            evaluation and registering); training stops early enough for it.
        steps_per_epoch: training batches per epoch (patches are sampled, so an epoch is a
            number of steps, not a pass over the files).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: seed of every random generator (recorded with the run).
        deterministic: use deterministic algorithms (slower on GPU).
        patience: validations without improvement of the validation Dice before stopping.
        weights: the weights a training keeps (evaluates, logs and registers): ``final``,
            ``best`` (the best validation's), or ``auto``: the final ones when early stopping
            is off (a budget sets the epochs and no patience is given: the learning rate decays
            to 0 at its end, and nnU-Net segments with its final checkpoint too), else the
            best. A validation slab of one or two cases is a noisy judge: within a budget it
            picked epoch 0 or 1 of 13-76 in four of ten benchmark runs (``BENCHMARKS.md``).
        val_every: validate every this many epochs.
        accelerator: ``auto`` (CUDA when present), ``cpu`` or ``gpu``.
        devices: number of devices, or ``auto``.
        strategy: ``auto`` or ``ddp`` (several GPUs).
        precision: ``auto`` (bf16/16 mixed on CUDA; bf16 mixed on CPUs with native bf16, i.e.
            AVX-512 BF16 or AMX, for every network but Mask R-CNN; else 32) or a Lightning
            precision string (``32-true`` turns mixed precision off).
        num_workers: data loader worker processes.
        budget_started_at: Unix time the budget counts from (the CLI passes its own start);
            ``None``: when training starts.
    """

    model: str = "auto"
    model_options: dict[str, JsonValue] = Field(default_factory=dict)
    loss: str = "dice+ce"
    loss_options: dict[str, JsonValue] = Field(default_factory=dict)
    max_epochs: int = Field(default=50, ge=1)
    max_minutes: float | None = Field(default=None, gt=0)
    steps_per_epoch: int = Field(default=50, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    seed: int = 0
    deterministic: bool = False
    patience: int = Field(default=10, ge=1)
    weights: Literal["auto", "final", "best"] = "auto"
    val_every: int = Field(default=1, ge=1)
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int | Literal["auto"] = "auto"
    strategy: Literal["auto", "ddp"] = "auto"
    precision: str = "auto"
    num_workers: int = Field(default=0, ge=0)
    budget_started_at: float | None = Field(default=None, gt=0)
