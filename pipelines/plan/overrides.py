"""Plan overrides (flags and YAML), plan files (JSON) and the printable plan table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from data_contracts import ConfigError, MissingFileError, PostprocessConfig, TrainingPlan
from pipelines.files import write_text_atomic
from pipelines.kinds import kind_adapter

__all__ = [
    "apply_overrides",
    "load_overrides_yaml",
    "load_plan",
    "parse_override_flags",
    "plan_table",
    "save_plan",
]

_FIELDS = sorted(set(TrainingPlan.model_fields) - {"overrides"})
_MISSING_CHANNELS_TEXT = {
    "nodata": "nodata where any channel is nodata",
    "predict": "predicted from the other channels (nodata only where every channel is)",
}


def apply_overrides(plan: TrainingPlan, overrides: Mapping[str, Any]) -> TrainingPlan:
    """A copy of ``plan`` with some fields set by the user, validated like any plan.

    Args:
        plan: the derived plan.
        overrides: plan field name → new value (JSON-like values: lists for tuples, dicts for
            normalisation entries).

    Returns:
        The new plan; its ``overrides`` lists every field ever overridden, sorted.

    Raises:
        ConfigError: an unknown field, or a value the plan rejects (the message names it).
    """
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown plan field {', '.join(map(repr, unknown))}",
            hint=f"plan fields are {', '.join(_FIELDS)}",
        )
    if not overrides:
        return plan
    data = plan.model_dump() | dict(overrides)
    data["overrides"] = tuple(sorted(set(plan.overrides) | set(overrides)))
    try:
        return TrainingPlan.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ", ".join(sorted(overrides))
        raise ConfigError(
            f"invalid value for plan field {field!r}: {first['msg']}",
            hint="check the overridden plan values",
        ) from error


def parse_override_flags(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``field=value`` flags (e.g. ``--plan patch_size=96,96,32``) into overrides.

    Values are read as YAML scalars or flow sequences (``2``, ``null``, ``[1, 2]``,
    ``{scheme: none}``); a plain value with commas becomes a list (``96,96,32``).

    Raises:
        ConfigError: a flag without ``=`` or with an unparsable value.
    """
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"plan override {pair!r} is not field=value", hint="e.g. batch_size=4"
            )
        try:
            value = yaml.safe_load(raw)
            if isinstance(value, str) and "," in value:
                value = [yaml.safe_load(part) for part in value.split(",")]
        except yaml.YAMLError as error:
            raise ConfigError(f"plan override {pair!r} has an unreadable value: {error}") from error
        parsed[key.strip()] = value
    return parsed


def load_overrides_yaml(path: str | Path) -> dict[str, Any]:
    """The ``plan:`` mapping of a YAML config file (``{}`` when the file has none).

    Raises:
        ConfigError: the file is missing, is not YAML, or ``plan`` is not a mapping.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot be read ({error.strerror})", path=path) from error
    except yaml.YAMLError as error:
        raise ConfigError(f"is not valid YAML ({error})", path=path) from error
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError("must hold a mapping with a `plan:` section", path=path)
    section = document.get("plan", {})
    if not isinstance(section, dict):
        raise ConfigError(
            "`plan:` must be a mapping of plan fields", path=path, hint="e.g. plan: {batch_size: 4}"
        )
    return {str(key): value for key, value in section.items()}


def save_plan(plan: TrainingPlan, path: str | Path) -> Path:
    """Write the plan as indented JSON, atomically."""
    return write_text_atomic(path, plan.model_dump_json(indent=2) + "\n")


def load_plan(path: str | Path) -> TrainingPlan:
    """Read a plan JSON file.

    Raises:
        MissingFileError: the file does not exist.
        ConfigError: it is not a valid plan.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise MissingFileError("does not exist", path=path) from error
    try:
        return TrainingPlan.model_validate_json(text)
    except ValidationError as error:
        raise ConfigError(f"is not a valid training plan ({error})", path=path) from error


def _join(values: Sequence[object], unit: str = "") -> str:
    return " × ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + unit


def _norm_text(
    scheme: str, mean: float, std: float, lower: float | None, upper: float | None
) -> str:
    if scheme == "ct":
        return f"ct: clip [{lower:g}, {upper:g}], mean {mean:g}, std {std:g}"
    if scheme == "percentile":
        return f"percentile: [{lower:g}, {upper:g}] → [0, 1]"
    if scheme == "zscore":
        return f"zscore: mean {mean:g}, std {std:g}"
    if scheme == "zscore_nonzero":
        return "zscore inside the non-zero mask (per image)"
    return scheme


def _postprocess_text(config: PostprocessConfig) -> str:
    steps = config.model_dump(exclude_defaults=True)
    if not steps:
        return "none"
    if "threshold" in steps:
        steps = {f"foreground at probability ≥ {steps.pop('threshold'):g}": True, **steps}
    if steps.pop("keep_largest_foreground", False):
        steps = {"keep the largest foreground component": True, **steps}
    return ", ".join(key if value is True else f"{key} {value}" for key, value in steps.items())


def plan_table(plan: TrainingPlan) -> list[tuple[str, str]]:
    """The plan as (field, value) rows for printing (overridden fields marked with ``*``)."""
    spacing = "native grid" if plan.target_spacing is None else _join(plan.target_spacing)
    unit = kind_adapter(plan.kind).target_spacing_unit
    if unit is not None and plan.target_spacing is not None:
        spacing += f" {unit}" + (" in-plane, axial slices" if plan.spatial_dims == 2 else "")
    classes = ", ".join(
        f"{v} {n}" for v, n in zip(plan.class_values, plan.class_names, strict=True)
    )
    rows = [
        ("dataset_name", plan.dataset_name),
        ("kind", f"{plan.kind} ({plan.label_kind} labels)"),
        ("spatial_dims", f"{plan.spatial_dims}D"),
        ("target_spacing", spacing),
        ("patch_size", _join(plan.patch_size)),
        ("batch_size", str(plan.batch_size)),
        ("in_channels", str(plan.in_channels)),
        ("class_values", classes),
        ("ignore_value", "none" if plan.ignore_value is None else str(plan.ignore_value)),
        ("foreground_oversample", f"{plan.foreground_oversample:g}"),
        ("memory_budget_mb", f"{plan.memory_budget_mb} MiB"),
        ("postprocess", _postprocess_text(plan.postprocess)),
    ]
    if plan.in_channels >= 2:
        rows.append(("missing_channels", _MISSING_CHANNELS_TEXT[plan.missing_channels]))
    if plan.label_kind == "instance":
        rows.append(("min_instance_seed", f"{plan.min_instance_seed} px"))
    rows += [
        (f"normalization[{c}]", _norm_text(n.scheme, n.mean, n.std, n.lower, n.upper))
        for c, n in enumerate(plan.normalization)
    ]
    if plan.network is not None:
        filters = plan.network.options.get("filters") or []
        width = "-".join(str(f) for f in filters) if isinstance(filters, list) else str(filters)
        rows += [
            ("network", f"{plan.network.model} {width} (chosen by the plan)"),
            ("network_rule", plan.network.rule),
        ]
    marked = set(plan.overrides)
    if "class_names" in marked:
        marked.add("class_values")
    return [(f"{key} *" if key.split("[")[0] in marked else key, value) for key, value in rows]
