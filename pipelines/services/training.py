"""A training run, from manifest to registered model: prepare → fit → evaluate → publish.

The steps (:mod:`pipelines.train`) prepare the training, fit it and score its best checkpoint;
this service runs them inside an MLflow run and publishes what they produced: the plan, spec and
dataset as run inputs, the metrics of every epoch, the evaluation (final and per-case scores,
curves, overlays), the model, and, when asked, a registry version promoted to ``champion`` when
it beats the current one on the same validation cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from data_contracts import ConfigError, DatasetManifest, ModelSpec, TrainConfig, TrainingPlan
from pipelines.plan import save_plan
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
from pipelines.train.evaluate import Evaluation
from pipelines.train.foreground_cut import CutChoice, plan_with_cut
from pipelines.train.prepare import PlanCallback, PreparedTraining, prepare
from pipelines.train.route import planned_processing
from pipelines.train.trainer import TrainResult, fit, make_loaders
from pipelines.train.validate import evaluate, score_loaded

__all__ = ["TrainingReport", "train_from_manifest"]


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
        validation_region: with few cases, the region of each validated on (e.g. ``"the last
            20% of the rows of each of a, b"``); ``None`` when whole cases validate.
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
    validation_region: str | None = None


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
    prepared = prepare(
        manifest,
        config,
        workdir,
        plan_overrides=plan_overrides,
        val_fraction=val_fraction,
        val_case_ids=val_case_ids,
        folds=folds,
        fold=fold,
        on_plan=on_plan,
    )
    if register and not prepared.val_cases:
        raise ConfigError(
            "no validation case to score the model on, so it cannot be registered",
            path=manifest.source,
            hint="label a second case (one semantic case is validated on a held-out region) "
            "and keep --val-fraction above 0, or train without --register",
        )
    name = prepared.manifest.name
    model = prepared.route.spec.name
    tags = {"segflow.dataset": name, "segflow.seed": config.seed, "segflow.model": model}
    if prepared.plan.network is not None:
        tags["segflow.network_rule"] = prepared.plan.network.rule
    with training_run(name, run_name=f"{model}-{name}", tags=tags) as run:
        _log_inputs(prepared, config)
        result = _fit(prepared, config, progress_bar)
        evaluation = evaluate(prepared, result, keep_predictions=keep_predictions)
        _keep_validated_cut(prepared, evaluation.foreground_cut, workdir)
        model_uri, registration = _publish(prepared, result, evaluation, register)
    return TrainingReport(
        prepared.plan,
        prepared.route.spec,
        result,
        evaluation,
        run.info.run_id,
        model_uri,
        registration,
        [case.case_id for case in prepared.val_cases],
        prepared.left_out,
        len(prepared.manifest.labelled_cases),
        prepared.route.batch_size,
        prepared.held_out.description if prepared.held_out else None,
    )


def _log_inputs(prepared: PreparedTraining, config: TrainConfig) -> None:
    """Plan, spec and training config as params, the manifest as input, the cases left out.

    The loss options logged are those the module received (``weighted_ce`` weights derived
    from the class frequencies included).
    """
    train = config.model_dump(mode="json")
    if prepared.route.loss_options is not None:
        train["loss_options"] = prepared.route.loss_options
    extra = {"train": train}
    log_plan_and_spec(prepared.plan, prepared.route.spec, extra=extra)
    log_manifest_input(prepared.manifest)
    if prepared.left_out:
        mlflow.set_tag("segflow.cases_left_out", str(len(prepared.left_out)))
        mlflow.log_dict(prepared.left_out, "cases_left_out.json")


def _keep_validated_cut(
    prepared: PreparedTraining, choice: CutChoice | None, workdir: Path
) -> None:
    """Log the foreground cut the validation chose; when it moved from 0.5, make it the plan's
    threshold (in ``plan.json``, the model's plan and its ``processing.postprocess``)."""
    if choice is None:
        return
    mlflow.set_tag("segflow.foreground_cut", choice.describe())
    mlflow.log_param("foreground_cut", choice.cut)
    for cut, dice in choice.dice_by_cut.items():
        mlflow.log_metric(f"val_region_dice_cut_{cut:g}", dice)
    if not choice.moved:
        return
    prepared.plan = plan_with_cut(prepared.plan, choice)
    prepared.route.processing = {
        **prepared.route.processing,
        **planned_processing(prepared.plan),
    }
    save_plan(prepared.plan, workdir / "plan.json")


def _fit(prepared: PreparedTraining, config: TrainConfig, progress_bar: bool) -> TrainResult:
    """Fit the prepared module, logging every validated epoch's metrics to the run."""
    route = prepared.route
    train_loader, val_loader = make_loaders(
        prepared.train_set, prepared.val_set, config, route.batch_size
    )
    return fit(
        route.module,
        train_loader,
        val_loader,
        config,
        prepared.checkpoint_dir,
        on_epoch=lambda epoch, metrics: log_epoch_metrics(metrics, epoch),
        progress_bar=progress_bar,
        monitor=route.monitor,
    )


def _publish(
    prepared: PreparedTraining,
    result: TrainResult,
    evaluation: Evaluation,
    register: str | None,
) -> tuple[str, RegistrationResult | None]:
    """Log the evaluation and the model; register it under ``register`` when given.

    Returns:
        The logged model's URI and the registration (``None`` without ``register``).
    """
    _log_evaluation(evaluation, result)
    route = prepared.route
    model_uri = log_segmentation_model(
        route.module.network,
        route.spec,
        prepared.plan,
        class_names=route.class_names,
        channel_names=prepared.channel_names,
        processing=route.processing,
    )
    if not register:
        return model_uri, None
    registration = register_model(
        model_uri,
        register,
        score=evaluation.score,
        validation_key=validation_key(
            prepared.val_cases, prepared.held_out.description if prepared.held_out else None
        ),
        metric=evaluation.metric,
        evaluate_champion=lambda uri: score_loaded(prepared, load_model(uri)),
    )
    return model_uri, registration


def _log_evaluation(evaluation: Evaluation, result: TrainResult) -> None:
    """Final and per-case scores, why training stopped, the curves and the overlays."""
    mlflow.log_metric(f"final_{evaluation.metric}", evaluation.score)
    for case_id, per_class in evaluation.per_case.items():
        for class_name, metrics in per_class.items():
            for name, value in metrics.items():
                if value == value and abs(value) != float("inf"):  # MLflow rejects NaN/inf poorly
                    mlflow.log_metric(f"case.{case_id}.{class_name}.{name}", value)
    mlflow.log_param("stopped_by", result.stopped_by)
    mlflow.log_param("weights", result.weights)
    if result.history:
        log_training_curves(result.history)
    if evaluation.overlays:
        log_overlays(evaluation.overlays)
