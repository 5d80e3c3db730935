"""Score written predictions against reference labels: what ``segflow evaluate`` does.

Pairing: PRED and TRUTH are each a label file or a folder of them (not searched recursively).
Two files are always one pair. Otherwise files pair by case id, as ``segflow segment`` names
its outputs (:mod:`pipelines.case_names`): the full stem, the name without its extension
(``.nii.gz``, ``.nii``, ``.tif``, ``.tiff``, ``.png``), so the mask ``tile_2023.tif`` pairs with
the truth ``tile_2023.tif``. A file whose stem finds no partner still pairs after dropping a
``_0000``-style 4-digit channel suffix (``brain_0000.nii.gz`` with ``brain.nii.gz``), when no
other file of its side pairs with that partner the same way. Sidecars are skipped
(``*.lineage.json``, ``*_prob.*`` probability maps, GeoPackage/GeoJSON vectors, hidden files);
files left without a partner are reported, and only a run where nothing pairs fails
(:class:`PairingError`).

Reading: NIfTI through nibabel, with the voxel spacing from the header zooms (mm unless the
header says otherwise); GeoTIFF through rasterio, with the pixel size from the transform (CRS
units); PNG and TIFFs without georeference as plain images (spacing 1, pixels). A raster's
declared nodata, in TRUTH or PRED, marks pixels that count in no metric. Note that a label
raster declaring ``nodata=0`` thereby ignores its whole background.

Scoring, per pair (a pair that cannot be read or whose shapes or spacings differ fails alone,
and the batch goes on): semantic maps get Dice, IoU and HD95 (in physical units) for every
non-zero value present in either map, via :func:`pipelines.metrics.semantic_scores`; instance
maps get the DSB-2018 score, AP@[.5:.95] and F1@.5 via
:func:`pipelines.metrics.instance_scores`. Without an explicit choice, a pair is scored as
instances when it is 2D and either map holds more than :data:`INSTANCE_AUTO_VALUES` distinct
non-zero values (semantic label sets are small; instance maps number every object).

HD95 is ``inf`` when exactly one map lacks a class; the JSON report writes non-finite numbers
as ``null``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_contracts import (
    GeometryMismatchError,
    InputError,
    MissingFileError,
    NonFiniteLabelError,
    NonIntegerLabelError,
    PairingError,
    SegflowError,
)
from pipelines.case_names import full_stem, split_channel
from pipelines.files import write_text_atomic
from pipelines.io.formats import FileFormat, detect_format, is_image_name, strip_image_suffix
from pipelines.io.image2d import read_image
from pipelines.io.nifti import load_volume
from pipelines.io.raster import is_georeferenced, open_raster
from pipelines.metrics import instance_scores, semantic_scores

__all__ = [
    "INSTANCE_AUTO_VALUES",
    "LabelMap",
    "Pairing",
    "case_id",
    "evaluate_case",
    "evaluate_outputs",
    "pair_files",
    "read_label_map",
    "report_json",
    "summarise",
]

logger = logging.getLogger(__name__)

#: A 2D pair with more distinct non-zero values than this (in either map) is scored as instances.
INSTANCE_AUTO_VALUES = 20
SEMANTIC_METRICS = ("dice", "iou", "hd95")
INSTANCE_METRICS = ("dsb2018", "ap_50_95", "f1_50")

_SIDECAR_ENDINGS = (".lineage.json", ".gpkg", ".geojson")
_SPACING_RTOL = 1e-3


@dataclass(frozen=True)
class LabelMap:
    """A label map read from disk.

    Attributes:
        values: int64 ``(H, W)`` or ``(X, Y, Z)``.
        spacing: physical size of a pixel/voxel per axis, or ``None`` for plain images.
        units: unit of ``spacing`` (``mm``, ``metre``, …; ``pixels`` without spacing).
        ignored: True at declared nodata, or ``None`` when there is none.
    """

    values: np.ndarray
    spacing: tuple[float, ...] | None
    units: str
    ignored: np.ndarray | None


@dataclass(frozen=True)
class Pairing:
    """Prediction/truth files matched by case id, and what could not be matched."""

    pairs: dict[str, tuple[Path, Path]]
    unpaired_prediction: list[str]
    unpaired_truth: list[str]
    duplicates: dict[str, str]  # case id → message naming the clashing files


def case_id(path: str | Path) -> str:
    """The full stem: ``"tile_2023.tif"`` → ``"tile_2023"``, ``"brain.nii.gz"`` → ``"brain"``."""
    return full_stem(path)


def _is_label_file(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or name.endswith(_SIDECAR_ENDINGS) or not is_image_name(name):
        return False
    return not strip_image_suffix(name).endswith("_prob")


def _collect(path: Path, role: str) -> dict[str, list[Path]]:
    """Label files at or under ``path``, by case id (a file given by name is never skipped)."""
    if not path.exists():
        raise MissingFileError(f"{role} does not exist", path=path)
    if path.is_file():
        return {case_id(path): [path]}
    by_case: dict[str, list[Path]] = {}
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        if _is_label_file(file):
            by_case.setdefault(case_id(file), []).append(file)
        else:
            logger.debug("skipped %s (not a label file)", file)
    return by_case


def pair_files(prediction: Path, truth: Path) -> Pairing:
    """Match prediction and truth files by case id (two single files always pair).

    Raises:
        MissingFileError: ``prediction`` or ``truth`` does not exist.
        PairingError: no prediction pairs with any truth.
    """
    predicted, truths = _collect(prediction, "prediction"), _collect(truth, "truth")
    if prediction.is_file() and truth.is_file():
        predicted = {case: [prediction] for case in truths}
    else:
        _pair_by_channel_suffix(predicted, truths)
        _pair_by_channel_suffix(truths, predicted)
    both = predicted.keys() & truths.keys()
    duplicates = {
        case: str(
            PairingError(
                "several files share this case id: "
                + ", ".join(str(p) for p in predicted[case] + truths[case]),
                path=case,
                hint="keep one prediction and one truth file per case",
            )
        )
        for case in sorted(both)
        if len(predicted[case]) + len(truths[case]) > 2
    }
    pairs = {
        case: (predicted[case][0], truths[case][0]) for case in sorted(both - duplicates.keys())
    }
    if not pairs and not duplicates:
        raise PairingError(
            f"no prediction pairs with a truth file ({len(predicted)} predicted cases, "
            f"{len(truths)} truth cases)",
            path=prediction,
            hint="name each prediction after its case like the truth (case.nii.gz, case.tif…)",
        )
    return Pairing(
        pairs=pairs,
        unpaired_prediction=sorted(str(p) for c in predicted.keys() - both for p in predicted[c]),
        unpaired_truth=sorted(str(p) for c in truths.keys() - both for p in truths[c]),
        duplicates=duplicates,
    )


def _pair_by_channel_suffix(side: dict[str, list[Path]], other: dict[str, list[Path]]) -> None:
    """Re-key ``side``'s unpartnered ``<case>_NNNN`` ids to ``<case>`` where ``other`` has an
    unpartnered ``<case>``: nnU-Net names inputs ``<case>_0000`` and labels ``<case>``.

    Several ids re-keyed to one case become duplicates of it (reported, not guessed).
    """
    moves: dict[str, list[str]] = {}
    for case in sorted(side.keys() - other.keys()):
        stripped, channel = split_channel(side[case][0])
        if channel is not None and stripped in other and stripped not in side:
            moves.setdefault(stripped, []).append(case)
    for stripped, cases in moves.items():
        side[stripped] = [path for case in cases for path in side.pop(case)]


def _integer_labels(values: np.ndarray, ignored: np.ndarray | None, path: Path) -> np.ndarray:
    """Labels as int64; float maps must hold whole numbers outside nodata."""
    if values.dtype.kind in "iub":
        return values.astype(np.int64, copy=False)
    checked = values if ignored is None else np.where(ignored, 0, values)
    if not np.isfinite(checked).all():
        raise NonFiniteLabelError("holds NaN or infinite values outside nodata", path=path)
    if not np.array_equal(checked, np.round(checked)):
        raise NonIntegerLabelError("holds non-integer values: it is not a label map", path=path)
    return checked.astype(np.int64)


def _nodata_mask(values: np.ndarray, nodata: float | None) -> np.ndarray | None:
    if nodata is None:
        return None
    mask = np.isnan(values) if math.isnan(nodata) else values == nodata
    return mask if mask.any() else None


def _read_nifti(path: Path) -> LabelMap:
    data, image = load_volume(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    unit = image.header.get_xyzt_units()[0]
    spacing = tuple(float(z) for z in image.header.get_zooms()[: data.ndim])
    units = "mm" if unit == "unknown" else unit
    return LabelMap(_integer_labels(np.asarray(data), None, path), spacing, units, None)


def _read_raster(
    path: Path,
) -> tuple[np.ndarray | None, float | None, tuple[float, float] | None, str]:
    """Pixels, nodata, pixel size and units of a GeoTIFF; no pixels for a plain TIFF."""
    with open_raster(path) as dataset:
        if not is_georeferenced(dataset):
            return None, dataset.nodata, None, "pixels"
        if dataset.count != 1:
            raise InputError(f"has {dataset.count} bands; a label map has one", path=path)
        linear = dataset.crs.linear_units if dataset.crs.is_projected else "unknown"
        size = (abs(float(dataset.transform.e)), abs(float(dataset.transform.a)))
        return dataset.read(1), dataset.nodata, size, "CRS units" if linear == "unknown" else linear


def _single_band(values: np.ndarray, path: Path) -> np.ndarray:
    """A 2D image as ``(H, W)``; grey images stored as RGB(A) keep their first channel."""
    if values.ndim == 3 and (values == values[..., :1]).all():
        values = values[..., 0]
    if values.ndim != 2:
        raise InputError(
            f"has shape {values.shape}; a 2D label map has one channel",
            path=path,
            hint="save labels as a single-channel (grey or indexed) image",
        )
    return values


def read_label_map(path: str | Path) -> LabelMap:
    """Read a NIfTI, GeoTIFF, TIFF or PNG label map with its spacing and nodata.

    Raises:
        InputError: unreadable, not a label map (non-integer or several channels), or of a
            format segflow does not read (subclasses name which).
    """
    path = Path(path)
    file_format = detect_format(path)
    if file_format is FileFormat.NIFTI:
        return _read_nifti(path)
    if file_format is FileFormat.VECTOR:
        raise InputError("is a vector file, not a label map", path=path)
    values, nodata, spacing, units = None, None, None, "pixels"
    if file_format is FileFormat.GEOTIFF:
        values, nodata, spacing, units = _read_raster(path)
    if values is None:
        values = _single_band(read_image(path), path)
    ignored = _nodata_mask(values, nodata)
    return LabelMap(_integer_labels(values, ignored, path), spacing, units, ignored)


def _common_grid(pred: LabelMap, true: LabelMap, paths: tuple[Path, Path]) -> LabelMap:
    """Check one grid; return the truth's spacing (or the prediction's) and the joint nodata."""
    pred_path, truth_path = paths
    if pred.values.shape != true.values.shape:
        raise GeometryMismatchError(
            f"has shape {pred.values.shape} but the truth {truth_path} has shape "
            f"{true.values.shape}",
            path=pred_path,
        )
    if (
        pred.spacing is not None
        and true.spacing is not None
        and not np.allclose(pred.spacing, true.spacing, rtol=_SPACING_RTOL)
    ):
        raise GeometryMismatchError(
            f"has spacing {pred.spacing} but the truth {truth_path} has spacing {true.spacing}",
            path=pred_path,
        )
    masks = [m for m in (pred.ignored, true.ignored) if m is not None]
    ignored = np.logical_or.reduce(masks) if masks else None
    physical = true if true.spacing is not None else pred
    return LabelMap(true.values, physical.spacing, physical.units, ignored)


def evaluate_case(
    prediction: str | Path, truth: str | Path, *, instance: bool | None = None
) -> dict[str, Any]:
    """Metrics of one predicted label map against its truth.

    Args:
        prediction: predicted label map file.
        truth: reference label map file on the same grid.
        instance: score as instances (True), semantic classes (False) or decide from the
            maps (None, see the module notes).

    Returns:
        ``mode``, ``shape``, ``spacing``, ``units``, ``ignored_pixels``, the two file paths,
        and ``classes`` (``{value: {dice, iou, hd95}}``) or ``instance`` (``{dsb2018,
        ap_50_95, f1_50}`` with the object counts).

    Raises:
        InputError: a file cannot be read, or the two are not on one grid.
    """
    paths = (Path(prediction), Path(truth))
    pred = read_label_map(paths[0])
    grid = _common_grid(pred, read_label_map(paths[1]), paths)
    valid = None if grid.ignored is None else ~grid.ignored
    pred_values = np.unique(pred.values if valid is None else pred.values[valid])
    true_values = np.unique(grid.values if valid is None else grid.values[valid])
    present = sorted((set(pred_values.tolist()) | set(true_values.tolist())) - {0})
    if instance is None:
        most = max(np.count_nonzero(pred_values), np.count_nonzero(true_values))
        instance = bool(pred.values.ndim == 2 and most > INSTANCE_AUTO_VALUES)
    result: dict[str, Any] = {
        "prediction": str(paths[0]),
        "truth": str(paths[1]),
        "mode": "instance" if instance else "semantic",
        "shape": list(grid.values.shape),
        "spacing": None if grid.spacing is None else list(grid.spacing),
        "units": grid.units,
        "ignored_pixels": 0 if grid.ignored is None else int(grid.ignored.sum()),
    }
    if instance:
        result["instance"] = _instance_metrics(pred.values, grid.values, grid.ignored)
        return result
    sentinel = min(int(pred_values.min(initial=0)), int(true_values.min(initial=0))) - 1
    truth_values = (
        grid.values if grid.ignored is None else np.where(grid.ignored, sentinel, grid.values)
    )
    result["classes"] = semantic_scores(
        pred.values, truth_values, present, spacing=grid.spacing, ignore_value=sentinel
    )
    return result


def _instance_metrics(
    pred: np.ndarray, true: np.ndarray, ignored: np.ndarray | None
) -> dict[str, Any]:
    if ignored is not None:
        pred, true = np.where(ignored, 0, pred), np.where(ignored, 0, true)
    scores: dict[str, Any] = dict(instance_scores(pred, true))
    scores["objects_prediction"] = int(np.count_nonzero(np.unique(pred)))
    scores["objects_truth"] = int(np.count_nonzero(np.unique(true)))
    return scores


def _means(rows: list[Mapping[str, float]], metrics: tuple[str, ...]) -> dict[str, float]:
    return {m: float(np.mean([r[m] for r in rows])) for m in metrics} | {"cases": len(rows)}


def summarise(cases: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Means per class and metric over the semantic cases, and per metric over instance cases.

    ``overall`` averages every (case, class) row; an ``inf`` HD95 keeps its mean ``inf``.
    """
    per_class: dict[str, list[Mapping[str, float]]] = {}
    instances = [c["instance"] for c in cases.values() if "instance" in c]
    for case in cases.values():
        for name, scores in case.get("classes", {}).items():
            per_class.setdefault(name, []).append(scores)
    summary: dict[str, Any] = {
        "classes": {
            name: _means(rows, SEMANTIC_METRICS)
            for name, rows in sorted(per_class.items(), key=lambda item: int(item[0]))
        }
    }
    every_row = [row for rows in per_class.values() for row in rows]
    if every_row:
        summary["overall"] = _means(every_row, SEMANTIC_METRICS)
    if instances:
        summary["instance"] = _means(instances, INSTANCE_METRICS)
    return summary


