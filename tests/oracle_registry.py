"""Registering the oracle models of :mod:`pipelines.synthetic.models` in MLflow for tests."""

from __future__ import annotations

from pipelines.infer.loaded_model import LoadedModel


def register_oracle(model: LoadedModel, name: str) -> str:
    """Log ``model`` to MLflow, register it as ``name`` (champion); return ``models:/name@champion``."""
    from pipelines.services.model_registry import log_segmentation_model, register_model
    from pipelines.services.tracking import training_run

    with training_run(model.plan.dataset_name, system_metrics=False):
        uri = log_segmentation_model(
            model.network,
            model.spec,
            model.plan,
            class_names=model.class_names,
            channel_names=model.channel_names,
            processing=model.processing,
        )
        register_model(uri, name, score=0.5, validation_key="0" * 64)
    return f"models:/{name}@champion"
