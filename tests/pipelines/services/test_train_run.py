"""End to end on tiny synthetic data: plan, train, evaluate, MLflow run, registry, champion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch

from data_contracts import Case, ConfigError, IngestOptions, TrainConfig
from pipelines.ingest import ingest
from pipelines.services.model_registry import load_model
from pipelines.services.training import train_from_manifest
from pipelines.synthetic import make_image_dataset, make_raster_dataset

CONFIG = TrainConfig(
    model="unet",
    model_options={"base_features": 4, "depth": 2},
    loss="dice+ce",
    max_epochs=2,
    steps_per_epoch=2,
    accelerator="cpu",
    seed=0,
    learning_rate=5e-3,
)
SMALL_PATCH = {"patch_size": [32, 32], "batch_size": 2}


@pytest.fixture(scope="module")
def raster_manifest(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("rasters")
    make_raster_dataset(root / "data", n_tiles=3, size=(48, 48), seed=3)
    return ingest(root / "data", workdir=root / "work")


def test_train_registers_and_champion_round_trips(  # type: ignore[no-untyped-def]
    raster_manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.preprocess import datasets
    from pipelines.train import prepare

    splits: list[tuple[list[str], list[str]]] = []

    def split_cases(*args: Any, **kwargs: Any) -> tuple[list[Case], list[Case]]:
        train, val = datasets.split_cases(*args, **kwargs)
        splits.append(([c.case_id for c in train], [c.case_id for c in val]))
        return train, val

    monkeypatch.setattr(prepare, "split_cases", split_cases)
    report = train_from_manifest(
        raster_manifest,
        CONFIG,
        tmp_path / "run1",
        plan_overrides=SMALL_PATCH,
        register="tiles",
        progress_bar=False,
    )
    assert report.plan.patch_size == (32, 32) and "patch_size" in report.plan.overrides
    assert report.registration is not None and report.registration.decision.promoted
    assert 0.0 <= report.evaluation.score <= 1.0
    assert (tmp_path / "run1" / "plan.json").is_file()
    assert len(splits) == 1  # split once; three cases are too few to hold one out whole:
    assert report.validation_cases == sorted(splits[0][0] + splits[0][1])  # each one's end
    run = mlflow.get_run(report.run_id)
    assert run.data.params["plan.patch_size"] == "32,32"
    assert f"final_{report.evaluation.metric}" in run.data.metrics
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(report.run_id)}
    assert {"plan.json", "curves.png", "overlays"} <= artifacts

    champion = load_model("models:/tiles@champion")
    x = torch.randn(1, report.spec.in_channels, 32, 32, generator=torch.Generator().manual_seed(0))
    trained = report.result  # the in-process network is the best checkpoint's weights
    assert trained.best_checkpoint is not None
    from pipelines.train.module import SegmentationModule

    state = torch.load(trained.best_checkpoint, weights_only=True)["state_dict"]
    module = SegmentationModule(report.spec.model_dump(), roi_size=(32, 32))
    module.load_state_dict(state)
    module.eval()
    with torch.inference_mode():
        torch.testing.assert_close(champion.network(x), module.network(x), rtol=1e-6, atol=1e-6)


def test_nuclei_route_scores_dsb2018(tmp_path: Path) -> None:
    make_image_dataset(tmp_path / "nuclei", n_images=3, size=(48, 48), seed=5)
    manifest = ingest(
        tmp_path / "nuclei", options=IngestOptions(label_kind="instance"), workdir=tmp_path / "work"
    )
    report = train_from_manifest(
        manifest, CONFIG, tmp_path / "run", plan_overrides=SMALL_PATCH, progress_bar=False
    )
    assert report.plan.class_names == ("background", "interior", "boundary")
    assert report.evaluation.metric == "val_dsb2018" and 0.0 <= report.evaluation.score <= 1.0
    assert report.registration is None


def test_volume_training_checkpoints_load_weights_only(tmp_path: Path) -> None:
    """Volumes arrive as MONAI MetaTensors; metrics must not carry them into checkpoints, which
    are loaded back with weights_only=True."""
    from pipelines.synthetic import make_volume_dataset

    make_volume_dataset(tmp_path / "vol", n_cases=3, shape=(20, 18, 12), seed=1)
    manifest = ingest(tmp_path / "vol", workdir=tmp_path / "work")
    config = CONFIG.model_copy(update={"max_epochs": 1})
    report = train_from_manifest(
        manifest,
        config,
        tmp_path / "run",
        plan_overrides={"patch_size": [16, 16, 16], "batch_size": 2},
        progress_bar=False,
    )
    assert report.spec.spatial_dims == 3 and report.result.best_checkpoint is not None
    state = torch.load(report.result.best_checkpoint, weights_only=True)
    assert "state_dict" in state


def test_a_volume_trained_on_axial_slices_validates_registers_and_segments(
    tmp_path: Path,
) -> None:
    """``--plan spatial_dims=2``: a 2D network on a volume's slices; validation, the final
    evaluation (Dice and HD95 in mm) and ``segflow segment`` predict whole volumes."""
    from pipelines.infer.in_memory import predict_volume
    from pipelines.synthetic import make_volume_dataset

    make_volume_dataset(tmp_path / "vol", n_cases=3, shape=(36, 32, 10), seed=1)
    manifest = ingest(tmp_path / "vol", workdir=tmp_path / "work")
    report = train_from_manifest(
        manifest,
        CONFIG.model_copy(update={"max_epochs": 1}),
        tmp_path / "run",
        plan_overrides={"spatial_dims": 2, "batch_size": 2},
        register="slices",
        progress_bar=False,
    )
    assert report.plan.spatial_dims == 2 and len(report.plan.patch_size) == 2
    assert report.plan.target_spacing is not None and len(report.plan.target_spacing) == 2
    assert "spatial_dims" in report.plan.overrides and report.spec.spatial_dims == 2
    per_case = next(iter(report.evaluation.per_case.values()))
    assert all(np.isfinite(scores["dice"]) for scores in per_case.values())
    model = load_model("models:/slices@champion")
    case = manifest.cases[0]
    prediction = predict_volume(model, [channel.path for channel in case.channels])
    assert prediction.classes.shape == (36, 32, 10)


def test_a_spatial_dims_override_is_2_or_3(tmp_path: Path) -> None:
    from pipelines.synthetic import make_volume_dataset

    make_volume_dataset(tmp_path / "vol", n_cases=2, shape=(20, 18, 12), seed=1)
    manifest = ingest(tmp_path / "vol", workdir=tmp_path / "work")
    with pytest.raises(ConfigError, match="spatial_dims"):
        train_from_manifest(manifest, CONFIG, tmp_path / "run", plan_overrides={"spatial_dims": 4})


def test_maskrcnn_route_trains_registers_and_round_trips(tmp_path: Path) -> None:
    """``--model maskrcnn`` trains through the same path: plan, chips, tiled validation scored
    by DSB-2018/AP/F1, MLflow run and registry; the champion detects what the best checkpoint
    detects."""
    from pipelines.instance_targets import detections_to_instance_map
    from pipelines.train.maskrcnn import MaskRCNNModule

    make_image_dataset(tmp_path / "nuclei", n_images=3, size=(64, 64), seed=5)
    manifest = ingest(
        tmp_path / "nuclei", options=IngestOptions(label_kind="instance"), workdir=tmp_path / "work"
    )
    config = CONFIG.model_copy(
        update={"model": "maskrcnn", "model_options": {}, "max_epochs": 1, "steps_per_epoch": 1}
    )
    report = train_from_manifest(
        manifest,
        config,
        tmp_path / "run",
        plan_overrides={"patch_size": [64, 64]},
        register="cells",
        keep_predictions=True,
        progress_bar=False,
    )
    assert report.spec.task == "instance" and report.spec.options["backbone"] == "resnet18"
    assert report.spec.options["min_size"] == report.spec.options["max_size"] == 64
    assert report.batch_size == min(report.plan.batch_size, 2)  # chips per CPU step
    assert report.evaluation.metric == "val_dsb2018"
    (per_case,) = report.evaluation.per_case.values()
    assert set(per_case["instances"]) == {"dsb2018", "ap_50_95", "f1_50"}
    assert report.registration is not None and report.registration.decision.promoted
    run = mlflow.get_run(report.run_id)
    assert "final_val_dsb2018" in run.data.metrics and run.data.params["spec.name"] == "maskrcnn"

    champion = load_model("models:/cells@champion")
    assert champion.spec == report.spec and champion.processing["score_threshold"] == 0.5
    assert report.result.best_checkpoint is not None
    state = torch.load(report.result.best_checkpoint, weights_only=True)["state_dict"]
    module = MaskRCNNModule(report.spec.model_dump(mode="json"))
    module.load_state_dict(state)
    x = torch.randn(1, report.spec.in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
    module.network.eval()
    champion.network.eval()
    # Loading for inference applies the model's score threshold (processing); so must the
    # checkpoint's network, or a low-score detection of a barely trained model differs.
    module.network.roi_heads.score_thresh = champion.network.roi_heads.score_thresh
    with torch.inference_mode():
        ours, theirs = module.network(list(x))[0], champion.network(list(x))[0]
        features = module.network.backbone(x), champion.network.backbone(x)
    for level in features[0]:  # never empty, unlike the detections of a barely trained model
        torch.testing.assert_close(features[1][level], features[0][level], rtol=1e-5, atol=1e-5)
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(theirs[key], ours[key], rtol=1e-5, atol=1e-5)
    painted = detections_to_instance_map(theirs, score_threshold=0.0, shape=(64, 64))
    assert painted.shape == (64, 64)

    # `segflow segment` with the champion gives exactly what validation scored.
    from pipelines.infer.maskrcnn import segment_instances

    (case_id,) = report.validation_cases
    (case,) = [case for case in manifest.cases if case.case_id == case_id]
    segmented = segment_instances(champion, case.channels[0].path)
    validated, truth = report.evaluation.predictions[case_id]
    assert segmented.dtype == np.uint16 and segmented.shape == truth.shape
    np.testing.assert_array_equal(segmented, validated)

    # The champion carries its training files' drift reference; its confidence is the share
    # of low-score detections (no probability map).
    from pipelines.infer.confidence import low_score_share
    from pipelines.infer.inputs import discover_inputs
    from pipelines.infer.maskrcnn import scored_instances
    from pipelines.infer.run import segment_case

    assert "drift_reference" in champion.processing
    labels, scores = scored_instances(champion, case.channels[0].path)
    np.testing.assert_array_equal(labels, segmented)
    assert len(scores) == int(labels.max())
    one = discover_inputs(case.channels[0].path, workdir=tmp_path / "scratch").cases[0]
    quality = segment_case(champion, one, tmp_path / "segmented").quality
    assert quality is not None and quality.drift_status == "ok"
    assert quality.mean_entropy is None and quality.low_score_share == low_score_share(scores)


def test_maskrcnn_refuses_semantic_labels(raster_manifest, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from data_contracts import ConfigError

    config = CONFIG.model_copy(update={"model": "maskrcnn", "model_options": {}})
    with pytest.raises(ConfigError, match="Mask R-CNN needs 2D instance labels"):
        train_from_manifest(raster_manifest, config, tmp_path / "run", progress_bar=False)
