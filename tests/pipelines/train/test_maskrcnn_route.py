"""How ``segflow train --model maskrcnn`` sizes Mask R-CNN from the plan and the data."""

from __future__ import annotations

import pytest
import torch

from data_contracts import ChannelNormalization, ConfigError, TrainConfig, TrainingPlan
from pipelines.train.maskrcnn import (
    BATCH_SIZE,
    LEARNING_RATE,
    anchor_ladder,
    instance_items,
    maskrcnn_batch_size,
    maskrcnn_module,
    maskrcnn_spec,
)

PLAN = TrainingPlan(
    dataset_name="cells",
    kind="image",
    label_kind="instance",
    spatial_dims=2,
    patch_size=(96, 128),
    batch_size=12,
    in_channels=2,
    class_values=(0, 1, 2),
    class_names=("background", "interior", "boundary"),
    normalization=(ChannelNormalization(scheme="zscore"),) * 2,
)
CPU = TrainConfig(model="maskrcnn", accelerator="cpu")


@pytest.mark.parametrize(
    ("area", "smallest"),
    [(None, 32), (235.0, 8), (4096.0, 32), (9.0, 4), (1.0, 4)],
)
def test_anchor_ladder_follows_the_median_object(area: float | None, smallest: int) -> None:
    ladder = anchor_ladder(area)
    assert ladder == [[smallest * 2**level] for level in range(5)]


def test_spec_from_the_plan_on_a_cpu() -> None:
    spec = maskrcnn_spec(PLAN, CPU, median_object_size=235.0)
    assert (spec.name, spec.task, spec.in_channels, spec.num_classes) == (
        "maskrcnn",
        "instance",
        2,
        2,
    )
    options = spec.options
    assert options["min_size"] == options["max_size"] == 128  # chips are not resized
    assert options["backbone"] == "resnet18" and options["fpn_channels"] == 128
    assert options["anchor_sizes"] == [[8], [16], [32], [64], [128]]
    assert options["image_mean"] == [0.0, 0.0] and options["image_std"] == [1.0, 1.0]


def test_model_options_override_the_derived_ones() -> None:
    config = CPU.model_copy(update={"model_options": {"backbone": "resnet34", "min_size": 256}})
    spec = maskrcnn_spec(PLAN, config, median_object_size=None)
    assert spec.options["backbone"] == "resnet34" and spec.options["min_size"] == 256
    assert spec.options["max_size"] == 128


def test_semantic_or_3d_plans_are_refused() -> None:
    with pytest.raises(ConfigError, match="2D instance labels"):
        maskrcnn_spec(PLAN.model_copy(update={"label_kind": "semantic"}), CPU, None)


def test_batch_size_and_learning_rate_defaults_give_way_to_explicit_values() -> None:
    assert maskrcnn_batch_size(PLAN, CPU) == BATCH_SIZE["cpu"]
    explicit = PLAN.model_copy(update={"overrides": ("batch_size",)})
    assert maskrcnn_batch_size(explicit, CPU) == 12
    spec = maskrcnn_spec(PLAN, CPU, None)
    assert maskrcnn_module(spec, PLAN, CPU).hparams["learning_rate"] == LEARNING_RATE
    chosen = TrainConfig(model="maskrcnn", accelerator="cpu", learning_rate=3e-4)
    assert maskrcnn_module(spec, PLAN, chosen).hparams["learning_rate"] == 3e-4


def test_collated_monai_batches_become_items() -> None:
    batch = {"image": torch.zeros(3, 2, 8, 9), "instances": torch.ones(3, 1, 8, 9)}
    items = instance_items(batch)
    assert len(items) == 3 and items[0]["instances"].shape == (8, 9)
    with pytest.raises(KeyError, match="instance"):
        instance_items({"image": torch.zeros(1, 2, 8, 9)})
