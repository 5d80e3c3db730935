"""Pinned nuclei baselines (``dsb2018_nuclei``), all scored by the DSB-2018 score.

Images are RGB/RGBA PNGs read as 3 channels scaled to [0, 1]; labels are instance maps.

* ``monai-unet2d-3class`` (the floor): MONAI ``UNet(spatial_dims=2, in_channels=3,
  out_channels=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)`` on
  the interior/boundary/background targets of :func:`pipelines.instance_targets.instances_to_three_class`;
  ``DiceCELoss(to_onehot_y=True, softmax=True)``, Adam 1e-3 (MONAI's 2D tutorial), batches of 8
  random 256² crops with flips and 90° rotations, until the budget is spent; whole images by
  sliding windows (256², overlap 0.25), instances = connected interior regions grown over the
  rim (:func:`pipelines.instance_targets.three_class_to_instances` on the probabilities).
* ``otsu-watershed`` (no training): grey = mean of RGB, Gaussian σ=1, inverted when the
  background is bright (median grey > 0.5: bright-field/histology), Otsu's
  threshold, holes filled, objects < 10 px dropped; markers = connected maxima of the distance
  transform at least 5 px apart; watershed of the negated distance inside the foreground.
* ``maskrcnn-r50-scratch`` (reported, no floor): torchvision ``maskrcnn_resnet50_fpn(
  weights=None, weights_backbone=None, num_classes=2, min_size=256, max_size=512,
  box_detections_per_img=300)`` (images hold up to a few hundred nuclei), targets from
  :func:`pipelines.instance_targets.maskrcnn_targets`, Adam 1e-4, batches of 2 random 256² crops with
  flips and rotations, until the budget is spent; at inference each whole image is fed at its
  own size (``min_size``/``max_size`` set to its sides: the training scale), detections with
  score >= 0.5 painted by :func:`pipelines.instance_targets.detections_to_instance_map`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import label as connected
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed
from torchvision.models.detection import maskrcnn_resnet50_fpn

from benchmarks.baselines.common import (
    BaselineResult,
    Budget,
    TrainLog,
    UNet2DConfig,
    configure_torch,
    flip_rotate,
    mean_score,
    predict_unet2d,
    random_crop,
    train_unet2d,
    train_until,
)
from data_contracts import Case
from data_contracts.errors import UsageError
from pipelines.instance_targets import (
    detections_to_instance_map,
    instances_to_three_class,
    maskrcnn_targets,
    three_class_to_instances,
)
from pipelines.io.image2d import read_image
from pipelines.metrics import dsb2018_score

METRIC = "dsb2018"
UNET, OTSU, MASKRCNN = "monai-unet2d-3class", "otsu-watershed", "maskrcnn-r50-scratch"
METHODS = (UNET, OTSU, MASKRCNN)
UNET_PINNED = UNet2DConfig(in_channels=3, out_channels=3, crop=256, batch_size=8)
SMOOTHING_SIGMA, MIN_OBJECT_PIXELS, MIN_PEAK_DISTANCE = 1.0, 10, 5
BRIGHT_BACKGROUND = 0.5  # median grey above this: the background is bright


@dataclass(frozen=True)
class MaskRCNNConfig:
    """Pinned Mask R-CNN settings (tests shrink ``crop`` and ``min_size``)."""

    crop: int = 256
    batch_size: int = 2
    learning_rate: float = 1e-4
    min_size: int = 256
    max_size: int = 512
    detections_per_image: int = 300
    score_threshold: float = 0.5


MASKRCNN_PINNED = MaskRCNNConfig()

ConfigT = TypeVar("ConfigT", UNet2DConfig, MaskRCNNConfig)
Image = tuple[np.ndarray, np.ndarray]  # ((3, H, W) float32 in [0, 1], (H, W) int32 instances)
Segmenter = Callable[[np.ndarray], np.ndarray]  # (3, H, W) image -> (H, W) instance map


def load_case(case: Case) -> Image:
    """One image as 3 channels in [0, 1] (alpha dropped, grey repeated) and its instance map."""
    if case.label is None:
        raise UsageError(f"case {case.case_id} has no label", hint="pass labelled cases")
    pixels = read_image(case.channels[0].path)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    rgb = pixels[..., :3] if pixels.shape[-1] >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)
    scale = 255.0 if rgb.dtype == np.uint8 else float(max(rgb.max(), 1))
    image = np.moveaxis(rgb.astype(np.float32) / scale, -1, 0)
    instances = read_image(case.label.path)
    if instances.ndim != 2 or instances.shape != image.shape[1:]:
        raise UsageError(f"label {instances.shape} does not fit image {image.shape[1:]}")
    return np.ascontiguousarray(image), instances.astype(np.int32)


def otsu_watershed(image: np.ndarray) -> np.ndarray:
    """Instance map ``(H, W)`` int32 of a ``(3, H, W)`` image by Otsu + distance watershed."""
    grey = gaussian(image.mean(axis=0), sigma=SMOOTHING_SIGMA)
    if grey.max() == grey.min():
        return np.zeros(grey.shape, np.int32)
    if np.median(grey) > BRIGHT_BACKGROUND:  # bright-field/histology: nuclei are dark
        grey = grey.max() - grey
    foreground = ndi.binary_fill_holes(grey > threshold_otsu(grey))
    foreground = remove_small_objects(foreground, max_size=MIN_OBJECT_PIXELS - 1)
    distance = ndi.distance_transform_edt(foreground)
    peaks = peak_local_max(
        distance,
        min_distance=MIN_PEAK_DISTANCE,
        labels=connected(foreground),
        exclude_border=False,
    )
    seeds = np.zeros(distance.shape, bool)
    seeds[tuple(peaks.T)] = True
    return watershed(-distance, connected(seeds), mask=foreground).astype(np.int32)


def _unet(
    train: list[Image], budget: Budget, seed: int, config: UNet2DConfig
) -> tuple[Segmenter, TrainLog]:
    images = [image for image, _ in train]
    targets = [instances_to_three_class(instances) for _, instances in train]
    model, log = train_unet2d(images, targets, config, budget, seed)

    def segment(image: np.ndarray) -> np.ndarray:
        return three_class_to_instances(predict_unet2d(model, image, config))

    return segment, log


def _maskrcnn(
    train: list[Image], budget: Budget, seed: int, config: MaskRCNNConfig
) -> tuple[Segmenter, TrainLog]:
    model = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=2,
        min_size=config.min_size,
        max_size=config.max_size,
        box_detections_per_img=config.detections_per_image,
    )
    optimizer = torch.optim.Adam(model.parameters(), config.learning_rate)
    rng = np.random.default_rng(seed)

    def step() -> float:
        images, targets = [], []
        for _ in range(config.batch_size):
            crop = random_crop(rng, *train[int(rng.integers(len(train)))], config.crop)
            image, instances = flip_rotate(rng, *crop)
            images.append(torch.from_numpy(image))
            targets.append(maskrcnn_targets(instances))
        model.train()
        optimizer.zero_grad()
        loss = sum(model(images, targets).values())
        if not isinstance(loss, torch.Tensor) or not torch.isfinite(loss):
            return float("nan")
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    log = train_until(budget, step)
    model.eval()

    def segment(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[1:]
        model.transform.min_size = (min(height, width),)  # feed at native scale
        model.transform.max_size = max(height, width)
        with torch.inference_mode():
            detections = model([torch.from_numpy(image)])[0]
        return detections_to_instance_map(
            detections, score_threshold=config.score_threshold, shape=(height, width)
        )

    return segment, log


def _checked(config: object, kind: type[ConfigT], pinned: ConfigT) -> ConfigT:
    if config is None:
        return pinned
    if not isinstance(config, kind):
        raise UsageError(f"expected a {kind.__name__}, got {type(config).__name__}")
    return config


def run(
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    *,
    budget_minutes: float,
    seed: int = 0,
    method: str = UNET,
    config: UNet2DConfig | MaskRCNNConfig | None = None,
) -> BaselineResult:
    """Train (unless Otsu) the pinned nuclei ``method`` for ``budget_minutes``; DSB-2018 score."""
    if method not in METHODS:
        raise UsageError(f"unknown nuclei baseline {method!r}", hint=f"one of {METHODS}")
    threads = configure_torch(seed)
    started = time.monotonic()
    train = [load_case(case) for case in train_cases] if method != OTSU else []
    load_seconds = time.monotonic() - started
    segment: Segmenter = otsu_watershed
    log = TrainLog()
    used: UNet2DConfig | MaskRCNNConfig | None = None
    if method == UNET:
        unet_config = _checked(config, UNet2DConfig, UNET_PINNED)
        segment, log = _unet(train, Budget(budget_minutes), seed, unet_config)
        used = unet_config
    elif method == MASKRCNN:
        maskrcnn_config = _checked(config, MaskRCNNConfig, MASKRCNN_PINNED)
        segment, log = _maskrcnn(train, Budget(budget_minutes), seed, maskrcnn_config)
        used = maskrcnn_config
    started = time.monotonic()
    per_case = {}
    for case in val_cases:
        image, truth = load_case(case)
        per_case[case.case_id] = dsb2018_score(segment(image), truth)
    return BaselineResult(
        task="nuclei",
        method=method,
        metric=METRIC,
        score=mean_score(per_case),
        per_case=per_case,
        train_seconds=log.seconds,
        details={
            **log.summary(),
            "config": asdict(used) if used is not None else None,
            "torch_threads": threads,
            "load_seconds": round(load_seconds, 2),
            "eval_seconds": round(time.monotonic() - started, 2),
            "n_train_images": len(train),
        },
    )
