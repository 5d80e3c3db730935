"""segflow models in MLflow: logging, registering, champion/challenger promotion, loading.

A model is logged with :func:`log_segmentation_model` as a pyfunc in MLflow's "models from
code" form (the model is the file ``pipelines/services/mlflow_model.py``; its artifacts are a
``state_dict`` and JSON files, nothing pickled). :func:`register_model` adds a registry version
tagged with its validation score and :func:`validation_key`, points the ``challenger`` alias at
it, and moves ``champion`` to it only when :func:`promote_if_better` says so.

:func:`load_model` never runs code stored with a model: it reads the MLmodel file, refuses
anything that is not models-from-code, and builds the installed
:class:`~pipelines.services.mlflow_model.SegflowModel` from the artifacts (tensors and JSON only).

Registry state is read at call time with no locking: two trainings promoting the same model
name at the same moment can race.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from torch import nn

from data_contracts import Case, ModelError, ModelSpec, TrainingPlan, UsageError
from pipelines.infer.loaded_model import LoadedModel
from pipelines.services.mlflow_model import ARTIFACT_FILES, SegflowModel
from pipelines.services.model_loading import export_model, load_model
from pipelines.services.tracking import configure_mlflow

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "LoadedModel",
    "PromotionDecision",
    "RegistrationResult",
    "export_model",
    "load_model",
    "log_segmentation_model",
    "promote_if_better",
    "register_model",
    "validation_key",
]

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
_MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
_REQUIREMENTS = ("segflow", "mlflow", "torch", "torchvision", "monai", "numpy", "pydantic")
_TAG_SCORE, _TAG_METRIC, _TAG_KEY = "validation_score", "validation_metric", "validation_key"


def _pip_requirements() -> list[str]:
    # Explicit pins: MLflow's own inference takes ~9 s. Local versions (+cu130) are dropped so
    # the same model installs on CPU and GPU machines.
    pins = []
    for dist in _REQUIREMENTS:
        try:
            pins.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(dist)
    return pins


def _example_input(spec: ModelSpec, plan: TrainingPlan) -> np.ndarray:
    # Small, so that input_example.json stays small and MLflow's validation forward is cheap,
    # but with at least 2 px per axis at the deepest level: instance norm needs more than one.
    side = 32 if spec.spatial_dims == 2 else 16
    depth = spec.options.get("depth")
    if isinstance(depth, int):
        side = max(side, 2 ** (depth + 1))
    shape = (1, spec.in_channels, *(min(int(s), side) for s in plan.patch_size))
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _signature(spec: ModelSpec) -> ModelSignature:
    # Spatial axes are -1: the networks accept any size (infer_signature would pin the
    # example's size and MLflow would then reject every other one).
    spatial = (-1,) * spec.spatial_dims
    if spec.task == "instance":
        output = TensorSpec(np.dtype(np.int32), (-1, 1, *spatial))
    else:
        output = TensorSpec(np.dtype(np.float32), (-1, spec.num_classes, *spatial))
    inputs = TensorSpec(np.dtype(np.float32), (-1, spec.in_channels, *spatial))
    return ModelSignature(inputs=Schema([inputs]), outputs=Schema([output]))


def log_segmentation_model(
    model: nn.Module,
    spec: ModelSpec,
    plan: TrainingPlan,
    *,
    class_names: Sequence[str],
    channel_names: Sequence[str],
    processing: Mapping[str, Any] | None = None,
    name: str = "model",
    input_example: np.ndarray | None = None,
) -> str:
    """Log a trained network as a models-from-code pyfunc in the active run.

    Args:
        model: the trained network (its ``state_dict`` is saved; buffers included).
        spec: the spec it was built from.
        plan: the training plan (normalisation, patch size, spacing, class values).
        class_names: one name per class index.
        channel_names: one name per input channel, ``spec.in_channels`` of them.
        processing: pre/post-processing config (JSON values), e.g. ``{"score_threshold": 0.5}``.
        name: the logged model's name.
        input_example: float32 ``(1, C, *spatial)``; by default a seeded array of at most 32
            (2D) or 16 (3D) pixels per axis.

    Returns:
        The model URI (``models:/<model id>``), for :func:`register_model`.

    Raises:
        UsageError: no active run.
        ModelError: names that do not fit the spec, non-JSON processing config, or an example
            the network cannot run.
    """
    if mlflow.active_run() is None:
        raise UsageError(
            "log_segmentation_model needs an active MLflow run", hint="call it in training_run()"
        )
    if len(channel_names) != spec.in_channels or not class_names:
        raise ModelError(
            f"{len(channel_names)} channel names for {spec.in_channels} input channels, "
            f"{len(class_names)} class names",
            hint="pass one name per input channel and at least one class name",
        )
    example = _example_input(spec, plan) if input_example is None else input_example
    example = np.ascontiguousarray(example, dtype=np.float32)
    classes = {
        "class_names": list(class_names),
        "channel_names": list(channel_names),
        "processing": dict(processing or {}),
    }
    with tempfile.TemporaryDirectory(prefix="segflow-model-") as folder:
        paths = {key: str(Path(folder) / file) for key, file in ARTIFACT_FILES.items()}
        state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
        torch.save(state, paths["weights"])
        Path(paths["model_spec"]).write_text(spec.model_dump_json(indent=2), encoding="utf-8")
        Path(paths["plan"]).write_text(plan.model_dump_json(indent=2), encoding="utf-8")
        try:
            Path(paths["classes"]).write_text(json.dumps(classes, indent=2), encoding="utf-8")
        except (TypeError, ValueError) as error:
            raise ModelError(f"processing config is not JSON ({error})") from error
        # Rebuild the model from the files, as the loader will, and run the example through it
        # (not for Mask R-CNN: it resizes every input to min_size, seconds on a CPU).
        rebuilt = SegflowModel.from_artifacts(paths)
        if spec.task == "semantic":
            rebuilt.predict(None, example)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(_MODEL_CODE),
            artifacts=paths,
            signature=_signature(spec),
            input_example=example,
            pip_requirements=_pip_requirements(),
            metadata={"segflow_dataset": plan.dataset_name, "segflow_model": spec.name},
        )
    return str(info.model_uri)


def validation_key(cases: Sequence[Case], region: str | None = None) -> str:
    """A hash of the validation cases (ids and file hashes): equal keys mean equal data.

    Independent of case order. ``region`` names the part of the cases validated on, when it is
    not all of them (a held-out region of the only labelled case).

    Raises:
        UsageError: no cases.
    """
    if not cases:
        raise UsageError("no validation cases to key", hint="validate on at least one case")
    lines = sorted(
        "|".join(
            [
                case.case_id,
                ",".join(record.sha256 for record in case.channels),
                case.label.sha256 if case.label else "-",
            ]
        )
        for case in cases
    )
    if region:
        lines.append(f"region|{region}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class PromotionDecision:
    """Whether ``champion`` moved to the challenger, with both scores and why."""

    promoted: bool
    challenger_version: str
    champion_version_before: str | None
    challenger_score: float
    champion_score: float | None
    reason: str

    @property
    def decision(self) -> str:
        """``"promoted"`` or ``"kept"``."""
        return "promoted" if self.promoted else "kept"


@dataclass(frozen=True)
class RegistrationResult:
    """A registered version (alias ``challenger``) and the promotion decision about it."""

    name: str
    version: str
    model_uri: str
    decision: PromotionDecision


def register_model(
    model_uri: str,
    name: str,
    *,
    score: float,
    validation_key: str,
    metric: str = "val_dice",
    evaluate_champion: Callable[[str], float] | None = None,
    greater_is_better: bool = True,
) -> RegistrationResult:
    """Register a logged model as a new version, alias it ``challenger``, maybe promote it.

    Args:
        model_uri: from :func:`log_segmentation_model`.
        name: registered model name (``--register``).
        score: the new model's validation score.
        validation_key: :func:`validation_key` of the cases ``score`` was measured on.
        metric: the score's metric name.
        evaluate_champion: re-scores a model URI on this model's validation cases; needed
            when the champion was scored on other cases (see :func:`promote_if_better`).
        greater_is_better: ``False`` for losses and distances.

    Returns:
        The version, its pinned URI ``models:/NAME/VERSION`` and the promotion decision.
    """
    configure_mlflow()
    tags = {_TAG_SCORE: str(float(score)), _TAG_METRIC: metric, _TAG_KEY: validation_key}
    registered = mlflow.register_model(model_uri, name, tags=tags)
    number = str(registered.version)
    mlflow.MlflowClient().set_registered_model_alias(name, CHALLENGER, number)
    decision = promote_if_better(
        name,
        number,
        score=score,
        validation_key=validation_key,
        evaluate_champion=evaluate_champion,
        metric=metric,
        greater_is_better=greater_is_better,
    )
    return RegistrationResult(name, number, f"models:/{name}/{number}", decision)


def promote_if_better(
    name: str,
    version: str | int,
    *,
    score: float,
    validation_key: str,
    evaluate_champion: Callable[[str], float] | None = None,
    metric: str = "val_dice",
    greater_is_better: bool = True,
) -> PromotionDecision:
    """Move ``champion`` to ``version`` when there is none or ``score`` beats the champion's.

    Scores are compared on the same validation cases: when the champion's ``validation_key``
    tag (and metric) equal this one, its stored score is used; otherwise
    ``evaluate_champion("models:/NAME/<champion version>")`` re-scores it, and without that
    callable nothing is promoted. Ties and non-finite challenger scores are not promoted. The
    decision, both scores and the reason are tagged on ``version`` (``promotion.*``) and logged
    as params/metrics of the active run, if any.

    Returns:
        The decision.
    """
    configure_mlflow()
    client = mlflow.MlflowClient()
    version = str(version)
    champion = _version_by_alias(client, name, CHAMPION)
    before = str(champion.version) if champion is not None else None
    champion_score: float | None = None
    if not math.isfinite(score):
        promoted, reason = False, f"the challenger's {metric} is {score}"
    elif champion is None:
        promoted, reason = True, "there was no champion"
    elif before == version:
        promoted, reason = False, f"version {version} is already the champion"
    else:
        champion_score, how = _champion_score(
            name, champion, validation_key, metric, evaluate_champion
        )
        if champion_score is None:
            promoted, reason = False, f"cannot compare with champion v{before}: {how}"
        else:
            promoted = not math.isfinite(champion_score) or (
                score > champion_score if greater_is_better else score < champion_score
            )
            verdict = "beats" if promoted else "does not beat"
            reason = (
                f"{metric} {score:.6g} {verdict} champion v{before}'s {champion_score:.6g} ({how})"
            )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = PromotionDecision(promoted, version, before, float(score), champion_score, reason)
    _record(client, name, decision)
    return decision


def _champion_score(
    name: str,
    champion: Any,
    validation_key: str,
    metric: str,
    evaluate_champion: Callable[[str], float] | None,
) -> tuple[float | None, str]:
    """The champion's score on the challenger's validation cases, and how it was obtained."""
    tags = champion.tags
    if (
        tags.get(_TAG_KEY) == validation_key
        and tags.get(_TAG_METRIC) == metric
        and _TAG_SCORE in tags
    ):
        return float(tags[_TAG_SCORE]), "stored score, same validation cases"
    if evaluate_champion is None:
        return None, "champion scored on other validation cases and no evaluate_champion given"
    score = float(evaluate_champion(f"models:/{name}/{champion.version}"))
    return score, "champion re-scored on the challenger's validation cases"


def _version_by_alias(client: mlflow.MlflowClient, name: str, alias: str) -> Any:
    number = client.get_registered_model(name).aliases.get(alias)
    return None if number is None else client.get_model_version(name, str(number))


def _record(client: mlflow.MlflowClient, name: str, decision: PromotionDecision) -> None:
    logger.info(
        "model %s v%s: %s (%s)",
        name,
        decision.challenger_version,
        decision.decision,
        decision.reason,
    )
    values = {
        "promotion.decision": decision.decision,
        "promotion.reason": decision.reason,
        "promotion.champion_version_before": decision.champion_version_before or "none",
        "promotion.challenger_score": str(decision.challenger_score),
        "promotion.champion_score": str(decision.champion_score),
    }
    for key, value in values.items():
        client.set_model_version_tag(name, decision.challenger_version, key, value)
    if mlflow.active_run() is not None:
        mlflow.log_params(
            {
                "promotion.decision": decision.decision,
                "promotion.reason": decision.reason[:6000],
                "promotion.champion_version_before": values["promotion.champion_version_before"],
            }
        )
        scores = {"promotion.challenger_score": decision.challenger_score}
        if decision.champion_score is not None:
            scores["promotion.champion_score"] = decision.champion_score
        mlflow.log_metrics(scores)
