"""The ``volume`` kind: NIfTI volumes (3D, or 4D with channels), planned and resampled in RAS.

MONAI and torch are imported by the members that need them (preprocessing, segmentation), so
that ingest and planning, which use this adapter too, start without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from data_contracts import (
    Case,
    ChannelGeometryError,
    ChannelNormalization,
    ChannelStats,
    IngestOptions,
    InvalidGeometryError,
    TrainingPlan,
    VolumeGeometry,
)
from pipelines.io import PixelStats, nifti
from pipelines.kinds import register_kind
from pipelines.kinds.base import (
    AnyGeometry,
    GridDifference,
    InputSample,
    ModalityHint,
    SegmentJob,
    narrow,
    refuse_vector_label,
)
from pipelines.plan.drift import nonzero_sample
from pipelines.plan.fingerprint import (
    ChannelSampler,
    common_channel_count,
    is_ct_channel,
    ras_shape_and_spacing,
)
from pipelines.plan.planner import intensity_window

if TYPE_CHECKING:
    from monai.transforms.compose import Compose

__all__ = ["VOLUME", "VolumeKind"]


class VolumeKind:
    """NIfTI volumes: one file per channel (or a 4D file), resampled to a target spacing."""

    name = "volume"
    suffixes: tuple[str, ...] = (".nii.gz", ".nii")
    spatial_dims: Literal[2, 3] = 3
    target_spacing_unit: str | None = "mm (RAS)"
    georeferenced = False
    network_norm = "instance"
    fixed_channels = True
    channels_in_separate_files = True
    lineage_in_outputs = False
    default_overlap = 0.5
    default_window_batch = 4

    def read_channel(self, path: Path, options: IngestOptions) -> tuple[AnyGeometry, int]:
        """Header geometry, and the non-finite voxels counted slab by slab."""
        image = nifti.open_volume(path)
        geometry = nifti.volume_geometry(image, path)
        stats = PixelStats(track_values=False).consume(nifti.iter_volume_slabs(image, path))
        return geometry, stats.nonfinite

    def read_label(
        self, path: Path, options: IngestOptions
    ) -> tuple[AnyGeometry, Iterable[np.ndarray]]:
        """A 3D label's geometry and its slabs (a 4D label is refused)."""
        image = nifti.open_volume(path)
        geometry = nifti.volume_geometry(image, path)
        if geometry.channels != 1:
            raise InvalidGeometryError(
                f"is a label with {geometry.channels} channels (4D); labels must be 3D", path=path
            )
        return geometry, nifti.iter_volume_slabs(image, path)

    def grid_differences(
        self, reference: AnyGeometry, other: AnyGeometry, options: IngestOptions
    ) -> list[GridDifference]:
        """Shape, and the affine within ``options.atol_mm``."""
        first, second = narrow(reference, VolumeGeometry), narrow(other, VolumeGeometry)
        found: list[GridDifference] = []
        if first.shape != second.shape:
            found.append(("shape", first.shape, second.shape))
        a, b = np.array(first.affine), np.array(second.affine)
        if not np.allclose(a, b, rtol=1e-5, atol=options.atol_mm):
            found.append(("affine", a.round(4).tolist(), b.round(4).tolist()))
        return found

    def channels_of(self, geometry: AnyGeometry) -> int:
        """1 for a 3D file, the 4th dimension of a 4D file."""
        return narrow(geometry, VolumeGeometry).channels

    def is_ungeoreferenced(self, geometry: AnyGeometry) -> bool:
        """Volumes have no CRS to lack."""
        return False

    def rasterize_vector_label(
        self,
        vector_path: Path,
        grid: AnyGeometry,
        destination: Path,
        options: IngestOptions,
        *,
        instance: bool,
    ) -> Path:
        """Refused: a volume has no CRS."""
        refuse_vector_label(vector_path)

    def grid_axes(self, geometry: AnyGeometry) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Shape (voxels) and spacing (mm) in RAS order, as the preprocessing reorients."""
        return ras_shape_and_spacing(narrow(geometry, VolumeGeometry))

    def input_channels(self, cases: Sequence[Case], source: str) -> int:
        """Every case's channel count, which must be the same."""
        return common_channel_count(cases, source)

    def measure_case(
        self,
        case: Case,
        samplers: Sequence[ChannelSampler],
        *,
        ignore_value: int | None,
        rng: np.random.Generator,
        samples_per_case: int,
    ) -> None:
        """Sample the foreground voxels (label > 0, not ignored; all voxels without any)."""
        if case.label is None:
            return
        label, _ = nifti.load_volume(case.label.path)
        label = np.asarray(label)
        mask = label > 0 if ignore_value is None else (label > 0) & (label != ignore_value)
        if not mask.any():
            mask = np.ones_like(mask)
        index = np.flatnonzero(mask)
        if index.size > samples_per_case:
            index = rng.choice(index, size=samples_per_case, replace=False)
        for sampler, channel in zip(samplers, _channels_of(case), strict=True):
            sampler.add(
                channel.ravel()[index].astype(np.float64),
                nonzero=int(np.count_nonzero(channel)),
                total=channel.size,
            )

    def partial_nodata_share(self, case: Case) -> float:
        """NIfTI volumes have no nodata value."""
        return 0.0

    def modality_hint(self, channels: Sequence[ChannelStats]) -> ModalityHint:
        """``"ct"`` when any channel says CT by name or Hounsfield-like range, else ``"mr"``."""
        return "ct" if any(is_ct_channel(stats) for stats in channels) else "mr"

    def channel_normalization(self, stats: ChannelStats) -> ChannelNormalization:
        """CT channels: clip to the foreground [p0.5, p99.5] window, z-score with the foreground
        mean/std; other channels: z-score inside the non-zero mask, per image."""
        if not is_ct_channel(stats):
            return ChannelNormalization(scheme="zscore_nonzero")
        lower, upper = intensity_window(stats)
        std = stats.std if stats.std > 0 else 1.0
        return ChannelNormalization(scheme="ct", mean=stats.mean, std=std, lower=lower, upper=upper)

    def transforms(self, plan: TrainingPlan, *, train: bool) -> Compose:
        """Load, RAS, resample, crop to non-zero, labels, normalise (+ patches, augmentation)."""
        from pipelines.preprocess.transforms import volume_transforms

        return volume_transforms(plan, train=train)

    def read_label_map(self, path: Path) -> np.ndarray:
        """The label volume as stored."""
        return np.asarray(nifti.load_volume(path)[0])

    def check_input(self, channels: Sequence[Path]) -> None:
        """Every header valid, every channel file on the grid of the first."""
        first = nifti.read_volume_geometry(channels[0])
        for path in channels[1:]:
            other = nifti.read_volume_geometry(path)
            if other.shape != first.shape or not np.allclose(
                other.affine, first.affine, rtol=1e-5, atol=1e-3
            ):
                raise ChannelGeometryError(
                    f"is not on the grid of {channels[0].name} (shape {other.shape} vs "
                    f"{first.shape}, or another affine)",
                    path=path,
                )

    def sample_input(
        self, channels: Sequence[Path], *, rng: np.random.Generator, count: int
    ) -> InputSample:
        """RAS shape and spacing from the header; non-zero voxels of every channel (MRI
        background is 0), from every second voxel along each axis."""
        shape, spacing = ras_shape_and_spacing(nifti.read_volume_geometry(channels[0]))
        values: list[NDArray[np.float64]] = []
        for path in channels:
            image = nifti.open_volume(path)
            data = np.asarray(image.dataobj[::2, ::2, ::2], dtype=np.float32)
            planes = [data[..., c] for c in range(data.shape[3])] if data.ndim == 4 else [data]
            values.extend(nonzero_sample(plane, None, rng, count) for plane in planes)
        return InputSample(shape, spacing, tuple(values))

    def read_fully(self, path: Path) -> None:
        """Decompress every slab (a truncated ``.nii.gz`` has a good header)."""
        for _ in nifti.iter_volume_slabs(nifti.open_volume(path), path):
            pass

    def segment(self, job: SegmentJob) -> dict[str, Path]:
        """Predict in the source grid, post-process with the source spacing, write NIfTI."""
        from pipelines.infer.in_memory import class_values_of, predict_volume
        from pipelines.postprocess.decision import foreground_cut
        from pipelines.postprocess.labels import postprocess_labels
        from pipelines.write.nifti import (
            write_nifti_map,
            write_nifti_mask,
            write_nifti_probabilities,
        )

        model, source = job.model, job.channels[0]
        prediction = predict_volume(
            model,
            job.channels,
            job.options,
            keep_probabilities=job.options.probabilities,
            foreground_cut=foreground_cut(job.postprocess, model.plan),
        )
        spacing = tuple(float(z) for z in nifti.open_volume(source).header.get_zooms()[:3])  # type: ignore[no-untyped-call]
        labels = postprocess_labels(
            class_values_of(prediction.classes, model.plan), job.postprocess, spacing=spacing
        )
        outputs = {"mask": write_nifti_mask(labels, source, job.output(".nii.gz"))}
        job.report_quality(prediction.quality)
        if prediction.entropy is not None:
            outputs["uncertainty"] = write_nifti_map(
                prediction.entropy,
                source,
                job.output("_entropy.nii.gz"),
                description="segflow entropy (value / 255)",
            )
        if prediction.probabilities is not None:
            outputs["probabilities"] = write_nifti_probabilities(
                prediction.probabilities, source, job.output("_prob.nii.gz")
            )
        return outputs

    def geometry_cells(self, geometry: AnyGeometry) -> tuple[str, str, str]:
        """Shape, spacing in mm, orientation codes."""
        volume = narrow(geometry, VolumeGeometry)
        spacing = "×".join(f"{s:g}" for s in volume.spacing)
        return "×".join(map(str, volume.shape)), f"{spacing} mm", "".join(volume.orientation)


def _channels_of(case: Case) -> list[NDArray[np.floating]]:
    """Every channel of a case as a float32 array (a 4D file gives several)."""
    channels: list[NDArray[np.floating]] = []
    for record in case.channels:
        data, _ = nifti.load_volume(record.path)
        data = np.asarray(data, dtype=np.float32)
        channels.extend([data[..., c] for c in range(data.shape[3])] if data.ndim == 4 else [data])
    return channels


VOLUME = register_kind(VolumeKind())
