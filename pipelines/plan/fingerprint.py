"""``compute_fingerprint``: measure a dataset once, nnU-Net style.

Axis order: volumes are reported in the order the network sees them, i.e. after the
preprocessing reorients them to RAS (:func:`ras_shape_and_spacing`, the same nibabel
``io_orientation`` logic that MONAI's ``Orientationd("RAS")`` uses). 2D data is reported as
(H, W) = (rows, columns); raster pixel sizes are therefore (y, x) in CRS units, and plain
images have a nominal spacing of 1 pixel.

Intensities are sampled by each kind's adapter (:mod:`pipelines.kinds`), never fully held:
volumes from their foreground voxels (label > 0, nnU-Net's choice; all voxels when a case has
no foreground), rasters from their valid (non-nodata, finite) pixels window by window, images
from all pixels. Class frequencies come from the manifest's label counts without re-reading
any label; the foreground's connected components (:mod:`pipelines.plan.components`) are measured
on whole label maps of a sample of cases. Pixels where some channels are nodata and others are
not (a raster band with gaps of its own) are counted on the drift check's decimated reads.
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
    InputError,
    VolumeGeometry,
)
from pipelines.kinds import kind_adapter
from pipelines.plan.components import foreground_component_share

__all__ = [
    "ChannelSampler",
    "class_frequencies",
    "common_channel_count",
    "compute_fingerprint",
    "image_channels_after_alpha",
    "is_ct_channel",
    "median_object_size",
    "ras_shape_and_spacing",
    "sample_values",
    "to_channels_first",
]

logger = logging.getLogger(__name__)

_CT_NAME = re.compile(r"(?<![A-Z])CT(?![A-Z])")
#: HU-looking intensity range: p0.5 below this (air) and p99.5 above ``_HU_HIGH`` (bone).
_HU_LOW, _HU_HIGH = -500.0, 300.0


@dataclass
class ChannelSampler:
    """Sampled values and exact non-zero counts of one channel, over all cases (each kind's
    :meth:`~pipelines.kinds.KindAdapter.measure_case` adds to it)."""

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
    affine = np.asarray(geometry.affine)
    ornt = nib.orientations.io_orientation(affine)  # type: ignore[no-untyped-call]
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
        return np.asarray(image.mean(axis=0, keepdims=True), dtype=np.float32)
    raise ValueError(f"image has {image.shape[0]} channels, the plan expects {channels}")


def sample_values(
    values: NDArray[np.generic], rng: np.random.Generator, count: int
) -> NDArray[np.float64]:
    """At most ``count`` of ``values``, drawn without replacement, as float64."""
    if values.size > count:
        values = values[rng.choice(values.size, size=count, replace=False)]
    return np.asarray(values, dtype=np.float64)


def common_channel_count(cases: Sequence[Case], source: str) -> int:
    """The channel count every case shares (the sum over its files).

    Raises:
        InputError: the cases have different counts (``source`` names the dataset).
    """
    counts = {sum(c.channel_counts) or len(c.channels) for c in cases}
    if len(counts) != 1:
        raise InputError(
            f"cases have different channel counts {sorted(counts)}",
            path=source,
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
    adapter = kind_adapter(cases[0].kind)
    count = adapter.input_channels(cases, manifest.source)
    samplers = [ChannelSampler() for _ in range(count)]
    for case in cases:
        logger.debug("fingerprinting %s", case.case_id)
        adapter.measure_case(
            case,
            samplers,
            ignore_value=manifest.ignore_value,
            rng=rng,
            samples_per_case=samples_per_case,
        )
    names = _channel_names(manifest, count)
    channels = tuple(sampler.stats(name) for sampler, name in zip(samplers, names, strict=True))
    axes = [adapter.grid_axes(case.geometry) for case in cases]
    shapes = np.array([shape for shape, _ in axes])
    spacings = tuple(spacing for _, spacing in axes)
    return DatasetFingerprint(
        dataset_name=manifest.name,
        kind=cases[0].kind,
        n_cases=len(cases),
        median_shape=tuple(int(v) for v in np.round(np.median(shapes, axis=0))),
        median_spacing=tuple(float(v) for v in np.median(np.array(spacings), axis=0)),
        spacings=spacings,
        channels=channels,
        class_frequencies=class_frequencies(manifest),
        modality_hint=adapter.modality_hint(channels),
        median_object_size=median_object_size(manifest),
        foreground_component_share=foreground_component_share(manifest, seed=seed),
        partial_nodata_fraction=float(np.mean([adapter.partial_nodata_share(c) for c in cases])),
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
