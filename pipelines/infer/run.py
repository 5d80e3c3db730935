"""Segment cases with a loaded model and write every output in the source geometry.

:func:`segment_case` does one case (volume, raster or 2D image — the model's plan decides how
inputs are read); :func:`segment_inputs` does everything under a file, folder, archive or
manifest, goes on past a failed case and reports it. Output names, by case id:
``<case>.nii.gz`` (volumes), ``<case>.tif`` (rasters, COG), ``<case>.png`` (2D images; instance
ids as uint16), ``<case>_prob.<ext>`` (probabilities), ``<case>.gpkg`` / ``<case>.geojson``
(polygons of rasters), ``<case>.lineage.json`` (NIfTI and PNG outputs, which have no tags;
GeoTIFF outputs carry the same record in their ``segflow_lineage`` tag).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_contracts import (
    InputError,
    PostprocessConfig,
    SegflowError,
    UnsupportedFormatError,
)
from pipelines.infer.in_memory import class_values_of, predict_image, predict_volume
from pipelines.infer.inputs import InferenceInput, discover_inputs
from pipelines.infer.instances import segment_instances
from pipelines.infer.polygons import write_raster_polygons
from pipelines.infer.raster import segment_raster
from pipelines.infer.sliding import SlidingWindowConfig
from pipelines.io.formats import suffix_of
from pipelines.io.nifti import open_volume
from pipelines.model_loading import LoadedModel
from pipelines.postprocess.labels import postprocess_labels
from pipelines.write.image2d import write_label_image, write_probability_image
from pipelines.write.lineage import lineage_record, write_lineage
from pipelines.write.nifti import write_nifti_mask, write_nifti_probabilities

__all__ = ["CaseResult", "SegmentOptions", "SegmentReport", "segment_case", "segment_inputs"]

Progress = Callable[[int, int], None]
_KIND_SUFFIXES = {
    "volume": (".nii.gz", ".nii"),
    "raster": (".tif", ".tiff"),
    "image": (".png", ".tif", ".tiff"),
}


@dataclass(frozen=True)
class SegmentOptions:
    """What to write besides the masks, and how windows run.

    Attributes:
        polygons: raster masks also as polygons (GeoPackage in the source CRS, GeoJSON WGS84).
        probabilities: also write class probabilities (compact uint8, scale 1/255).
        tta: test-time flips (volumes and 2D images).
        overlap: window overlap (default: 0.5 for volumes, 0.25 for 2D).
        batch_size: windows per forward pass (default: 4 for volumes, 8 for 2D).
        device: ``cpu``, ``cuda``… (default: CUDA when present).
    """

    polygons: bool = False
    probabilities: bool = False
    tta: bool = False
    overlap: float | None = None
    batch_size: int | None = None
    device: str | None = None


@dataclass(frozen=True)
class CaseResult:
    """One segmented case: its outputs by role (mask, probabilities, polygons, lineage)."""

    case_id: str
    outputs: dict[str, Path]
    seconds: float


@dataclass
class SegmentReport:
    """All cases of a ``segment`` run: done, failed (with the error), and rejected inputs."""

    succeeded: list[CaseResult] = field(default_factory=list)
    failed: dict[str, SegflowError] = field(default_factory=dict)


def _window_config(model: LoadedModel, options: SegmentOptions) -> SlidingWindowConfig:
    volume = model.plan.kind == "volume"
    return SlidingWindowConfig(
        overlap=options.overlap if options.overlap is not None else (0.5 if volume else 0.25),
        batch_size=options.batch_size or (4 if volume else 8),
        tta=options.tta,
    )


def postprocess_config(model: LoadedModel) -> PostprocessConfig:
    """The model's post-processing (``processing["postprocess"]``), or none."""
    return PostprocessConfig.model_validate(model.processing.get("postprocess") or {})


def _check_kind(case: InferenceInput, model: LoadedModel) -> None:
    suffix = suffix_of(case.channels[0]) or case.channels[0].suffix
    allowed = _KIND_SUFFIXES[model.plan.kind]
    if suffix.lower() not in allowed:
        raise UnsupportedFormatError(
            f"is a {suffix} file; this model segments {model.plan.kind}s ({', '.join(allowed)})",
            path=case.channels[0],
            hint="choose a model trained on this kind of data",
        )


def _segment_volume(
    model: LoadedModel, case: InferenceInput, out: Path, options: SegmentOptions
) -> dict[str, Path]:
    prediction = predict_volume(
        model,
        case.channels,
        _window_config(model, options),
        device=options.device,
        keep_probabilities=options.probabilities,
    )
    spacing = tuple(float(z) for z in open_volume(case.channels[0]).header.get_zooms()[:3])
    labels = postprocess_labels(
        class_values_of(prediction.classes, model.plan), postprocess_config(model), spacing=spacing
    )
    outputs = {"mask": write_nifti_mask(labels, case.channels[0], out / f"{case.case_id}.nii.gz")}
    if prediction.probabilities is not None:
        outputs["probabilities"] = write_nifti_probabilities(
            prediction.probabilities, case.channels[0], out / f"{case.case_id}_prob.nii.gz"
        )
    return outputs


