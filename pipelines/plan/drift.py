"""Input drift: what the training files looked like, and how far a new input lies from it.

At training, :func:`drift_reference` samples every labelled case with its kind's
:meth:`~pipelines.kinds.KindAdapter.sample_input` (the header and a cheap sample of non-zero
valid pixels) into a :class:`~data_contracts.DriftReference`, which travels with the model. At
inference, :func:`check_drift` compares each input's sample, taken the same way, with it and
returns a :class:`~data_contracts.DriftFlag` for everything out of range, measured values in
the message:

- **bands**: another channel count;
- **spacing** (volumes, images) / **resolution** (rasters): an axis more than
  :data:`SPACING_FACTOR` times outside the training range;
- **size**: an axis more than :data:`SIZE_FACTOR` times outside the training range;
- **intensity**: a channel's median outside the training 1st–99th percentile band (another
  scale, another modality);
- **crs_units**: a raster in a CRS whose linear unit no training raster had;
- **nodata**: far more nodata than any training file had.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from data_contracts import ChannelRange, DatasetManifest, DriftFlag, DriftReference, InputError

if TYPE_CHECKING:
    from pipelines.kinds.base import InputSample

__all__ = [
    "DRIFT_SAMPLES",
    "SIZE_FACTOR",
    "SPACING_FACTOR",
    "check_drift",
    "drift_reference",
    "nonzero_sample",
    "reference_of",
]

logger = logging.getLogger(__name__)

#: Pixel values sampled per channel and file.
DRIFT_SAMPLES = 20_000
SPACING_FACTOR = 2.0
SIZE_FACTOR = 4.0
#: An input is flagged for nodata above the training files' largest share plus this, and at
#: least half nodata.
_NODATA_MARGIN = 0.25


def nonzero_sample(
    values: NDArray[Any],
    valid: NDArray[np.bool_] | None,
    rng: np.random.Generator,
    count: int,
) -> NDArray[np.float64]:
    """At most ``count`` of the finite, valid, non-zero ``values``, as float64."""
    array = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(array) & (array != 0)
    if valid is not None:
        keep &= valid
    kept: NDArray[np.float64] = array[keep]
    if kept.size > count:
        kept = kept[rng.choice(kept.size, size=count, replace=False)]
    return kept


def drift_reference(
    manifest: DatasetManifest, *, samples_per_case: int = DRIFT_SAMPLES, seed: int = 0
) -> DriftReference:
    """Sample the manifest's labelled cases as inputs are sampled at inference.

    Raises:
        InputError: no labelled case, or a file that cannot be read.
    """
    from pipelines.kinds import kind_adapter

    cases = sorted(manifest.labelled_cases, key=lambda case: case.case_id)
    if not cases:
        raise InputError("has no labelled case to measure", path=manifest.source)
    adapter = kind_adapter(cases[0].kind)
    rng = np.random.default_rng(seed)
    samples = [
        adapter.sample_input(
            [Path(record.path) for record in case.channels], rng=rng, count=samples_per_case
        )
        for case in cases
    ]
    names = list(manifest.channel_names)
    return DriftReference(
        kind=cases[0].kind,
        n_cases=len(samples),
        channels=_channel_ranges(samples, names),
        spacing_min=tuple(float(v) for v in np.min([s.spacing for s in samples], axis=0)),
        spacing_max=tuple(float(v) for v in np.max([s.spacing for s in samples], axis=0)),
        shape_min=tuple(int(v) for v in np.min([s.shape for s in samples], axis=0)),
        shape_max=tuple(int(v) for v in np.max([s.shape for s in samples], axis=0)),
        crs_units=tuple(sorted({s.crs_units for s in samples if s.crs_units})),
        nodata_fraction_max=max(s.nodata_fraction for s in samples),
    )


def _channel_ranges(samples: Sequence[InputSample], names: list[str]) -> tuple[ChannelRange, ...]:
    count = min(len(sample.values) for sample in samples)
    ranges = []
    for channel in range(count):
        pooled = np.concatenate([sample.values[channel] for sample in samples])
        low, middle, high = np.percentile(pooled, [1, 50, 99]) if pooled.size else (0, 0, 0)
        name = names[channel] if channel < len(names) else f"channel_{channel}"
        ranges.append(ChannelRange(name=name, p01=low, p50=middle, p99=high))
    return tuple(ranges)


def reference_of(processing: Mapping[str, Any]) -> DriftReference | None:
    """The drift reference a model carries, or ``None`` (a model from before drift checks,
    or one whose reference does not validate)."""
    stored = processing.get("drift_reference")
    if not stored:
        return None
    try:
        return DriftReference.model_validate(stored)
    except ValidationError as error:
        logger.warning("the model's drift reference is unreadable (%s); drift not checked", error)
        return None


def _axes(values: Sequence[float]) -> str:
    return "×".join(f"{value:.3g}" for value in values)


def _ranges(low: Sequence[float], high: Sequence[float]) -> str:
    return " × ".join(
        f"{a:.3g}" if a == b else f"{a:.3g}–{b:.3g}" for a, b in zip(low, high, strict=True)
    )


def _outside(value: float, low: float, high: float, factor: float) -> bool:
    return value > high * factor or value < low / factor


def check_drift(
    sample: InputSample,
    reference: DriftReference,
    *,
    spacing_check: str = "spacing",
    unit: str = "",
) -> list[DriftFlag]:
    """What of ``sample`` lies outside ``reference`` (see the module docstring).

    Args:
        sample: the input's header and pixel sample (its kind's ``sample_input``).
        reference: the model's training reference.
        spacing_check: the name of the spacing check (``resolution`` for rasters).
        unit: the spacing's unit for messages (``mm``).
    """
    flags = _grid_flags(sample, reference, spacing_check, unit)
    if len(sample.values) != len(reference.channels):
        flags.append(
            DriftFlag(
                check="bands",
                message=f"{len(sample.values)} channel(s); trained on {len(reference.channels)}",
            )
        )
    for values, expected in zip(sample.values, reference.channels, strict=False):
        if values.size == 0:
            continue
        median = float(np.median(values))
        if not expected.p01 <= median <= expected.p99:
            flags.append(
                DriftFlag(
                    check="intensity",
                    message=f"{expected.name} median {median:.4g} outside the training "
                    f"1st–99th percentile band {expected.p01:.4g}–{expected.p99:.4g}",
                )
            )
    return flags + _raster_flags(sample, reference)


def _grid_flags(
    sample: InputSample, reference: DriftReference, spacing_check: str, unit: str
) -> list[DriftFlag]:
    flags = []
    low, high = reference.spacing_min, reference.spacing_max
    if len(sample.spacing) == len(low) and any(
        _outside(value, a, b, SPACING_FACTOR)
        for value, a, b in zip(sample.spacing, low, high, strict=True)
    ):
        suffix = f" {unit}" if unit else ""
        flags.append(
            DriftFlag(
                check=spacing_check,
                message=f"{_axes(sample.spacing)}{suffix}, more than {SPACING_FACTOR:g}× "
                f"outside the training range {_ranges(low, high)}{suffix}",
            )
        )
    small, large = reference.shape_min, reference.shape_max
    if len(sample.shape) == len(small) and any(
        _outside(value, a, b, SIZE_FACTOR)
        for value, a, b in zip(sample.shape, small, large, strict=True)
    ):
        flags.append(
            DriftFlag(
                check="size",
                message=f"{_axes(sample.shape)} px, more than {SIZE_FACTOR:g}× outside the "
                f"training range {_ranges(small, large)} px",
            )
        )
    return flags


def _raster_flags(sample: InputSample, reference: DriftReference) -> list[DriftFlag]:
    flags = []
    if sample.crs_units and reference.crs_units and sample.crs_units not in reference.crs_units:
        flags.append(
            DriftFlag(
                check="crs_units",
                message=f"CRS in {sample.crs_units}; trained on {', '.join(reference.crs_units)}",
            )
        )
    limit = max(0.5, reference.nodata_fraction_max + _NODATA_MARGIN)
    if sample.nodata_fraction > limit:
        flags.append(
            DriftFlag(
                check="nodata",
                message=f"{sample.nodata_fraction:.0%} of pixels are nodata; training files "
                f"had at most {reference.nodata_fraction_max:.0%}",
            )
        )
    return flags
