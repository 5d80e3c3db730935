"""Deterministic "oracle" models, fitted in closed form to the synthetic datasets.

Synthetic datasets give every class its own intensity in every channel, so after the plan's
normalisation a nearest-centroid classifier separates them. It is linear in the pixel values
(``logit_k = 2 μ_k·x − |μ_k|²``), i.e. a 1×1 convolution: pointwise, so any misplaced pixel in
inference (a flipped axis, a wrong inverse resampling, a seam between windows) shows up as
disagreement with the source label. The tests and the benchmarks segment with these models
when they need a model without training one.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

import seg_models
from data_contracts import DatasetManifest, ModelError, ModelSpec, TrainingPlan
from pipelines.infer.loaded_model import LoadedModel
from pipelines.plan import compute_fingerprint, make_plan
from pipelines.plan.drift import drift_reference
from pipelines.preprocess.datasets import case_to_item
from pipelines.preprocess.transforms import plan_transforms

__all__ = ["centroid_network", "class_centroids", "oracle_model"]


def class_centroids(manifest: DatasetManifest, plan: TrainingPlan) -> torch.Tensor:
    """Mean normalised intensity ``(K, C)`` of each class over the manifest's labelled cases."""
    transform = plan_transforms(plan, train=False)
    sums = torch.zeros(len(plan.class_values), plan.in_channels, dtype=torch.float64)
    counts = torch.zeros(len(plan.class_values), dtype=torch.float64)
    for case in manifest.labelled_cases:
        item = transform(case_to_item(case))
        image = torch.as_tensor(item["image"]).double().reshape(plan.in_channels, -1)
        label = torch.as_tensor(item["label"]).long().reshape(-1)
        for k in range(len(plan.class_values)):
            selected = label == k
            sums[k] += image[:, selected].sum(dim=1)
            counts[k] += selected.sum()
    return (sums / counts.clamp(min=1)[:, None]).float()


def centroid_network(centroids: torch.Tensor, spec: ModelSpec) -> nn.Module:
    """segflow's ``pixel_linear`` (a 1×1 convolution) scoring each class by its (negated,
    shifted) squared distance to the class centroid.

    Raises:
        ModelError: ``spec`` does not build a 1×1 convolution with a bias.
    """
    conv = seg_models.build_model(spec)
    if not isinstance(conv, nn.Conv2d | nn.Conv3d) or conv.bias is None:
        raise ModelError("pixel_linear is expected to be a 1×1 convolution with a bias")
    with torch.no_grad():
        conv.weight.copy_((2 * centroids).reshape(conv.weight.shape))
        conv.bias.copy_(-(centroids**2).sum(dim=1))
    return conv.eval()


def oracle_model(
    manifest: DatasetManifest,
    *,
    spatial_dims: Literal[2, 3] | None = None,
    patch: tuple[int, ...] | None = None,
) -> LoadedModel:
    """A :class:`LoadedModel` (plan from the manifest, centroid network) for ``manifest``.

    Args:
        manifest: an ingested synthetic dataset with labels.
        spatial_dims: force a 2D or 3D plan (default: the planner's choice).
        patch: the plan's patch size instead of the planned one.
    """
    plan = make_plan(compute_fingerprint(manifest), manifest, spatial_dims=spatial_dims)
    reference = drift_reference(manifest)
    if patch is not None:
        plan = plan.model_copy(update={"patch_size": patch})
    spec = ModelSpec(
        name="pixel_linear",
        in_channels=plan.in_channels,
        num_classes=len(plan.class_values),
        spatial_dims=plan.spatial_dims,
    )
    network = centroid_network(class_centroids(manifest, plan), spec)
    return LoadedModel(
        network=network,
        spec=spec,
        plan=plan,
        class_names=plan.class_names,
        channel_names=tuple(f"channel_{i}" for i in range(plan.in_channels)),
        processing={"drift_reference": reference.model_dump(mode="json")},
        uri="oracle",
    )
