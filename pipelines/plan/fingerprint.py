"""``compute_fingerprint``: measure a dataset once, nnU-Net style.

Axis order: volumes are reported in the order the network sees them, i.e. after the
preprocessing reorients them to RAS (:func:`ras_shape_and_spacing`, the same nibabel
``io_orientation`` logic that MONAI's ``Orientationd("RAS")`` uses). 2D data is reported as
(H, W) = (rows, columns); raster pixel sizes are therefore (y, x) in CRS units, and plain
images have a nominal spacing of 1 pixel.

Intensities are sampled, never fully held: volumes from their foreground voxels (label > 0,
nnU-Net's choice; all voxels when a case has no foreground), rasters from their valid
(non-nodata, finite) pixels window by window, images from all pixels. Class frequencies come
from the manifest's label counts without re-reading any label.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from data_contracts import (
    Case,
    ChannelStats,
    DatasetFingerprint,
    DatasetManifest,
    ImageGeometry,
    InputError,
    RasterGeometry,
    VolumeGeometry,
)
from pipelines.io.image2d import read_image
from pipelines.io.nifti import load_volume
from pipelines.io.raster import bounded_gdal_env, iter_band_windows, open_raster

__all__ = [
    "class_frequencies",
    "compute_fingerprint",
    "image_channels_after_alpha",
    "is_ct_channel",
    "median_object_size",
    "ras_shape_and_spacing",
    "to_channels_first",
]

logger = logging.getLogger(__name__)

_CT_NAME = re.compile(r"(?<![A-Z])CT(?![A-Z])")
#: HU-looking intensity range: p0.5 below this (air) and p99.5 above ``_HU_HIGH`` (bone).
_HU_LOW, _HU_HIGH = -500.0, 300.0


@dataclass
class _Accumulator:
    """Sampled values and exact non-zero counts of one channel, over all cases."""

    samples: list[NDArray[np.float64]] = field(default_factory=list)
    nonzero: int = 0
    total: int = 0

    def add(self, values: NDArray[np.float64], *, nonzero: int, total: int) -> None:
        finite = values[np.isfinite(values)]
        self.samples.append(finite.astype(np.float64, copy=False))
        self.nonzero += nonzero
        self.total += total

    def stats(self, name: str) -> ChannelStats:
        values = np.concatenate(self.samples) if self.samples else np.zeros(1)
        if values.size == 0:
            values = np.zeros(1)
        low, high = np.percentile(values, [0.5, 99.5])
        return ChannelStats(
            name=name,
            mean=float(values.mean()),
            std=float(values.std()),
            percentile_00_5=float(low),
            percentile_99_5=float(high),
            nonzero_fraction=self.nonzero / self.total if self.total else 0.0,
        )


def ras_shape_and_spacing(
    geometry: VolumeGeometry,
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape (voxels) and spacing (mm) of a volume in RAS axis order, as after ``Orientationd``.

    Args:
        geometry: the volume's geometry (shape and spacing in file axis order).

    Returns:
        ``(shape, spacing)``, both ordered R, A, S.
    """
    ornt = nib.orientations.io_orientation(np.asarray(geometry.affine))
    shape = [0, 0, 0]
    spacing = [0.0, 0.0, 0.0]
    for voxel_axis, (world_axis, _) in enumerate(ornt):
        shape[int(world_axis)] = geometry.shape[voxel_axis]
        spacing[int(world_axis)] = geometry.spacing[voxel_axis]
    return (shape[0], shape[1], shape[2]), (spacing[0], spacing[1], spacing[2])


def is_ct_channel(stats: ChannelStats) -> bool:
    """True when a channel's name says CT or its intensities look like Hounsfield units."""
    by_name = _CT_NAME.search(stats.name.upper()) is not None
    by_range = stats.percentile_00_5 < _HU_LOW and stats.percentile_99_5 > _HU_HIGH
    return by_name or by_range


def image_channels_after_alpha(channels: int) -> int:
    """Channels a 2D image keeps once an alpha channel is dropped (LA → 1, RGBA → 3)."""
    return {2: 1, 4: 3}.get(channels, channels)


