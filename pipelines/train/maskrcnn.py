"""Training Mask R-CNN from instance label maps: chips, Lightning module, spec from the plan."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import JsonValue
from torch.utils.data import Dataset

from data_contracts import ConfigError, ModelSpec, TrainConfig, TrainingPlan
from pipelines.infer.tiled_instances import InstanceResult, TileConfig, segment_with_network
from pipelines.instance_targets import maskrcnn_targets
from pipelines.metrics import dsb2018_score
from pipelines.preprocess.datasets import seed_augmentation
from pipelines.train.optim import PolynomialAdamW
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


def instance_items(batch: list[InstanceItem] | dict[str, Any]) -> list[InstanceItem]:
    """One ``{"image": (C, H, W), "instances": (H, W)}`` dict per image of a batch.

    Accepts the lists of :func:`collate_instances` and the default-collated MONAI batches of
    :func:`pipelines.preprocess.datasets.build_datasets` (``image`` ``(B, C, H, W)``,
    ``instances`` ``(B, 1, H, W)``, possibly MetaTensors).
    """
    if isinstance(batch, list):
        return batch
    if "instances" not in batch:
        raise KeyError("the batch holds no instance maps: ingest with label_kind='instance'")
    images = batch["image"].as_subclass(torch.Tensor)
    maps = batch["instances"].as_subclass(torch.Tensor)
    height, width = images.shape[-2:]
    return [
        {"image": images[index], "instances": maps[index].reshape(height, width)}
        for index in range(images.shape[0])
    ]


class MaskRCNNModule(PolynomialAdamW):
    """Trains torchvision's Mask R-CNN (built by the factory) on instance label maps.

    Training chips become Mask R-CNN targets (a box, class and mask per object). Validation
    segments each whole image by overlapping ``tile`` × ``tile`` tiles (as ``segflow segment``
    does) and logs the mean DSB-2018 score as ``val_dsb2018`` (the monitored metric).

    AdamW with gradient-norm clipping: from scratch, SGD at the reference 0.02 (or 0.01) sends
    the RPN's box regression to NaN within tens of steps.

    Args:
        spec: the model spec as a dict (``task="instance"``).
        learning_rate: AdamW learning rate (see :class:`~pipelines.train.optim.PolynomialAdamW`).
        weight_decay: AdamW weight decay.
        score_threshold: detections below this score are dropped in validation.
        mask_threshold: mask probability above which a pixel belongs to a detection.
        tile: validation tile side (the training chip size); default the spec's ``min_size``.
        max_epochs: horizon of the learning-rate schedule.
        seed: run seed; augmentation is re-seeded from (seed, epoch) at every epoch start.
        gradient_clip: maximum global gradient norm.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        learning_rate: float = 1e-4,
        weight_decay: float = 1e-4,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        tile: int | None = None,
        max_epochs: int = 50,
        seed: int = 0,
        gradient_clip: float = 10.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = ModelSpec.model_validate(spec)
        self.network = build_model(self.spec)
        chip = tile if tile is not None else int(self.spec.options.get("min_size", 512))  # type: ignore[arg-type]
        self.tiles = TileConfig.for_chips(
            chip, score_threshold=score_threshold, mask_threshold=mask_threshold
        )
        self._scores: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, targets = [], []
        for item in instance_items(batch):
            target = maskrcnn_targets(item["instances"].cpu().numpy())
            images.append(item["image"].float())
            targets.append({key: value.to(self.device) for key, value in target.items()})
        losses = self.network(images, targets)
        loss = torch.stack(list(losses.values())).sum()
        self.log(
            "train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(images)
        )
        return loss

    def segment(self, image: torch.Tensor) -> InstanceResult:
        """Instances of one whole normalised image ``(C, H, W)`` by overlapping tiles."""
        return segment_with_network(self.network, self.spec, image.float(), self.tiles)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        for item in instance_items(batch):
            found = self.segment(item["image"])
            self._scores.append(dsb2018_score(found.labels, item["instances"].cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        if self._scores:
            self.log("val_dsb2018", float(np.mean(self._scores)), prog_bar=True)
            self._scores.clear()

    def on_train_epoch_start(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if isinstance(dataset, InstanceChips):
            dataset.epoch = self.current_epoch
        elif dataset is not None:
            seed_augmentation(dataset, int(self.hparams["seed"]) * 1000 + self.current_epoch)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        self.clip_gradients(
            optimizer,
            gradient_clip_val=float(self.hparams["gradient_clip"]),
            gradient_clip_algorithm="norm",
        )


#: Detections whose score is below this are dropped when an image is segmented.
SCORE_THRESHOLD = 0.5
#: Mask probability above which a pixel belongs to a detection.
MASK_THRESHOLD = 0.5
#: Mask R-CNN learning rate unless the training config sets one (AdamW; torchvision's
#: reference 0.02 is for SGD with pretrained backbones).
LEARNING_RATE = 1e-4
#: Chips per step unless the plan's batch size was set explicitly: region proposals, RoIAlign
#: and per-object masks cost far more than a U-Net's patch of the same size.
BATCH_SIZE = {"cpu": 2, "cuda": 8}
#: torchvision's anchor sizes (pixels), used when the dataset's object size is unknown.
DEFAULT_ANCHORS = [[32], [64], [128], [256], [512]]


def anchor_ladder(median_object_size: float | None) -> list[list[int]]:
    """Anchor sizes of the five FPN levels, doubling from half the median object's side (rounded
    to a power of two, at least 4 px).

    torchvision's 32…512 px anchors miss small objects (a 12 px nucleus overlaps a 32 px anchor
    with IoU 0.14, below the RPN's 0.3 negative threshold), so the ladder follows the data.

    Args:
        median_object_size: median object area in pixels (``DatasetFingerprint``).
    """
    if not median_object_size:
        return [list(level) for level in DEFAULT_ANCHORS]
    side = math.sqrt(median_object_size)
    smallest = max(4, 2 ** round(math.log2(max(side / 2, 1))))
    return [[int(smallest * 2**level)] for level in range(5)]


def maskrcnn_spec(
    plan: TrainingPlan, config: TrainConfig, median_object_size: float | None
) -> ModelSpec:
    """The Mask R-CNN spec that fits an instance plan; ``config.model_options`` win.

    Chips are the plan's patch size and are not resized (``min_size = max_size`` = the
    chip), anchors follow the objects' size, the images arrive normalised by the plan (mean 0,
    std 1 in the transform). On CUDA: ResNet-50 FPN as torchvision builds it; on a CPU:
    ResNet-18 with 128 FPN channels and 128 sampled proposals per chip (a step costs about a
    quarter of the ResNet-50 one).

    Raises:
        ConfigError: the plan is not a 2D plan of instance labels.
    """
    if plan.spatial_dims != 2 or plan.label_kind != "instance":
        raise ConfigError(
            f"Mask R-CNN needs 2D instance labels; {plan.dataset_name} is a "
            f"{plan.spatial_dims}D dataset of {plan.label_kind} labels",
            hint="ingest instance maps with --label-kind instance, or choose a semantic model",
        )
    chip = max(plan.patch_size)
    cuda = _device_kind(config) == "cuda"
    options: dict[str, JsonValue] = {
        "backbone": "resnet50" if cuda else "resnet18",
        "fpn_channels": 256 if cuda else 128,
        "box_batch_size_per_image": 512 if cuda else 128,
        "min_size": chip,
        "max_size": chip,
        "anchor_sizes": anchor_ladder(median_object_size),  # type: ignore[dict-item]
        "detections_per_image": 300,
        "image_mean": [0.0] * plan.in_channels,
        "image_std": [1.0] * plan.in_channels,
    }
    options.update(config.model_options)
    return ModelSpec(
        name="maskrcnn",
        task="instance",
        spatial_dims=2,
        in_channels=plan.in_channels,
        num_classes=2,
        options=options,
    )


def maskrcnn_batch_size(plan: TrainingPlan, config: TrainConfig) -> int:
    """The plan's batch size when set explicitly, else :data:`BATCH_SIZE` for the device."""
    if "batch_size" in plan.overrides:
        return plan.batch_size
    return min(plan.batch_size, BATCH_SIZE[_device_kind(config)])


def maskrcnn_module(spec: ModelSpec, plan: TrainingPlan, config: TrainConfig) -> MaskRCNNModule:
    """The Lightning module of a Mask R-CNN training (learning rate :data:`LEARNING_RATE`
    unless ``config`` sets one)."""
    rate = config.learning_rate if "learning_rate" in config.model_fields_set else LEARNING_RATE
    return MaskRCNNModule(
        spec.model_dump(mode="json"),
        learning_rate=rate,
        weight_decay=max(config.weight_decay, 1e-4),
        score_threshold=SCORE_THRESHOLD,
        mask_threshold=MASK_THRESHOLD,
        tile=max(plan.patch_size),
        max_epochs=config.max_epochs,
        seed=config.seed,
    )


def _device_kind(config: TrainConfig) -> str:
    return "cuda" if config.accelerator != "cpu" and torch.cuda.is_available() else "cpu"
