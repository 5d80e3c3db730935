"""Scoring the masks ``segflow segment`` wrote, file against file, for the accuracy benchmark.

Each held-out case's written mask (``OUT/<case>.nii.gz``, ``.tif`` or ``.png`` by the case's
kind) is read with nibabel, rasterio or imageio, checked to lie on its truth label's grid (same
shape; for NIfTI the same affine; for GeoTIFF the same transform and CRS) and scored with the
task's scorer. A mask that is missing or on another grid fails the benchmark loudly: the score
of a resampled or shifted mask would be meaningless.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import rasterio
from rasterio.crs import CRS

from data_contracts import Case
from data_contracts.errors import GeometryMismatchError, MissingFileError, UsageError
from pipelines.metrics import region_dice, semantic_scores

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "LabelGrid",
    "Scorer",
    "building_iou",
    "check_same_grid",
    "cord_dice",
    "read_label_grid",
    "score_written_masks",
    "whole_tumour_dice",
    "written_mask",
]

Scorer = Callable[[np.ndarray, np.ndarray], float]

#: Largest difference between two affines' entries that still counts as the same grid (mm).
AFFINE_TOLERANCE_MM = 1e-3
#: Largest difference between two geotransforms' entries (CRS units, or pixels of rotation).
TRANSFORM_TOLERANCE = 1e-6
#: What ``segflow segment`` writes per case kind.
MASK_SUFFIXES = {"volume": ".nii.gz", "raster": ".tif", "image": ".png"}


def whole_tumour_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """BraTS whole tumour: Dice of labels 1..4 merged."""
    return region_dice(prediction, truth, (1, 2, 3, 4), ignore_value=-1)


def building_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """IoU of the building class (label 1)."""
    scores = semantic_scores(prediction, truth, [1], ignore_value=-1, class_names=["building"])
    return scores["building"]["iou"]


def cord_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Spinal cord: Dice of label 1."""
    return region_dice(prediction, truth, (1,))


@dataclass(frozen=True)
class LabelGrid:
    """A label map and the grid it lies on.

    Attributes:
        values: int64 labels, ``(X, Y, Z)`` or ``(H, W)``.
        affine: voxel → world (NIfTI), else ``None``.
        transform: the six geotransform coefficients (GeoTIFF), else ``None``.
        crs: the CRS as WKT (GeoTIFF with one), else ``None``.
    """

    values: np.ndarray
    affine: np.ndarray | None = None
    transform: tuple[float, ...] | None = None
    crs: str | None = None


def read_label_grid(path: Path, kind: str) -> LabelGrid:
    """Read a label map of a case of ``kind`` (``volume``, ``raster`` or ``image``).

    Raises:
        MissingFileError: ``path`` does not exist.
        UsageError: unknown kind, or a map with several channels.
    """
    if not path.is_file():
        raise MissingFileError("does not exist", path=path, hint="was the case segmented?")
    if kind == "volume":
        image = nib.load(path)
        values = np.asanyarray(image.dataobj)  # type: ignore[attr-defined]
        while values.ndim > 3 and values.shape[-1] == 1:
            values = values[..., 0]
        affine = np.asarray(image.affine, np.float64)  # type: ignore[attr-defined]
        return LabelGrid(_integers(values, path), affine=affine)
    if kind == "raster":
        with rasterio.open(path) as dataset:
            if dataset.count != 1:
                raise UsageError(f"has {dataset.count} bands, not one label band", path=path)
            crs = dataset.crs.to_wkt() if dataset.crs else None
            transform = tuple(dataset.transform)[:6]
            return LabelGrid(_integers(dataset.read(1), path), transform=transform, crs=crs)
    if kind == "image":
        values = np.asarray(iio.imread(path))
        if values.ndim != 2:
            raise UsageError(f"has shape {values.shape}, not one label channel", path=path)
        return LabelGrid(_integers(values, path))
    raise UsageError(f"unknown case kind {kind!r}", hint=f"one of {sorted(MASK_SUFFIXES)}")


def _integers(values: np.ndarray, path: Path) -> np.ndarray:
    if values.dtype.kind in "iub":
        return values.astype(np.int64, copy=False)
    rounded: np.ndarray = np.rint(values)
    if not np.array_equal(rounded, values):
        raise UsageError("holds non-integer values: not a label map", path=path)
    return rounded.astype(np.int64)


def check_same_grid(mask: LabelGrid, truth: LabelGrid, *, mask_path: Path, case_id: str) -> None:
    """Raise unless ``mask`` lies on ``truth``'s grid (shape, affine, transform and CRS).

    Raises:
        GeometryMismatchError: naming what differs.
    """
    differences = []
    if mask.values.shape != truth.values.shape:
        differences.append(f"shape {mask.values.shape} vs the label's {truth.values.shape}")
    if not _close(mask.affine, truth.affine, AFFINE_TOLERANCE_MM):
        differences.append(f"affine {_rows(mask.affine)} vs the label's {_rows(truth.affine)}")
    if not _close(mask.transform, truth.transform, TRANSFORM_TOLERANCE):
        differences.append(f"transform {mask.transform} vs the label's {truth.transform}")
    if not _same_crs(mask.crs, truth.crs):
        differences.append(f"CRS {mask.crs} vs the label's {truth.crs}")
    if differences:
        raise GeometryMismatchError(
            f"the mask of case {case_id} is not on its label's grid: " + "; ".join(differences),
            path=mask_path,
            hint="segflow segment must write masks on the source grid",
        )


def _close(
    first: np.ndarray | tuple[float, ...] | None,
    second: np.ndarray | tuple[float, ...] | None,
    tolerance: float,
) -> bool:
    """Both absent, or both present with every entry within ``tolerance``."""
    if first is None or second is None:
        return first is None and second is None
    return bool(np.allclose(first, second, rtol=0.0, atol=tolerance))


def _same_crs(first: str | None, second: str | None) -> bool:
    if first is None or second is None:
        return first is None and second is None
    return first == second or CRS.from_wkt(first) == CRS.from_wkt(second)


def _rows(affine: np.ndarray | None) -> str:
    return "none" if affine is None else np.array2string(affine, precision=4, separator=",")


def written_mask(out: Path, case: Case) -> Path:
    """Where ``segflow segment --out OUT`` writes the mask of ``case``."""
    return out / f"{case.case_id}{MASK_SUFFIXES.get(case.kind, '')}"


def score_written_masks(out: Path, cases: Sequence[Case], scorer: Scorer) -> Mapping[str, float]:
    """Score each case's written mask against its truth label, after checking their grids.

    Returns:
        case id → score, in the order of ``cases``.

    Raises:
        UsageError: a case without label.
        MissingFileError: a case's mask was not written.
        GeometryMismatchError: a mask off its label's grid.
    """
    scores: dict[str, float] = {}
    for case in cases:
        if case.label is None:
            raise UsageError(f"case {case.case_id} has no label to score against")
        mask_path = written_mask(out, case)
        mask = read_label_grid(mask_path, case.kind)
        truth = read_label_grid(Path(case.label.path), case.kind)
        check_same_grid(mask, truth, mask_path=mask_path, case_id=case.case_id)
        scores[case.case_id] = float(scorer(mask.values, truth.values))
    return scores
