"""Segmentation losses for binary (sigmoid) and multiclass (softmax) heads, 2D and 3D.

Use :func:`build_loss` with a name from :func:`available_losses`, or a sum such as
``"dice+focal"``. Every loss honours ``ignore_index``.
"""

from seg_models.losses._common import Prepared, SegLoss, prepare
from seg_models.losses.compound import ComboLoss, SumLoss
from seg_models.losses.cross_entropy import (
    BalancedCrossEntropyLoss,
    CrossEntropyLoss,
    FocalLoss,
    WeightedCrossEntropyLoss,
)
from seg_models.losses.distance import HausdorffDTLoss, ShapeAwareLoss
from seg_models.losses.factory import (
    LossInfo,
    available_losses,
    build_loss,
    loss_info,
    loss_terms,
)
from seg_models.losses.overlap import (
    DiceLoss,
    ExpLogLoss,
    LogCoshDiceLoss,
    SensitivitySpecificityLoss,
)

__all__ = [
    "BalancedCrossEntropyLoss",
    "ComboLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "ExpLogLoss",
    "FocalLoss",
    "HausdorffDTLoss",
    "LogCoshDiceLoss",
    "LossInfo",
    "Prepared",
    "SegLoss",
    "SensitivitySpecificityLoss",
    "ShapeAwareLoss",
    "SumLoss",
    "WeightedCrossEntropyLoss",
    "available_losses",
    "build_loss",
    "loss_info",
    "loss_terms",
    "prepare",
]
