"""Validate one case: open every file, compare grids, check labels, hash, stream statistics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.crs import CRS

from data_contracts import (
    Case,
    CaseKind,
    ChannelGeometryError,
    FileRecord,
    GeometryMismatchError,
    ImageGeometry,
    IngestOptions,
    InvalidGeometryError,
    LabelGeometryError,
    LabelStats,
    LabelValueError,
    NonFiniteLabelError,
    NonIntegerLabelError,
    NoValidPixelsError,
    RasterGeometry,
    VolumeGeometry,
)
from pipelines.files import sha256_file
from pipelines.ingest.candidates import CaseCandidate
from pipelines.io import PixelStats, image2d, nifti, raster
from pipelines.io.formats import is_vector_name
from pipelines.io.vector import rasterize_to_file, read_vector_labels

AnyGeometry = VolumeGeometry | RasterGeometry | ImageGeometry


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
        kind: how to read them (volume, raster or image).
        options: ingestion options (tolerances, vector label settings).
        rules: what label values are allowed.
        derived_dir: where rasterised vector labels are written.

    Raises:
        InputError: any subclass, naming the offending file.
    """
    geometries: list[AnyGeometry] = []
    nonfinite: list[int] = []
    counts: list[int] = []
    for path in candidate.channels:
        geometry, bad_pixels = _read_channel(path, kind, options)
        if geometries:
            _check_same_grid(
                geometries[0], geometry, candidate.channels[0], path, options, ChannelGeometryError
            )
        geometries.append(geometry)
        nonfinite.append(bad_pixels)
        counts.append(_channel_count(geometry))
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
            label_path, kind, geometries[0], candidate.channels[0], options, rules
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


def _channel_count(geometry: AnyGeometry) -> int:
    if isinstance(geometry, RasterGeometry):
        return geometry.count
    return geometry.channels


def _read_channel(path: Path, kind: CaseKind, options: IngestOptions) -> tuple[AnyGeometry, int]:
    """Geometry of one channel file and its count of non-finite pixels (streamed)."""
    stats = PixelStats(track_values=False)
    if kind == "volume":
        image = nifti.open_volume(path)
        geometry: AnyGeometry = nifti.volume_geometry(image, path)
        stats.consume(nifti.iter_volume_slabs(image, path))
    elif kind == "raster":
        with raster.open_raster(path) as dataset:
            geometry = raster.raster_geometry(
                dataset, path, allow_ungeoreferenced=options.allow_ungeoreferenced
            )
            valid_pixels = 0
            for band in range(1, dataset.count + 1):
                for values, valid in raster.iter_band_windows(dataset, path, band):
                    stats.update(values)
                    valid_pixels += values.size if valid is None else int(valid.sum())
            if valid_pixels == 0:
                raise NoValidPixelsError(
                    f"holds only nodata pixels (nodata={dataset.nodata}): nothing to learn from",
                    path=path,
                )
    else:
        geometry = image2d.read_image_geometry(path)
        stats.update(image2d.read_image(path))
    return geometry, stats.nonfinite


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
) -> list[tuple[str, object, object]]:
    if type(reference) is not type(other):
        return [("kind", reference.kind, other.kind)]
    found: list[tuple[str, object, object]] = []
    if isinstance(reference, VolumeGeometry) and isinstance(other, VolumeGeometry):
        if reference.shape != other.shape:
            found.append(("shape", reference.shape, other.shape))
        a, b = np.array(reference.affine), np.array(other.affine)
        if not np.allclose(a, b, rtol=1e-5, atol=options.atol_mm):
            found.append(("affine", a.round(4).tolist(), b.round(4).tolist()))
    elif isinstance(reference, RasterGeometry) and isinstance(other, RasterGeometry):
        if (reference.width, reference.height) != (other.width, other.height):
            found.append(("size", (reference.width, reference.height), (other.width, other.height)))
        if not _same_crs(reference.crs_wkt, other.crs_wkt):
            found.append(("crs", _crs_name(reference.crs_wkt), _crs_name(other.crs_wkt)))
        pixel = min(reference.resolution)
        if not np.allclose(
            reference.transform, other.transform, rtol=0, atol=options.rtol_pixel * pixel
        ):
            found.append(("transform", reference.transform, other.transform))
    elif (
        isinstance(reference, ImageGeometry)
        and isinstance(other, ImageGeometry)
        and (reference.height, reference.width) != (other.height, other.width)
    ):
        found.append(("size", (reference.height, reference.width), (other.height, other.width)))
    return found


def _same_crs(first: str | None, second: str | None) -> bool:
    if first is None or second is None:
        return first == second
    return first == second or CRS.from_wkt(first) == CRS.from_wkt(second)


def _crs_name(wkt: str | None) -> str:
    return "none" if wkt is None else CRS.from_wkt(wkt).to_string()[:60]


def _rasterize_vector(
    vector_path: Path,
    case_id: str,
    grid: AnyGeometry,
    options: IngestOptions,
    rules: LabelRules,
    derived_dir: Path,
) -> Path:
    if not isinstance(grid, RasterGeometry) or grid.crs_wkt is None:
        raise LabelGeometryError(
            "is a vector label but its image is not a georeferenced raster", path=vector_path
        )
    labels = read_vector_labels(
        vector_path,
        grid.crs_wkt,
        attribute=options.vector_attribute,
        label_names=options.labels,
        instance=rules.instance,
        vector_crs=options.vector_crs,
    )
    dtype = "uint16" if rules.instance else "uint8"
    return rasterize_to_file(labels, grid, derived_dir / f"{case_id}_label.tif", dtype=dtype)


def _check_label(
    path: Path,
    kind: CaseKind,
    grid: AnyGeometry,
    image_path: Path,
    options: IngestOptions,
    rules: LabelRules,
) -> LabelStats:
    """Check the label's grid and values; returns its value counts (streamed)."""
    stats = PixelStats()
    if kind == "volume":
        image = nifti.open_volume(path)
        volume = nifti.volume_geometry(image, path)
        if volume.channels != 1:
            raise InvalidGeometryError(
                f"is a label with {volume.channels} channels (4D); labels must be 3D", path=path
            )
        _check_same_grid(grid, volume, image_path, path, options, LabelGeometryError)
        stats.consume(nifti.iter_volume_slabs(image, path))
    elif kind == "raster":
        with raster.open_raster(path) as dataset:
            geometry: AnyGeometry = raster.raster_geometry(
                dataset, path, allow_ungeoreferenced=options.allow_ungeoreferenced
            )
            _check_same_grid(grid, geometry, image_path, path, options, LabelGeometryError)
            for values, _ in raster.iter_band_windows(dataset, path, 1):
                stats.update(values)
    else:
        geometry = image2d.read_image_geometry(path)
        _check_same_grid(grid, geometry, image_path, path, options, LabelGeometryError)
        stats.update(_single_channel(image2d.read_image(path), path))
    return _label_stats(stats, path, rules)


def _single_channel(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        return array
    if all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, array.shape[-1])):
        return array[..., 0]
    raise InvalidGeometryError(
        f"is a label with {array.shape[-1]} different channels; labels must be single-channel",
        path=path,
    )


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
