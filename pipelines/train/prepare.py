"""Everything a training needs before its first step: cases, plan, route, split, datasets.

:func:`prepare` checks the labelled cases, fingerprints the dataset, derives and saves the plan,
picks the route (spec, module, batch size, monitored metric), splits the cases once and builds
the datasets from that split. :func:`~pipelines.train.trainer.fit` then trains the route's
module and :func:`~pipelines.train.validate.evaluate` scores its best checkpoint;
:func:`pipelines.services.training.train_from_manifest` runs the three in an MLflow run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from monai.data.dataset import Dataset

from data_contracts import (
    Case,
    ConfigError,
    DatasetFingerprint,
    DatasetManifest,
    InputError,
    TrainConfig,
    TrainingPlan,
)
from pipelines.plan import apply_overrides, compute_fingerprint, make_plan, save_plan
from pipelines.plan.drift import drift_reference
from pipelines.plan.network import AUTO_MODEL, choose_network
from pipelines.preprocess.datasets import build_datasets, split_cases
from pipelines.preprocess.region import HeldOutRegion
from pipelines.preprocess.verify import check_training_cases
from pipelines.train.budget import training_budget
from pipelines.train.probe import probe_device, step_probe
from pipelines.train.route import TrainingRoute, route_for
from pipelines.train.trainer import resolve_precision, seed_everything

logger = logging.getLogger(__name__)

PlanCallback = Callable[[TrainingPlan], None]
"""Called with the plan once it is saved, before the model is built (e.g. to print it)."""

#: Datasets whose labelled cases, as float32 channels plus label, fit in this many bytes are
#: cached in memory (fastest: no re-reading); larger ones are cached on disk.
IN_MEMORY_CACHE_BYTES = 4 * 1024**3
#: Below this many labelled cases, each case's end validates instead of whole cases: holding
#: one of three out would take a third of what there is to learn from.
REGION_SPLIT_BELOW = 5


@dataclass
class PreparedTraining:
    """A training ready to fit.

    Attributes:
        manifest: the manifest reduced to the cases that passed their check.
        left_out: labelled cases left out because their files are missing, unreadable or
            changed since ingest: case id → ``"ErrorClass: message"``.
        plan: the plan (after overrides), also saved as ``<workdir>/plan.json``.
        route: spec, module, batch size and monitored metric.
        train_cases: the cases trained on, in case-id order.
        val_cases: the cases validated on, in case-id order.
        train_set: random patches of ``train_cases``.
        val_set: whole preprocessed ``val_cases``, in the same order.
        checkpoint_dir: where :func:`~pipelines.train.trainer.fit` keeps its checkpoints.
        held_out: with fewer than :data:`REGION_SPLIT_BELOW` labelled cases, the region of
            each validated on and not trained on (``val_cases`` are then ``train_cases``).
    """

    manifest: DatasetManifest
    plan: TrainingPlan
    route: TrainingRoute
    train_cases: list[Case]
    val_cases: list[Case]
    train_set: Dataset
    val_set: Dataset
    checkpoint_dir: Path
    left_out: dict[str, str] = field(default_factory=dict)
    held_out: HeldOutRegion | None = None

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Exactly one name per input channel: the manifest's, completed with ``channel_<i>``."""
        count = self.plan.in_channels
        names = list(self.manifest.channel_names[:count])
        return tuple(names + [f"channel_{index}" for index in range(len(names), count)])


def prepare(
    manifest: DatasetManifest,
    config: TrainConfig,
    workdir: Path,
    *,
    plan_overrides: Mapping[str, Any] | None = None,
    val_fraction: float = 0.2,
    val_case_ids: Sequence[str] | None = None,
    folds: int | None = None,
    fold: int = 0,
    on_plan: PlanCallback | None = None,
) -> PreparedTraining:
    """Check the cases, plan, route, split once and build the datasets of a training.

    Args:
        manifest: the validated dataset (labelled cases are used).
        config: model, loss, budgets and hardware.
        workdir: the plan JSON, the disk cache (large datasets) and the checkpoints go here.
        plan_overrides: plan fields to override (flags or YAML).
        val_fraction: share of labelled cases held out for validation.
        val_case_ids: explicit validation cases (overrides ``val_fraction``).
        folds: k-fold cross-validation: the labelled cases are cut into ``folds`` parts…
        fold: …and part ``fold`` validates.
        on_plan: called with the plan once it is saved.

    Raises:
        InputError: every labelled case failed its check.
        ConfigError: an invalid split, or a model that does not fit the plan.
    """
    manifest, left_out = _checked_cases(manifest)
    seed_everything(config.seed)
    fingerprint, plan = fingerprint_and_plan(manifest, config, plan_overrides)
    save_plan(plan, workdir / "plan.json")
    if on_plan is not None:
        on_plan(plan)
    route = with_drift_reference(route_for(plan, config, fingerprint), manifest, config.seed)
    train_cases, val_cases = split_cases(
        manifest,
        val_fraction=val_fraction,
        seed=config.seed,
        folds=folds,
        fold=fold,
        val_ids=val_case_ids,
    )
    held_out = None
    if val_case_ids is None and folds is None:
        train_cases, val_cases, held_out = hold_out_region(
            train_cases, val_cases, plan, val_fraction
        )
    train_set, val_set = build_datasets(
        train_cases,
        val_cases,
        plan,
        cache_dir=None if fits_in_memory(manifest) else workdir / "cache",
        seed=config.seed,
        num_workers=config.num_workers,
        held_out=held_out,
    )
    return PreparedTraining(
        manifest,
        plan,
        route,
        train_cases,
        val_cases,
        train_set,
        val_set,
        checkpoint_dir=workdir / "checkpoints",
        left_out=left_out,
        held_out=held_out,
    )


