"""Validation on a region of each labelled case, when a dataset has too few to hold one out.

A single scene or volume (one SpaceNet tile, one land-cover raster, one annotated scan) leaves
no case to validate on, so there would be no best checkpoint and no score to register; with a
handful of cases (three BraTS patients), holding one out whole takes a third or more of what
there is to learn from. A slab at one end of every case is held out instead: ``fraction`` of
one axis, at the start or the end of it, whichever of those slabs has the class mix closest to
the whole case's (after orientation and resampling). The fixed end of one axis can miss what
is to be learned: the top of the S axis of a brain scan holds little tumour, and a validation
score on it chose checkpoints almost at random (``BENCHMARKS.md`` A4). Training reads each
whole case with its held-out labels set to :data:`~pipelines.preprocess.array.IGNORE_INDEX`
(no loss there); validation reads the held-out parts with half a patch of context beside them
(labels ignored there), so that its windows see what inference sees: a 90-pixel strip alone,
padded with zeros to a 256-pixel window, was predicted empty by a network that finds its
buildings within the whole scene (``BENCHMARKS.md`` A2). The slab is chosen from the label
alone, so training and validation choose the same one. The image of a held-out part is seen in
training context, its labels never.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from monai.transforms.transform import MapTransform

from pipelines.preprocess.array import IGNORE_INDEX
from pipelines.preprocess.transforms import IMAGE_KEY, LABEL_KEY

__all__ = ["HeldOutRegion", "HoldOutRegiond", "Slab"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOutRegion:
    """A slab at one end of each of a few cases, held out for validation.

    Attributes:
        case_ids: the cases, each validated on one slab (:meth:`slab`) and trained on the rest.
        fraction: share of the slab's axis held out.
        spatial_dims: 2 or 3.
    """

    case_ids: tuple[str, ...]
    fraction: float
    spatial_dims: int

    @property
    def description(self) -> str:
        """E.g. ``"a 20% end slab (the most typical) of sn4_atl_nw"`` or ``"… of each of
        pat0003, pat0005"``."""
        cases = ", ".join(self.case_ids)
        of = "of" if len(self.case_ids) == 1 else "of each of"
        return f"a {self.fraction:.0%} end slab (the most typical) {of} {cases}"

    def start(self, length: int) -> int:
        """First index of a slab at the end of an axis of ``length`` (one index each side)."""
        held = max(1, round(length * self.fraction))
        return max(1, min(length - 1, length - held))

    def slab(self, label: torch.Tensor) -> Slab:
        """The held-out slab of a channel-first ``label``: of the slabs at either end of each
        spatial axis, the one whose class shares are closest (total variation) to the whole
        label's; the end of the rows (2D) or of the S axis (3D) wins ties."""
        spatial = label.shape[1:]
        candidates = []
        usual = 1 if label.ndim == 3 else label.ndim - 1  # rows or S: the tie-breaker
        for axis in [usual, *(other for other in range(1, label.ndim) if other != usual)]:
            start = self.start(spatial[axis - 1])
            candidates += [
                Slab(axis, start, spatial[axis - 1]),
                Slab(axis, 0, spatial[axis - 1] - start),
            ]
        classes = int(label.max()) + 1
        if classes <= 0:  # nothing but ignored labels
            return candidates[0]
        whole = _shares(label, classes)
        distances = [
            float((_shares(slab.narrow(label), classes) - whole).abs().sum()) for slab in candidates
        ]
        return candidates[distances.index(min(distances))]


@dataclass(frozen=True)
class Slab:
    """``start:stop`` along ``axis`` of a channel-first array."""

    axis: int
    start: int
    stop: int

    def narrow(self, array: torch.Tensor) -> torch.Tensor:
        """The slab of ``array`` (a view)."""
        return array.narrow(self.axis, self.start, self.stop - self.start)

    def widened(self, context: int, length: int) -> Slab:
        """The slab with up to ``context`` more indices on its inner side (an axis of
        ``length``)."""
        if self.start == 0:
            return Slab(self.axis, 0, min(length, self.stop + context))
        return Slab(self.axis, max(0, self.start - context), self.stop)

    def describe(self, ndim: int) -> str:
        """E.g. ``"the last 20 rows"`` or ``"the first 12 slices along A"`` (``ndim``: the
        array's, channels included)."""
        end = "first" if self.start == 0 else "last"
        what = (
            ("rows", "columns")[self.axis - 1]
            if ndim == 3
            else f"slices along {'RAS'[self.axis - 1]}"
        )
        return f"the {end} {self.stop - self.start} {what}"


def _shares(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Share of each class ``0..classes-1`` among ``labels`` (``IGNORE_INDEX`` left out)."""
    valid = labels[labels >= 0].long()
    counts = torch.bincount(valid, minlength=classes).double()
    return counts / counts.sum().clamp(min=1.0)


class HoldOutRegiond(MapTransform):
    """Ignore the held-out labels (training) or keep only the held-out part (validation).

    Args:
        region: what is held out.
        mode: ``"ignore"`` sets the label's held-out slab to ``IGNORE_INDEX``; ``"crop"`` keeps
            the held-out slab of the image and the label, with ``context`` more indices of the
            case on its inner side whose labels are ``IGNORE_INDEX``.
        context: indices of context a validation crop keeps beside its slab (half a patch).
    """

    def __init__(
        self, region: HeldOutRegion, mode: Literal["ignore", "crop"], context: int = 0
    ) -> None:
        super().__init__([IMAGE_KEY, LABEL_KEY], allow_missing_keys=True)
        self.region = region
        self.mode = mode
        self.context = context

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        item = dict(data)
        if item.get("case_id") not in self.region.case_ids or LABEL_KEY not in item:
            return item
        label = torch.as_tensor(item[LABEL_KEY])
        slab = self.region.slab(label)
        if self.mode == "ignore":
            label = label.clone()
            slab.narrow(label).fill_(IGNORE_INDEX)
            item[LABEL_KEY] = label
            return item
        crop = slab.widened(self.context, label.shape[slab.axis])
        logger.info(
            "%s: validating on %s (%d more as context)",
            item["case_id"],
            slab.describe(label.ndim),
            (crop.stop - crop.start) - (slab.stop - slab.start),
        )
        for key in (IMAGE_KEY, LABEL_KEY):
            if key in item:
                item[key] = crop.narrow(torch.as_tensor(item[key])).clone()
        context = Slab(slab.axis, slab.stop - crop.start, crop.stop - crop.start)
        if slab.start != 0:
            context = Slab(slab.axis, 0, slab.start - crop.start)
        context.narrow(item[LABEL_KEY]).fill_(IGNORE_INDEX)
        return item
