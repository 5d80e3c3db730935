"""Boundary-based losses: Hausdorff distance-transform and shape-aware.

Both compute distance maps with SciPy on the CPU (no gradient flows through them). Ignored
pixels enter these maps as background in both prediction and target, whatever the network
predicts there, and every mean divides by the number of valid pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.losses.hausdorff_loss import HausdorffDTLoss as MonaiHausdorffDTLoss
from scipy import ndimage

from seg_models.losses._common import Prepared, SegLoss, masked_mean, per_pixel_ce

__all__ = ["HausdorffDTLoss", "ShapeAwareLoss"]


class HausdorffDTLoss(SegLoss):
    """Distance-transform Hausdorff loss (Karimi & Salcudean, IEEE TMI 2020), via MONAI.

    ``mean((p − g)² · (d_p^α + d_g^α))`` where ``d`` are the distance transforms of the
    thresholded prediction and of the target. 2D and 3D only (MONAI's limit).

    Args:
        alpha: exponent of the distances (2 in the paper).
        include_background: in multiclass mode, include channel 0.
        ignore_index: target value to ignore.
    """

    def __init__(
        self,
        *,
        alpha: float = 2.0,
        include_background: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(ignore_index=ignore_index)
        self.alpha = alpha
        self.include_background = include_background

    def compute(self, p: Prepared) -> torch.Tensor:
        """Mean over images and classes of the valid-pixel mean."""
        hd = MonaiHausdorffDTLoss(
            alpha=self.alpha,
            include_background=self.include_background or p.binary,
            reduction="none",
        )
        per_image_class: torch.Tensor = hd(p.probs, p.onehot)  # means over pixels, (B, C', 1, …)
        spatial = [*range(2, p.valid.ndim)]
        total = float(np.prod(p.valid.shape[2:]))
        rescale = total / p.valid.sum(spatial, keepdim=True).clamp(min=1.0)
        return (per_image_class * rescale).mean()


class ShapeAwareLoss(SegLoss):
    """Cross-entropy scaled by how far the predicted contour lies from the true one.

    ``L = mean_i CE_i + mean_i E_b · CE_i``, where ``E_b`` is the mean Euclidean distance from
    the predicted contour points of image ``b`` to the ground-truth contour, averaged over the
    non-background classes (0 when either contour is empty). Shape-aware loss of Hayder, He &
    Salzmann, "Boundary-aware instance segmentation" (CVPR 2017), in the formulation of Jadon,
    "A survey of loss functions for semantic segmentation", CIBCB 2020.

    Args:
        ignore_index: target value to ignore.
    """

    def compute(self, p: Prepared) -> torch.Tensor:
        """Contour-distance-weighted mean cross-entropy over valid pixels."""
        ce = per_pixel_ce(p)
        distance = contour_distance(p).to(ce).view(-1, *([1] * (ce.ndim - 1)))
        return masked_mean(ce, p.valid) + masked_mean(distance * ce, p.valid)


@torch.no_grad()
def contour_distance(p: Prepared) -> torch.Tensor:
    """Mean distance of predicted contour points to the true contour, per image ``(B,)``."""
    if p.binary:
        hard = (p.probs > 0.5).squeeze(1).long()
        classes = [1]
    else:
        hard = p.probs.argmax(dim=1)
        classes = list(range(1, p.probs.shape[1]))
    valid = p.valid.squeeze(1).bool()
    pred = torch.where(valid, hard, 0).cpu().numpy()
    true = p.index.squeeze(1).cpu().numpy()
    valid_np = valid.cpu().numpy()
    out = np.zeros(len(pred))
    for b in range(len(pred)):
        dists = [_mean_contour_distance(pred[b] == c, true[b] == c, valid_np[b]) for c in classes]
        out[b] = float(np.mean(dists))
    return torch.from_numpy(out)


def _contour(mask: np.ndarray) -> np.ndarray:
    eroded: np.ndarray = ndimage.binary_erosion(mask, border_value=0)
    contour: np.ndarray = mask & ~eroded
    return contour


def _mean_contour_distance(pred: np.ndarray, true: np.ndarray, valid: np.ndarray) -> float:
    pred_contour = _contour(pred) & valid
    true_contour = _contour(true)
    if not pred_contour.any() or not true_contour.any():
        return 0.0
    to_true = ndimage.distance_transform_edt(~true_contour)
    return float(to_true[pred_contour].mean())
