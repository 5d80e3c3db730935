"""The training step before its first batch: prepare (cases, plan, route, one split, datasets),
the route of each model, and the one optimiser semantic models and Mask R-CNN share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from data_contracts import (
    ConfigError,
    DatasetManifest,
    InputError,
    TrainConfig,
    TrainingPlan,
)
from pipelines.ingest import ingest
from pipelines.plan.drift import reference_of
from pipelines.preprocess import datasets
from pipelines.synthetic import make_raster_dataset
from pipelines.train import prepare as prepare_module
from pipelines.train.maskrcnn import MaskRCNNModule, maskrcnn_module, maskrcnn_spec
from pipelines.train.module import SegmentationModule
from pipelines.train.optim import DECAY_POWER, PolynomialAdamW
from pipelines.train.prepare import fits_in_memory, prepare
from pipelines.train.route import spec_for

CONFIG = TrainConfig(
    model="unet",
    model_options={"base_features": 4, "depth": 2},
    max_epochs=3,
    accelerator="cpu",
    seed=2,
)
SMALL_PATCH = {"patch_size": [32, 32], "batch_size": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepare")
    make_raster_dataset(root / "data", n_tiles=4, size=(48, 48), seed=3)
    return root


@pytest.fixture(scope="module")
def manifest(data: Path) -> DatasetManifest:
    return ingest(data / "data", workdir=data / "work")


def _count_splits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every call of ``split_cases``, wherever the training step looks it up."""
    calls: list[int] = []
    original: Callable[..., Any] = datasets.split_cases

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(datasets, "split_cases", counted)
    monkeypatch.setattr(prepare_module, "split_cases", counted)
    return calls


