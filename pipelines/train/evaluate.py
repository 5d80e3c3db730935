"""Score a network on validation cases: semantic Dice/HD95, or DSB-2018, AP@[.5:.95] and F1@.5
for instance routes (U-Net + boundary, Mask R-CNN)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from data_contracts import Case, ModelError, ModelSpec, TrainingPlan
from pipelines.infer.tiled_instances import TileConfig, segment_with_network
from pipelines.instance_targets import three_class_to_instances
from pipelines.kinds import kind_adapter
from pipelines.metrics import instance_scores, semantic_scores
from pipelines.preprocess.array import IGNORE_INDEX, foreground_indices
from pipelines.train.foreground_cut import (
    CutChoice,
    choose_cut,
    region_dice_by_cut,
    tunes_foreground_cut,
)
from pipelines.train.windows import window_logits


@dataclass
class Evaluation:
    """Validation scores of one network.

    Attributes:
        score: the headline score (mean foreground Dice, or mean DSB-2018 for instances).
        metric: its name (``val_dice`` or ``val_dsb2018``).
        per_case: case id → per-class metrics (``{"dice": …, "iou": …, "hd95": …}``) or
            ``{"dsb2018": …}``.
        overlays: ``(case id, image, truth, prediction)`` 2D arrays for the run's PNGs.
        predictions: case id → ``(prediction, truth)`` in label values (semantic) or instance
            ids, in the preprocessed grid; kept only when asked (benchmarks score them).
        foreground_cut: plans that decide foreground first (:mod:`.foreground_cut`): the cut
            the validation cases chose; ``None`` for the others.
    """

    score: float
    metric: str
    per_case: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    overlays: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    foreground_cut: CutChoice | None = None


def sliding_probabilities(
    network: torch.nn.Module, image: torch.Tensor, spec: ModelSpec, roi: Sequence[int]
) -> torch.Tensor:
    """Class probabilities ``(K, *S)`` of one preprocessed image ``(C, *S)`` (gaussian windows;
    a volume under a 2D plan slice by slice)."""
    network.eval()
    with torch.inference_mode():
        logits = window_logits(network, image[None].float(), roi)
    if spec.is_binary:
        foreground = torch.sigmoid(logits[0])
        return torch.cat([1 - foreground, foreground])
    return torch.softmax(logits[0], dim=0)


def _spacing(case: Case, plan: TrainingPlan, image: torch.Tensor) -> tuple[float, ...]:
    """Pixel size of the grid the metrics see (``image``: the preprocessed ``(C, *S)``): the
    plan's target spacing; for a volume under a 2D plan, the in-plane target and the slices'
    own spacing; a kind planned on its native grid, its own pixel size (raster CRS units, 1 for
    images); else voxels."""
    spatial = image.ndim - 1
    target = plan.target_spacing
    if target is not None and len(target) == spatial:
        return target
    if target is not None and isinstance(image, MetaTensor):
        return tuple(float(size) for size in image.pixdim[:spatial])
    adapter = kind_adapter(case.kind)
    if adapter.target_spacing_unit is None:
        return adapter.grid_axes(case.geometry)[1]
    return (1.0,) * spatial


def read_instances(case: Case) -> np.ndarray:
    """The case's instance label map ``(H, W)`` as stored (0 background, 1..N objects)."""
    if case.label is None:
        raise ValueError(f"case {case.case_id} has no label")
    return kind_adapter(case.kind).read_label_map(Path(case.label.path))


def _as_label_values(
    prediction: np.ndarray, truth: np.ndarray, plan: TrainingPlan
) -> tuple[np.ndarray, np.ndarray]:
    """Class indices back to the files' label values; ignored truth pixels get the ignore value
    (or -1 when the plan has none)."""
    values = np.asarray(plan.class_values)
    ignored = truth == IGNORE_INDEX
    fill = plan.ignore_value if plan.ignore_value is not None else -1
    return values[prediction], np.where(ignored, fill, values[np.where(ignored, 0, truth)])


