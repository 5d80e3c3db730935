"""The loss options a training gets: ``weighted_ce`` without weights trains on the fingerprint's
inverse class frequencies, and the default loss takes nnU-Net's Dice."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from data_contracts import (
    ChannelNormalization,
    ChannelStats,
    DatasetFingerprint,
    LossError,
    PostprocessConfig,
    TrainConfig,
    TrainingPlan,
)
from pipelines.train.route import (
    MIN_CLASS_FREQUENCY,
    inverse_frequency_weights,
    loss_options_for,
    planned_loss_options,
    route_for,
)
from seg_models.losses import DiceLoss

PLAN = TrainingPlan(
    dataset_name="tiles",
    kind="raster",
    spatial_dims=2,
    patch_size=(32, 32),
    batch_size=2,
    in_channels=1,
    class_values=(0, 1, 3),
    class_names=("background", "road", "water"),
    normalization=(ChannelNormalization(scheme="zscore"),),
)
# Class value 3 (water) is 4x rarer than 1 (road), which is 7x rarer than 0.
FINGERPRINT = DatasetFingerprint(
    dataset_name="tiles",
    kind="raster",
    n_cases=3,
    median_shape=(48, 48),
    median_spacing=(1.0, 1.0),
    channels=(
        ChannelStats(
            name="band1",
            mean=0.0,
            std=1.0,
            percentile_00_5=-2.0,
            percentile_99_5=2.0,
            nonzero_fraction=1.0,
        ),
    ),
    class_frequencies={0: 0.7, 1: 0.1, 3: 0.025, 255: 0.175},
)
TINY_UNET: dict[str, Any] = {"base_features": 4, "depth": 2}


def _expected() -> list[float]:
    raw = [1 / 0.7, 1 / 0.1, 1 / 0.025]
    return [w * 3 / sum(raw) for w in raw]


def _route(loss: str, loss_options: dict[str, Any] | None = None) -> Any:
    config = TrainConfig(
        model="unet",
        model_options=TINY_UNET,
        loss=loss,
        loss_options=loss_options or {},
        accelerator="cpu",
    )
    return route_for(PLAN, config, FINGERPRINT)


def test_weights_are_inverse_frequencies_in_class_order_averaging_one() -> None:
    weights = inverse_frequency_weights(PLAN, FINGERPRINT)
    assert weights == pytest.approx(_expected(), rel=1e-3)
    assert sum(weights) / len(weights) == pytest.approx(1.0, rel=1e-3)
    assert weights[0] < weights[1] < weights[2]  # rarer classes weigh more


def test_weighted_ce_without_weight_gets_them_and_logs_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="pipelines.train.route"):
        route = _route("weighted_ce")
    weights = route.loss_options["weight"]
    assert weights == pytest.approx(_expected(), rel=1e-3)
    torch.testing.assert_close(
        route.module.loss_fn.get_buffer("weight"), torch.tensor(weights, dtype=torch.float32)
    )
    assert route.module.hparams["loss_options"]["weight"] == weights  # kept by checkpoints
    (line,) = [r.getMessage() for r in caplog.records if "class weights" in r.getMessage()]
    assert f"water {weights[2]:g}" in line and "background" in line


def test_a_sum_gives_the_weights_to_weighted_ce_only() -> None:
    route = _route("dice+weighted_ce", {"weighted_ce": {}})
    assert route.loss_options["weighted_ce"]["weight"] == pytest.approx(_expected(), rel=1e-3)
    assert "weight" not in route.loss_options
    route.module.loss_fn(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))


@pytest.mark.parametrize(
    "options", [{"weight": [1.0, 2.0, 3.0]}, {"weighted_ce": {"weight": [1.0, 2.0, 3.0]}}]
)
def test_explicit_weights_win(options: dict[str, Any]) -> None:
    route = _route("weighted_ce", options)
    assert route.loss_options == options
    torch.testing.assert_close(
        route.module.loss_fn.get_buffer("weight"), torch.tensor([1.0, 2.0, 3.0])
    )


@pytest.mark.parametrize("loss", ["balanced_ce", "dice+ce", "focal"])
def test_other_losses_get_their_options_unchanged(loss: str) -> None:
    options = {"gamma": 1.0} if loss == "focal" else {}
    assert loss_options_for(loss, options, PLAN, FINGERPRINT) == options


def test_a_class_without_pixels_is_weighted_finitely_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fingerprint = FINGERPRINT.model_copy(update={"class_frequencies": {0: 0.9, 1: 0.1}})
    with caplog.at_level(logging.WARNING, logger="pipelines.train.route"):
        weights = inverse_frequency_weights(PLAN, fingerprint)
    raw = [1 / 0.9, 1 / 0.1, 1 / MIN_CLASS_FREQUENCY]
    assert weights == pytest.approx([w * 3 / sum(raw) for w in raw], rel=1e-3)
    assert "no labelled pixel of class water" in caplog.text


def test_an_unknown_loss_is_a_loss_error() -> None:
    with pytest.raises(LossError, match="unknown loss 'tversky'"):
        loss_options_for("dice+tversky", {}, PLAN, FINGERPRINT)


def test_the_default_loss_takes_nnunets_dice(caplog: pytest.LogCaptureFixture) -> None:
    """No --loss: dice+ce whose Dice sums over the batch and leaves out the background."""
    config = TrainConfig(model="unet", model_options=TINY_UNET, accelerator="cpu")
    with caplog.at_level(logging.INFO, logger="pipelines.train.route"):
        route = route_for(PLAN, config, FINGERPRINT)
    assert route.loss_options == {"dice": {"batch": True, "include_background": False}}
    (dice,) = [term for term in route.module.loss_fn.modules() if isinstance(term, DiceLoss)]
    assert dice.batch and not dice.include_background
    assert "nnU-Net's 2D Dice (summed over the batch" in caplog.text
    route.module.loss_fn(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))


@pytest.mark.parametrize(
    ("loss", "options"), [("dice+ce", {}), ("dice+focal", {}), (None, {"dice": {"batch": False}})]
)
def test_a_loss_or_options_the_user_names_are_kept(
    loss: str | None, options: dict[str, Any]
) -> None:
    given: dict[str, Any] = {"loss_options": options} | ({"loss": loss} if loss else {})
    config = TrainConfig(model="unet", model_options=TINY_UNET, accelerator="cpu", **given)
    assert planned_loss_options(config, PLAN) == options


def test_without_a_background_class_the_dice_keeps_every_class() -> None:
    """Land cover whose value 0 is nodata: class index 0 is a real class and stays in the Dice."""
    config = TrainConfig(model="unet", model_options=TINY_UNET, accelerator="cpu")
    no_background = PLAN.model_copy(update={"class_values": (1, 2, 3)})
    options = planned_loss_options(config, no_background)
    assert options == {"dice": {"batch": True, "include_background": True}}


def test_in_3d_the_dice_is_taken_per_patch_with_the_background() -> None:
    """BraTS (A4) scored 0.73 with this Dice, 0.64 with the batch Dice, 0.66 without the
    background."""
    config = TrainConfig(model="unet", model_options=TINY_UNET, accelerator="cpu")
    volumes = PLAN.model_copy(update={"kind": "volume", "spatial_dims": 3, "patch_size": (16,) * 3})
    options = planned_loss_options(config, volumes)
    assert options == {"dice": {"batch": False, "include_background": True}}


@pytest.mark.parametrize("dims", [2, 3])
def test_one_foreground_region_of_several_classes_is_also_scored_whole(dims: int) -> None:
    """BraTS: the plan keeps one tumour of several classes, so the Dice scores it whole too."""
    config = TrainConfig(model="unet", model_options=TINY_UNET, accelerator="cpu")
    one_region = {"postprocess": PostprocessConfig(keep_largest_foreground=True)}
    shape = {"spatial_dims": dims, "patch_size": (16,) * dims, "kind": "volume"}
    plan = PLAN.model_copy(update={**one_region, **shape})
    assert planned_loss_options(config, plan)["dice"]["foreground_region"] is True  # type: ignore[index,call-overload]
    binary = plan.model_copy(update={"class_values": (0, 1), "class_names": ("bg", "cord")})
    assert "foreground_region" not in planned_loss_options(config, binary)["dice"]  # type: ignore[operator]
    no_background = plan.model_copy(update={"class_values": (1, 2, 3)})
    assert "foreground_region" not in planned_loss_options(config, no_background)["dice"]  # type: ignore[operator]


def test_the_plans_postprocessing_is_logged_with_the_model() -> None:
    config = TrainConfig(model="unet", model_options=TINY_UNET, accelerator="cpu")
    assert route_for(PLAN, config, FINGERPRINT).processing == {}
    cleaned = PLAN.model_copy(
        update={"postprocess": PostprocessConfig(keep_largest_foreground=True)}
    )
    route = route_for(cleaned, config, FINGERPRINT)
    assert route.processing == {"postprocess": {"keep_largest_foreground": True}}
