"""Training Mask R-CNN from instance label maps: chip dataset, collate, Lightning module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from data_contracts import ModelSpec
from pipelines.instances import detections_to_instance_map, maskrcnn_targets
from pipelines.metrics import dsb2018_score
from seg_models import build_model

InstanceItem = dict[str, torch.Tensor]


class InstanceChips(Dataset[InstanceItem]):
    """Random chips of normalised images ``(C, H, W)`` with their instance maps ``(H, W)``.

    Args:
        images: normalised images, channels first.
        instances: instance label maps (0 background, 1..N objects), same spatial size.
        chip_size: side of the square chips (images smaller than it are used whole).
        train: random position and flips when True; the whole image otherwise.
        seed: base seed of the chip positions (the index is added, so items are reproducible).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        instances: Sequence[np.ndarray],
        *,
        chip_size: int = 256,
        train: bool = True,
        seed: int = 0,
    ) -> None:
        if len(images) != len(instances):
            raise ValueError(f"{len(images)} images but {len(instances)} instance maps")
        self.images, self.instances = list(images), list(instances)
        self.chip_size, self.train, self.seed = chip_size, train, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> InstanceItem:
        image, label = self.images[index], self.instances[index]
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, label = _random_chip(image, label, self.chip_size, rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "instances": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)),
        }


def _random_chip(
    image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    height, width = label.shape
    top = int(rng.integers(0, max(height - size, 0) + 1))
    left = int(rng.integers(0, max(width - size, 0) + 1))
    image, label = (
        image[:, top : top + size, left : left + size],
        label[top : top + size, left : left + size],
    )
    if rng.random() < 0.5:
        image, label = image[:, :, ::-1], label[:, ::-1]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[::-1]
    return image, label


def collate_instances(batch: list[InstanceItem]) -> list[InstanceItem]:
    """Keep a batch as a list: images of one batch may differ in size (detection models)."""
    return batch


class MaskRCNNModule(L.LightningModule):
    """Trains torchvision's Mask R-CNN (built by the factory) on instance label maps.

    Validation turns detections into an instance map and logs the DSB-2018 score as
    ``val_dsb2018`` (the monitored metric).

    Args:
        spec: the model spec as a dict (``task="instance"``).
        learning_rate: SGD learning rate.
        score_threshold: detections below this score are dropped in validation.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        learning_rate: float = 0.01,
        score_threshold: float = 0.5,
        max_epochs: int = 50,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = ModelSpec.model_validate(spec)
        self.network = build_model(self.spec)
        self._scores: list[float] = []

    def training_step(self, batch: list[InstanceItem], batch_idx: int) -> torch.Tensor:
        images, targets = [], []
        for item in batch:
            target = maskrcnn_targets(item["instances"].cpu().numpy())
            images.append(item["image"])
            targets.append({key: value.to(self.device) for key, value in target.items()})
        losses = self.network(images, targets)
        loss = torch.stack(list(losses.values())).sum()
        self.log(
            "train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch)
        )
        return loss

    def validation_step(self, batch: list[InstanceItem], batch_idx: int) -> None:
        outputs = self.network([item["image"] for item in batch])
        for item, output in zip(batch, outputs, strict=True):
            height, width = item["instances"].shape
            detections = {key: value.detach().cpu() for key, value in output.items()}
            predicted = detections_to_instance_map(
                detections,
                score_threshold=self.hparams["score_threshold"],
                shape=(int(height), int(width)),
            )
            self._scores.append(dsb2018_score(predicted, item["instances"].cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        if self._scores:
            self.log("val_dsb2018", float(np.mean(self._scores)), prog_bar=True)
            self._scores.clear()

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if isinstance(dataset, InstanceChips):
            dataset.epoch = self.current_epoch

    def configure_optimizers(self) -> Any:
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            parameters, lr=self.hparams["learning_rate"], momentum=0.9, weight_decay=1e-4
        )
        schedule = torch.optim.lr_scheduler.PolynomialLR(
            optimizer, total_iters=int(self.hparams["max_epochs"]), power=0.9
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }
