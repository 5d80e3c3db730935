"""``--max-minutes`` as the wall time of the whole command.

The budget starts when the command starts (:attr:`TrainConfig.budget_started_at`), so the
Prefect API, fingerprint and probe count too. :func:`training_budget` tells the plan how many
seconds are left for optimiser steps; :class:`TimeBudget` then stops training early enough for
the last validation, the final evaluation of the best checkpoint and the registering to end
within the budget, and spaces validations so that they take at most
:data:`VALIDATION_SHARE` of the time.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from data_contracts import TrainConfig
from pipelines.plan.network import MIN_STEPS, UNBUDGETED_MINUTES, Budget

__all__ = [
    "TRAIN_SHARE",
    "VALIDATION_SHARE",
    "TimeBudget",
    "budget_sets_epochs",
    "deadline_of",
    "horizon_epochs",
    "training_budget",
]

logger = logging.getLogger(__name__)

VALIDATION_SHARE = 0.10
#: Share of what is left of the budget at plan time that optimiser steps get: the rest goes to
#: validations (:data:`VALIDATION_SHARE`) and to the final evaluation and registering.
TRAIN_SHARE = 0.85
#: Passes over the validation cases after the last step: the budget's last validation and the
#: final evaluation of the best checkpoint (a champion is re-scored only when its validation
#: cases differ, which the registering's share covers).
_CLOSING_PASSES = 2
_PUBLISH_SECONDS = 10.0
_PUBLISH_SHARE = 0.02


def deadline_of(config: TrainConfig, now: float | None = None) -> float | None:
    """Unix time by which the command must be done, or ``None`` without ``--max-minutes``."""
    if config.max_minutes is None:
        return None
    started = config.budget_started_at or (time.time() if now is None else now)
    return started + config.max_minutes * 60


def training_budget(config: TrainConfig, spatial_dims: int, now: float | None = None) -> Budget:
    """The seconds left for optimiser steps and the steps a width must reach in them."""
    now = time.time() if now is None else now
    deadline = deadline_of(config, now)
    if deadline is None:
        steps = config.max_epochs * config.steps_per_epoch
        return Budget(UNBUDGETED_MINUTES, UNBUDGETED_MINUTES * 60 * TRAIN_SHARE, steps, False)
    left = max(0.0, deadline - now)
    minutes = config.max_minutes or 0.0
    return Budget(minutes, left * TRAIN_SHARE, MIN_STEPS[spatial_dims], True)


def budget_sets_epochs(config: TrainConfig) -> bool:
    """True when ``--max-minutes`` is given and ``--max-epochs`` is not: the budget alone
    decides how long training runs, and the learning-rate schedule follows it."""
    return config.max_minutes is not None and "max_epochs" not in config.model_fields_set


def horizon_epochs(config: TrainConfig, planned_steps: int | None) -> int:
    """Epochs of the learning-rate schedule: the configured ones, or, when the budget sets them,
    the plan's expected steps in epochs (adjusted to the measured pace once training runs)."""
    if not budget_sets_epochs(config) or not planned_steps:
        return config.max_epochs
    return max(1, math.ceil(planned_steps / config.steps_per_epoch))


class TimeBudget(Callback):
    """Stops training at the budget's deadline less what must follow; spaces validations.

    After each validation the cadence (``check_val_every_n_epoch``) becomes the smallest that
    keeps validation within :data:`VALIDATION_SHARE` of the time. Training stops once the time
    left is no more than the closing passes over the validation cases (as long as the last
    one took) plus the registering; that last epoch is validated, so the best checkpoint sees
    the last steps.

    With ``sets_epochs`` (no ``--max-epochs`` given), after every epoch the learning-rate
    schedule's horizon and the last epoch become the epochs that still fit at the measured pace,
    so that the learning rate has decayed when the time is spent.

    Args:
        deadline: Unix time by which the command must be done.
        budget_seconds: the whole budget, for the registering's share.
        sets_epochs: adapt the schedule's horizon and the last epoch to the budget.
    """

    def __init__(self, deadline: float, budget_seconds: float, *, sets_epochs: bool) -> None:
        self.deadline = deadline
        self.sets_epochs = sets_epochs
        self.publish_seconds = max(_PUBLISH_SECONDS, _PUBLISH_SHARE * budget_seconds)
        self.validation_seconds = 0.0
        self.epoch_seconds = 0.0
        self.expired = False
        self._epoch_started = 0.0
        self._validation_started = 0.0
        self._validation_in_epoch = 0.0

    @property
    def reserve_seconds(self) -> float:
        """Seconds kept for after the last step."""
        return _CLOSING_PASSES * self.validation_seconds + self.publish_seconds

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_started = time.monotonic()
        self._validation_in_epoch = 0.0
        last = trainer.fit_loop.max_epochs
        if last is not None and last > 0 and trainer.current_epoch + 1 >= last:
            trainer.check_val_every_n_epoch = 1  # the last epoch is always validated

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Validation runs inside the training epoch in Lightning 2; it does not count here.
        elapsed = time.monotonic() - self._epoch_started - self._validation_in_epoch
        self.epoch_seconds = max(elapsed, 1e-3)
        if self.sets_epochs and not self.expired:
            self._fit_horizon(trainer)

    def _fit_horizon(self, trainer: L.Trainer) -> None:
        """Last epoch and schedule horizon = epochs done + the epochs that still fit."""
        every = trainer.check_val_every_n_epoch or 1
        per_epoch = self.epoch_seconds + self.validation_seconds / every
        left = self.deadline - time.time() - self.reserve_seconds
        # Rounded up: the stop before the closing passes cuts the last epoch short instead of
        # leaving most of an epoch's time unused.
        horizon = trainer.current_epoch + 1 + max(0, math.ceil(left / per_epoch))
        trainer.fit_loop.max_epochs = horizon
        for config in trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "total_iters"):
                config.scheduler.total_iters = horizon

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._validation_started = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validation_seconds = time.monotonic() - self._validation_started
        self._validation_in_epoch += self.validation_seconds
        if self.expired:
            return
        epoch = max(self.epoch_seconds, time.monotonic() - self._epoch_started)
        ratio = (1 - VALIDATION_SHARE) / VALIDATION_SHARE
        every = max(1, math.ceil(ratio * self.validation_seconds / max(epoch, 1e-3)))
        if every != trainer.check_val_every_n_epoch:
            logger.info(
                "validation took %.1f s, an epoch %.1f s: validating every %d epochs",
                self.validation_seconds,
                epoch,
                every,
            )
            trainer.check_val_every_n_epoch = every

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.expired or time.time() + self.reserve_seconds < self.deadline:
            return
        logger.info(
            "budget: stopping with %.0f s left for the last validation, evaluation and registering",
            self.deadline - time.time(),
        )
        self.expired = True
        trainer.should_stop = True
        trainer.check_val_every_n_epoch = 1  # validate the last steps before stopping
