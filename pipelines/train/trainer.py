"""Run a Lightning training: budgets, checkpoints, exact resume, early stopping, devices."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sized
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.utilities.exceptions import SIGTERMException
from monai.data.utils import worker_init_fn as monai_worker_init
from torch.utils.data import DataLoader, Dataset

from data_contracts import TrainConfig
from pipelines.interrupts import TrainingInterrupted
from pipelines.precision import training_precision
from pipelines.train.budget import TimeBudget, budget_sets_epochs, deadline_of
from pipelines.train.module import SegmentationModule
from pipelines.train.sampler import EpochSeededSampler

logger = logging.getLogger(__name__)

_LAST = "last"

#: The trainer's last epoch when the budget sets it (adjusted from the first epoch on).
UNBOUNDED_EPOCHS = 100_000

EpochCallback = Callable[[int, dict[str, float]], None]
"""Called as ``on_epoch(epoch, metrics)`` after each validated epoch (e.g. to log to MLflow)."""

#: Makes the progress display of ``fit(progress_bar=True)``: Lightning's rich bar, unless the
#: caller (the command line, for its console modes) sets another, or one that returns ``None``
#: for no display.
progress_display: ContextVar[Callable[[], ProgressBar | None]] = ContextVar(
    "progress_display", default=RichProgressBar
)


@dataclass
class TrainResult:
    """What a training produced.

    Attributes:
        best_score: best validation Dice seen (``nan`` when never validated).
        best_checkpoint: checkpoint of the best validation Dice.
        last_checkpoint: checkpoint at the end (resume from it).
        epochs: epochs completed.
        history: metric name → one value per epoch.
        stopped_by: ``"epochs"``, ``"early_stopping"`` or ``"time_budget"``.
        weights: which weights the training keeps, ``"final"`` or ``"best"``
            (:func:`kept_weights`).
    """

    best_score: float
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    epochs: int
    history: dict[str, list[float]] = field(default_factory=dict)
    stopped_by: str = "epochs"
    weights: Literal["final", "best"] = "best"

    @property
    def kept_checkpoint(self) -> Path | None:
        """The best checkpoint (else the last) when the best weights are kept, else ``None``:
        the final weights are the module's own after :func:`fit`."""
        if self.weights == "final":
            return None
        return self.best_checkpoint or self.last_checkpoint


class _History(Callback):
    """Collects epoch metrics and forwards them to an optional callback."""

    def __init__(self, on_epoch: EpochCallback | None) -> None:
        self.history: dict[str, list[float]] = {}
        self._on_epoch = on_epoch

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # After the module's own epoch-end hook, so this epoch's metrics are in callback_metrics.
        if trainer.sanity_checking:
            return
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if value.numel() == 1
        }
        for name, value in metrics.items():
            self.history.setdefault(name, []).append(value)
        if self._on_epoch is not None:
            self._on_epoch(trainer.current_epoch, metrics)


def resolve_precision(config: TrainConfig, *, cpu_mixed: bool = True) -> str:
    """``auto`` → :func:`pipelines.precision.training_precision` for the device: bf16/16 mixed
    on CUDA, bf16 mixed on CPUs with native bf16 (unless ``cpu_mixed`` is off), else 32-bit."""
    if config.precision != "auto":
        return config.precision
    if torch.cuda.is_available() and config.accelerator != "cpu":
        return training_precision("cuda")
    return training_precision("cpu") if cpu_mixed else "32-true"


def make_loaders(
    train_dataset: Dataset[Any], val_dataset: Dataset[Any], config: TrainConfig, batch_size: int
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Training loader of ``steps_per_epoch`` batches in a (seed, epoch)-determined order, and a
    validation loader of whole cases. Memory is pinned when CUDA is used."""
    pin = torch.cuda.is_available() and config.accelerator != "cpu"
    if not isinstance(train_dataset, Sized):
        raise TypeError("the training dataset must have a length")
    sampler = EpochSeededSampler(
        train_dataset, config.steps_per_epoch * batch_size, seed=config.seed
    )
    workers, persistent = config.num_workers, config.num_workers > 0
    # Each worker re-seeds its copy of the random transforms, so workers draw different patches.
    init = monai_worker_init if workers else None
    train = DataLoader(
        train_dataset,
        batch_size=batch_size,
        sampler=sampler,
        pin_memory=pin,
        num_workers=workers,
        persistent_workers=persistent,
        worker_init_fn=init,
    )
    val = DataLoader(
        val_dataset,
        batch_size=1,
        shuffle=False,
        pin_memory=pin,
        num_workers=workers,
        persistent_workers=persistent,
    )
    return train, val


def fit(
    module: L.LightningModule,
    train_loader: DataLoader[Any],
    val_loader: DataLoader[Any] | None,
    config: TrainConfig,
    checkpoint_dir: Path,
    *,
    resume: bool = True,
    on_epoch: EpochCallback | None = None,
    extra_callbacks: list[Callback] | None = None,
    progress_bar: bool = True,
    monitor: str = "val_dice",
) -> TrainResult:
    """Train ``module``; checkpoints go to ``checkpoint_dir`` (``best.ckpt``, ``last.ckpt``).

    With ``resume`` and a ``last.ckpt`` present, training continues exactly where it stopped:
    weights, optimiser, scheduler, epoch and callbacks are restored (checkpoints are loaded with
    ``weights_only=True``), and the sampler's order depends only on (seed, epoch).
    ``monitor`` is the validation metric (higher is better) for the best checkpoint and early
    stopping: ``val_dice`` for semantic models, ``val_dsb2018`` for instance models.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="best", monitor=monitor, mode="max"
    )
    # Lightning's ``save_last`` copies only epochs that improved the best: after a plateau a
    # rerun would resume from the best epoch, not the last. This one writes every epoch's end.
    latest = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=_LAST,
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    stopper = EarlyStopping(
        monitor=monitor, mode="max", patience=_patience(config), check_on_train_epoch_end=False
    )
    history = _History(on_epoch)
    callbacks: list[Callback] = [checkpoints, latest, stopper, history, *(extra_callbacks or [])]
    deadline = deadline_of(config)
    timer = None
    if deadline is not None:
        seconds = (config.max_minutes or 0.0) * 60
        timer = TimeBudget(deadline, seconds, sets_epochs=budget_sets_epochs(config))
        callbacks.append(timer)
    bar = progress_display.get()() if progress_bar else None
    if bar is not None:
        callbacks.append(bar)
    trainer = L.Trainer(
        max_epochs=UNBOUNDED_EPOCHS if timer and timer.sets_epochs else config.max_epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        # Mask R-CNN's detection ops are not measured under CPU autocast: it keeps float32.
        precision=resolve_precision(  # type: ignore[arg-type]
            config, cpu_mixed=isinstance(module, SegmentationModule)
        ),
        deterministic=config.deterministic,
        check_val_every_n_epoch=config.val_every,
        callbacks=callbacks,
        default_root_dir=checkpoint_dir,
        logger=False,
        enable_progress_bar=bar is not None,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if val_loader is not None else 0,
    )
    last = checkpoint_dir / f"{_LAST}.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    if ckpt_path:
        logger.info("resuming from %s", ckpt_path)
    with _sigterm_noted():
        try:
            trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException as error:
            raise _interrupted(trainer, last) from error
    return _result(trainer, checkpoints, latest, stopper, timer, history, kept_weights(config))


def _patience(config: TrainConfig) -> int:
    """``config.patience``; unbounded when the budget sets the epochs and no patience was given:
    the learning rate then decays over the whole budget."""
    if budget_sets_epochs(config) and "patience" not in config.model_fields_set:
        return UNBOUNDED_EPOCHS
    return config.patience


def kept_weights(config: TrainConfig) -> Literal["final", "best"]:
    """``config.weights``; for ``auto``, the final weights when early stopping is off (the
    learning rate has decayed to 0 at the end of the budget), else the best validation's."""
    if config.weights != "auto":
        return config.weights
    return "final" if _patience(config) == UNBOUNDED_EPOCHS else "best"


@contextlib.contextmanager
def _sigterm_noted() -> Iterator[None]:
    """While training, SIGTERM only takes note: Lightning (whose handler runs first) stops at
    the next batch boundary; no other handler (Prefect's, the default's exit) interrupts a
    checkpoint being written. Signals can only be handled in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: logger.warning("SIGTERM received"))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(trainer: L.Trainer, last: Path) -> TrainingInterrupted:
    """The error of a training stopped by SIGTERM, naming the checkpoint kept (last.ckpt is
    only written at epoch ends, so it is whole and resumes exactly)."""
    epoch = trainer.current_epoch
    if not last.is_file():
        return TrainingInterrupted(
            f"training stopped by SIGTERM in epoch {epoch}, before any epoch finished: "
            "no checkpoint to resume from",
            hint="run the same command again; training starts from the beginning",
        )
    return TrainingInterrupted(
        f"training stopped by SIGTERM in epoch {epoch}; the checkpoint of the last finished "
        "epoch is kept",
        path=last,
    )


def _result(
    trainer: L.Trainer,
    checkpoints: ModelCheckpoint,
    latest: ModelCheckpoint,
    stopper: EarlyStopping,
    timer: TimeBudget | None,
    history: _History,
    weights: Literal["final", "best"],
) -> TrainResult:
    stopped_by = "epochs"
    if stopper.stopped_epoch > 0:
        stopped_by = "early_stopping"
    elif timer is not None and (timer.expired or timer.sets_epochs):
        stopped_by = "time_budget"
    best = checkpoints.best_model_score
    return TrainResult(
        best_score=float(best) if best is not None else float("nan"),
        best_checkpoint=Path(checkpoints.best_model_path) if checkpoints.best_model_path else None,
        last_checkpoint=Path(latest.best_model_path) if latest.best_model_path else None,
        epochs=trainer.current_epoch,
        history=history.history,
        stopped_by=stopped_by,
        weights=weights,
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (and data loader workers) for a reproducible run."""
    L.seed_everything(seed, workers=True, verbose=False)