def hold_out_region(
    train_cases: list[Case], val_cases: list[Case], plan: TrainingPlan, fraction: float
) -> tuple[list[Case], list[Case], HeldOutRegion | None]:
    """With fewer than :data:`REGION_SPLIT_BELOW` labelled cases and semantic labels, train on
    every case and validate on the end of each (see :mod:`pipelines.preprocess.region`);
    otherwise keep the split of whole cases as it is.

    Returns:
        ``(train_cases, val_cases, held_out)``.
    """
    cases = sorted([*train_cases, *val_cases], key=lambda case: case.case_id)
    few = len(cases) < REGION_SPLIT_BELOW
    if not few or plan.label_kind != "semantic" or not 0 < fraction < 1:
        if not train_cases[1:] and not val_cases:
            logger.warning("one labelled case and no validation: the last checkpoint is kept")
        return train_cases, val_cases, None
    region = HeldOutRegion(tuple(case.case_id for case in cases), fraction, plan.spatial_dims)
    # One case is worth a warning; a few are the usual rule, which the summary states.
    log = logger.warning if len(cases) == 1 else logger.info
    log(
        "%d labelled case%s: validating on %s, training on the rest (--val-fraction sets the "
        "share)",
        len(cases),
        "" if len(cases) == 1 else "s",
        region.description,
    )
    return cases, list(cases), region


def _checked_cases(manifest: DatasetManifest) -> tuple[DatasetManifest, dict[str, str]]:
    """The manifest without the labelled cases that fail their check, and why each failed."""
    checked = check_training_cases(manifest)
    left_out = {case: f"{type(e).__name__}: {e}" for case, e in checked.errors.items()}
    if checked.errors and not checked.manifest.labelled_cases:
        raise InputError(
            f"no labelled case left to train on: {len(left_out)} failed their check, e.g. "
            f"{next(iter(left_out.values()))}",
            path=checked.manifest.source,
            hint="restore the files or run segflow ingest again",
        )
    return checked.manifest, left_out


def plan_for(
    manifest: DatasetManifest, config: TrainConfig, overrides: Mapping[str, Any] | None = None
) -> TrainingPlan:
    """Fingerprint the dataset and derive its plan, then apply user overrides."""
    return fingerprint_and_plan(manifest, config, overrides)[1]


def with_drift_reference(
    route: TrainingRoute, manifest: DatasetManifest, seed: int
) -> TrainingRoute:
    """The route with the training files' drift reference in the processing config logged with
    the model (:mod:`pipelines.plan.drift`), for ``segflow segment``'s drift check."""
    reference = drift_reference(manifest, seed=seed).model_dump(mode="json")
    return dataclasses.replace(route, processing={**route.processing, "drift_reference": reference})


def fingerprint_and_plan(
    manifest: DatasetManifest, config: TrainConfig, overrides: Mapping[str, Any] | None
) -> tuple[DatasetFingerprint, TrainingPlan]:
    """The dataset's fingerprint (with ``config.seed``) and its plan, overrides applied.

    An overridden ``spatial_dims`` plans the data again in those dimensions (a volume in 2D:
    axial slices, with the in-plane spacing, patch and batch of a 2D plan) before the other
    overrides apply.
    """
    fingerprint = compute_fingerprint(manifest, seed=config.seed)
    plan = make_plan(fingerprint, manifest, spatial_dims=_spatial_dims(overrides))
    plan = apply_overrides(plan, overrides) if overrides else plan
    if config.model == AUTO_MODEL:
        plan = plan_network(plan, config)
    return fingerprint, plan


def _spatial_dims(overrides: Mapping[str, Any] | None) -> Literal[2, 3] | None:
    """The user's ``spatial_dims`` (2 or 3), or ``None`` to plan the kind's own."""
    value = (overrides or {}).get("spatial_dims")
    if value is None:
        return None
    if value not in (2, 3) or isinstance(value, bool):
        raise ConfigError(
            f"invalid value for plan field 'spatial_dims': {value!r}",
            hint="spatial_dims is 2 (volumes: trained on axial slices) or 3",
        )
    return cast(Literal[2, 3], int(value))


def plan_network(plan: TrainingPlan, config: TrainConfig) -> TrainingPlan:
    """``--model auto``: the plan with the network that this device trains within the budget
    (a probe times a few steps per width; see :mod:`pipelines.plan.network`)."""
    device = probe_device(config.accelerator)
    precision = resolve_precision(config)
    budget = training_budget(config, plan.spatial_dims)
    probe = step_probe(plan, device, precision)
    planned, choice = choose_network(plan, budget, probe, device=device, precision=precision)
    logger.info("network: %s", choice.rule)
    return planned


def fits_in_memory(manifest: DatasetManifest) -> bool:
    """True when every labelled case, as float32 channels plus label, fits in
    :data:`IN_MEMORY_CACHE_BYTES`."""
    total = sum(
        case.geometry.pixel_count * (sum(case.channel_counts) + 1) * 4
        for case in manifest.labelled_cases
    )
    return total < IN_MEMORY_CACHE_BYTES