def test_prepare_splits_once_and_builds_the_datasets_of_that_split(
    manifest: DatasetManifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = _count_splits(monkeypatch)
    seen: list[TrainingPlan] = []
    prepared = prepare(
        manifest,
        CONFIG,
        tmp_path,
        plan_overrides=SMALL_PATCH,
        val_fraction=0.5,
        on_plan=seen.append,
    )
    assert len(splits) == 1
    val_ids = [case.case_id for case in prepared.val_cases]
    # four cases are too few to hold whole ones out: each trains and validates on its end
    assert prepared.held_out is not None and prepared.held_out.case_ids == tuple(val_ids)
    assert val_ids == sorted(c.case_id for c in prepared.manifest.labelled_cases)
    assert [prepared.val_set[i]["case_id"] for i in range(len(val_ids))] == val_ids
    assert len(prepared.train_set) == 4  # type: ignore[arg-type]
    assert seen == [prepared.plan] and prepared.plan.patch_size == (32, 32)
    assert TrainingPlan.model_validate_json((tmp_path / "plan.json").read_text()) == prepared.plan
    route = prepared.route
    assert isinstance(route.module, SegmentationModule) and route.monitor == "val_dice"
    assert route.spec == spec_for(prepared.plan, CONFIG) and route.batch_size == 2
    assert route.class_names == prepared.plan.class_names
    assert set(route.processing) == {"drift_reference"}  # logged with the model for segment
    reference = reference_of(route.processing)
    assert reference is not None and reference.n_cases == len(prepared.manifest.labelled_cases)
    assert len(reference.channels) == prepared.plan.in_channels
    assert prepared.checkpoint_dir == tmp_path / "checkpoints" and not prepared.left_out
    assert len(prepared.channel_names) == prepared.plan.in_channels


def test_explicit_validation_cases_are_the_ones_validated(
    manifest: DatasetManifest, tmp_path: Path
) -> None:
    prepared = prepare(
        manifest, CONFIG, tmp_path, plan_overrides=SMALL_PATCH, val_case_ids=["tile_002"]
    )
    assert [case.case_id for case in prepared.val_cases] == ["tile_002"]
    assert prepared.val_set[0]["case_id"] == "tile_002"


def test_the_plan_is_published_before_a_model_that_does_not_fit_it_is_refused(
    manifest: DatasetManifest, tmp_path: Path
) -> None:
    seen: list[TrainingPlan] = []
    config = CONFIG.model_copy(update={"model": "maskrcnn", "model_options": {}})
    with pytest.raises(ConfigError, match="Mask R-CNN needs 2D instance labels"):
        prepare(manifest, config, tmp_path, on_plan=seen.append)
    assert len(seen) == 1 and (tmp_path / "plan.json").is_file()


def test_broken_cases_are_left_out_and_all_broken_is_an_input_error(
    tmp_path: Path,
) -> None:
    make_raster_dataset(tmp_path / "data", n_tiles=3, size=(48, 48), seed=3)
    manifest = ingest(tmp_path / "data", workdir=tmp_path / "work")
    labels = [case.label for case in manifest.labelled_cases if case.label is not None]
    Path(labels[0].path).unlink()
    prepared = prepare(manifest, CONFIG, tmp_path / "run", plan_overrides=SMALL_PATCH)
    (case_id,) = prepared.left_out
    assert prepared.left_out[case_id].startswith("MissingFileError: ")
    assert case_id not in {case.case_id for case in prepared.manifest.cases}
    assert len(prepared.train_cases) == 2 and case_id not in prepared.held_out.case_ids  # type: ignore[union-attr]
    for label in labels[1:]:
        Path(label.path).unlink()
    with pytest.raises(InputError, match="no labelled case left to train on: 3 failed"):
        prepare(manifest, CONFIG, tmp_path / "again")


def test_the_memory_cache_is_chosen_from_the_pixel_counts(
    manifest: DatasetManifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 tiles of 48 × 48 pixels, float32 bands plus the label.
    total = sum(48 * 48 * (sum(case.channel_counts) + 1) * 4 for case in manifest.labelled_cases)
    monkeypatch.setattr(prepare_module, "IN_MEMORY_CACHE_BYTES", total + 1)
    assert fits_in_memory(manifest)
    monkeypatch.setattr(prepare_module, "IN_MEMORY_CACHE_BYTES", total)
    assert not fits_in_memory(manifest)


def _optimiser(module: PolynomialAdamW) -> tuple[torch.optim.Optimizer, Any, str]:
    configured = module.configure_optimizers()
    schedule = configured["lr_scheduler"]
    return configured["optimizer"], schedule["scheduler"], schedule["interval"]


def test_semantic_and_maskrcnn_modules_share_one_optimiser() -> None:
    """AdamW over the trainable parameters, learning rate decayed per epoch as
    (1 - epoch / max_epochs) ** 0.9, with each module's own rate and decay."""
    spec = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "num_classes": 2}
    semantic = SegmentationModule(
        {**spec, "options": {"base_features": 4, "depth": 2}},
        learning_rate=2e-3,
        weight_decay=3e-5,
        max_epochs=7,
    )
    plan = TrainingPlan.model_validate(
        {**_instance_plan(), "patch_size": (64, 64), "batch_size": 2}
    )
    config = TrainConfig(model="maskrcnn", accelerator="cpu", max_epochs=5)
    instance = maskrcnn_module(maskrcnn_spec(plan, config, None), plan, config)
    assert isinstance(instance, MaskRCNNModule)
    instance.network.backbone.body.conv1.weight.requires_grad_(False)
    for module, rate, decay, horizon in ((semantic, 2e-3, 3e-5, 7), (instance, 1e-4, 1e-4, 5)):
        assert type(module).configure_optimizers is PolynomialAdamW.configure_optimizers
        optimizer, schedule, interval = _optimiser(module)
        assert isinstance(optimizer, torch.optim.AdamW) and interval == "epoch"
        (group,) = optimizer.param_groups
        assert group["lr"] == pytest.approx(rate) and group["weight_decay"] == pytest.approx(decay)
        trainable = [p for p in module.parameters() if p.requires_grad]
        assert [id(p) for p in group["params"]] == [id(p) for p in trainable]
        assert isinstance(schedule, torch.optim.lr_scheduler.PolynomialLR)
        assert (schedule.total_iters, schedule.power) == (horizon, DECAY_POWER)
    semantic_parameters = sum(1 for _ in semantic.parameters())
    assert len(_optimiser(semantic)[0].param_groups[0]["params"]) == semantic_parameters
    instance_parameters = sum(1 for _ in instance.parameters())
    assert len(_optimiser(instance)[0].param_groups[0]["params"]) == instance_parameters - 1


def _instance_plan() -> dict[str, Any]:
    return {
        "dataset_name": "cells",
        "kind": "image",
        "label_kind": "instance",
        "spatial_dims": 2,
        "in_channels": 1,
        "class_values": (0, 1, 2),
        "class_names": ("background", "interior", "boundary"),
        "normalization": ({"scheme": "zscore"},),
    }
