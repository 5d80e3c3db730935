"""The route of a training: what differs between semantic models and Mask R-CNN.

Semantic models of the factory train a :class:`~pipelines.train.module.SegmentationModule` on
patches with the configured loss and keep the checkpoint of the best validation Dice; Mask R-CNN
trains a :class:`~pipelines.train.maskrcnn.MaskRCNNModule` on chips with its own losses, at its
own batch size, and keeps the checkpoint of the best DSB-2018 score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pydantic import JsonValue

from data_contracts import DatasetFingerprint, ModelSpec, TrainConfig, TrainingPlan
from pipelines.train.maskrcnn import (
    MASK_THRESHOLD,
    SCORE_THRESHOLD,
    MaskRCNNModule,
    maskrcnn_batch_size,
    maskrcnn_module,
    maskrcnn_spec,
)
from pipelines.train.module import SegmentationModule, foreground_indices

logger = logging.getLogger(__name__)


@dataclass
class TrainingRoute:
    """The model side of a training.

    Attributes:
        spec: the model spec.
        module: the Lightning module to fit (its ``network`` is the model logged).
        batch_size: patches (chips) per training step.
        monitor: the validation metric that picks the best checkpoint (higher is better).
        class_names: one name per output class index of the logged model.
        processing: post-processing config logged with the model (Mask R-CNN thresholds).
    """

    spec: ModelSpec
    module: SegmentationModule | MaskRCNNModule
    batch_size: int
    monitor: str
    class_names: tuple[str, ...]
    processing: dict[str, JsonValue] = field(default_factory=dict)


def spec_for(plan: TrainingPlan, config: TrainConfig) -> ModelSpec:
    """The model spec that fits ``plan`` (channels, classes, dimensions)."""
    return ModelSpec(
        name=config.model,
        spatial_dims=plan.spatial_dims,
        in_channels=plan.in_channels,
        num_classes=plan.num_classes,
        options=dict(config.model_options),
    )


def route_for(
    plan: TrainingPlan, config: TrainConfig, fingerprint: DatasetFingerprint
) -> TrainingRoute:
    """The route of ``config.model`` on ``plan``: Mask R-CNN's, or any semantic model's.

    Raises:
        ConfigError: Mask R-CNN on a plan that is not 2D instance labels.
    """
    if config.model == "maskrcnn":
        return _maskrcnn_route(plan, config, fingerprint)
    return _semantic_route(plan, config)


def _maskrcnn_route(
    plan: TrainingPlan, config: TrainConfig, fingerprint: DatasetFingerprint
) -> TrainingRoute:
    if "loss" in config.model_fields_set:
        logger.warning(
            "Mask R-CNN trains on its own RPN, box and mask losses: %r is ignored", config.loss
        )
    spec = maskrcnn_spec(plan, config, fingerprint.median_object_size)
    return TrainingRoute(
        spec,
        maskrcnn_module(spec, plan, config),
        maskrcnn_batch_size(plan, config),
        monitor="val_dsb2018",
        class_names=("background", "object"),
        processing={"score_threshold": SCORE_THRESHOLD, "mask_threshold": MASK_THRESHOLD},
    )


def _semantic_route(plan: TrainingPlan, config: TrainConfig) -> TrainingRoute:
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
    return TrainingRoute(
        spec, module, plan.batch_size, monitor="val_dice", class_names=plan.class_names
    )
