"""Builders for every registered model, and ``build_model`` / ``build_classical`` / ``predict``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from data_contracts import ModelError, ModelSpec
from seg_models._options import Options
from seg_models.classical import ClassicalSegmenter, OtsuWatershed, RandomForestSegmenter
from seg_models.nets.backbones import RESNETS
from seg_models.nets.deeplabv3 import DeepLabV3
from seg_models.nets.dynunet import PaddedDynUNet
from seg_models.nets.fcn import FCN
from seg_models.nets.maskrcnn import MASKRCNN_BACKBONES, build_maskrcnn
from seg_models.nets.pspnet import PSPNet
from seg_models.nets.unet import UNet
from seg_models.network_catalog import check_spec, model_info, register_model

__all__ = ["build_classical", "build_model", "predict", "predict_instances"]


@register_model(
    "unet",
    spatial_dims=(2, 3),
    source="Ronneberger et al., MICCAI 2015 (segflow)",
    summary="classical U-Net, same or valid padding",
)
def _unet(spec: ModelSpec, opt: Options) -> nn.Module:
    features = opt.int_list("features", None)
    if features is not None and {"base_features", "depth"} & spec.options.keys():
        raise ModelError(
            "unet takes either features or base_features/depth, not both",
            hint="drop base_features and depth, or drop features",
        )
    base, depth = opt.integer("base_features", 64), opt.integer("depth", 4)
    kwargs: dict[str, Any] = {
        "padding": opt.choice("padding", "same", ["same", "valid"]),
        "batch_norm": opt.flag("batch_norm", True),
    }
    opt.finish()
    if features is None:
        features = [base * 2**i for i in range(depth + 1)]
    return UNet(spec.spatial_dims, spec.in_channels, spec.num_classes, features, **kwargs)


@register_model(
    "pixel_linear",
    spatial_dims=(2, 3),
    source="per-pixel linear classifier (segflow)",
    summary="1×1 convolution: spectral/intensity baseline, no spatial context",
)
def _pixel_linear(spec: ModelSpec, opt: Options) -> nn.Module:
    opt.finish()
    conv = nn.Conv3d if spec.spatial_dims == 3 else nn.Conv2d
    return conv(spec.in_channels, spec.num_classes, kernel_size=1)


@register_model(
    "dynunet",
    spatial_dims=(2, 3),
    source="MONAI DynUNet (nnU-Net, Isensee et al., Nat. Methods 2021)",
    summary="nnU-Net-like U-Net with instance norm and leaky ReLU",
)
def _dynunet(spec: ModelSpec, opt: Options) -> nn.Module:
    kwargs: dict[str, Any] = {
        "depth": opt.integer("depth", 4),
        "filters": opt.int_list("filters", None),
        "res_block": opt.flag("res_block", False),
        "norm_name": opt.choice("norm", "instance", ["instance", "batch"]),
    }
    opt.finish()
    return PaddedDynUNet(spec.spatial_dims, spec.in_channels, spec.num_classes, **kwargs)


def _fcn_builder(stride: int) -> None:
    @register_model(
        f"fcn{stride}s",
        source="Long et al., CVPR 2015; torchvision VGG16/ResNet (segflow)",
        summary=f"FCN-{stride}s"
        + {32: "", 16: ", fuses pool4", 8: ", fuses pool4 and pool3"}[stride],
    )
    def build(spec: ModelSpec, opt: Options) -> nn.Module:
        backbone = opt.choice("backbone", "vgg16", ["vgg16", *RESNETS])
        width_divisor = opt.integer("width_divisor", 1)
        batch_norm = opt.flag("batch_norm", False)
        opt.finish()
        return FCN(
            spec.in_channels,
            spec.num_classes,
            stride,
            backbone=backbone,
            width_divisor=width_divisor,
            batch_norm=batch_norm,
        )


for _stride in (32, 16, 8):
    _fcn_builder(_stride)


@register_model(
    "deeplabv3",
    source="Chen et al., arXiv 2017; torchvision ASPP and ResNet (segflow)",
    summary="dilated ResNet, ASPP rates 6/12/18 + image pooling",
)
def _deeplabv3(spec: ModelSpec, opt: Options) -> nn.Module:
    kwargs: dict[str, Any] = {
        "backbone": opt.choice("backbone", "resnet50", list(RESNETS)),
        "output_stride": opt.choice("output_stride", 16, [8, 16]),
        "atrous_rates": opt.int_list("atrous_rates", None),
        "aspp_channels": opt.integer("aspp_channels", 256),
    }
    opt.finish()
    return DeepLabV3(spec.in_channels, spec.num_classes, **kwargs)


@register_model(
    "pspnet",
    source="Zhao et al., CVPR 2017; torchvision ResNet (segflow)",
    summary="dilated ResNet, pyramid pooling bins 1/2/3/6",
)
def _pspnet(spec: ModelSpec, opt: Options) -> nn.Module:
    kwargs: dict[str, Any] = {
        "backbone": opt.choice("backbone", "resnet50", list(RESNETS)),
        "output_stride": opt.choice("output_stride", 8, [8, 16]),
        "bins": opt.int_list("bins", (1, 2, 3, 6)),
        "head_channels": opt.integer("head_channels", 512),
    }
    opt.finish()
    return PSPNet(spec.in_channels, spec.num_classes, **kwargs)


@register_model(
    "maskrcnn",
    task="instance",
    source="He et al., ICCV 2017; torchvision maskrcnn_resnet50_fpn(_v2)",
    summary="Mask R-CNN, ResNet-FPN, RoIAlign, any number of bands",
)
def _maskrcnn(spec: ModelSpec, opt: Options) -> nn.Module:
    anchors = opt.nested_int_list("anchor_sizes")
    kwargs: dict[str, Any] = {
        "backbone": opt.choice("backbone", "resnet50", list(MASKRCNN_BACKBONES)),
        "min_size": opt.integer("min_size", 800),
        "max_size": opt.integer("max_size", 1333),
        "aspect_ratios": opt.float_list("aspect_ratios") or (0.5, 1.0, 2.0),
        "image_mean": opt.float_list("image_mean", spec.in_channels),
        "image_std": opt.float_list("image_std", spec.in_channels),
        "detections_per_image": opt.integer("detections_per_image", 100),
        "fpn_channels": opt.integer("fpn_channels", 256),
        "box_batch_size_per_image": opt.integer("box_batch_size_per_image", 512),
    }
    if anchors is not None:
        kwargs["anchor_sizes"] = anchors
    opt.finish()
    # A binary spec means one object class; torchvision counts the background too.
    network: nn.Module = build_maskrcnn(spec.in_channels, max(spec.num_classes, 2), **kwargs)
    return network


@register_model(
    "random_forest",
    kind="classical",
    spatial_dims=(2, 3),
    source="scikit-image trainable segmentation + scikit-learn random forest",
    summary="random forest on multiscale intensity/edge/texture features",
)
def _random_forest(spec: ModelSpec, opt: Options) -> ClassicalSegmenter:
    ignore = opt.optional_integer("ignore_index", minimum=-(2**31))
    kwargs: dict[str, Any] = {
        "n_estimators": opt.integer("n_estimators", 50),
        "max_depth": opt.integer("max_depth", 10),
        "sigma_min": opt.number("sigma_min", 1.0),
        "sigma_max": opt.number("sigma_max", 16.0),
        "max_pixels_per_image": opt.integer("max_pixels_per_image", 20_000),
        "seed": opt.integer("seed", 0, minimum=0),
    }
    opt.finish()
    return RandomForestSegmenter(ignore_index=ignore, **kwargs)


@register_model(
    "otsu_watershed",
    kind="classical",
    task="instance",
    spatial_dims=(2,),  # ModelSpec allows instance tasks in 2D only; the class also does 3D
    source="Otsu 1979 threshold + distance-transform watershed (scikit-image)",
    summary="Otsu threshold, distance transform, seeded watershed",
)
def _otsu_watershed(spec: ModelSpec, opt: Options) -> ClassicalSegmenter:
    distance = opt.optional_integer("min_distance")
    kwargs: dict[str, Any] = {
        "smoothing_sigma": opt.number("smoothing_sigma", 1.0),
        "min_size": opt.integer("min_size", 10, minimum=0),
        "bright_objects": opt.choice("bright_objects", None, [True, False]),
    }
    opt.finish()
    return OtsuWatershed(min_distance=distance, **kwargs)


def build_model(spec: ModelSpec) -> nn.Module:
    """Builds the neural network a :class:`~data_contracts.ModelSpec` names.

    Semantic models return logits ``(B, num_classes, *spatial)`` for ``(B, in_channels,
    *spatial)`` at the input's size (except ``unet`` with ``padding="valid"``); ``num_classes ==
    1`` is a binary (sigmoid) head, more a softmax head. ``maskrcnn`` returns torchvision's
    ``MaskRCNN``.

    Raises:
        ModelError: unknown or classical name, unsupported dimensions or task, bad options.
    """
    info = model_info(spec.name)
    if info.kind != "neural":
        raise ModelError(
            f"model {spec.name!r} is a classical baseline, not a network",
            hint="build it with seg_models.build_classical(spec)",
        )
    network: nn.Module = _build(spec)
    return network


def build_classical(spec: ModelSpec) -> ClassicalSegmenter:
    """Builds a classical baseline (``random_forest``, ``otsu_watershed``) from its spec.

    Raises:
        ModelError: unknown or neural name, unsupported task, bad options.
    """
    info = model_info(spec.name)
    if info.kind != "classical":
        raise ModelError(
            f"model {spec.name!r} is a neural network", hint="build it with build_model(spec)"
        )
    segmenter: ClassicalSegmenter = _build(spec)
    return segmenter


def _build(spec: ModelSpec) -> Any:
    info = model_info(spec.name)
    check_spec(spec, info)
    try:
        return info.builder(spec, Options(spec.name, spec.options))
    except ModelError:
        raise
    except ValueError as exc:
        raise ModelError(f"cannot build {spec.name!r}: {exc}") from exc


def _check_input(x: torch.Tensor, spec: ModelSpec) -> None:
    if x.ndim != spec.spatial_dims + 2 or x.shape[1] != spec.in_channels:
        raise ModelError(
            f"input of shape {tuple(x.shape)} does not fit model {spec.name!r}",
            hint=f"pass (B, {spec.in_channels}, *spatial) with {spec.spatial_dims} spatial axes",
        )


def predict(model: nn.Module, x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Class probabilities of a semantic model, in eval mode and without autograd.

    Args:
        model: from :func:`build_model` (its training flag is restored afterwards).
        x: ``(B, in_channels, *spatial)``.
        spec: the spec the model was built from.

    Returns:
        ``(B, num_classes, *spatial)``: sigmoid of the logits for a binary head, softmax over
        dim 1 for a multiclass head.

    Raises:
        ModelError: for an instance model or an input that does not fit the spec.
    """
    if spec.task != "semantic":
        raise ModelError(
            f"{spec.name!r} is an instance model", hint="use seg_models.predict_instances"
        )
    _check_input(x, spec)
    with _eval_mode(model), torch.inference_mode():
        logits = model(x)
        return torch.sigmoid(logits) if spec.is_binary else torch.softmax(logits, dim=1)


