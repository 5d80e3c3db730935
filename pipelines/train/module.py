"""The Lightning module that trains any semantic model of the factory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from data_contracts import ModelSpec
from pipelines.preprocess.array import IGNORE_INDEX
from pipelines.preprocess.datasets import seed_augmentation
from pipelines.train.optim import PolynomialAdamW
from pipelines.train.windows import window_logits
from seg_models import build_loss, build_model


def plain_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with MONAI ``MetaTensor`` values turned into plain tensors.

    Metrics computed from MetaTensors stay MetaTensors (with NumPy metadata); Lightning would
    store them in the checkpoint's callback state, which ``torch.load(weights_only=True)``
    then refuses.
    """
    return {
        key: value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }


def dice_per_class(
    prediction: torch.Tensor,
    target: torch.Tensor,
    classes: Sequence[int],
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Dice of each class index in ``classes`` for class-index maps ``(B, *S)``; ignored pixels
    excluded. A class absent from both prediction and target scores 1 (nothing to find, nothing
    found)."""
    valid = target != ignore_index
    scores = []
    for index in classes:
        predicted = (prediction == index) & valid
        truth = (target == index) & valid
        denominator = predicted.sum() + truth.sum()
        overlap = 2 * (predicted & truth).sum()
        scores.append(
            torch.where(denominator > 0, overlap / denominator.clamp(min=1), torch.ones(()))
        )
    return torch.stack(scores).float()


class SegmentationModule(PolynomialAdamW):
    """Trains a factory model with a factory loss; validates whole cases by sliding window.

    Args:
        spec: the model spec (as a dict, so that checkpoints hold only plain data).
        loss: loss name or sum (``"dice+ce"``).
        loss_options: keyword options of the loss.
        learning_rate: AdamW learning rate (see :class:`~pipelines.train.optim.PolynomialAdamW`).
        weight_decay: AdamW weight decay.
        roi_size: sliding-window size for validation (the training patch size).
        class_names: one name per class index, for logged metric names.
        foreground: class indices whose Dice is validated (default: all but index 0).
        max_epochs: horizon of the learning-rate schedule.
        seed: run seed; augmentation is re-seeded from (seed, epoch) at every epoch start, so
            a resumed training draws the same patches as an uninterrupted one.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        loss: str = "dice+ce",
        loss_options: dict[str, Any] | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-5,
        roi_size: Sequence[int] = (96, 96, 96),
        class_names: Sequence[str] = (),
        max_epochs: int = 50,
        seed: int = 0,
        foreground: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = ModelSpec.model_validate(spec)
        self.network = build_model(self.spec)
        self.loss_fn = build_loss(loss, ignore_index=IGNORE_INDEX, **(loss_options or {}))
        self._val_scores: list[torch.Tensor] = []
        self.history: dict[str, list[float]] = {"train_loss": [], "val_dice": []}

    @property
    def _foreground(self) -> list[int]:
        chosen = self.hparams.get("foreground")
        if chosen is not None:
            return [int(index) for index in chosen]
        return list(range(1, max(self.spec.num_classes, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, *S)`` for images ``(B, C, *S)``."""
        logits: torch.Tensor = self.network(x)
        return logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        batch = plain_tensors(batch)
        # float32 logits: under bf16 autocast the loss's sums over a patch keep their precision.
        logits = self(batch["image"]).float()
        loss: torch.Tensor = self.loss_fn(logits, batch["label"].long())
        self.log(
            "train_loss",
            loss,
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=batch["image"].shape[0],
        )
        return loss

    def predict_classes(self, image: torch.Tensor) -> torch.Tensor:
        """Class-index map ``(B, *S)`` of whole images by gaussian sliding window (volumes
        under a 2D plan slice by slice)."""
        logits = window_logits(self.network, image, self.hparams["roi_size"])
        if self.spec.is_binary:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        batch = plain_tensors(batch)
        prediction = self.predict_classes(batch["image"])
        target = (
            batch["label"].long()[:, 0]
            if batch["label"].dim() == prediction.dim() + 1
            else batch["label"].long()
        )
        self._val_scores.append(dice_per_class(prediction, target, self._foreground))

    def on_validation_epoch_end(self) -> None:
        if not self._val_scores:
            return
        per_class = torch.stack(self._val_scores).mean(dim=0)
        self._val_scores.clear()
        all_names = list(self.hparams["class_names"])
        names = [all_names[i] if i < len(all_names) else f"class_{i}" for i in self._foreground]
        for name, score in zip(names, per_class, strict=False):
            self.log(f"val_dice_{name}", score)
        self.log("val_dice", per_class.mean(), prog_bar=True)

    def on_train_epoch_start(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if dataset is not None:
            seed_augmentation(dataset, int(self.hparams["seed"]) * 1000 + self.current_epoch)
