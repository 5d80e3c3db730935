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

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_contracts import (
    ChannelGeometryError,
    InputError,
    PostprocessConfig,
    SegflowError,
    UnsupportedFormatError,
)
from pipelines.infer.in_memory import class_values_of, predict_image, predict_volume
from pipelines.infer.inputs import InferenceInput, channel_suffix_for, discover_inputs
from pipelines.infer.loaded_model import LoadedModel
from pipelines.infer.maskrcnn import segment_instances
from pipelines.infer.polygons import write_raster_polygons
from pipelines.infer.raster import segment_raster
from pipelines.infer.sliding import SlidingWindowConfig
from pipelines.interrupts import check_stop
from pipelines.io.formats import suffix_of
from pipelines.io.image2d import read_image, read_image_geometry
from pipelines.io.nifti import iter_volume_slabs, open_volume, read_volume_geometry
from pipelines.io.raster import read_raster_geometry
from pipelines.postprocess.labels import postprocess_labels
from pipelines.preprocess.loaders import read_raster_stack
from pipelines.write.image2d import write_label_image, write_probability_image
from pipelines.write.lineage import lineage_record, write_lineage
from pipelines.write.nifti import write_nifti_mask, write_nifti_probabilities

__all__ = [
    "CaseResult",
    "SegmentOptions",
    "SegmentReport",
    "remove_case_outputs",
    "segment_case",
    "segment_inputs",
]

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


def check_input(case: InferenceInput, model: LoadedModel) -> None:
    """Read the headers of a case's files before any compute, so that a broken header fails
    with its own error (not deep inside a transform): NaN or singular affines, zero spacing
    and bombs (volumes), channel files on different grids, rasters with a rotated transform,
    files that are empty, unreadable or not images.

    Raises:
        InputError: the subclass naming the file and the reason.
    """
    if model.plan.kind == "volume":
        first = read_volume_geometry(case.channels[0])
        for path in case.channels[1:]:
            other = read_volume_geometry(path)
            if other.shape != first.shape or not np.allclose(
                other.affine, first.affine, rtol=1e-5, atol=1e-3
            ):
                raise ChannelGeometryError(
                    f"is not on the grid of {case.channels[0].name} (shape {other.shape} vs "
                    f"{first.shape}, or another affine)",
                    path=path,
                )
    elif model.plan.kind == "raster":
        for path in case.channels:
            # Rasters are segmented on their own grid: a TIFF without CRS gives a mask without
            # CRS, but a rotated or sheared transform is refused, as at ingest.
            read_raster_geometry(path, allow_ungeoreferenced=True)
    else:
        for path in case.channels:
            read_image_geometry(path)


def _segflow_cause(error: BaseException) -> SegflowError | None:
    """The segflow error an exception wraps (MONAI wraps transform errors in RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, SegflowError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _damaged_file(case: InferenceInput, model: LoadedModel) -> SegflowError | None:
    """After a reader failed inside a transform: read every file of the case in full to find
    the damaged one (a truncated ``.nii.gz`` has a good header), or ``None``."""
    try:
        for path in case.channels:
            if model.plan.kind == "volume":
                for _ in iter_volume_slabs(open_volume(path), path):
                    pass
            elif model.plan.kind == "raster":
                read_raster_stack([path])
            else:
                read_image(path)
    except SegflowError as error:
        return error
    return None


#: Every output name a case can have (see the module docstring), by suffix after the case id.
_OUTPUT_SUFFIXES = (
    ".nii.gz",
    ".tif",
    ".png",
    "_prob.nii.gz",
    "_prob.tif",
    ".gpkg",
    ".geojson",
    ".lineage.json",
)


def _outputs_of(out: Path, case_id: str) -> dict[Path, tuple[int, int]]:
    """The outputs of ``case_id`` present in ``out``, with their inode and modification time
    (exact names, so that another case whose id extends this one is never touched)."""
    found: dict[Path, tuple[int, int]] = {}
    for suffix in _OUTPUT_SUFFIXES:
        path = out / f"{case_id}{suffix}"
        with contextlib.suppress(OSError):
            info = path.stat()
            found[path] = (info.st_ino, info.st_mtime_ns)
    return found


def remove_case_outputs(out: Path, case_id: str) -> list[Path]:
    """Remove every output of ``case_id`` in ``out`` and the temporary files of its writers
    (after its worker process died mid-case: what it left is partial by definition)."""
    removed = list(_outputs_of(out, case_id))
    for suffix in _OUTPUT_SUFFIXES:
        removed += [p for p in out.glob(f".{case_id}{suffix}.*") if ".part" in p.name]
        removed += list(out.glob(f".{case_id}{suffix}.*.work.tif"))
    for path in removed:
        with contextlib.suppress(OSError):
            path.unlink()
    return removed


@contextlib.contextmanager
def _no_partial_outputs(out: Path, case_id: str) -> Iterator[None]:
    """Remove the outputs of a case that failed after writing some (its mask without its
    lineage, say): once one output was (re)written, the set is mixed, so all go. A case that
    failed before writing anything keeps the outputs of its earlier run."""
    before = _outputs_of(out, case_id) if out.is_dir() else {}
    try:
        yield
    except BaseException:
        after = _outputs_of(out, case_id)
        if any(before.get(path) != identity for path, identity in after.items()):
            for path in after:
                with contextlib.suppress(OSError):
                    path.unlink()
        raise


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

    A case that fails leaves none of the outputs it started writing (temporary ``.part`` files
    are removed by the writers, finished outputs of the case by this function).

    Raises:
        InputError: the input cannot be read, has the wrong channels, or is the wrong kind.
        OutputError: an output cannot be written or fails its post-write check.
        StopRequested: a stop was asked for (SIGTERM): before the case, or at a batch of
            windows, after which nothing of the case is left.
    """
    options = options or SegmentOptions()
    out = Path(out_dir)
    check_stop()
    _check_kind(case, model)
    check_input(case, model)
    with _no_partial_outputs(out, case.case_id):
        try:
            return _segment_checked(model, case, out, options, progress)
        except RuntimeError as error:  # MONAI wraps a reader's error in RuntimeError
            cause = _segflow_cause(error) or _damaged_file(case, model)
            if cause is None:
                raise
            raise cause from error


def _segment_checked(
    model: LoadedModel,
    case: InferenceInput,
    out: Path,
    options: SegmentOptions,
    progress: Progress | None,
) -> CaseResult:
    started = time.monotonic()
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
    channel_suffix: bool = False,
) -> SegmentReport:
    """Segment every case under ``source``; failed cases are reported, the others go on.

    Args:
        source: an image file, a folder, a zip/tar archive, or a manifest JSON.
        model: from :func:`pipelines.services.model_registry.load_model`.
        out_dir: output folder (created).
        options: extra outputs and window settings.
        on_start: called with (case, index, total) before each case.
        on_done: called with the case's result or error after each case.
        window_progress: called with (windows done, in total) during each case.
        channel_suffix: group ``<case>_0000``, ``<case>_0001``… files into one case (also on
            for a model of multi-channel volumes: :func:`~pipelines.infer.inputs.channel_suffix_for`).
    """
    report = SegmentReport()
    grouping = channel_suffix_for(model.plan, requested=channel_suffix)
    with tempfile.TemporaryDirectory(prefix="segflow-segment-") as scratch:
        found = discover_inputs(source, workdir=scratch, channel_suffix=grouping)
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