def _slice_for_overlay(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if truth.ndim == 2:
        return image[0], truth, prediction
    depth = int(np.argmax((truth > 0).reshape(-1, truth.shape[-1]).sum(axis=0)))
    return image[0, ..., depth], truth[..., depth], prediction[..., depth]


def evaluate_network(
    network: torch.nn.Module,
    spec: ModelSpec,
    plan: TrainingPlan,
    cases: Sequence[Case],
    items: Iterable[dict[str, torch.Tensor]],
    *,
    max_overlays: int = 4,
    keep_predictions: bool = False,
    processing: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Score ``network`` on preprocessed validation ``items`` (one per case, in ``cases`` order).

    Semantic plans score mean foreground Dice per case (HD95 in physical units reported too);
    instance plans turn the three-class output into instances and score DSB-2018 (AP@[.5:.95]
    and F1@.5 reported too) against the original instance maps. Instance models (Mask R-CNN)
    segment each image by tiles of the plan's patch size, with the score and mask thresholds of
    ``processing``.
    """
    if spec.task == "instance":
        return evaluate_detector(
            network,
            spec,
            cases,
            items,
            TileConfig.for_model(plan, processing or {}),
            max_overlays=max_overlays,
            keep_predictions=keep_predictions,
        )
    instance = plan.label_kind == "instance"
    evaluation = Evaluation(score=float("nan"), metric="val_dsb2018" if instance else "val_dice")
    scores: list[float] = []
    region_dice: list[dict[float, float]] = []
    device = next(network.parameters()).device
    for case, item in zip(cases, items, strict=True):
        image = torch.as_tensor(item["image"]).to(device)
        probabilities = sliding_probabilities(network, image, spec, plan.patch_size).cpu()
        prediction = probabilities.argmax(dim=0).numpy()
        truth = torch.as_tensor(item["label"]).cpu().numpy().reshape(prediction.shape)
        if instance:
            instances = three_class_to_instances(
                probabilities.numpy(), min_seed_size=plan.min_instance_seed
            )
            reference = read_instances(case)
            if reference.shape != instances.shape:
                raise ValueError(
                    f"case {case.case_id}: prediction {instances.shape} vs instance map {reference.shape}"
                )
            metrics = instance_scores(instances, reference)
            score = metrics["dsb2018"]
            evaluation.per_case[case.case_id] = {"instances": metrics}
            if keep_predictions:
                evaluation.predictions[case.case_id] = (instances, reference)
        else:
            foreground = foreground_indices(plan.class_values)
            per_class = semantic_scores(
                prediction,
                truth,
                foreground,
                spacing=_spacing(case, plan, item["image"]),
                ignore_value=IGNORE_INDEX,
                class_names=[plan.class_names[index] for index in foreground],
            )
            evaluation.per_case[case.case_id] = per_class
            score = float(np.mean([metrics["dice"] for metrics in per_class.values()]))
            if tunes_foreground_cut(plan):
                region_dice.append(region_dice_by_cut(probabilities.numpy(), truth))
            if keep_predictions:
                evaluation.predictions[case.case_id] = _as_label_values(prediction, truth, plan)
        scores.append(score)
        if len(evaluation.overlays) < max_overlays:
            evaluation.overlays.append(
                (case.case_id, *_slice_for_overlay(image.cpu().numpy(), truth, prediction))
            )
    evaluation.score = float(np.mean(scores)) if scores else float("nan")
    evaluation.foreground_cut = choose_cut(region_dice)
    return evaluation


def evaluate_detector(
    network: torch.nn.Module,
    spec: ModelSpec,
    cases: Sequence[Case],
    items: Iterable[dict[str, torch.Tensor]],
    tiles: TileConfig,
    *,
    max_overlays: int = 4,
    keep_predictions: bool = False,
) -> Evaluation:
    """Score an instance model (Mask R-CNN) on whole preprocessed images, segmented by tiles.

    Per case: DSB-2018 (the headline ``val_dsb2018``), AP@[.5:.95] ranked by the detection
    scores, and F1@.5, against the stored instance maps.
    """
    evaluation = Evaluation(score=float("nan"), metric="val_dsb2018")
    for case, item in zip(cases, items, strict=True):
        image = torch.as_tensor(item["image"]).as_subclass(torch.Tensor).float()
        found = segment_with_network(network, spec, image, tiles)
        reference = read_instances(case)
        if reference.shape != found.labels.shape:
            raise ModelError(
                f"case {case.case_id}: {found.labels.shape} instance map predicted for a "
                f"{reference.shape} label",
                hint="instance models keep the image grid; check the plan's target spacing",
            )
        metrics = instance_scores(found.labels, reference, found.scores)
        evaluation.per_case[case.case_id] = {"instances": metrics}
        if keep_predictions:
            evaluation.predictions[case.case_id] = (found.labels, reference)
        if len(evaluation.overlays) < max_overlays:
            shown = image[0].cpu().numpy()
            evaluation.overlays.append(
                (case.case_id, shown, _colour_ids(reference), _colour_ids(found.labels))
            )
    scores = [per_class["instances"]["dsb2018"] for per_class in evaluation.per_case.values()]
    evaluation.score = float(np.mean(scores)) if scores else float("nan")
    return evaluation


def _colour_ids(instances: np.ndarray) -> np.ndarray:
    """Instance ids folded onto the overlay palette's 19 colours (0 stays background)."""
    ids = np.asarray(instances, dtype=np.int64)
    return np.where(ids > 0, (ids - 1) % 19 + 1, 0)
