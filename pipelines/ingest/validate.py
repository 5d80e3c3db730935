"""Validate one case: open every file, compare grids, check labels, hash, stream statistics.

How a file of each kind is read and how two grids are compared is the kind's adapter's
(:mod:`pipelines.kinds`); the checks and their order are the same for every kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_contracts import (
    Case,
    CaseKind,
    ChannelGeometryError,
    FileRecord,
    GeometryMismatchError,
    IngestOptions,
    LabelGeometryError,
    LabelStats,
    LabelValueError,
    NonFiniteLabelError,
    NonIntegerLabelError,
)
from pipelines.files import sha256_file
from pipelines.ingest.candidates import CaseCandidate
from pipelines.io import PixelStats
from pipelines.io.formats import is_vector_name
from pipelines.kinds import (
    AnyGeometry,
    GridDifference,
    KindAdapter,
    adapter_for_geometry,
    kind_adapter,
)


@dataclass(frozen=True)
class LabelRules:
    """What a label may hold: the declared set (``None`` = anything integer) and ignore value."""

    allowed: frozenset[int] | None
    ignore_value: int | None
    instance: bool


def validate_case(
    candidate: CaseCandidate,
    kind: CaseKind,
    options: IngestOptions,
    rules: LabelRules,
    derived_dir: Path,
) -> Case:
    """Open, compare and check every file of ``candidate``; return the validated case.

    Args:
        candidate: the case's files.
        kind: how to read them (volume, raster, image: the name of a registered kind).
        options: ingestion options (tolerances, vector label settings).
        rules: what label values are allowed.
        derived_dir: where rasterised vector labels are written.

    Raises:
        InputError: any subclass, naming the offending file.
        ConfigError: ``kind`` is not a registered kind.
    """
    adapter = kind_adapter(kind)
    geometries: list[AnyGeometry] = []
    nonfinite: list[int] = []
    counts: list[int] = []
    for path in candidate.channels:
        geometry, bad_pixels = adapter.read_channel(path, options)
        if geometries:
            _check_same_grid(
                geometries[0], geometry, candidate.channels[0], path, options, ChannelGeometryError
            )
        geometries.append(geometry)
        nonfinite.append(bad_pixels)
        counts.append(adapter.channels_of(geometry))
    warnings = [
        f"{path.name}: {n} non-finite pixels"
        for path, n in zip(candidate.channels, nonfinite, strict=True)
        if n
    ]
    label_record, label_stats = None, None
    if candidate.label is not None:
        label_path, source = candidate.label, None
        if is_vector_name(label_path):
            source = str(label_path)
            label_path = _rasterize_vector(
                label_path, candidate.case_id, geometries[0], options, rules, derived_dir
            )
        label_stats = _check_label(
            label_path, adapter, geometries[0], candidate.channels[0], options, rules
        )
        label_record = _record(label_path, source=source)
    return Case(
        case_id=candidate.case_id,
        kind=kind,
        channels=tuple(_record(path) for path in candidate.channels),
        label=label_record,
        geometry=geometries[0],
        label_stats=label_stats,
        nonfinite_pixels=tuple(nonfinite),
        channel_counts=tuple(counts),
        warnings=tuple(warnings),
    )


def _record(path: Path, *, source: str | None = None) -> FileRecord:
    return FileRecord(
        path=str(path.resolve()),
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        source=source,
    )


def _check_same_grid(
    reference: AnyGeometry,
    other: AnyGeometry,
    reference_path: Path,
    other_path: Path,
    options: IngestOptions,
    error: type[GeometryMismatchError],
) -> None:
    """Raise ``error`` listing each differing property of the two grids (TorchIO style)."""
    differences = _grid_differences(reference, other, options)
    if differences:
        listing = "; ".join(
            f"{name}: {reference_path.name}={a} vs {other_path.name}={b}"
            for name, a, b in differences
        )
        raise error(f"is not on the grid of {reference_path.name} ({listing})", path=other_path)


def _grid_differences(
    reference: AnyGeometry, other: AnyGeometry, options: IngestOptions
) -> list[GridDifference]:
    if type(reference) is not type(other):
        return [("kind", reference.kind, other.kind)]
    return adapter_for_geometry(reference).grid_differences(reference, other, options)


def _rasterize_vector(
    vector_path: Path,
    case_id: str,
    grid: AnyGeometry,
    options: IngestOptions,
    rules: LabelRules,
    derived_dir: Path,
) -> Path:
    destination = derived_dir / f"{case_id}_label.tif"
    return adapter_for_geometry(grid).rasterize_vector_label(
        vector_path, grid, destination, options, instance=rules.instance
    )


def _check_label(
    path: Path,
    adapter: KindAdapter,
    grid: AnyGeometry,
    image_path: Path,
    options: IngestOptions,
    rules: LabelRules,
) -> LabelStats:
    """Check the label's grid and values; returns its value counts (streamed)."""
    geometry, blocks = adapter.read_label(path, options)
    _check_same_grid(grid, geometry, image_path, path, options, LabelGeometryError)
    return _label_stats(PixelStats().consume(blocks), path, rules)


def _label_stats(stats: PixelStats, path: Path, rules: LabelRules) -> LabelStats:
    if stats.nonfinite:
        raise NonFiniteLabelError(f"holds {stats.nonfinite} NaN/infinite pixels", path=path)
    if stats.noninteger:
        raise NonIntegerLabelError(
            f"holds {stats.noninteger} non-integer values (e.g. {stats.first_noninteger})",
            path=path,
        )
    counts = stats.integer_counts()
    values = list(counts)
    extra = [
        v
        for v in values
        if v != rules.ignore_value and rules.allowed is not None and v not in rules.allowed
    ]
    if rules.instance:
        extra = [v for v in values if v < 0 and v != rules.ignore_value]
    if extra:
        allowed = "non-negative instance ids" if rules.instance else sorted(rules.allowed or ())
        raise LabelValueError(
            f"holds label values {extra[:10]} outside the declared set {allowed}", path=path
        )
    return LabelStats(values=tuple(values), voxel_counts=tuple(counts.values()))
