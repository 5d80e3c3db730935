"""Mask R-CNN on 2D images of any size: overlapping tiles, instances merged across tile edges."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from pipelines.infer.loaded_model import LoadedModel, network_on
from pipelines.infer.sliding import choose_device
from pipelines.infer.tiled_instances import TileConfig, segment_with_network
from pipelines.preprocess.loaders import LoadImage2Dd
from pipelines.preprocess.transforms import IMAGE_KEY, planar_transforms

__all__ = ["scored_instances", "segment_instances", "tile_config"]


def tile_config(model: LoadedModel) -> TileConfig:
    """Tiles the size of the training chips, overlapping by an eighth; thresholds from the model."""
    return TileConfig.for_model(model.plan, model.processing)


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
    return scored_instances(model, path, device=device, progress=progress)[0]


def scored_instances(
    model: LoadedModel,
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[float]]:
    """:func:`segment_instances` and the detection score of each object (ids 1..N in order).

    Raises:
        InputError: the image cannot be read or its channels cannot be matched to the model's.
    """
    target = choose_device(str(device) if device else model.device)
    network = network_on(model, target)
    item = planar_transforms(model.plan, LoadImage2Dd, train=False)({IMAGE_KEY: [str(path)]})
    image = item[IMAGE_KEY]
    plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    result = segment_with_network(
        network, model.spec, plain.float(), tile_config(model), progress=progress
    )
    scores = [result.scores[index] for index in sorted(result.scores)]
    return result.labels.astype(np.uint16), scores
