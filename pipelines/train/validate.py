"""Score a fitted training on its validation cases: the weights it keeps, or another model.

:func:`evaluate` keeps the weights :func:`~pipelines.train.trainer.fit` chose (its final ones,
or its best checkpoint loaded into the prepared module) and scores them with :func:`~pipelines.train.evaluate.evaluate_network`;
:func:`score_loaded` scores a model loaded from the registry on the same cases (the champion a
new version must beat).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from pipelines.infer.loaded_model import LoadedModel
from pipelines.train.evaluate import Evaluation, evaluate_network
from pipelines.train.prepare import PreparedTraining
from pipelines.train.trainer import TrainResult


def evaluate(
    prepared: PreparedTraining, result: TrainResult, *, keep_predictions: bool = False
) -> Evaluation:
    """Score the kept weights (the final ones, or the best checkpoint loaded into the module).

    Args:
        prepared: the training that was fitted.
        result: what :func:`~pipelines.train.trainer.fit` returned.
        keep_predictions: keep the validation predictions in the evaluation.

    Returns:
        Per-case and overall validation scores, with overlays of a few cases.
    """
    route = prepared.route
    load_kept(route.module, result)
    return evaluate_network(
        route.module.network,
        route.spec,
        prepared.plan,
        prepared.val_cases,
        validation_items(prepared.val_set),
        keep_predictions=keep_predictions,
        processing=route.processing,
    )


def score_loaded(prepared: PreparedTraining, loaded: LoadedModel) -> float:
    """The validation score of a loaded model on the prepared validation cases (no overlays)."""
    return evaluate_network(
        loaded.network,
        loaded.spec,
        loaded.plan,
        prepared.val_cases,
        validation_items(prepared.val_set),
        max_overlays=0,
        processing=loaded.processing,
    ).score


def load_kept(module: L.LightningModule, result: TrainResult) -> None:
    """Load the kept checkpoint into ``module`` (weights only): nothing to load when the final
    weights are kept (the module holds them) or when the training wrote no checkpoint."""
    checkpoint = result.kept_checkpoint
    if checkpoint is None or not checkpoint.is_file():
        return
    state = torch.load(checkpoint, map_location=module.device, weights_only=True)
    module.load_state_dict(state["state_dict"])


def validation_items(dataset: Any) -> list[dict[str, torch.Tensor]]:
    """Every item of a validation dataset (whole preprocessed cases), in order."""
    return [dataset[index] for index in range(len(dataset))]
