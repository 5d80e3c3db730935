"""Train/validation split and cached MONAI datasets built from a manifest and a plan.

The deterministic part of each pipeline (load, reorient, resample, normalise) runs once per
case: in memory with ``CacheDataset``, or on disk with ``PersistentDataset`` under
``cache_dir/<key>/`` where the key hashes the plan and every file's SHA-256 (a changed plan or
file gets a fresh cache, never a stale one). Epochs then only crop and augment. In memory the
items keep their MONAI ``MetaTensor`` metadata (affine, file name); on disk they are plain
tensors.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.dataset import CacheDataset, Dataset, PersistentDataset
from monai.transforms.compose import Compose
from monai.transforms.traits import RandomizableTrait
from monai.transforms.transform import Randomizable
from monai.transforms.utility.dictionary import EnsureTyped

from data_contracts import Case, ConfigError, DatasetManifest, TrainingPlan
from pipelines.preprocess.region import HeldOutRegion, HoldOutRegiond
from pipelines.preprocess.transforms import IMAGE_KEY, INSTANCE_KEY, LABEL_KEY, plan_transforms

__all__ = ["build_datasets", "cache_key", "case_to_item", "seed_augmentation", "split_cases"]

logger = logging.getLogger(__name__)


def split_cases(
    manifest: DatasetManifest,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    folds: int | None = None,
    fold: int = 0,
    val_ids: Collection[str] | None = None,
) -> tuple[list[Case], list[Case]]:
    """Split the labelled cases into training and validation, deterministically.

    Cases are sorted by id, then shuffled with ``seed``. With ``folds`` the shuffled list is cut
    into that many near-equal parts and part ``fold`` validates; otherwise ``val_fraction`` of
    the cases (rounded, at least 1 when there are ≥ 2 cases, never all of them) validates.

    Args:
        manifest: the dataset.
        val_fraction: share of validation cases, in [0, 1).
        seed: shuffling seed.
        folds: number of folds (k-fold cross-validation), or ``None``.
        fold: which fold validates, ``0 <= fold < folds``.
        val_ids: explicit validation case ids (e.g. to share a split with a baseline); the
            other labelled cases train. Overrides ``val_fraction`` and ``folds``.

    Returns:
        ``(train, val)`` lists of cases, each in case-id order.

    Raises:
        ConfigError: an invalid fraction or fold, fewer cases than folds, or no case left for
            training (fewer than 2 labelled cases with a validation split).
    """
    train, val = _split(manifest, val_fraction, seed, folds, fold, val_ids)
    if not train:
        raise ConfigError("no labelled case left for training", path=manifest.source)
    return train, val


def _split(
    manifest: DatasetManifest,
    val_fraction: float,
    seed: int,
    folds: int | None,
    fold: int,
    val_ids: Collection[str] | None,
) -> tuple[list[Case], list[Case]]:
    cases = sorted(manifest.labelled_cases, key=lambda case: case.case_id)
    if val_ids is not None:
        unknown = set(val_ids) - {case.case_id for case in cases}
        if unknown:
            raise ConfigError(
                f"validation case ids {sorted(unknown)} are not labelled cases",
                path=manifest.source,
            )
        return [c for c in cases if c.case_id not in val_ids], [
            c for c in cases if c.case_id in val_ids
        ]
    order = np.random.default_rng(seed).permutation(len(cases))
    if folds is not None:
        if folds < 2 or not 0 <= fold < folds:
            raise ConfigError(
                f"fold {fold} of {folds} folds is invalid", hint="0 <= fold < folds, folds >= 2"
            )
        if len(cases) < folds:
            raise ConfigError(
                f"{len(cases)} labelled cases cannot make {folds} folds", path=manifest.source
            )
        held_out = set(np.array_split(order, folds)[fold].tolist())
    else:
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"val_fraction {val_fraction} is not in [0, 1)")
        count = round(len(cases) * val_fraction)
        if len(cases) >= 2:
            count = min(max(count, 1), len(cases) - 1)
        held_out = set(order[:count].tolist())
    train = [case for i, case in enumerate(cases) if i not in held_out]
    val = [case for i, case in enumerate(cases) if i in held_out]
    return train, val


def case_to_item(case: Case) -> dict[str, Any]:
    """The dict the transforms read: ``image`` (channel files), ``label`` (if any), ``case_id``."""
    item: dict[str, Any] = {
        "case_id": case.case_id,
        "image": [record.path for record in case.channels],
    }
    if case.label is not None:
        item["label"] = case.label.path
    return item


def cache_key(plan: TrainingPlan, cases: list[Case]) -> str:
    """A 16-hex-digit key of the plan and the content of every file of ``cases``."""
    digest = hashlib.sha256(plan.model_dump_json(exclude={"overrides"}).encode())
    for case in sorted(cases, key=lambda c: c.case_id):
        records = [*case.channels, *([case.label] if case.label else [])]
        digest.update(case.case_id.encode())
        for record in records:
            digest.update(record.sha256.encode())
    return digest.hexdigest()[:16]


def _plain_tensors_before_random(transform: Compose) -> Compose:
    """Insert a step dropping MetaTensor metadata just before the first random step.

    ``PersistentDataset`` reads its files with ``torch.load(weights_only=True)``, which refuses
    MetaTensors; stripping them in the cached part also makes the first epoch (computed) and the
    later ones (read back) return the same types.
    """
    steps = list(transform.transforms)
    first = transform.get_index_of_first(  # type: ignore[no-untyped-call]
        lambda t: isinstance(t, RandomizableTrait)
    )
    cut = len(steps) if first is None else first
    strip = EnsureTyped(
        [IMAGE_KEY, LABEL_KEY, INSTANCE_KEY], track_meta=False, allow_missing_keys=True
    )
    return Compose([*steps[:cut], strip, *steps[cut:]])


def _before_random(transform: Compose, step: Any) -> Compose:
    """``transform`` with ``step`` inserted just before its first random step (so it is cached)."""
    steps = list(transform.transforms)
    first = transform.get_index_of_first(  # type: ignore[no-untyped-call]
        lambda t: isinstance(t, RandomizableTrait)
    )
    cut = len(steps) if first is None else first
    return Compose([*steps[:cut], step, *steps[cut:]])


def _dataset(
    cases: list[Case],
    plan: TrainingPlan,
    train: bool,
    cache_dir: Path | None,
    num_workers: int,
    held_out: HeldOutRegion | None = None,
) -> Dataset:
    items = [case_to_item(case) for case in cases]
    transform = plan_transforms(plan, train=train)
    if held_out is not None:
        context = max(plan.patch_size) // 2
        transform = _before_random(
            transform, HoldOutRegiond(held_out, "ignore" if train else "crop", context)
        )
    if cache_dir is not None:
        # "slab": held-out parts chosen by class mix (a cache of the fixed-end rule is stale);
        # "classes": training items hold per-class patch centres (older caches lack them);
        # "context": validation slabs keep half a patch of context
        held = f"-held-{held_out.fraction:g}-slab" if held_out else ""
        part = ("train-classes" if train else "val-context") + held
        folder = cache_dir / cache_key(plan, cases) / part
        folder.mkdir(parents=True, exist_ok=True)
        transform = _plain_tensors_before_random(transform)
        return PersistentDataset(items, transform, cache_dir=folder, track_meta=False)
    return CacheDataset(
        items, transform, cache_rate=1.0, num_workers=max(1, num_workers), progress=False
    )


def build_datasets(
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    plan: TrainingPlan,
    *,
    cache_dir: Path | None = None,
    seed: int = 0,
    num_workers: int = 0,
    held_out: HeldOutRegion | None = None,
) -> tuple[Dataset, Dataset]:
    """Training and validation datasets of split cases, the deterministic preprocessing cached.

    Training items are single random patches ``image (C, *patch_size)``, ``label (1,
    *patch_size)``; validation items are whole preprocessed cases (batch them one at a time).
    The training pipeline's random state is seeded with ``seed``; see
    :func:`seed_augmentation` for resumable and multi-worker loading.

    Args:
        train_cases: the training cases of :func:`split_cases`.
        val_cases: its validation cases.
        plan: the training plan (for this dataset).
        cache_dir: cache the deterministic part on disk here (``PersistentDataset``);
            ``None`` caches every case in memory (``CacheDataset``).
        seed: augmentation seed.
        num_workers: threads that fill the in-memory cache.
        held_out: a region of a case validated on and not trained on (the dataset's only
            labelled case is then in both ``train_cases`` and ``val_cases``).

    Returns:
        ``(train, val)``.
    """
    logger.info("%d training and %d validation cases", len(train_cases), len(val_cases))
    cache = Path(cache_dir) if cache_dir is not None else None
    train = _dataset(list(train_cases), plan, True, cache, num_workers, held_out)
    seed_augmentation(train, seed)
    val = _dataset(list(val_cases), plan, False, cache, num_workers, held_out)
    return train, val


def seed_augmentation(dataset: Dataset, seed: int) -> None:
    """Re-seed the random transforms of a dataset made by :func:`build_datasets`.

    The random state lives in the dataset's transform objects. For augmentation that a resumed
    training repeats exactly, call this at every epoch start with a seed derived from the run
    seed and the epoch (e.g. ``seed * 1000 + epoch``). With ``num_workers > 0`` every worker
    holds a copy: pass ``worker_init_fn=monai.data.utils.worker_init_fn`` to the
    ``DataLoader`` (MONAI's own ``DataLoader`` does) so that workers draw different patches.
    """
    transform = getattr(dataset, "transform", None)
    if isinstance(transform, Randomizable):
        transform.set_random_state(seed=seed)