def evaluate_outputs(
    prediction: str | Path,
    truth: str | Path,
    *,
    instance: bool | None = None,
    out: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Pair predictions with truths, score every pair, and optionally write the JSON report.

    Args:
        prediction: predicted label file or folder.
        truth: reference label file or folder.
        instance: force instance (True) or semantic (False) scoring; None decides per pair.
        out: JSON file to write atomically (non-finite numbers as ``null``).
        progress: called with ``(pairs done, pairs in all, case id)`` after each pair.

    Returns:
        ``{"cases": {case: metrics}, "summary": {...}, "failed": {case: message},
        "unpaired": {"prediction": [...], "truth": [...]}}``.

    Raises:
        MissingFileError: ``prediction`` or ``truth`` does not exist.
        PairingError: nothing pairs.
        OutputError: ``out`` cannot be written.
    """
    pairing = pair_files(Path(prediction), Path(truth))
    cases: dict[str, dict[str, Any]] = {}
    failed = dict(pairing.duplicates)
    for done, (case, (pred_path, truth_path)) in enumerate(pairing.pairs.items(), start=1):
        try:
            cases[case] = evaluate_case(pred_path, truth_path, instance=instance)
        except SegflowError as error:
            logger.info("case %s failed: %s", case, error)  # reported in the result
            failed[case] = str(error)
        if progress is not None:
            progress(done, len(pairing.pairs), case)
    unpaired = {"prediction": pairing.unpaired_prediction, "truth": pairing.unpaired_truth}
    report = {"cases": cases, "summary": summarise(cases), "failed": failed, "unpaired": unpaired}
    if out is not None:
        write_text_atomic(out, report_json(report))
    return report


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def report_json(report: Mapping[str, Any]) -> str:
    """The report as strict JSON (``inf``/``NaN`` become ``null``)."""
    return json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"
