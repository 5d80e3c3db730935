"""Training: the Lightning module, the trainer with budgets and exact resume, the sampler."""

from pipelines.train.module import IGNORE_INDEX, SegmentationModule, dice_per_class
from pipelines.train.trainer import (
    TrainResult,
    fit,
    make_loaders,
    resolve_precision,
    seed_everything,
)

__all__ = [
    "IGNORE_INDEX",
    "SegmentationModule",
    "TrainResult",
    "dice_per_class",
    "fit",
    "make_loaders",
    "resolve_precision",
    "seed_everything",
]
