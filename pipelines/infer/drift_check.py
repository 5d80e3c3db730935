"""The drift check of one case before any compute: its input against the model's training data.

:func:`drift_quality` samples the case (its kind's
:meth:`~pipelines.kinds.KindAdapter.sample_input`), compares it with the reference the model
carries (:func:`pipelines.plan.drift.check_drift`) and applies ``--on-drift``: ``warn`` returns
the flags, ``skip`` and ``fail`` raise :class:`~data_contracts.InputDriftError`.
"""

from __future__ import annotations

import zlib

import numpy as np

from data_contracts import (
    CorruptFileError,
    FileQuality,
    InferenceOptions,
    InputDriftError,
    InputError,
)
from pipelines.infer.inputs import InferenceInput
from pipelines.infer.loaded_model import LoadedModel
from pipelines.kinds import KindAdapter, kind_adapter
from pipelines.kinds.base import InputSample
from pipelines.plan.drift import DRIFT_SAMPLES, check_drift, reference_of

__all__ = ["drift_quality"]


def drift_quality(
    case: InferenceInput, model: LoadedModel, options: InferenceOptions
) -> FileQuality:
    """The case's drift record: ``ok``, ``flagged`` with its flags, or ``not available`` for
    a model without a training reference.

    Raises:
        InputDriftError: flagged, and ``options.on_drift`` is ``skip`` or ``fail``.
        InputError: a file cannot be read.
    """
    reference = reference_of(model.processing)
    if reference is None:
        return FileQuality(drift_status="not available")
    adapter = kind_adapter(model.plan.kind)
    sample = _sample(case, adapter)
    flags = check_drift(
        sample,
        reference,
        spacing_check="resolution" if adapter.georeferenced else "spacing",
        unit="mm" if adapter.target_spacing_unit else (sample.crs_units or ""),
    )
    if not flags:
        return FileQuality(drift_status="ok")
    if options.on_drift != "warn":
        text = "; ".join(f"{flag.check}: {flag.message}" for flag in flags)
        raise InputDriftError(
            f"lies outside the model's training data ({text})",
            path=case.channels[0],
            checks=tuple((flag.check, flag.message) for flag in flags),
            policy=options.on_drift,
        )
    return FileQuality(drift_status="flagged", drift=tuple(flags))


#: What readers raise on damaged pixel data (a truncated ``.nii.gz`` has a good header).
_READ_ERRORS = (OSError, ValueError, EOFError, RuntimeError, zlib.error)


def _sample(case: InferenceInput, adapter: KindAdapter) -> InputSample:
    """The case's drift sample; a reader's own error becomes the damaged file's segflow error.

    Raises:
        InputError: a file cannot be read (the damaged one named).
    """
    try:
        return adapter.sample_input(
            case.channels, rng=np.random.default_rng(0), count=DRIFT_SAMPLES
        )
    except _READ_ERRORS as error:
        if isinstance(error, InputError):
            raise
        for path in case.channels:
            adapter.read_fully(path)  # raises the damaged file's own error
        raise CorruptFileError(
            f"pixels cannot be sampled ({type(error).__name__}: {error})", path=case.channels[0]
        ) from error
