"""Mask R-CNN on 2D images of any size: overlapping tiles, instances merged across tile edges."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

import seg_models
from pipelines.infer.sliding import choose_device
from pipelines.infer.tiled_instances import TileConfig, segment_instances_tiled
from pipelines.model_loading import LoadedModel
from pipelines.preprocess.transforms import IMAGE_KEY, image_transforms

__all__ = ["segment_instances", "tile_config"]


def tile_config(model: LoadedModel) -> TileConfig:
    """Tiles the size of the training chips, overlapping by an eighth; thresholds from the model."""
    return TileConfig.for_chips(
        max(model.plan.patch_size),
        score_threshold=float(model.processing.get("score_threshold", 0.5)),
        mask_threshold=float(model.processing.get("mask_threshold", 0.5)),
    )


def segment_instances(
    model: LoadedModel,
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Instance ids ``(H, W)`` uint16 (0 background) of one 2D image by tiled Mask R-CNN.

    Raises:
        InputError: the image cannot be read or its channels cannot be matched to the model's.
    """
    target = choose_device(str(device) if device else None)
    network = model.network.to(target).eval()
    item = image_transforms(model.plan, train=False)({IMAGE_KEY: [str(path)]})
    image = item[IMAGE_KEY]
    plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)

    tiles = tile_config(model)

    def detect(batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        found = seg_models.predict_instances(
            network, batch.to(target), model.spec, min_score=tiles.score_threshold
        )
        return [{key: value.cpu() for key, value in detections.items()} for detections in found]

    result = segment_instances_tiled(plain.float(), detect, tiles, progress=progress)
    return result.labels.astype(np.uint16)
