"""``ingest``: from a folder, archive or CSV to a validated :class:`DatasetManifest`."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import cast

import rasterio
from rasterio.errors import RasterioIOError

from data_contracts import (
    Case,
    CaseKind,
    ChannelCountError,
    DatasetManifest,
    IngestOptions,
    InputError,
    MissingFileError,
    PairingError,
    RejectedInput,
    UnreadableFileError,
    UnsupportedFormatError,
)
from pipelines import __version__
from pipelines.ingest.candidates import CaseCandidate, DatasetDeclaration
from pipelines.ingest.layouts import discover
from pipelines.ingest.validate import LabelRules, validate_case
from pipelines.io.archives import extract_archive, is_archive
from pipelines.io.formats import suffix_of
from pipelines.io.raster import bounded_gdal_env
from pipelines.kinds import kind_adapter, registered_adapters

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str, int], None]
"""Called as ``progress(done, total, case_id, rejected)`` after each case, with the number of
inputs rejected so far."""


def ingest(
    source: str | Path,
    *,
    options: IngestOptions | None = None,
    workdir: str | Path,
    progress: ProgressCallback | None = None,
) -> DatasetManifest:
    """Find, pair and validate every case of ``source``; quarantine the invalid ones.

    Args:
        source: a dataset folder (nnU-Net v2, ``images/`` + ``labels/``, or flat), a ``.zip`` /
            ``.tar[.gz]`` archive of one, or a CSV with columns ``image,label``. Every image
            file is a case named by its full stem unless channels are grouped (see
            :mod:`pipelines.case_names`); inputs whose case ids clash are rejected.
        options: pairing (``label_suffix``, ``channel_suffix``), label and tolerance options.
        workdir: folder for what ingestion derives: the extracted archive and rasterised vector
            labels (the manifest's paths point into it, so keep it with the manifest).
        progress: optional callback after each case (see :data:`ProgressCallback`).

    Returns:
        The manifest: valid cases, rejected inputs with their reasons, labels and channels.

    Raises:
        InputError: the source as a whole is unusable (missing, unknown layout, archive bomb).
    """
    options = options or IngestOptions()
    source = Path(source).expanduser().resolve()
    workdir = Path(workdir).expanduser().resolve()
    rejected: list[RejectedInput] = []
    root = _resolve_root(source, options, workdir, rejected)
    declaration = discover(
        root, label_suffix=options.label_suffix, channel_suffix=options.channel_suffix
    )
    for case_id, error in declaration.failures:
        rejected.append(_rejection(error, case_id))
    kinds = _KindResolver(options, declaration.candidates)
    rules = _label_rules(options, declaration)
    cases: list[Case] = []
    total = len(declaration.candidates)
    with bounded_gdal_env():
        for done, candidate in enumerate(declaration.candidates, start=1):
            try:
                cases.append(
                    validate_case(
                        candidate, kinds.kind_of(candidate), options, rules, workdir / "labels"
                    )
                )
            except InputError as error:
                rejected.append(_rejection(error, candidate.case_id))
            except PermissionError as error:
                unreadable = UnreadableFileError(
                    f"cannot be read ({error.strerror})", path=error.filename
                )
                rejected.append(_rejection(unreadable, candidate.case_id))
            if progress is not None:
                progress(done, total, candidate.case_id, len(rejected))
    cases = _drop_inconsistent(cases, declaration, rejected)
    return DatasetManifest(
        name=declaration.name,
        source=str(source),
        segflow_version=__version__,
        label_kind=options.label_kind,
        labels=_final_labels(options, declaration, cases, rules),
        ignore_value=options.ignore_value,
        channel_names=_channel_names(declaration, cases),
        cases=tuple(cases),
        rejected=tuple(rejected),
    )


def _drop_inconsistent(
    cases: list[Case], declaration: DatasetDeclaration, rejected: list[RejectedInput]
) -> list[Case]:
    """Reject the cases that do not fit the others, each with its reason.

    - Labelled cases of a kind with fixed channels (volumes and rasters; see
      :attr:`~pipelines.kinds.KindAdapter.fixed_channels`) whose channel count differs from
      the dataset's: the number of declared channel names when some labelled case has it,
      else the most common count of the labelled cases (ties going to the fewest channels):
      they train one model, of one input width. Unlabelled cases are exempt (a folder of
      images to segment may mix sensors), and so are 2D images (grey and RGB are converted to
      the plan's channels).
    - Cases whose channel files have the same content as an earlier case's: a copy would sit in
      the training and the validation split at once.
    """
    counts = [sum(case.channel_counts) for case in cases if _needs_dataset_channels(case)]
    declared = len(declaration.channel_names)
    if declared in counts:
        expected = declared
    else:
        expected = min(counts, key=lambda n: (-counts.count(n), n)) if counts else 0
    kept: list[Case] = []
    seen: dict[tuple[str, ...], Case] = {}
    for case in cases:
        first = case.channels[0].path
        count = sum(case.channel_counts)
        content = tuple(record.sha256 for record in case.channels)
        if _needs_dataset_channels(case) and count != expected:
            error: InputError = ChannelCountError(
                f"has {count} channel(s) ({case.kind}); the dataset's other labelled cases "
                f"have {expected}",
                path=first,
            )
        elif content in seen:
            original = seen[content]
            error = PairingError(
                f"has the same content (SHA-256) as case {original.case_id!r} "
                f"({Path(original.channels[0].path).name}); a copy would be in both the "
                "training and the validation split",
                path=first,
                hint="remove the duplicate case",
            )
        else:
            seen[content] = case
            kept.append(case)
            continue
        rejected.append(_rejection(error, case.case_id))
    return kept


def _needs_dataset_channels(case: Case) -> bool:
    """A labelled case of a kind whose cases all have the dataset's channel count."""
    return case.label is not None and kind_adapter(case.kind).fixed_channels


def _rejection(error: InputError | Exception, case_id: str | None) -> RejectedInput:
    path = getattr(error, "path", None) or ""
    return RejectedInput(
        path=str(path), case_id=case_id, error=type(error).__name__, reason=str(error)
    )


def _resolve_root(
    source: Path, options: IngestOptions, workdir: Path, rejected: list[RejectedInput]
) -> Path:
    if not source.exists():
        raise MissingFileError("does not exist", path=source)
    root = source
    if source.is_file() and is_archive(source):
        destination = workdir / "extracted" / source.name
        if destination.exists():  # segflow's own derived copy from an earlier run: start afresh
            shutil.rmtree(destination)
        result = extract_archive(source, destination)
        rejected.extend(_rejection(error, None) for error in result.rejected)
        root = result.root
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir() and options.subdir is None:
            root = entries[0]
    if options.subdir:
        root = root / options.subdir
        if not root.is_dir():
            raise MissingFileError(f"has no folder {options.subdir!r} (from --subdir)", path=source)
    return root


class _KindResolver:
    """Decides a case's kind from its first file's suffix (:attr:`KindAdapter.suffixes`).

    A suffix that several kinds read (``.tif``: georeferenced rasters and plain images) goes to
    the georeferenced kind when any file of the dataset with such a suffix carries a CRS (then
    every one must), else to the other; ``--kind`` forces a kind that reads the suffix.
    """

    def __init__(self, options: IngestOptions, candidates: list[CaseCandidate]) -> None:
        self._forced = options.kind
        self._candidates = candidates
        self._geo: bool | None = None

    def kind_of(self, candidate: CaseCandidate) -> CaseKind:
        path = candidate.channels[0]
        suffix = suffix_of(path)
        readers = [a for a in registered_adapters() if suffix in a.suffixes]
        if not readers:
            raise UnsupportedFormatError(
                f"has an unsupported file type {suffix or path.suffix!r}", path=path
            )
        names = [adapter.name for adapter in readers]
        if self._forced != "auto":
            if self._forced not in names:
                raise UnsupportedFormatError(
                    f"cannot be read as a {self._forced} (it is a {suffix} file)", path=path
                )
            return self._forced
        if len(readers) > 1:
            geo = self._dataset_is_geo()
            readers = [a for a in readers if a.georeferenced == geo] or readers
        return cast(CaseKind, readers[0].name)

    def _dataset_is_geo(self) -> bool:
        """True when any file that a georeferenced kind reads carries a CRS."""
        if self._geo is None:
            geo_suffixes = {s for a in registered_adapters() if a.georeferenced for s in a.suffixes}
            self._geo = any(
                _has_crs(c.channels[0])
                for c in self._candidates
                if suffix_of(c.channels[0]) in geo_suffixes
            )
        return self._geo


def _has_crs(path: Path) -> bool:
    try:
        with rasterio.open(path) as dataset:
            return dataset.crs is not None
    except (RasterioIOError, OSError):
        return False  # the file's own validation reports why


def _label_rules(options: IngestOptions, declaration: DatasetDeclaration) -> LabelRules:
    declared = options.labels if options.labels is not None else declaration.labels
    instance = options.label_kind == "instance"
    allowed = frozenset(declared.values()) if declared and not instance else None
    return LabelRules(allowed=allowed, ignore_value=options.ignore_value, instance=instance)


def _final_labels(
    options: IngestOptions, declaration: DatasetDeclaration, cases: list[Case], rules: LabelRules
) -> dict[str, int]:
    declared = options.labels if options.labels is not None else declaration.labels
    if declared:
        return dict(sorted(declared.items(), key=lambda item: item[1]))
    if rules.instance:
        return {"background": 0, "object": 1}
    found = sorted(
        {v for case in cases if case.label_stats for v in case.label_stats.values}
        - {options.ignore_value}
    )
    return {("background" if value == 0 else f"class_{value}"): value for value in found}


def _channel_names(declaration: DatasetDeclaration, cases: list[Case]) -> tuple[str, ...]:
    total = sum(cases[0].channel_counts) if cases else len(declaration.channel_names)
    if len(declaration.channel_names) == total:
        return declaration.channel_names
    return tuple(f"channel_{index}" for index in range(total))


def write_manifest(manifest: DatasetManifest, destination: str | Path) -> Path:
    """Write ``manifest`` as indented JSON, atomically."""
    from pipelines.files import write_text_atomic

    return write_text_atomic(destination, manifest.model_dump_json(indent=2) + "\n")


def read_manifest(path: str | Path) -> DatasetManifest:
    """Read a manifest written by :func:`write_manifest`.

    Raises:
        MissingFileError: the file does not exist.
        DatasetLayoutError: it is not a valid manifest.
    """
    from pydantic import ValidationError

    from data_contracts import DatasetLayoutError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError("does not exist", path=path)
    try:
        return DatasetManifest.model_validate_json(path.read_bytes())
    except ValidationError as error:
        raise DatasetLayoutError(
            f"is not a valid segflow manifest ({error.error_count()} errors: {error.errors()[0]['msg']})",
            path=path,
        ) from error