def to_channels_first(array: np.ndarray, channels: int) -> NDArray[np.float32]:
    """A decoded 2D image as ``(channels, H, W)`` float32: alpha dropped, grey ↔ RGB matched.

    Args:
        array: ``(H, W)`` or ``(H, W, C)`` as returned by :func:`pipelines.io.image2d.read_image`.
        channels: channels wanted (1 or the image's own count; grey is repeated to 3, RGB is
            averaged to 1).

    Returns:
        The ``(channels, H, W)`` array.

    Raises:
        ValueError: the channel counts cannot be matched.
    """
    image = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    image = image[: image_channels_after_alpha(image.shape[0])].astype(np.float32)
    if image.shape[0] == channels:
        return image
    if image.shape[0] == 1:
        return np.repeat(image, channels, axis=0)
    if channels == 1:
        return image.mean(axis=0, keepdims=True)
    raise ValueError(f"image has {image.shape[0]} channels, the plan expects {channels}")


def _sample(
    values: NDArray[np.generic], rng: np.random.Generator, count: int
) -> NDArray[np.float64]:
    if values.size > count:
        values = values[rng.choice(values.size, size=count, replace=False)]
    return np.asarray(values, dtype=np.float64)


def _volume_channels(case: Case) -> list[NDArray[np.floating]]:
    channels: list[NDArray[np.floating]] = []
    for record in case.channels:
        data, _ = load_volume(record.path)
        data = np.asarray(data, dtype=np.float32)
        channels.extend([data[..., c] for c in range(data.shape[3])] if data.ndim == 4 else [data])
    return channels


def _measure_volume(
    case: Case, ignore: int | None, accs: list[_Accumulator], rng: np.random.Generator, n: int
) -> None:
    if case.label is None:
        return
    label, _ = load_volume(case.label.path)
    label = np.asarray(label)
    mask = label > 0 if ignore is None else (label > 0) & (label != ignore)
    if not mask.any():
        mask = np.ones_like(mask)
    index = np.flatnonzero(mask)
    index = index if index.size <= n else rng.choice(index, size=n, replace=False)
    for acc, channel in zip(accs, _volume_channels(case), strict=True):
        acc.add(
            channel.ravel()[index].astype(np.float64),
            nonzero=int(np.count_nonzero(channel)),
            total=channel.size,
        )


def _measure_raster(case: Case, accs: list[_Accumulator], rng: np.random.Generator, n: int) -> None:
    geometry = case.geometry
    if not isinstance(geometry, RasterGeometry):
        raise InputError("is not a raster case", path=case.channels[0].path)
    keep = min(1.0, n / (geometry.width * geometry.height))
    channel = 0
    with bounded_gdal_env():
        for record in case.channels:
            with open_raster(record.path) as dataset:
                for band in range(1, dataset.count + 1):
                    acc = accs[channel]
                    for values, valid in iter_band_windows(dataset, record.path, band):
                        ok = np.isfinite(values) if valid is None else valid & np.isfinite(values)
                        kept = values[ok]
                        chosen = kept[rng.random(kept.size) < keep]
                        acc.add(
                            chosen.astype(np.float64),
                            nonzero=int(np.count_nonzero(kept)),
                            total=kept.size,
                        )
                    channel += 1


def _measure_image(case: Case, accs: list[_Accumulator], rng: np.random.Generator, n: int) -> None:
    image = to_channels_first(read_image(case.channels[0].path), len(accs))
    for acc, channel in zip(accs, image, strict=True):
        nonzero = int(np.count_nonzero(channel))
        acc.add(_sample(channel.ravel(), rng, n), nonzero=nonzero, total=channel.size)


def _geometry_axes(case: Case) -> tuple[tuple[int, ...], tuple[float, ...]]:
    geometry = case.geometry
    if isinstance(geometry, VolumeGeometry):
        return ras_shape_and_spacing(geometry)
    if isinstance(geometry, RasterGeometry):
        res_x, res_y = geometry.resolution
        return (geometry.height, geometry.width), (res_y, res_x)
    return (geometry.height, geometry.width), (1.0, 1.0)


def _channel_count(manifest: DatasetManifest, cases: Sequence[Case]) -> int:
    kind = cases[0].kind
    if kind == "image":
        geometries = [c.geometry for c in cases if isinstance(c.geometry, ImageGeometry)]
        kept = [image_channels_after_alpha(g.channels) for g in geometries]
        return 3 if max(kept) >= 3 else 1
    counts = {sum(c.channel_counts) or len(c.channels) for c in cases}
    if len(counts) != 1:
        raise InputError(
            f"cases have different channel counts {sorted(counts)}",
            path=manifest.source,
            hint="every case needs the same channels (bands) in the same order",
        )
    return counts.pop()


