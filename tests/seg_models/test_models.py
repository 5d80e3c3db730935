"""Every neural model in the factory: forward, backward, output shapes, errors."""

from __future__ import annotations

import pytest
import torch

from data_contracts import ModelError, ModelSpec
from seg_models import available_models, build_loss, build_model, model_info, predict
from seg_models.nets import ResNetBackbone, unet_output_size

TINY_VGG = {"width_divisor": 16, "batch_norm": True}
TINY_RESNET = {"backbone": "resnet18"}

# (name, dims, in_channels, num_classes, options, spatial size); odd sizes where possible.
CASES = [
    ("unet", 2, 3, 2, {"features": [4, 8, 16]}, (67, 45)),
    ("unet", 3, 1, 3, {"features": [4, 8, 16]}, (9, 11, 7)),
    ("unet", 2, 4, 1, {"base_features": 4, "depth": 3, "batch_norm": False}, (33, 20)),
    ("dynunet", 2, 3, 2, {"filters": [4, 8, 16], "depth": 2}, (67, 45)),
    ("dynunet", 3, 2, 1, {"filters": [4, 8, 16], "depth": 2, "res_block": True}, (9, 11, 7)),
    ("fcn32s", 2, 3, 2, TINY_VGG, (67, 45)),
    ("fcn16s", 2, 3, 2, TINY_VGG, (67, 45)),
    ("fcn8s", 2, 5, 1, TINY_VGG, (67, 45)),
    ("fcn8s", 2, 3, 2, TINY_RESNET, (67, 45)),
    ("deeplabv3", 2, 3, 2, {**TINY_RESNET, "output_stride": 16, "aspp_channels": 16}, (67, 45)),
    ("deeplabv3", 2, 4, 1, {**TINY_RESNET, "output_stride": 8, "aspp_channels": 16}, (67, 45)),
    ("pspnet", 2, 3, 3, {**TINY_RESNET, "head_channels": 16}, (67, 45)),
    ("pixel_linear", 2, 4, 3, {}, (67, 45)),
    ("pixel_linear", 3, 2, 1, {}, (9, 11, 7)),
]


def _spec(name: str, dims: int, c_in: int, n_cls: int, options: dict) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": name,
            "spatial_dims": dims,
            "in_channels": c_in,
            "num_classes": n_cls,
            "options": options,
        }
    )


@pytest.mark.parametrize(("name", "dims", "c_in", "n_cls", "options", "size"), CASES)
def test_forward_backward(name, dims, c_in, n_cls, options, size) -> None:
    model = build_model(_spec(name, dims, c_in, n_cls, options))
    x = torch.randn(2, c_in, *size)
    logits = model(x)
    assert logits.shape == (2, n_cls, *size)
    target = torch.randint(0, max(n_cls, 2), (2, *size))
    build_loss("ce")(logits, target).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_every_neural_model_is_exercised() -> None:
    covered = {case[0] for case in CASES} | {"maskrcnn"}  # maskrcnn: test_maskrcnn.py
    assert covered == set(available_models("neural"))
    assert set(available_models("classical")) == {"random_forest", "otsu_watershed"}
    assert model_info("otsu_watershed").task == "instance"


@pytest.mark.parametrize(("dims", "size"), [(2, (60, 64)), (3, (44, 48, 52))])
def test_valid_unet_output_is_smaller_and_documented(dims: int, size: tuple[int, ...]) -> None:
    spec = _spec("unet", dims, 1, 2, {"features": [2, 4, 8], "padding": "valid"})
    model = build_model(spec)
    out = model(torch.randn(1, 1, *size))
    assert out.shape[2:] == unet_output_size(size, depth=2) == model.output_size(size)
    assert all(o < s for o, s in zip(out.shape[2:], size, strict=True))


def test_valid_unet_matches_the_paper_size() -> None:
    assert unet_output_size((572, 572), depth=4) == (388, 388)
    with pytest.raises(ValueError, match="too small"):
        unet_output_size((40,), depth=4)


@pytest.mark.parametrize("name", ["fcn8s", "fcn16s", "fcn32s", "deeplabv3", "pspnet"])
def test_2d_only_models_refuse_3d(name: str) -> None:
    with pytest.raises(ModelError, match="2D only"):
        build_model(_spec(name, 3, 1, 2, {}))


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("no_such_net", {}, "unknown model"),
        ("unet", {"featurez": [4, 8]}, "no option featurez"),
        ("unet", {"padding": "full"}, "padding"),
        ("unet", {"depth": 0}, "depth"),
        ("fcn8s", {"backbone": "vgg19"}, "backbone"),
        ("fcn8s", {"backbone": "resnet18", "width_divisor": 4}, "width_divisor"),
        ("deeplabv3", {"output_stride": 32}, "output_stride"),
        ("dynunet", {"filters": [4, 8], "depth": 3}, "filters"),
        ("random_forest", {}, "classical"),
    ],
)
def test_bad_specs_raise_model_error(name: str, options: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        build_model(_spec(name, 2, 3, 2, options))


def test_semantic_model_refuses_instance_task() -> None:
    spec = ModelSpec(name="unet", in_channels=1, num_classes=2, task="instance")
    with pytest.raises(ModelError, match="semantic"):
        build_model(spec)


@pytest.mark.parametrize("n_cls", [1, 3])
def test_predict_returns_probabilities(n_cls: int) -> None:
    spec = _spec("unet", 2, 2, n_cls, {"features": [4, 8]})
    model = build_model(spec)
    model.train()
    probs = predict(model, torch.randn(2, 2, 15, 17), spec)
    assert probs.shape == (2, n_cls, 15, 17)
    assert model.training and not probs.requires_grad
    assert ((probs >= 0) & (probs <= 1)).all()
    if n_cls > 1:
        torch.testing.assert_close(probs.sum(1), torch.ones(2, 15, 17))


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 2, 16, 16, 16), (2, 2, 16)])
def test_predict_refuses_inputs_that_do_not_fit(shape: tuple[int, ...]) -> None:
    spec = _spec("unet", 2, 2, 2, {"features": [4, 8]})
    with pytest.raises(ModelError, match="does not fit"):
        predict(build_model(spec), torch.randn(*shape), spec)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_dilated_backbones_keep_their_output_stride(name: str, output_stride: int) -> None:
    with torch.device("meta"):
        backbone = ResNetBackbone(name, 2, output_stride=output_stride)
        c2, c3, c4 = backbone(torch.empty(1, 2, 64, 96))
    assert c2.shape[2:] == (8, 12)
    assert c3.shape[2:] == (64 // min(16, output_stride), 96 // min(16, output_stride))
    assert c4.shape[2:] == (64 // output_stride, 96 // output_stride)
    assert c4.shape[1] == backbone.channels[-1]
