"""How far to trust one segmented file: its confidence and the ways its input drifted.

:class:`FileQuality` is recorded per file in the resume ledger, the lineage sidecar (or GeoTIFF
tag), the batch report and the QA report. It is computed from the probabilities the model
produced anyway (no second pass) and from a comparison of the input with the fingerprint of
the model's training data (:class:`DriftFlag`).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from data_contracts._base import Contract

__all__ = [
    "LOW_PROBABILITY",
    "ChannelRange",
    "DriftFlag",
    "DriftPolicy",
    "DriftReference",
    "DriftStatus",
    "FileQuality",
    "confidence_score",
]

#: A foreground pixel (or a detection) whose top probability (score) is below this is "low
#: confidence".
LOW_PROBABILITY = 0.6

DriftPolicy = Literal["warn", "skip", "fail"]
"""What ``segflow segment --on-drift`` does with a drifted file: segment it and flag it, skip
it, or fail it."""

DriftStatus = Literal["ok", "flagged", "not available", "off"]
"""``ok``: checked, nothing out of range; ``flagged``: at least one :class:`DriftFlag`; ``not
available``: the model carries no training fingerprint to compare with; ``off``: not checked."""


class DriftFlag(Contract):
    """One way an input lies outside the model's training data.

    Attributes:
        check: what was compared (``spacing``, ``intensity``, ``resolution``, ``bands``,
            ``crs_units``, ``size``, ``nodata``).
        message: the measured value and the training range, in words.
    """

    check: str
    message: str


class ChannelRange(Contract):
    """Intensities of one channel over the training files' non-zero valid pixels.

    Attributes:
        name: the channel's name.
        p01: 1st percentile.
        p50: median.
        p99: 99th percentile.
    """

    name: str
    p01: float
    p50: float
    p99: float


class DriftReference(Contract):
    """What the training files looked like, measured as each input is measured before it is
    segmented (its header and a sample of its pixels), so that the two compare directly.

    Travels with the model (``processing["drift_reference"]``). Shapes and spacings are in the
    axis order the network sees (volumes: RAS; 2D: H, W).

    Attributes:
        kind: the data kind.
        n_cases: training files measured.
        channels: intensity range per input channel.
        spacing_min: smallest spacing per axis (mm; CRS units for rasters; 1 for images).
        spacing_max: largest spacing per axis.
        shape_min: smallest size per axis (voxels/pixels).
        shape_max: largest size per axis.
        crs_units: linear units of the training rasters' CRSs (``metre``, ``degree``…).
        nodata_fraction_max: largest share of nodata pixels in a training file.
    """

    kind: str
    n_cases: int = Field(ge=1)
    channels: tuple[ChannelRange, ...]
    spacing_min: tuple[float, ...]
    spacing_max: tuple[float, ...]
    shape_min: tuple[int, ...]
    shape_max: tuple[int, ...]
    crs_units: tuple[str, ...] = ()
    nodata_fraction_max: float = Field(default=0.0, ge=0, le=1)


class FileQuality(Contract):
    """The quality record of one segmented file.

    Attributes:
        confidence: one score in [0, 1] (1: every pixel certain), see
            :func:`confidence_score`; ``None`` when the file was not segmented.
        mean_entropy: mean normalised entropy of the class probabilities over valid pixels,
            in [0, 1]; ``None`` when the model gives no probabilities (Mask R-CNN).
        low_confidence_fraction: share of foreground pixels/voxels whose top class probability
            is below :data:`LOW_PROBABILITY` (0 when there is no foreground).
        low_score_share: instance models with detection scores: share of detections scored
            below :data:`LOW_PROBABILITY`.
        foreground_fraction: share of valid pixels labelled foreground.
        missing_channel_fraction: share of the segmented pixels predicted with at least one
            input channel missing (a raster band's own nodata, under a plan whose
            ``missing_channels`` is ``predict``); ``None`` when not measured.
        drift_status: whether the input was compared with the training fingerprint, and how
            it came out (see :data:`DriftStatus`).
        drift: what lies outside the training data (empty when ``drift_status`` is ``ok``).
    """

    confidence: float | None = Field(default=None, ge=0, le=1)
    mean_entropy: float | None = Field(default=None, ge=0, le=1)
    low_confidence_fraction: float | None = Field(default=None, ge=0, le=1)
    low_score_share: float | None = Field(default=None, ge=0, le=1)
    foreground_fraction: float | None = Field(default=None, ge=0, le=1)
    missing_channel_fraction: float | None = Field(default=None, ge=0, le=1)
    drift_status: DriftStatus = "off"
    drift: tuple[DriftFlag, ...] = ()

    @property
    def drifted(self) -> bool:
        """At least one drift flag."""
        return bool(self.drift)

    def drift_text(self) -> str:
        """The drift flags joined for a table cell (``""`` when none)."""
        return "; ".join(f"{flag.check}: {flag.message}" for flag in self.drift)


def confidence_score(
    mean_entropy: float | None,
    low_confidence_fraction: float | None,
    low_score_share: float | None = None,
) -> float:
    """One confidence in [0, 1]: the product of ``1 − x`` over the measures given.

    Each measure is a share of doubt in [0, 1]; the product falls as soon as any of them
    rises, and is 1 only when every measure is 0. No measure given: 1.
    """
    score = 1.0
    for measure in (mean_entropy, low_confidence_fraction, low_score_share):
        if measure is not None and math.isfinite(measure):
            score *= 1.0 - min(max(measure, 0.0), 1.0)
    return round(score, 6)
