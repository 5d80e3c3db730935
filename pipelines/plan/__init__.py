"""Fingerprint → plan, as nnU-Net does: measure a dataset, derive how to train on it.

Owns :func:`compute_fingerprint` (shapes, spacings, intensity statistics, class frequencies),
:func:`make_plan` (2D/3D, target spacing, patch and batch size for a memory budget,
normalisation per channel, classes, post-processing), overrides from flags or YAML, and plan
JSON files.
Imports ``data_contracts``, ``pipelines.io``, ``pipelines.kinds`` (per-kind measurement and
normalisation) and ``pipelines.postprocess`` (connected components); never torch, MONAI or
Prefect.
"""

from pipelines.plan.fingerprint import compute_fingerprint, ras_shape_and_spacing
from pipelines.plan.overrides import (
    apply_overrides,
    load_overrides_yaml,
    load_plan,
    parse_override_flags,
    plan_table,
    save_plan,
)
from pipelines.plan.planner import estimate_memory_mb, make_plan, patch_divisor

__all__ = [
    "apply_overrides",
    "compute_fingerprint",
    "estimate_memory_mb",
    "load_overrides_yaml",
    "load_plan",
    "make_plan",
    "parse_override_flags",
    "patch_divisor",
    "plan_table",
    "ras_shape_and_spacing",
    "save_plan",
]