def predict_instances(
    model: nn.Module, x: torch.Tensor, spec: ModelSpec, *, min_score: float | None = None
) -> list[dict[str, torch.Tensor]]:
    """Detections of an instance model, in eval mode and without autograd.

    Args:
        model: from :func:`build_model` with ``task="instance"``.
        x: ``(B, in_channels, H, W)``.
        spec: the spec the model was built from.
        min_score: drop detections scoring less before the mask head runs (torchvision keeps
            everything above 0.05 and predicts a mask for each: on an uncertain model, hundreds
            of masks per image that a later score threshold throws away).

    Returns:
        One dict per image: ``boxes`` (N, 4), ``labels`` (N,), ``scores`` (N,) and ``masks``
        (N, 1, H, W) probabilities.
    """
    if spec.task != "instance":
        raise ModelError(f"{spec.name!r} is a semantic model", hint="use seg_models.predict")
    _check_input(x, spec)
    heads: Any = getattr(model, "roi_heads", None)  # torchvision's RoIHeads, when present
    default_score = getattr(heads, "score_thresh", None)
    raised = (
        min_score is not None and default_score is not None and min_score > float(default_score)
    )
    with _eval_mode(model):
        try:
            if raised:  # only then: a model prepared for inference is shared and never written
                heads.score_thresh = min_score
            with torch.inference_mode():
                return list(model(list(x)))
        finally:
            if raised:
                heads.score_thresh = default_score


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the call, restoring training mode after; a model already in eval mode
    (one prepared for inference, possibly shared between threads) is not written to."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()
