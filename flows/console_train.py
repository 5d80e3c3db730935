"""The training stage's live display: a Lightning progress bar drawn into a
:class:`StageDisplay`::

    ⠋ train unet ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╺━━━━━━━━━  1:23 left
      epoch 3/20 · step 5/8 · loss 0.412 · val_dice 0.710 (best 0.742)

:func:`training_stage` opens the display and makes :func:`pipelines.train.trainer.fit` use a
:class:`TrainingDisplay` (through its ``progress_display`` hook) while it is open; in the quiet
and JSON modes training shows no bar at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

from flows.console import settle_logging, shows_live_displays
from flows.console_display import StageDisplay
from pipelines.train.budget import TimeBudget
from pipelines.train.trainer import UNBOUNDED_EPOCHS, progress_display

__all__ = ["TrainingDisplay", "training_stage"]


class TrainingDisplay(ProgressBar):
    """Shows epoch, step, the last batch's loss, the validation metric, the best so far, and
    the time left of the budget (from the trainer's :class:`TimeBudget`)."""

    def __init__(self, display: StageDisplay) -> None:
        super().__init__()
        self.display = display
        self._enabled = True
        self._loss: float | None = None
        self._step = 0

    def disable(self) -> None:
        """Lightning disables the bar on every process but the first."""
        self._enabled = False

    def enable(self) -> None:
        """Show again."""
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take the deadline of the trainer's time budget, if it has one."""
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, TimeBudget):
                self.display.deadline = callback.deadline
        self._show(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Count the epoch's steps from zero."""
        self._step = 0
        self._show(trainer)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Note the batch's loss and move the bar."""
        self._step = batch_idx + 1
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss = float(loss.detach())
        self._show(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Show the new validation score."""
        if not trainer.sanity_checking:
            self._show(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Say what comes after the last step."""
        if self._enabled:
            self.display.update("evaluating the best checkpoint, then logging the model")
            self.display.total = None

    def _show(self, trainer: L.Trainer) -> None:
        if not self._enabled:
            return
        epoch = f"epoch {trainer.current_epoch + 1}"
        if trainer.max_epochs and 0 < trainer.max_epochs != UNBOUNDED_EPOCHS:
            epoch += f"/{trainer.max_epochs}"
        total = self.total_train_batches
        parts = [epoch, f"step {self._step}/{total}"]
        if self._loss is not None:
            parts.append(f"loss {self._loss:.3f}")
        parts += _validation(trainer)
        countable = isinstance(total, int) and total > 0
        self.display.update(
            " · ".join(parts),
            completed=self._step if countable else None,
            total=float(total) if countable else None,
        )


def _validation(trainer: L.Trainer) -> list[str]:
    """``["val_dice 0.710 (best 0.742)"]`` once validated, else nothing."""
    checkpoint = trainer.checkpoint_callback
    if not isinstance(checkpoint, ModelCheckpoint) or not checkpoint.monitor:
        return []
    value = trainer.callback_metrics.get(checkpoint.monitor)
    if value is None:
        return []
    text = f"{checkpoint.monitor} {float(value):.3f}"
    if checkpoint.best_model_score is not None:
        text += f" (best {float(checkpoint.best_model_score):.3f})"
    return [text]


@contextmanager
def training_stage(
    title: str, detail: str = "preparing", *, deadline: float | None = None
) -> Iterator[StageDisplay]:
    """A :class:`StageDisplay` for a training, which ``fit(progress_bar=True)`` moves while the
    block runs (no bar in the quiet and JSON modes)."""
    settle_logging()  # importing lightning gave its logger a stream handler of its own
    with StageDisplay(title, detail, deadline=deadline) as display:

        def make_bar() -> ProgressBar | None:
            return TrainingDisplay(display) if shows_live_displays() else None

        token = progress_display.set(make_bar)
        try:
            yield display
        finally:
            progress_display.reset(token)
