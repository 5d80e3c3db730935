"""Validation on a region of each labelled case, when a dataset has too few to hold one out.

A single scene or volume (one SpaceNet tile, one land-cover raster, one annotated scan) leaves
no case to validate on, so there would be no best checkpoint and no score to register; with a
handful of cases (three BraTS patients), holding one out whole takes a third or more of what
there is to learn from. The end of every case along one axis is held out instead: the last
``fraction`` of the rows (2D) or of the S axis (3D volumes, after orientation and resampling).
Training reads each whole case with its held-out labels set to
:data:`~pipelines.preprocess.array.IGNORE_INDEX` (no loss there); validation reads only the
held-out parts. The image of a held-out part is seen in training context, its labels never.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from monai.transforms.transform import MapTransform

from pipelines.preprocess.array import IGNORE_INDEX
from pipelines.preprocess.transforms import IMAGE_KEY, LABEL_KEY

__all__ = ["HeldOutRegion", "HoldOutRegiond"]


@dataclass(frozen=True)
class HeldOutRegion:
    """The end of each of a few cases held out for validation.

    Attributes:
        case_ids: the cases, each trained on its start and validated on its end.
        fraction: share of the axis held out, at its end.
        spatial_dims: 2 (rows held out) or 3 (the S axis).
    """

    case_ids: tuple[str, ...]
    fraction: float
    spatial_dims: int

    @property
    def axis(self) -> int:
        """The held-out axis of a channel-first array: rows (2D) or S (3D)."""
        return -2 if self.spatial_dims == 2 else -1

    @property
    def description(self) -> str:
        """E.g. ``"the last 20 % of the rows of sn4_atl_nw"`` or ``"… of each of pat0003,
        pat0005"``."""
        what = "rows" if self.spatial_dims == 2 else "slices (S axis)"
        cases = ", ".join(self.case_ids)
        of = "of" if len(self.case_ids) == 1 else "of each of"
        return f"the last {self.fraction:.0%} of the {what} {of} {cases}"

    def start(self, length: int) -> int:
        """First held-out index along an axis of ``length`` (at least one index each side)."""
        held = max(1, round(length * self.fraction))
        return max(1, min(length - 1, length - held))


class HoldOutRegiond(MapTransform):
    """Ignore the held-out labels (training) or keep only the held-out part (validation).

    Args:
        region: what is held out.
        mode: ``"ignore"`` sets the label's held-out part to ``IGNORE_INDEX``; ``"crop"`` keeps
            only the held-out part of the image and the label.
    """

    def __init__(self, region: HeldOutRegion, mode: Literal["ignore", "crop"]) -> None:
        super().__init__([IMAGE_KEY, LABEL_KEY], allow_missing_keys=True)
        self.region = region
        self.mode = mode

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        item = dict(data)
        if item.get("case_id") not in self.region.case_ids or LABEL_KEY not in item:
            return item
        axis = self.region.axis
        start = self.region.start(item[LABEL_KEY].shape[axis])
        if self.mode == "ignore":
            label = torch.as_tensor(item[LABEL_KEY]).clone()
            label.narrow(axis % label.ndim, start, label.shape[axis] - start).fill_(IGNORE_INDEX)
            item[LABEL_KEY] = label
            return item
        for key in (IMAGE_KEY, LABEL_KEY):
            array = item[key]
            item[key] = array.narrow(axis % array.ndim, start, array.shape[axis] - start).clone()
        return item