def _segment_image(
    model: LoadedModel,
    case: InferenceInput,
    out: Path,
    options: SegmentOptions,
    progress: Progress | None,
) -> dict[str, Path]:
    outputs: dict[str, Path] = {}
    instance = model.spec.task == "instance" or model.plan.label_kind == "instance"
    if model.spec.task == "instance":
        labels = segment_instances(
            model, case.channels[0], device=options.device, progress=progress
        )
    else:
        prediction = predict_image(
            model,
            case.channels[0],
            _window_config(model, options),
            device=options.device,
            keep_probabilities=options.probabilities,
        )
        if prediction.instance:
            labels = prediction.classes.astype(np.uint16)
        else:
            labels = postprocess_labels(
                class_values_of(prediction.classes, model.plan),
                postprocess_config(model),
                spacing=(1.0, 1.0),
            )
        if prediction.probabilities is not None:
            outputs["probabilities"] = write_probability_image(
                prediction.probabilities, out / f"{case.case_id}_prob.tif"
            )
    outputs["mask"] = write_label_image(labels, out / f"{case.case_id}.png", instance=instance)
    return outputs


def _segment_raster(
    model: LoadedModel,
    case: InferenceInput,
    out: Path,
    options: SegmentOptions,
    lineage: dict[str, Any],
    progress: Progress | None,
) -> dict[str, Path]:
    written = segment_raster(
        model,
        case.channels[0],
        out / f"{case.case_id}.tif",
        probabilities_path=out / f"{case.case_id}_prob.tif" if options.probabilities else None,
        config=_window_config(model, options),
        postprocess=postprocess_config(model),
        device=options.device,
        tags={"segflow_lineage": json.dumps(lineage, sort_keys=True, default=str)},
        progress=progress,
    )
    outputs = {"mask": written.mask}
    if written.probabilities is not None:
        outputs["probabilities"] = written.probabilities
    if options.polygons:
        outputs.update(write_raster_polygons(written.mask, model, out / case.case_id))
    return outputs


def segment_case(
    model: LoadedModel,
    case: InferenceInput,
    out_dir: str | Path,
    options: SegmentOptions | None = None,
    *,
    progress: Progress | None = None,
) -> CaseResult:
    """Segment one case and write its outputs under ``out_dir`` (atomically, inputs untouched).

    Raises:
        InputError: the input cannot be read, has the wrong channels, or is the wrong kind.
        OutputError: an output cannot be written or fails its post-write check.
    """
    options = options or SegmentOptions()
    out, started = Path(out_dir), time.monotonic()
    _check_kind(case, model)
    lineage = lineage_record(
        source=case.channels[0],
        source_sha256=case.checksum(),
        model_uri=model.uri,
        model_name=model.name,
        model_version=model.version,
        outputs={},
        settings={
            "tta": options.tta,
            "overlap": options.overlap,
            "channels": [str(p) for p in case.channels],
        },
    )
    if model.plan.kind == "volume":
        outputs = _segment_volume(model, case, out, options)
    elif model.plan.kind == "raster":
        outputs = _segment_raster(model, case, out, options, lineage, progress)
    else:
        outputs = _segment_image(model, case, out, options, progress)
    if model.plan.kind != "raster":
        record = {**lineage, "outputs": {role: str(path) for role, path in outputs.items()}}
        outputs["lineage"] = write_lineage(out / f"{case.case_id}.lineage.json", record)
    return CaseResult(case.case_id, outputs, round(time.monotonic() - started, 2))


def segment_inputs(
    source: str | Path,
    model: LoadedModel,
    out_dir: str | Path,
    options: SegmentOptions | None = None,
    *,
    on_start: Callable[[InferenceInput, int, int], None] | None = None,
    on_done: Callable[[InferenceInput, CaseResult | SegflowError], None] | None = None,
    window_progress: Progress | None = None,
) -> SegmentReport:
    """Segment every case under ``source``; failed cases are reported, the others go on.

    Args:
        source: an image file, a folder, a zip/tar archive, or a manifest JSON.
        model: from :func:`pipelines.registry.load_model`.
        out_dir: output folder (created).
        options: extra outputs and window settings.
        on_start: called with (case, index, total) before each case.
        on_done: called with the case's result or error after each case.
        window_progress: called with (windows done, in total) during each case.
    """
    report = SegmentReport()
    with tempfile.TemporaryDirectory(prefix="segflow-segment-") as scratch:
        found = discover_inputs(source, workdir=scratch)
        for error in found.rejected:
            report.failed[str(error.path or source)] = error
        for index, case in enumerate(found.cases):
            if on_start is not None:
                on_start(case, index, len(found.cases))
            try:
                result: CaseResult | SegflowError = segment_case(
                    model, case, out_dir, options, progress=window_progress
                )
                report.succeeded.append(result)  # type: ignore[arg-type]
            except SegflowError as error:
                result = error
                report.failed[case.case_id] = error
            except (OSError, RuntimeError, ValueError) as error:  # reader/library errors
                result = InputError(
                    f"could not be segmented ({type(error).__name__}: {error})",
                    path=case.channels[0],
                )
                report.failed[case.case_id] = result
            if on_done is not None:
                on_done(case, result)
    return report
