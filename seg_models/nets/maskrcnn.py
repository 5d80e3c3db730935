"""Mask R-CNN (He et al., 2017) from torchvision, untrained and adapted to any number of bands."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.detection import (
    MaskRCNN,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

__all__ = ["MASKRCNN_BACKBONES", "build_maskrcnn"]

MASKRCNN_BACKBONES = ("resnet50", "resnet50_v2", "resnet18", "resnet34", "resnet101")
_DEFAULT_ANCHORS = ((32,), (64,), (128,), (256,), (512,))


def build_maskrcnn(
    in_channels: int,
    num_classes: int,
    *,
    backbone: str = "resnet50",
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[Sequence[int]] = _DEFAULT_ANCHORS,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    detections_per_image: int = 100,
    fpn_channels: int = 256,
    box_batch_size_per_image: int = 512,
) -> MaskRCNN:
    """Builds torchvision's Mask R-CNN with ``weights=None, weights_backbone=None``.

    RoIAlign, the RPN, the box and mask heads are torchvision's. The ResNet-FPN backbone uses
    trainable batch norm and all its layers train (from scratch). For ``in_channels != 3`` the
    backbone's ``conv1`` is replaced; the transform normalises with ``image_mean``/``image_std``
    (default 0 and 1 per band: inputs are expected to be normalised already, and untrained
    weights gain nothing from ImageNet statistics).

    Args:
        in_channels: image bands.
        num_classes: classes including background (≥ 2).
        backbone: ``resnet50`` (``maskrcnn_resnet50_fpn``), ``resnet50_v2``
            (``maskrcnn_resnet50_fpn_v2``) or a lighter ``resnet18``/``resnet34`` (CPU), or
            ``resnet101``.
        min_size: images are resized so their short side is at least this.
        max_size: …and their long side at most this.
        anchor_sizes: one tuple of sizes (pixels) per FPN level, 5 levels; use small ones, e.g.
            ``((8,), (16,), (32,), (64,), (128,))``, for small objects.
        aspect_ratios: anchor aspect ratios used at every level.
        image_mean: per-band mean subtracted by the transform.
        image_std: per-band std the transform divides by.
        detections_per_image: maximum detections returned per image in eval mode.
        fpn_channels: channels of the FPN levels, hence of the RPN, box and mask heads' inputs
            (ResNet-18/34 only; 128 halves a CPU training step).
        box_batch_size_per_image: proposals sampled per image for the box and mask heads in
            training (a quarter positive); fewer make each step cheaper.

    Returns:
        The model. Training mode: ``model(images, targets)`` → dict of losses, where targets
        hold ``boxes`` (N, 4; x1, y1, x2, y2), ``labels`` (N,) and ``masks`` (N, H, W). Eval
        mode: ``model(images)`` → one dict per image with ``boxes``, ``labels``, ``scores`` and
        ``masks`` (N, 1, H, W) probabilities.
    """
    if backbone not in MASKRCNN_BACKBONES:
        raise ValueError(
            f"unknown Mask R-CNN backbone {backbone!r}; use one of {MASKRCNN_BACKBONES}"
        )
    if num_classes < 2:
        raise ValueError("Mask R-CNN needs num_classes ≥ 2 (background included)")
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one tuple per FPN level (5), got {len(anchor_sizes)}")
    if len({len(level) for level in anchor_sizes}) != 1:
        raise ValueError("every FPN level needs the same number of anchor sizes")
    mean = list(image_mean) if image_mean is not None else [0.0] * in_channels
    std = list(image_std) if image_std is not None else [1.0] * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"image_mean and image_std need {in_channels} values (one per band)")
    kwargs = {
        "num_classes": num_classes,
        "min_size": min_size,
        "max_size": max_size,
        "image_mean": mean,
        "image_std": std,
        "box_detections_per_img": detections_per_image,
        "box_batch_size_per_image": box_batch_size_per_image,
    }
    if fpn_channels != 256 and backbone.startswith("resnet50"):
        raise ValueError("fpn_channels applies to the resnet18/34/101 backbones only")
    model: MaskRCNN
    if backbone == "resnet50":
        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    elif backbone == "resnet50_v2":
        model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, **kwargs)
    else:
        body = resnet_fpn_backbone(
            backbone_name=backbone, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
        )
        if fpn_channels != body.out_channels:
            body.fpn = FeaturePyramidNetwork(
                [block[0].in_channels for block in body.fpn.inner_blocks],
                fpn_channels,
                extra_blocks=LastLevelMaxPool(),
            )
            body.out_channels = fpn_channels
        model = MaskRCNN(body, **kwargs)
    _set_anchors(model, anchor_sizes, aspect_ratios, conv_depth=2 if backbone.endswith("v2") else 1)
    if in_channels != 3:
        model.backbone.body.conv1 = nn.Conv2d(
            in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False
        )
    return model


def _set_anchors(
    model: MaskRCNN,
    sizes: Sequence[Sequence[int]],
    ratios: Sequence[float],
    conv_depth: int,
) -> None:
    """Replaces the anchor generator, and the RPN head when the anchors per location change."""
    generator = AnchorGenerator(
        tuple(tuple(int(s) for s in level) for level in sizes),
        tuple(tuple(float(r) for r in ratios) for _ in sizes),
    )
    per_location = generator.num_anchors_per_location()[0]
    old = model.rpn.anchor_generator.num_anchors_per_location()[0]
    model.rpn.anchor_generator = generator
    if per_location != old:
        out_channels = model.backbone.out_channels
        model.rpn.head = RPNHead(out_channels, per_location, conv_depth=conv_depth)
