"""Training, as three calls: :func:`~pipelines.train.prepare.prepare` →
:func:`~pipelines.train.trainer.fit` → :func:`~pipelines.train.validate.evaluate`.

- :mod:`~pipelines.train.prepare`: checked cases, plan (saved), route, one split, datasets.
- :mod:`~pipelines.train.route`: what differs between semantic models
  (:mod:`~pipelines.train.module`) and Mask R-CNN (:mod:`~pipelines.train.maskrcnn`); both
  train with the optimiser of :mod:`~pipelines.train.optim`.
- :mod:`~pipelines.train.trainer`: the Lightning run with budgets, checkpoints and exact resume
  (:mod:`~pipelines.train.sampler` orders the batches); ``on_epoch`` is the tracking hook.
- :mod:`~pipelines.train.validate`: the best checkpoint scored by
  :mod:`~pipelines.train.evaluate`.

Never imports MLflow or :mod:`pipelines.services`:
:func:`pipelines.services.training.train_from_manifest` runs the three calls in an MLflow run
and publishes the model.
"""

from pipelines.preprocess.array import IGNORE_INDEX
from pipelines.train.module import SegmentationModule, dice_per_class
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
