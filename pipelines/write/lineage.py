"""Lineage sidecars: which source, model and settings produced an output.

Each output case gets ``<case>.lineage.json`` beside it: the source file and its SHA-256, the
model URI/name/version, the outputs written, the settings used, segflow's version and a UTC
timestamp. Keys are sorted and values JSON-safe, so two runs with the same inputs differ only in
the timestamp.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import importlib.metadata
import json
import math
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from pydantic import BaseModel

from data_contracts import UsageError
from pipelines.files import write_text_atomic
from pipelines.io.formats import strip_image_suffix

__all__ = ["LINEAGE_SUFFIX", "lineage_path", "lineage_record", "write_lineage"]

LINEAGE_SUFFIX = ".lineage.json"


def lineage_path(output: str | Path) -> Path:
    """The sidecar path of an output: ``case.nii.gz`` → ``case.lineage.json`` beside it."""
    output = Path(output)
    return output.with_name(f"{strip_image_suffix(output)}{LINEAGE_SUFFIX}")


def lineage_record(
    *,
    source: Path,
    source_sha256: str,
    model_uri: str,
    model_name: str | None,
    model_version: str | None,
    outputs: Mapping[str, Path],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The lineage of one output case, with segflow's version and a UTC timestamp.

    Args:
        source: the input file (the first channel for multi-channel cases).
        source_sha256: its hex SHA-256 (:func:`pipelines.files.sha256_file`).
        model_uri: the MLflow URI the model was loaded from (``models:/name@alias``, ``runs:/``).
        model_name: the registered model name, when there is one.
        model_version: the registered model version, when there is one.
        outputs: what was written, by kind (``{"mask": ..., "probabilities": ...}``).
        settings: inference and post-processing settings (contracts are dumped as JSON).

    Returns:
        A JSON-safe dict ready for :func:`write_lineage`.
    """
    record = {
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": {"name": model_name, "uri": model_uri, "version": model_version},
        "outputs": dict(outputs),
        "segflow_version": _segflow_version(),
        "settings": dict(settings),
        "source": {"path": source, "sha256": source_sha256},
    }
    return dict(_json_safe(record))


def write_lineage(destination: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as indented JSON with sorted keys, atomically.

    Args:
        destination: the sidecar path (see :func:`lineage_path`).
        record: the lineage; Paths, numpy values, enums, dates, dataclasses and pydantic models
            are converted; NaN and infinities become the strings ``"NaN"``/``"Infinity"`` as in
            the contracts.

    Returns:
        ``destination`` as a Path.

    Raises:
        UsageError: a value has no JSON form.
        OutputError: the file cannot be written.
    """
    text = json.dumps(_json_safe(record), indent=2, sort_keys=True, allow_nan=False)
    return write_text_atomic(destination, text + "\n")


def _segflow_version() -> str:
    try:
        return importlib.metadata.version("segflow")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _json_safe(value: Any) -> Any:
    """``value`` with every part converted to a JSON type (dict keys to strings)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_safe(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(_json_safe(key)): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((_json_safe(item) for item in value), key=repr)
    if isinstance(value, np.ndarray | np.generic):
        return _json_safe(value.tolist())
    if isinstance(value, enum.Enum):
        return _json_safe(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, str | int | float):
        return value
    raise UsageError(f"lineage value {value!r} of type {type(value).__name__} has no JSON form")
