"""The route of a training: what differs between semantic models and Mask R-CNN.

Semantic models of the factory train a :class:`~pipelines.train.module.SegmentationModule` on
patches with the configured loss and keep the checkpoint of the best validation Dice; Mask R-CNN
trains a :class:`~pipelines.train.maskrcnn.MaskRCNNModule` on chips with its own losses, at its
own batch size, and keeps the checkpoint of the best DSB-2018 score.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import JsonValue

from data_contracts import ConfigError, DatasetFingerprint, ModelSpec, TrainConfig, TrainingPlan
from pipelines.plan.network import AUTO_MODEL
from pipelines.postprocess.decision import one_foreground_region
from pipelines.preprocess.array import foreground_indices
from pipelines.train.budget import horizon_epochs
from pipelines.train.maskrcnn import (
    MASK_THRESHOLD,
    SCORE_THRESHOLD,
    MaskRCNNModule,
    maskrcnn_batch_size,
    maskrcnn_module,
    maskrcnn_spec,
)
from pipelines.train.module import SegmentationModule
from seg_models.losses import loss_terms

logger = logging.getLogger(__name__)

WEIGHTED_CE = "weighted_ce"
PLANNED_DICE = "dice"
MIN_CLASS_FREQUENCY = 1e-4
"""A class rarer than this (or absent) is weighted as if this frequent: its weight stays finite."""


@dataclass
class TrainingRoute:
    """The model side of a training.

    Attributes:
        spec: the model spec.
        module: the Lightning module to fit (its ``network`` is the model logged).
        batch_size: patches (chips) per training step.
        monitor: the validation metric that picks the best checkpoint (higher is better).
        class_names: one name per output class index of the logged model.
        processing: post-processing config logged with the model (the plan's clean-up of label
            maps; Mask R-CNN thresholds).
        loss_options: the loss options the module received (with derived ``weighted_ce``
            weights); ``None`` when the route trains on its own losses.
    """

    spec: ModelSpec
    module: SegmentationModule | MaskRCNNModule
    batch_size: int
    monitor: str
    class_names: tuple[str, ...]
    processing: dict[str, JsonValue] = field(default_factory=dict)
    loss_options: dict[str, JsonValue] | None = None


def spec_for(plan: TrainingPlan, config: TrainConfig) -> ModelSpec:
    """The model spec that fits ``plan`` (channels, classes, dimensions).

    ``--model auto`` takes the plan's network choice; ``--model-option`` values override its
    options one by one.

    Raises:
        ConfigError: ``auto`` on a plan that chose no network.
    """
    name, options = config.model, dict(config.model_options)
    if name == AUTO_MODEL:
        if plan.network is None:
            raise ConfigError(
                "--model auto needs a plan that chose the network",
                hint="plan with segflow train (it probes this device), or name a model",
            )
        name, options = plan.network.model, {**plan.network.options, **options}
    return ModelSpec(
        name=name,
        spatial_dims=plan.spatial_dims,
        in_channels=plan.in_channels,
        num_classes=plan.num_classes,
        options=options,
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
    return _semantic_route(plan, config, fingerprint)


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


def _semantic_route(
    plan: TrainingPlan, config: TrainConfig, fingerprint: DatasetFingerprint
) -> TrainingRoute:
    spec = spec_for(plan, config)
    loss_options = loss_options_for(
        config.loss, planned_loss_options(config, plan), plan, fingerprint
    )
    module = SegmentationModule(
        spec.model_dump(),
        loss=config.loss,
        loss_options=loss_options,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        roi_size=plan.patch_size,
        class_names=plan.class_names,
        max_epochs=horizon_epochs(config, plan.network.planned_steps if plan.network else None),
        seed=config.seed,
        foreground=foreground_indices(plan.class_values),
    )
    # The three-class nuclei route also selects checkpoints by Dice; DSB-2018 is scored after.
    return TrainingRoute(
        spec,
        module,
        plan.batch_size,
        monitor="val_dice",
        class_names=plan.class_names,
        processing=planned_processing(plan),
        loss_options=loss_options,
    )


def planned_processing(plan: TrainingPlan) -> dict[str, JsonValue]:
    """The plan's post-processing as the model's ``processing.postprocess``, when it has one."""
    if not plan.postprocess.changes_output:
        return {}
    return {"postprocess": plan.postprocess.model_dump(mode="json", exclude_defaults=True)}


def planned_loss_options(config: TrainConfig, plan: TrainingPlan) -> dict[str, JsonValue]:
    """``config.loss_options``, or the planned Dice options when the loss is left to segflow.

    With neither ``--loss`` nor ``loss_options`` given, the Dice term of the default
    ``dice+ce`` depends on the dimensionality:

    - **2D**: nnU-Net's 2D Dice: summed over the batch (a chip often lacks a class, and
      per-image Dice pushes that class toward zero), class index 0 left out when it is the
      background (label value 0; land cover whose 0 is nodata has no background class);
    - **3D**: per patch with the background kept (MONAI's defaults). BraTS in 20 minutes
      (``BENCHMARKS.md`` A4) scored a held-out whole-tumour Dice of 0.64 with the batch Dice,
      0.66 with nnU-Net's 3D Dice (per patch, background left out) and 0.73 with this one:
      within a few hundred steps the rare tumour sub-classes are not learnt, and the
      background's term is the one that teaches the tumour's outline.

    Where the plan's foreground is one region split into sub-classes (``keep_largest_foreground``
    with three classes or more, class 0 the background: BraTS), the Dice also scores that region
    as a whole (``foreground_region``), as the outer region of nnU-Net's region-based training;
    inference decides it first too (``pipelines.postprocess.decision``).

    A loss or options the user names are kept as given.
    """
    if "loss" in config.model_fields_set or config.loss_options:
        return dict(config.loss_options)
    if PLANNED_DICE not in loss_terms(config.loss):
        return {}
    region = one_foreground_region(plan.postprocess, plan)
    also = "; the foreground also scored as one region" if region else ""
    if plan.spatial_dims == 3:
        logger.info(
            "loss: %s with a 3D Dice per patch, background included%s; --loss or loss_options "
            "in the YAML change it",
            config.loss,
            also,
        )
        dice: dict[str, JsonValue] = {"batch": False, "include_background": True}
    else:
        has_background = len(foreground_indices(plan.class_values)) < plan.num_classes
        logger.info(
            "loss: %s with nnU-Net's 2D Dice (summed over the batch, %s%s); --loss or "
            "loss_options in the YAML change it",
            config.loss,
            "foreground classes only" if has_background else "every class: none is background",
            also,
        )
        dice = {"batch": True, "include_background": not has_background}
    return {PLANNED_DICE: {**dice, "foreground_region": True} if region else dice}


def loss_options_for(
    loss: str,
    options: Mapping[str, JsonValue],
    plan: TrainingPlan,
    fingerprint: DatasetFingerprint,
) -> dict[str, JsonValue]:
    """The loss options, with ``weighted_ce`` weights from the class frequencies when not given.

    ``weighted_ce`` needs one weight per class; without an explicit ``weight`` (at the top
    level, or in its own ``weighted_ce: {...}`` dict) it gets
    :func:`inverse_frequency_weights` of the fingerprint, logged. Explicit weights win.

    Raises:
        LossError: the loss expression cannot be parsed or names an unknown loss.
    """
    chosen = dict(options)
    terms = loss_terms(loss)
    own = chosen.get(WEIGHTED_CE, {})
    # A non-dict ``weighted_ce`` option is left for build_loss to report.
    if WEIGHTED_CE not in terms or "weight" in chosen or not isinstance(own, dict):
        return chosen
    if "weight" in own:
        return chosen
    weights = inverse_frequency_weights(plan, fingerprint)
    logger.info(
        "%s: class weights %s (inverse class frequencies of %s, mean 1)",
        WEIGHTED_CE,
        ", ".join(f"{name} {w:g}" for name, w in zip(plan.class_names, weights, strict=True)),
        fingerprint.dataset_name,
    )
    derived: list[JsonValue] = list(weights)
    if terms == [WEIGHTED_CE] and WEIGHTED_CE not in chosen:
        chosen["weight"] = derived
    else:  # a sum (or the term's own dict): only weighted_ce gets them
        chosen[WEIGHTED_CE] = {**own, "weight": derived}
    return chosen


def inverse_frequency_weights(plan: TrainingPlan, fingerprint: DatasetFingerprint) -> list[float]:
    """One weight per class index: ``1 / max(f_k, MIN_CLASS_FREQUENCY)``, scaled to mean 1.

    ``f_k`` is the fingerprint's fraction of labelled pixels of class value
    ``plan.class_values[k]`` (0 when the value never occurs; a warning names it). Four
    significant digits, so that the logged parameters stay readable.
    """
    frequencies = fingerprint.class_frequencies
    absent = [
        name
        for name, value in zip(plan.class_names, plan.class_values, strict=True)
        if frequencies.get(value, 0.0) <= 0.0
    ]
    if absent:
        logger.warning(
            "%s: no labelled pixel of class %s in %s; weighted as if %g of the pixels",
            WEIGHTED_CE,
            ", ".join(absent),
            fingerprint.dataset_name,
            MIN_CLASS_FREQUENCY,
        )
    raw = [
        1.0 / max(frequencies.get(value, 0.0), MIN_CLASS_FREQUENCY) for value in plan.class_values
    ]
    mean = sum(raw) / len(raw)
    return [float(f"{weight / mean:.4g}") for weight in raw]
