"""Post-processing from the training labels: keep the largest foreground component or not.

nnU-Net's first post-processing step treats every foreground class as one region and keeps only
its largest connected component; it adopts the step when it raises the cross-validation Dice.
segflow decides it from the training labels instead, before any training: when, in every
measured case, the largest connected component of the foreground holds at least
:data:`ONE_REGION_SHARE` of it (one tumour with its sub-regions, one spinal cord, one spleen),
a predicted map with several foreground components has false positives, and only the largest
stays. Data with many objects (nuclei, buildings, lesions) keeps every component.

Only semantic labels with a background are measured: a dataset whose value 0 is nodata (land
cover) has no background to return pixels to. Labels are read whole, so a seeded sample of at
most :data:`MEASURED_CASES` cases of at most :data:`MAX_VOXELS` voxels each is measured.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from data_contracts import Case, DatasetFingerprint, DatasetManifest, PostprocessConfig
from pipelines.kinds import kind_adapter
from pipelines.postprocess.labels import largest_component

__all__ = [
    "MAX_VOXELS",
    "MEASURED_CASES",
    "ONE_REGION_SHARE",
    "foreground_component_share",
    "largest_component_share",
    "planned_postprocess",
]

logger = logging.getLogger(__name__)

#: The foreground is one region when its largest component holds at least this share of it in
#: every measured case (BraTS: 0.96 to 1.0 with 26-connectivity; nuclei and buildings far less).
ONE_REGION_SHARE = 0.9
#: Cases whose label maps are read whole for the measure (a seeded sample beyond it).
MEASURED_CASES = 20
#: Label maps larger than this are not read whole (large rasters stream everywhere else).
MAX_VOXELS = 2**26


def largest_component_share(label: np.ndarray, ignore_value: int | None = None) -> float | None:
    """Share of the foreground (values other than 0 and ``ignore_value``) held by its largest
    connected component (full connectivity); ``None`` when there is no foreground."""
    values = np.asarray(label)
    foreground = values != 0
    if ignore_value is not None:
        foreground &= values != ignore_value
    total = int(np.count_nonzero(foreground))
    if total == 0:
        return None
    return float(np.count_nonzero(largest_component(foreground, foreground.ndim)) / total)


def _measurable(case: Case, ignore_value: int | None) -> bool:
    stats = case.label_stats
    if case.label is None or stats is None or 0 not in stats.values:
        return False
    has_foreground = any(value not in (0, ignore_value) for value in stats.values)
    return has_foreground and sum(stats.voxel_counts) <= MAX_VOXELS


def foreground_component_share(manifest: DatasetManifest, *, seed: int = 0) -> float | None:
    """The smallest :func:`largest_component_share` over (a sample of) the labelled cases.

    ``None`` for instance labels, for datasets whose value 0 is ignored (no background) and
    when no case has both background and foreground within :data:`MAX_VOXELS`.
    """
    if manifest.label_kind != "semantic" or manifest.ignore_value == 0:
        return None
    cases = [c for c in manifest.labelled_cases if _measurable(c, manifest.ignore_value)]
    if not cases:
        return None
    cases.sort(key=lambda case: case.case_id)
    if len(cases) > MEASURED_CASES:
        chosen = np.random.default_rng(seed).choice(len(cases), MEASURED_CASES, replace=False)
        cases = [cases[index] for index in sorted(chosen.tolist())]
    adapter = kind_adapter(cases[0].kind)
    shares = [
        largest_component_share(
            adapter.read_label_map(Path(case.label.path)), manifest.ignore_value
        )
        for case in cases
        if case.label is not None
    ]
    measured = [share for share in shares if share is not None]
    return min(measured) if measured else None


def planned_postprocess(fingerprint: DatasetFingerprint) -> PostprocessConfig:
    """Keep the largest foreground component when the training labels hold one region."""
    share = fingerprint.foreground_component_share
    if share is None or share < ONE_REGION_SHARE:
        return PostprocessConfig()
    logger.info(
        "post-processing: keep the largest foreground component (in every training case "
        "measured it holds ≥ %.0f %% of the foreground: %.3f at least)",
        100 * ONE_REGION_SHARE,
        share,
    )
    return PostprocessConfig(keep_largest_foreground=True)
