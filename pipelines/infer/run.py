"""Segment cases with a loaded model and write every output in the source geometry.

:func:`segment_case` does one case (volume, raster or 2D image): the adapter of the model's
data kind (:mod:`pipelines.kinds`) checks, reads, segments and writes it; this module adds what
every kind shares (the stop check, lineage, no partial outputs). Batches of cases are the batch
service's (:func:`pipelines.services.batch.run_batch`). Output names, by case id:
``<case>.nii.gz`` (volumes), ``<case>.tif`` (rasters, COG), ``<case>.png`` (2D images; instance
ids as uint16), ``<case>_prob.<ext>`` (probabilities), ``<case>.gpkg`` / ``<case>.geojson``
(polygons of rasters), ``<case>.lineage.json`` (NIfTI and PNG outputs, which have no tags;
GeoTIFF outputs carry the same record in their ``segflow_lineage`` tag).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from data_contracts import (
    FileQuality,
    InferenceOptions,
    PostprocessConfig,
    SegflowError,
    UnsupportedFormatError,
)
from pipelines.infer.drift_check import drift_quality
from pipelines.infer.inputs import InferenceInput
from pipelines.infer.loaded_model import LoadedModel
from pipelines.infer.sliding import window_options
from pipelines.interrupts import check_stop
from pipelines.io.formats import suffix_of
from pipelines.kinds import SegmentJob, kind_adapter
from pipelines.write.lineage import lineage_record, write_lineage

__all__ = [
    "CaseResult",
    "remove_case_outputs",
    "segment_case",
]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CaseResult:
    """One segmented case: its outputs by role (mask, probabilities, polygons, lineage) and
    its quality record (confidence, drift)."""

    case_id: str
    outputs: dict[str, Path]
    seconds: float
    quality: FileQuality | None = None


def postprocess_config(model: LoadedModel, options: InferenceOptions) -> PostprocessConfig:
    """The model's post-processing (``processing["postprocess"]``), or none (also when
    ``options.postprocess`` is off)."""
    if not options.postprocess:
        return PostprocessConfig()
    return PostprocessConfig.model_validate(model.processing.get("postprocess") or {})


def _check_kind(case: InferenceInput, model: LoadedModel) -> None:
    suffix = suffix_of(case.channels[0]) or case.channels[0].suffix
    allowed = kind_adapter(model.plan.kind).suffixes
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
    kind_adapter(model.plan.kind).check_input(case.channels)


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
    adapter = kind_adapter(model.plan.kind)
    try:
        for path in case.channels:
            adapter.read_fully(path)
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
    "_entropy.nii.gz",
    "_entropy.tif",
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


def segment_case(
    model: LoadedModel,
    case: InferenceInput,
    out_dir: str | Path,
    options: InferenceOptions | None = None,
    *,
    progress: Progress | None = None,
) -> CaseResult:
    """Segment one case and write its outputs under ``out_dir`` (atomically, inputs untouched).

    A case that fails leaves none of the outputs it started writing (temporary ``.part`` files
    are removed by the writers, finished outputs of the case by this function).

    Raises:
        InputError: the input cannot be read, has the wrong channels, or is the wrong kind.
        InputDriftError: the input lies outside the model's training data and
            ``options.on_drift`` is ``skip`` or ``fail`` (checked before any compute).
        OutputError: an output cannot be written or fails its post-write check.
        StopRequested: a stop was asked for (SIGTERM): before the case, or at a batch of
            windows, after which nothing of the case is left.
    """
    options = options or InferenceOptions()
    out = Path(out_dir)
    check_stop()
    _check_kind(case, model)
    check_input(case, model)
    drift = drift_quality(case, model, options)
    with _no_partial_outputs(out, case.case_id):
        try:
            return _segment_checked(model, case, out, options, progress, drift)
        except RuntimeError as error:  # MONAI wraps a reader's error in RuntimeError
            cause = _segflow_cause(error) or _damaged_file(case, model)
            if cause is None:
                raise
            raise cause from error


def _segment_checked(
    model: LoadedModel,
    case: InferenceInput,
    out: Path,
    options: InferenceOptions,
    progress: Progress | None,
    base_quality: FileQuality,
) -> CaseResult:
    started = time.monotonic()
    postprocess = postprocess_config(model, options)
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
            "postprocess": postprocess.model_dump(mode="json", exclude_defaults=True),
        },
    )
    lineage["quality"] = base_quality.model_dump(mode="json")
    measured: list[FileQuality] = []
    adapter = kind_adapter(model.plan.kind)
    job = SegmentJob(
        model=model,
        case_id=case.case_id,
        channels=case.channels,
        out_dir=out,
        options=window_options(options, model.plan.kind),  # the kind's windows where unset
        postprocess=postprocess,
        lineage=lineage,
        progress=progress,
        on_quality=measured.append,
    )
    outputs = adapter.segment(job)
    quality = _with_measures(base_quality, measured[-1] if measured else None)
    if not adapter.lineage_in_outputs:
        record = {
            **lineage,
            "outputs": {role: str(path) for role, path in outputs.items()},
            "quality": quality.model_dump(mode="json"),
        }
        outputs["lineage"] = write_lineage(out / f"{case.case_id}.lineage.json", record)
    return CaseResult(case.case_id, outputs, round(time.monotonic() - started, 2), quality)


def _with_measures(base: FileQuality, measured: FileQuality | None) -> FileQuality:
    """``base`` (the drift check's record) with the confidence measures of ``measured``."""
    if measured is None:
        return base
    measures = measured.model_dump(exclude={"drift_status", "drift"})
    return base.model_copy(update=measures)
