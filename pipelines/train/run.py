"""``train_from_manifest``: fingerprint → plan → data → Lightning → evaluate → MLflow → registry."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from pydantic import JsonValue

from data_contracts import (
    DatasetFingerprint,
    DatasetManifest,
    InputError,
    ModelSpec,
    TrainConfig,
    TrainingPlan,
    VolumeGeometry,
)
from pipelines.plan import apply_overrides, compute_fingerprint, make_plan, save_plan
from pipelines.preprocess.datasets import build_datasets, split_cases
from pipelines.preprocess.verify import check_training_cases
from pipelines.services.model_registry import (
    RegistrationResult,
    load_model,
    log_segmentation_model,
    register_model,
    validation_key,
)
from pipelines.services.tracking import (
    log_epoch_metrics,
    log_manifest_input,
    log_overlays,
    log_plan_and_spec,
    log_training_curves,
    training_run,
)
from pipelines.train.evaluate import Evaluation, evaluate_network
from pipelines.train.maskrcnn import (
    MASK_THRESHOLD,
    SCORE_THRESHOLD,
    MaskRCNNModule,
    maskrcnn_batch_size,
    maskrcnn_module,
    maskrcnn_spec,
)
from pipelines.train.module import SegmentationModule, foreground_indices
from pipelines.train.trainer import TrainResult, fit, make_loaders, seed_everything

logger = logging.getLogger(__name__)

PlanCallback = Callable[[TrainingPlan], None]


@dataclass
class _Route:
    """What differs between semantic models and Mask R-CNN: spec, module, batch, metric."""

    spec: ModelSpec
    module: SegmentationModule | MaskRCNNModule
    batch_size: int
    monitor: str
    class_names: tuple[str, ...]
    processing: dict[str, JsonValue] = field(default_factory=dict)


@dataclass
class TrainingReport:
    """Everything a training produced.

    Attributes:
        plan: the plan used (after overrides).
        spec: the model spec.
        result: the Lightning training result (checkpoints, history, why it stopped).
        evaluation: validation scores of the best checkpoint.
        run_id: the MLflow run.
        model_uri: the logged model (``models:/<id>``).
        registration: the registered version and promotion decision, when ``register`` was given.
        validation_cases: ids of the validation cases.
        left_out: labelled cases of the manifest left out because their files are missing,
            unreadable or changed since ingest: case id → ``"ErrorClass: message"``.
        cases_used: labelled cases trained and validated on.
        batch_size: patches (chips) per training step (Mask R-CNN's can differ from the plan's).
    """

    plan: TrainingPlan
    spec: ModelSpec
    result: TrainResult
    evaluation: Evaluation
    run_id: str
    model_uri: str
    registration: RegistrationResult | None = None
    validation_cases: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    cases_used: int = 0
    batch_size: int = 0


def plan_for(
    manifest: DatasetManifest, config: TrainConfig, overrides: Mapping[str, Any] | None = None
) -> TrainingPlan:
    """Fingerprint the dataset and derive its plan, then apply user overrides."""
    return _fingerprint_and_plan(manifest, config, overrides)[1]


def _fingerprint_and_plan(
    manifest: DatasetManifest, config: TrainConfig, overrides: Mapping[str, Any] | None
) -> tuple[DatasetFingerprint, TrainingPlan]:
    fingerprint = compute_fingerprint(manifest, seed=config.seed)
    plan = make_plan(fingerprint, manifest)
    return fingerprint, apply_overrides(plan, overrides) if overrides else plan


def spec_for(plan: TrainingPlan, config: TrainConfig) -> ModelSpec:
    """The model spec that fits ``plan`` (channels, classes, dimensions)."""
    return ModelSpec(
        name=config.model,
        spatial_dims=plan.spatial_dims,
        in_channels=plan.in_channels,
        num_classes=plan.num_classes,
        options=dict(config.model_options),
    )


def train_from_manifest(
    manifest: DatasetManifest,
    config: TrainConfig,
    workdir: Path,
    *,
    plan_overrides: Mapping[str, Any] | None = None,
    register: str | None = None,
    val_fraction: float = 0.2,
    val_case_ids: Sequence[str] | None = None,
    folds: int | None = None,
    fold: int = 0,
    keep_predictions: bool = False,
    on_plan: PlanCallback | None = None,
    progress_bar: bool = True,
) -> TrainingReport:
    """Train a model on ``manifest`` and track it in MLflow; optionally register it.

    Semantic models of the factory train on patches with ``config.loss``; ``maskrcnn`` trains
    torchvision's Mask R-CNN on chips of an instance dataset (targets built from the instance
    maps; its losses are its own) and is validated by tiled inference with the DSB-2018 score.

    Args:
        manifest: the validated dataset (labelled cases are used).
        config: model, loss, budgets and hardware.
        workdir: checkpoints, cache and the plan JSON go here; a rerun resumes from it.
        plan_overrides: plan fields to override (flags or YAML).
        register: registered model name; the new version becomes ``challenger`` and
            ``champion`` when it beats the current champion on the same validation cases.
        val_fraction: share of labelled cases held out for validation.
        val_case_ids: explicit validation cases (overrides ``val_fraction``).
        folds: k-fold cross-validation: the labelled cases are cut into ``folds`` parts…
        fold: …and part ``fold`` validates (run once per fold for the full cross-validation).
        keep_predictions: keep validation predictions in the report's evaluation.
        on_plan: called with the plan before training starts (e.g. to print it).
        progress_bar: show Lightning's progress bar.
    """
    checked = check_training_cases(manifest)
    manifest = checked.manifest
    left_out = {case: f"{type(e).__name__}: {e}" for case, e in checked.errors.items()}
    if checked.errors and not manifest.labelled_cases:
        raise InputError(
            f"no labelled case left to train on: {len(left_out)} failed their check, e.g. "
            f"{next(iter(left_out.values()))}",
            path=manifest.source,
            hint="restore the files or run segflow ingest again",
        )
    seed_everything(config.seed)
    fingerprint, plan = _fingerprint_and_plan(manifest, config, plan_overrides)
    save_plan(plan, workdir / "plan.json")
    if on_plan is not None:
        on_plan(plan)
    route = _route(plan, config, fingerprint)
    spec, module = route.spec, route.module
    _, val_cases = split_cases(
        manifest,
        val_fraction=val_fraction,
        seed=config.seed,
        folds=folds,
        fold=fold,
        val_ids=val_case_ids,
    )
    train_set, val_set = build_datasets(
        manifest,
        plan,
        cache_dir=None if _fits_in_memory(manifest) else workdir / "cache",
        val_fraction=val_fraction,
        seed=config.seed,
        num_workers=config.num_workers,
        folds=folds,
        fold=fold,
        val_ids=val_case_ids,
    )
    tags = {
        "segflow.dataset": manifest.name,
        "segflow.seed": config.seed,
        "segflow.model": config.model,
    }
    with training_run(manifest.name, run_name=f"{config.model}-{manifest.name}", tags=tags) as run:
        log_plan_and_spec(plan, spec, extra={"train": config.model_dump(mode="json")})
        log_manifest_input(manifest)
        if left_out:
            import mlflow

            mlflow.set_tag("segflow.cases_left_out", str(len(left_out)))
            mlflow.log_dict(left_out, "cases_left_out.json")
        train_loader, val_loader = make_loaders(train_set, val_set, config, route.batch_size)
        result = fit(
            module,
            train_loader,
            val_loader,
            config,
            workdir / "checkpoints",
            on_epoch=lambda epoch, metrics: log_epoch_metrics(metrics, epoch),
            progress_bar=progress_bar,
            monitor=route.monitor,
        )
        _load_best(module, result)
        evaluation = evaluate_network(
            module.network,
            spec,
            plan,
            val_cases,
            _items(val_set),
            keep_predictions=keep_predictions,
            processing=route.processing,
        )
        _log_evaluation(evaluation, result)
        model_uri = log_segmentation_model(
            module.network,
            spec,
            plan,
            class_names=route.class_names,
            channel_names=_channel_names(manifest, plan.in_channels),
            processing=route.processing,
        )
        registration = None
        if register:

            def rescore(uri: str) -> float:
                loaded = load_model(uri)
                return evaluate_network(
                    loaded.network,
                    loaded.spec,
                    loaded.plan,
                    val_cases,
                    _items(val_set),
                    max_overlays=0,
                    processing=loaded.processing,
                ).score

            registration = register_model(
                model_uri,
                register,
                score=evaluation.score,
                validation_key=validation_key(val_cases),
                metric=evaluation.metric,
                evaluate_champion=rescore,
            )
    return TrainingReport(
        plan,
        spec,
        result,
        evaluation,
        run.info.run_id,
        model_uri,
        registration,
        [case.case_id for case in val_cases],
        left_out,
        len(manifest.labelled_cases),
        route.batch_size,
    )


def _route(plan: TrainingPlan, config: TrainConfig, fingerprint: DatasetFingerprint) -> _Route:
    if config.model == "maskrcnn":
        if "loss" in config.model_fields_set:
            logger.warning(
                "Mask R-CNN trains on its own RPN, box and mask losses: %r is ignored", config.loss
            )
        spec = maskrcnn_spec(plan, config, fingerprint.median_object_size)
        return _Route(
            spec,
            maskrcnn_module(spec, plan, config),
            maskrcnn_batch_size(plan, config),
            monitor="val_dsb2018",
            class_names=("background", "object"),
            processing={"score_threshold": SCORE_THRESHOLD, "mask_threshold": MASK_THRESHOLD},
        )
    spec = spec_for(plan, config)
    module = SegmentationModule(
        spec.model_dump(),
        loss=config.loss,
        loss_options=dict(config.loss_options),
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        roi_size=plan.patch_size,
        class_names=plan.class_names,
        max_epochs=config.max_epochs,
        seed=config.seed,
        foreground=foreground_indices(plan.class_values),
    )
    # The three-class nuclei route also selects checkpoints by Dice; DSB-2018 is scored after.
    return _Route(spec, module, plan.batch_size, monitor="val_dice", class_names=plan.class_names)


IN_MEMORY_CACHE_BYTES = 4 * 1024**3


def _fits_in_memory(manifest: DatasetManifest) -> bool:
    """True when every labelled case, as float32 channels plus label, fits the in-memory cache
    (fastest: no re-reading); larger datasets are cached on disk instead."""
    total = 0
    for case in manifest.labelled_cases:
        geometry = case.geometry
        if isinstance(geometry, VolumeGeometry):
            pixels = geometry.shape[0] * geometry.shape[1] * geometry.shape[2]
        else:
            pixels = geometry.width * geometry.height
        total += pixels * (sum(case.channel_counts) + 1) * 4
    return total < IN_MEMORY_CACHE_BYTES


def _channel_names(manifest: DatasetManifest, count: int) -> tuple[str, ...]:
    """Exactly ``count`` channel names: the manifest's, completed with ``channel_<i>``."""
    names = list(manifest.channel_names[:count])
    return tuple(names + [f"channel_{index}" for index in range(len(names), count)])


def _items(dataset: Any) -> list[dict[str, torch.Tensor]]:
    return [dataset[index] for index in range(len(dataset))]


def _load_best(module: L.LightningModule, result: TrainResult) -> None:
    checkpoint = result.best_checkpoint or result.last_checkpoint
    if checkpoint is None or not checkpoint.is_file():
        return
    state = torch.load(checkpoint, map_location=module.device, weights_only=True)
    module.load_state_dict(state["state_dict"])


def _log_evaluation(evaluation: Evaluation, result: TrainResult) -> None:
    import mlflow

    mlflow.log_metric(f"final_{evaluation.metric}", evaluation.score)
    for case_id, per_class in evaluation.per_case.items():
        for class_name, metrics in per_class.items():
            for name, value in metrics.items():
                if value == value and abs(value) != float("inf"):  # MLflow rejects NaN/inf poorly
                    mlflow.log_metric(f"case.{case_id}.{class_name}.{name}", value)
    mlflow.log_param("stopped_by", result.stopped_by)
    if result.history:
        log_training_curves(result.history)
    if evaluation.overlays:
        log_overlays(evaluation.overlays)
