"""Mask R-CNN: one training step from scratch, detections in eval mode, any number of bands."""

from __future__ import annotations

import pytest
import torch

from data_contracts import ModelError, ModelSpec
from seg_models import build_model, predict, predict_instances

SMALL = {
    "backbone": "resnet18",
    "min_size": 64,
    "max_size": 64,
    "anchor_sizes": [[8], [16], [32], [64], [128]],
    "detections_per_image": 10,
}


def _spec(in_channels: int, options: dict, num_classes: int = 3) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "maskrcnn",
            "in_channels": in_channels,
            "num_classes": num_classes,
            "task": "instance",
            "options": options,
        }
    )


def _targets() -> list[dict[str, torch.Tensor]]:
    targets = []
    for boxes, labels in (([[8, 8, 30, 28], [36, 40, 60, 62]], [1, 2]), ([[20, 10, 44, 50]], [2])):
        masks = torch.zeros(len(boxes), 64, 64, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            masks[i, y1:y2, x1:x2] = 1
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor(labels),
                "masks": masks,
            }
        )
    return targets


def test_one_training_step_then_detections() -> None:
    spec = _spec(3, SMALL)
    model = build_model(spec)
    images = torch.rand(2, 3, 64, 64)
    model.train()
    losses = model(list(images), _targets())
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness"} <= losses.keys()
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    detections = predict_instances(model, images, spec)
    assert model.training and len(detections) == 2
    for det in detections:
        assert {"boxes", "labels", "scores", "masks"} <= det.keys()
        assert det["masks"].shape[1:] == (1, 64, 64)


@pytest.mark.parametrize("bands", [1, 5])
def test_any_number_of_bands(bands: int) -> None:
    spec = _spec(bands, {**SMALL, "image_mean": [0.5] * bands, "image_std": [0.2] * bands}, 1)
    model = build_model(spec)
    assert model.backbone.body.conv1.in_channels == bands
    assert list(model.transform.image_mean) == [0.5] * bands
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # binary → bg + 1 class
    assert len(predict_instances(model, torch.rand(1, bands, 48, 64), spec)) == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"backbone": "vgg16"}, "backbone"),
        ({"anchor_sizes": [[8], [16]]}, "anchor_sizes"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
        ({"min_size": "big"}, "min_size"),
        ({"backbone": "resnet50", "fpn_channels": 128}, "fpn_channels"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        build_model(_spec(3, options))


def test_instance_models_are_2d_and_use_predict_instances() -> None:
    with pytest.raises(ValueError, match="2D only"):
        ModelSpec(name="maskrcnn", in_channels=3, num_classes=2, task="instance", spatial_dims=3)
    spec = _spec(3, SMALL)
    with pytest.raises(ModelError, match="predict_instances"):
        predict(build_model(spec), torch.rand(1, 3, 64, 64), spec)


@pytest.mark.parametrize(
    ("backbone", "depth"), [("resnet50", 1), ("resnet50_v2", 2), ("resnet101", 1)]
)
def test_full_size_backbones_and_anchor_shapes(backbone: str, depth: int) -> None:
    options = {"backbone": backbone, "aspect_ratios": [0.25, 0.5, 1.0, 2.0]}
    with torch.device("meta"):  # no memory, no initialisation cost
        model = build_model(_spec(4, options))
    assert model.rpn.head.cls_logits.out_channels == 4
    assert len(model.rpn.head.conv) == depth
    assert model.backbone.body.conv1.in_channels == 4


def test_cpu_sized_heads() -> None:
    """Narrower FPN (hence RPN, box and mask heads) and fewer sampled proposals per image."""
    options = {**SMALL, "backbone": "resnet18", "fpn_channels": 64, "box_batch_size_per_image": 32}
    spec = _spec(3, options)
    model = build_model(spec)
    assert model.backbone.out_channels == 64
    assert model.rpn.head.conv[0][0].in_channels == 64
    assert model.roi_heads.mask_head[0][0].in_channels == 64
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    assert len(predict_instances(model, torch.rand(1, 3, 64, 64), spec)) == 1


def test_min_score_drops_detections_before_the_mask_head_and_is_restored() -> None:
    spec = _spec(3, SMALL)
    torch.manual_seed(0)
    model = build_model(spec)
    x = torch.rand(1, 3, 64, 64)
    everything = predict_instances(model, x, spec)[0]
    confident = predict_instances(model, x, spec, min_score=0.5)[0]
    assert bool((confident["scores"] >= 0.5).all())
    assert len(confident["scores"]) == int((everything["scores"] >= 0.5).sum())
    assert model.roi_heads.score_thresh == 0.05  # torchvision's default, back in place
