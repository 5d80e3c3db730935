"""``--model auto``: depth from the patch, width from a probed budget, the patch shrunk when even
the narrowest network is too slow, and every choice stated."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from data_contracts import ChannelNormalization, TrainingPlan
from pipelines.plan.network import (
    MIN_STEPS,
    WIDTHS,
    Budget,
    choose_network,
    filters_for,
    network_depth,
)


def _plan(patch: tuple[int, ...], *, overrides: tuple[str, ...] = ()) -> TrainingPlan:
    return TrainingPlan(
        dataset_name="tiles",
        kind="raster" if len(patch) == 2 else "volume",
        spatial_dims=len(patch),  # type: ignore[arg-type]
        patch_size=patch,
        batch_size=2,
        in_channels=1,
        class_values=(0, 1),
        class_names=("background", "building"),
        normalization=(ChannelNormalization(scheme="zscore"),),
        overrides=overrides,
    )


class LinearProbe:
    """Step time proportional to width² × voxels (as convolutions cost), with a record of calls."""

    def __init__(self, seconds_at_width_8: float, patch: Sequence[int]) -> None:
        self.base = seconds_at_width_8
        self.voxels = float(math.prod(patch))
        self.calls: list[int] = []

    def __call__(self, patch: Sequence[int], width: int, depth: int) -> float:
        self.calls.append(width)
        voxels = float(math.prod(patch))
        return self.base * (width / 8) ** 2 * voxels / self.voxels


@pytest.mark.parametrize(
    ("patch", "dims", "depth"),
    [
        ((256, 256), 2, 5),
        ((128, 128), 2, 4),
        ((96, 96), 2, 3),
        ((64, 64, 32), 3, 2),
        ((32, 32, 16), 3, 2),  # DynUNet's least: 2 poolings, even below 8 px
    ],
)
def test_depth_pools_while_the_shortest_axis_keeps_eight_pixels(
    patch: tuple[int, ...], dims: int, depth: int
) -> None:
    assert network_depth(patch, dims) == depth


def test_3d_depth_is_capped_at_four_and_widths_at_320() -> None:
    assert network_depth((256, 256, 256), 3) == 4
    assert filters_for(32, 4, 3) == [32, 64, 128, 256, 320]
    assert filters_for(16, 5, 2) == [16, 32, 64, 128, 256, 512]


def test_the_widest_width_that_reaches_the_steps_is_chosen_and_wider_ones_are_not_probed() -> None:
    plan = _plan((256, 256))
    probe = LinearProbe(0.1, plan.patch_size)  # 8 → 0.1 s, 16 → 0.4 s, 24 → 0.9 s
    budget = Budget(minutes=10, train_seconds=500, steps_wanted=1000, given=True)
    planned, choice = choose_network(plan, budget, probe)
    assert choice.base_width == 16  # 500 / 0.4 = 1250 steps; 24 gives 555
    assert probe.calls == [8, 16, 24]
    assert choice.planned_steps == 1250
    assert choice.options == {
        "depth": 5,
        "filters": [16, 32, 64, 128, 256, 512],
        "norm": "batch",
    }
    assert planned.network == choice and planned.patch_size == (256, 256)
    for text in ("budget 10 min", "1,250 steps", "U-Net 16-32-64-128-256-512", "patch 256×256"):
        assert text in choice.rule


@pytest.mark.parametrize(
    ("kind", "norm"), [("raster", "batch"), ("image", "instance"), ("volume", "instance")]
)
def test_rasters_get_batch_norm_and_relative_intensities_instance_norm(
    kind: str, norm: str
) -> None:
    plan = _plan((3, 64, 64)[-3 if kind == "volume" else -2 :]).model_copy(update={"kind": kind})
    budget = Budget(minutes=60, train_seconds=3000, steps_wanted=100, given=True)
    _, choice = choose_network(plan, budget, LinearProbe(0.01, plan.patch_size))
    assert choice.options["norm"] == norm
    assert f"DynUNet, {norm} norm" in choice.rule


def test_the_choice_states_the_precision_the_probe_timed() -> None:
    plan = _plan((128, 128))
    budget = Budget(minutes=60, train_seconds=3000, steps_wanted=100, given=True)
    probe = LinearProbe(0.01, plan.patch_size)
    _, choice = choose_network(plan, budget, probe, device="cpu", precision="bf16-mixed")
    assert choice.precision == "bf16-mixed"
    assert "probe on cpu (bf16-mixed):" in choice.rule


def test_a_generous_budget_takes_the_widest_candidate() -> None:
    plan = _plan((128, 128))
    budget = Budget(minutes=60, train_seconds=3000, steps_wanted=100, given=True)
    _, choice = choose_network(plan, budget, LinearProbe(0.01, plan.patch_size))
    assert choice.base_width == WIDTHS[-1]


def test_when_even_the_narrowest_is_too_slow_the_patch_shrinks_until_it_reaches_the_steps() -> None:
    plan = _plan((128, 128, 128))
    budget = Budget(minutes=20, train_seconds=1000, steps_wanted=MIN_STEPS[3], given=True)
    planned, choice = choose_network(plan, budget, LinearProbe(8.0, plan.patch_size))
    assert choice.base_width == WIDTHS[0]
    assert planned.patch_size != plan.patch_size
    assert all(size % 16 == 0 for size in planned.patch_size)
    assert choice.planned_steps >= MIN_STEPS[3]  # 8 s at 128³ is far too slow
    assert choice.depth == network_depth(planned.patch_size, 3)


def test_a_patch_the_user_set_is_never_shrunk() -> None:
    plan = _plan((128, 128, 128), overrides=("patch_size",))
    budget = Budget(minutes=20, train_seconds=1000, steps_wanted=MIN_STEPS[3], given=True)
    planned, choice = choose_network(plan, budget, LinearProbe(8.0, plan.patch_size))
    assert planned.patch_size == (128, 128, 128)
    assert choice.planned_steps == 125


def test_without_a_budget_the_configured_steps_are_the_target_and_the_cap() -> None:
    plan = _plan((64, 64))
    budget = Budget(minutes=60, train_seconds=3060, steps_wanted=2500, given=False)
    _, choice = choose_network(plan, budget, LinearProbe(0.2, plan.patch_size))
    assert choice.base_width == 16  # 0.8 s → 3825 steps; 24: 1.8 s → 1700 < 2500
    assert choice.planned_steps == 2500
    assert choice.rule.startswith("no --max-minutes: budget 60 min")
