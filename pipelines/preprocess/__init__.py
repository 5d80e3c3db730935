"""Preprocessing: MONAI dictionary-transform pipelines from a plan, splits and cached datasets.

Owns the transforms (volumes: RAS, spacing, non-zero crop, labels, normalisation, patches and
augmentations; rasters and 2D images: readers, nodata → ignored, chips, flips, rotations), the
train/validation split and the cached datasets. Imports ``data_contracts``, ``pipelines.io``,
``pipelines.plan``, MONAI and torch; never Prefect or MLflow.
"""

from pipelines.preprocess.array import IGNORE_INDEX
from pipelines.preprocess.datasets import (
    build_datasets,
    case_to_item,
    seed_augmentation,
    split_cases,
)
from pipelines.preprocess.transforms import (
    IMAGE_KEY,
    INSTANCE_KEY,
    LABEL_KEY,
    plan_transforms,
    planar_transforms,
    volume_transforms,
)

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_KEY",
    "INSTANCE_KEY",
    "LABEL_KEY",
    "build_datasets",
    "case_to_item",
    "plan_transforms",
    "planar_transforms",
    "seed_augmentation",
    "split_cases",
    "volume_transforms",
]
