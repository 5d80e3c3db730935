"""The foreground cut chosen on validation: which plans tune it, the Dice per cut, the gain rule,
and a training that keeps it (plan.json, the model's plan and processing, the MLflow run)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
import numpy as np
import pytest

from data_contracts import ChannelNormalization, PostprocessConfig, TrainConfig, TrainingPlan
from pipelines.ingest import ingest
from pipelines.plan import plan_table
from pipelines.preprocess.array import IGNORE_INDEX
from pipelines.services.model_registry import load_model
from pipelines.services.training import train_from_manifest
from pipelines.synthetic import make_raster_dataset
from pipelines.train import evaluate
from pipelines.train.foreground_cut import (
    CANDIDATE_CUTS,
    MIN_GAIN,
    CutChoice,
    choose_cut,
    plan_with_cut,
    region_dice_by_cut,
    tunes_foreground_cut,
)


def _plan(class_values: tuple[int, ...], **postprocess: object) -> TrainingPlan:
    return TrainingPlan(
        dataset_name="cut",
        kind="raster",
        spatial_dims=2,
        patch_size=(32, 32),
        batch_size=2,
        in_channels=1,
        class_values=class_values,
        class_names=tuple(f"c{value}" for value in class_values),
        normalization=(ChannelNormalization(scheme="zscore"),),
        postprocess=PostprocessConfig.model_validate(postprocess),
    )


def test_plans_that_decide_foreground_first_tune_the_cut() -> None:
    assert tunes_foreground_cut(_plan((0, 1)))
    assert tunes_foreground_cut(_plan((0, 1, 2, 4), keep_largest_foreground=True))
    assert not tunes_foreground_cut(_plan((0, 1, 2)))  # argmax over three classes
    assert not tunes_foreground_cut(_plan((1, 2)))  # no background class
    assert not tunes_foreground_cut(_plan((0, 1), threshold=0.4))  # the user's threshold


def test_region_dice_by_cut() -> None:
    foreground = np.array([[0.2, 0.35, 0.45, 0.65, 0.9, 0.9]], dtype=np.float32)
    probabilities = np.stack([1 - foreground, foreground])
    truth = np.array([[0, 1, 1, 1, 1, IGNORE_INDEX]])
    scores = region_dice_by_cut(probabilities, truth)
    assert set(scores) == set(CANDIDATE_CUTS)
    assert scores[0.3] == pytest.approx(1.0)  # 0.35 … 0.9 found, the ignored pixel unseen
    assert scores[0.5] == pytest.approx(2 * 2 / (4 + 2))
    assert scores[0.7] == pytest.approx(2 * 1 / (4 + 1))


def test_the_cut_moves_only_for_a_real_gain() -> None:
    flat = dict.fromkeys(CANDIDATE_CUTS, 0.8)
    kept = choose_cut([flat, {**flat, 0.4: 0.8 + MIN_GAIN / 2}])
    assert kept is not None and kept.cut == 0.5 and not kept.moved
    moved = choose_cut([{**flat, 0.4: 0.85}, {**flat, 0.4: 0.83}])
    assert moved is not None and moved.cut == 0.4 and moved.moved
    assert moved.dice == pytest.approx(0.84) and moved.default_dice == pytest.approx(0.8)
    assert "0.4 chosen on validation" in moved.describe()
    assert choose_cut([]) is None
    plan = plan_with_cut(_plan((0, 1)), moved)
    assert plan.postprocess.threshold == 0.4
    assert plan_with_cut(_plan((0, 1)), kept).postprocess.threshold is None


def test_training_keeps_the_validated_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forced(per_case: Sequence[Mapping[float, float]]) -> CutChoice | None:
        """The measured choice, moved to 0.3 so that the test sees a moved cut travel."""
        measured = choose_cut(per_case)
        assert measured is not None  # a binary plan: every validation case was measured
        return dataclasses.replace(measured, cut=0.3)

    monkeypatch.setattr(evaluate, "choose_cut", forced)
    make_raster_dataset(tmp_path / "data", n_tiles=3, size=(48, 48), n_classes=1, seed=3)
    manifest = ingest(tmp_path / "data", workdir=tmp_path / "work")
    config = TrainConfig(
        model="unet",
        model_options={"base_features": 4, "depth": 2},
        max_epochs=2,
        steps_per_epoch=2,
        accelerator="cpu",
        seed=0,
    )
    report = train_from_manifest(
        manifest,
        config,
        tmp_path / "run",
        plan_overrides={"patch_size": [32, 32], "batch_size": 2},
        register="binary-tiles",
        progress_bar=False,
    )
    choice = report.evaluation.foreground_cut
    assert choice is not None and set(choice.dice_by_cut) == set(CANDIDATE_CUTS)
    run = mlflow.get_run(report.run_id)
    assert float(run.data.params["foreground_cut"]) == choice.cut
    assert {f"val_region_dice_cut_{cut:g}" for cut in CANDIDATE_CUTS} <= set(run.data.metrics)
    expected = 0.3
    saved = json.loads((tmp_path / "run" / "plan.json").read_text(encoding="utf-8"))
    assert saved["postprocess"]["threshold"] == expected
    model = load_model("models:/binary-tiles@champion")
    assert model.plan.postprocess.threshold == expected
    assert model.processing["postprocess"]["threshold"] == expected
    assert "foreground at probability ≥ 0.3" in dict(plan_table(report.plan))["postprocess"]