def _channel_names(manifest: DatasetManifest, count: int) -> list[str]:
    if len(manifest.channel_names) == count:
        return list(manifest.channel_names)
    if count == 3:
        return ["red", "green", "blue"]
    return [f"channel_{c}" for c in range(count)]


def class_frequencies(manifest: DatasetManifest) -> dict[int, float]:
    """Label value → fraction of labelled pixels, from the manifest's counts.

    The ignore value is left out; instance maps count every object as value 1.
    """
    totals: dict[int, int] = {}
    for case in manifest.labelled_cases:
        if case.label_stats is None:
            continue
        stats = case.label_stats
        for value, count in zip(stats.values, stats.voxel_counts, strict=True):
            if value == manifest.ignore_value:
                continue
            key = min(value, 1) if manifest.label_kind == "instance" else value
            totals[key] = totals.get(key, 0) + count
    grand = sum(totals.values())
    return {value: count / grand for value, count in sorted(totals.items())} if grand else {}


def compute_fingerprint(
    manifest: DatasetManifest,
    *,
    max_cases: int | None = None,
    samples_per_case: int = 100_000,
    seed: int = 0,
) -> DatasetFingerprint:
    """Measure shapes, spacings, per-channel intensities and class frequencies of a dataset.

    Args:
        manifest: an ingested dataset; only its labelled cases are measured.
        max_cases: measure at most this many cases (chosen with ``seed``); ``None`` for all.
        samples_per_case: intensity values sampled per case and channel.
        seed: seed of the sampling.

    Returns:
        The fingerprint. Shapes and spacings are in RAS order for volumes (X=R, Y=A, Z=S,
        voxels and mm) and (H, W) for 2D data (pixels; CRS units per pixel, y then x).

    Raises:
        InputError: no labelled case, mixed case kinds, or differing channel counts.
    """
    cases = sorted(manifest.labelled_cases, key=lambda c: c.case_id)
    if not cases:
        raise InputError(
            "has no labelled case to measure", path=manifest.source, hint="ingest labels too"
        )
    kinds = {case.kind for case in cases}
    if len(kinds) != 1:
        raise InputError(
            f"mixes case kinds {sorted(kinds)}",
            path=manifest.source,
            hint="ingest volumes, rasters and images as separate datasets",
        )
    rng = np.random.default_rng(seed)
    if max_cases is not None and max_cases < len(cases):
        chosen = sorted(rng.choice(len(cases), size=max(1, max_cases), replace=False).tolist())
        cases = [cases[i] for i in chosen]
    count = _channel_count(manifest, cases)
    accs = [_Accumulator() for _ in range(count)]
    for case in cases:
        logger.debug("fingerprinting %s", case.case_id)
        if case.kind == "volume":
            _measure_volume(case, manifest.ignore_value, accs, rng, samples_per_case)
        elif case.kind == "raster":
            _measure_raster(case, accs, rng, samples_per_case)
        else:
            _measure_image(case, accs, rng, samples_per_case)
    names = _channel_names(manifest, count)
    channels = tuple(acc.stats(name) for acc, name in zip(accs, names, strict=True))
    axes = [_geometry_axes(case) for case in cases]
    shapes = np.array([shape for shape, _ in axes])
    spacings = tuple(spacing for _, spacing in axes)
    kind = cases[0].kind
    hint: str = "other"
    if kind == "volume":
        hint = "ct" if any(is_ct_channel(stats) for stats in channels) else "mr"
    return DatasetFingerprint(
        dataset_name=manifest.name,
        kind=kind,
        n_cases=len(cases),
        median_shape=tuple(int(v) for v in np.round(np.median(shapes, axis=0))),
        median_spacing=tuple(float(v) for v in np.median(np.array(spacings), axis=0)),
        spacings=spacings,
        channels=channels,
        class_frequencies=class_frequencies(manifest),
        modality_hint=hint,  # type: ignore[arg-type]
        median_object_size=median_object_size(manifest),
    )


def median_object_size(manifest: DatasetManifest) -> float | None:
    """Median object size (pixels) of an instance dataset, from the manifest's label counts."""
    if manifest.label_kind != "instance":
        return None
    sizes = [
        count
        for case in manifest.labelled_cases
        if case.label_stats is not None
        for value, count in zip(case.label_stats.values, case.label_stats.voxel_counts, strict=True)
        if value not in (0, manifest.ignore_value)
    ]
    return float(np.median(sizes)) if sizes else None
