"""The contract every data kind fulfils: :class:`KindAdapter`, and what its members exchange.

A data kind is a family of files segflow reads end to end: ``volume`` (NIfTI), ``raster``
(GeoTIFF) and ``image`` (2D PNG/TIFF). Everything that differs between kinds — how a file is
read and checked at ingest, how a dataset is measured and planned, how cases are preprocessed,
segmented and written — is a member of the kind's adapter; the steps ask the adapter
(:func:`pipelines.kinds.kind_adapter`) instead of testing the kind's name.

This module imports no step: the adapters (``volume.py``, ``raster.py``, ``image2d.py``) do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol, TypeVar, runtime_checkable

import numpy as np

from data_contracts import (
    Case,
    ChannelNormalization,
    ChannelStats,
    FileQuality,
    ImageGeometry,
    InferenceOptions,
    IngestOptions,
    InputError,
    LabelGeometryError,
    PostprocessConfig,
    RasterGeometry,
    TrainingPlan,
    VolumeGeometry,
)

if TYPE_CHECKING:
    from monai.transforms.compose import Compose

    from pipelines.infer.loaded_model import LoadedModel
    from pipelines.plan.fingerprint import ChannelSampler

__all__ = [
    "AnyGeometry",
    "GridDifference",
    "InputSample",
    "KindAdapter",
    "ModalityHint",
    "SegmentJob",
    "narrow",
    "refuse_vector_label",
]

AnyGeometry = VolumeGeometry | RasterGeometry | ImageGeometry
"""The geometry of any kind (``data_contracts.Geometry`` without the pydantic discriminator)."""

GridDifference = tuple[str, object, object]
"""One property on which two grids differ: ``(name, reference value, other value)``."""

ModalityHint = Literal["ct", "mr", "other"]

_G = TypeVar("_G", VolumeGeometry, RasterGeometry, ImageGeometry)


def narrow(geometry: AnyGeometry, expected: type[_G]) -> _G:
    """``geometry`` as the geometry type of an adapter's own kind.

    Raises:
        InputError: the geometry is of another kind (a case handed to the wrong adapter).
    """
    if not isinstance(geometry, expected):
        raise InputError(
            f"geometry of kind {geometry.kind!r} where a {expected.__name__} was expected"
        )
    return geometry


def refuse_vector_label(vector_path: Path) -> NoReturn:
    """What kinds without a CRS do with a vector label: refuse it.

    Raises:
        LabelGeometryError: always.
    """
    raise LabelGeometryError(
        "is a vector label but its image is not a georeferenced raster", path=vector_path
    )


@dataclass(frozen=True)
class InputSample:
    """An input's header and a cheap sample of its pixels, for the drift check.

    Attributes:
        shape: size per axis in the network's axis order (volumes: RAS; 2D: H, W).
        spacing: spacing per axis, same order (mm; CRS units for rasters; 1 for images).
        values: per channel, a sample of the finite, valid, non-zero pixel values.
        crs_units: the CRS's linear unit (rasters with a CRS), else ``None``.
        nodata_fraction: share of pixels that are nodata/masked in some channel.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    values: tuple[np.ndarray, ...]
    crs_units: str | None = None
    nodata_fraction: float = 0.0


@dataclass(frozen=True)
class SegmentJob:
    """Everything :meth:`KindAdapter.segment` needs for one case (decided by ``segment_case``).

    Attributes:
        model: the loaded model (its plan is of this kind).
        case_id: the case's output stem.
        channels: the case's files, in channel order.
        out_dir: the output folder (exists).
        options: inference options, window overlap and batch size set (the kind's defaults
            where the user set none); ``probabilities`` and ``polygons`` ask for extra outputs.
        postprocess: the model's post-processing.
        lineage: the lineage record, for kinds whose outputs carry it in a tag.
        progress: called with (windows done, in total).
        on_quality: told the case's confidence measures once its probabilities are known.
    """

    model: LoadedModel
    case_id: str
    channels: tuple[Path, ...]
    out_dir: Path
    options: InferenceOptions
    postprocess: PostprocessConfig
    lineage: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[int, int], None] | None = None
    on_quality: Callable[[FileQuality], None] | None = None

    def report_quality(self, quality: FileQuality | None) -> None:
        """Hand the case's confidence measures to ``on_quality`` (when both are there)."""
        if quality is not None and self.on_quality is not None:
            self.on_quality(quality)

    def output(self, suffix: str) -> Path:
        """The output path ``<out_dir>/<case_id><suffix>`` (``suffix`` such as ``"_prob.tif"``)."""
        return self.out_dir / f"{self.case_id}{suffix}"


@runtime_checkable
class KindAdapter(Protocol):
    """What segflow needs to know about one data kind, from ingest to written outputs.

    Attributes:
        name: the kind's name as stored in cases, fingerprints and plans (``"volume"``).
        suffixes: lower-case file suffixes this kind reads (``".nii.gz"`` counts as one).
        spatial_dims: the most spatial axes a plan of this kind may have (3 or 2).
        target_spacing_unit: unit of the target spacing plans resample to (``"mm (RAS)"``), or
            ``None`` when the kind is planned and trained on its native grid.
        georeferenced: files of this kind carry a CRS; among kinds reading the same suffix,
            ingest picks this one for a dataset whose files have a CRS.
        fixed_channels: every labelled case must have the dataset's channel count (2D images
            are exempt: grey and RGB are converted to the plan's channels).
        channels_in_separate_files: multi-channel cases come as one file per channel
            (``pat1_0000.nii.gz``, ``pat1_0001.nii.gz``), so inference groups them.
        lineage_in_outputs: the mask carries the lineage record (a GeoTIFF tag); otherwise a
            ``<case>.lineage.json`` is written next to the outputs.
        default_overlap: sliding-window overlap when none is asked for.
        default_window_batch: windows per forward pass when none is asked for.
        network_norm: the normalisation layers of the plan's network: ``"instance"`` where
            intensities are relative (each scan or photo its own scale), ``"batch"`` where
            calibrated values carry the class (reflectance of a raster's bands).
    """

    name: str
    suffixes: tuple[str, ...]
    spatial_dims: Literal[2, 3]
    target_spacing_unit: str | None
    georeferenced: bool
    fixed_channels: bool
    channels_in_separate_files: bool
    lineage_in_outputs: bool
    default_overlap: float
    default_window_batch: int
    network_norm: str

    # --- ingest -----------------------------------------------------------------------------

    def read_channel(self, path: Path, options: IngestOptions) -> tuple[AnyGeometry, int]:
        """Geometry of one channel file and its count of non-finite pixels (streamed).

        Raises:
            InputError: the file is unreadable, not of this kind, or holds no valid pixel.
        """
        ...

    def read_label(
        self, path: Path, options: IngestOptions
    ) -> tuple[AnyGeometry, Iterable[np.ndarray]]:
        """A label file's geometry and its values block by block (lazily: read once the
        caller has checked the grid).

        Raises:
            InputError: the label is unreadable or has more than one channel.
        """
        ...

    def grid_differences(
        self, reference: AnyGeometry, other: AnyGeometry, options: IngestOptions
    ) -> list[GridDifference]:
        """Each property on which ``other`` is off the grid of ``reference`` (both this kind),
        within the tolerances of ``options``; empty when they share a grid."""
        ...

    def channels_of(self, geometry: AnyGeometry) -> int:
        """Channels (bands) one file of this geometry contributes to its case."""
        ...

    def is_ungeoreferenced(self, geometry: AnyGeometry) -> bool:
        """True for a geometry of a georeferenced kind that has no CRS (ingested with
        ``allow_ungeoreferenced``); always False for kinds without a CRS."""
        ...

    def rasterize_vector_label(
        self,
        vector_path: Path,
        grid: AnyGeometry,
        destination: Path,
        options: IngestOptions,
        *,
        instance: bool,
    ) -> Path:
        """Burn a vector label (GeoJSON, GeoPackage) onto ``grid``; returns ``destination``.

        Raises:
            LabelGeometryError: the kind (or this file) has no CRS to place polygons with.
            VectorLabelError: the vector file cannot be used.
        """
        ...

    # --- fingerprint and plan ---------------------------------------------------------------

    def grid_axes(self, geometry: AnyGeometry) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Shape and spacing in the axis order the network sees (volumes: RAS; 2D: H, W)."""
        ...

    def input_channels(self, cases: Sequence[Case], source: str) -> int:
        """Channels the network reads for these labelled cases (``source``: for errors).

        Raises:
            InputError: the cases cannot share one channel count.
        """
        ...

    def measure_case(
        self,
        case: Case,
        samplers: Sequence[ChannelSampler],
        *,
        ignore_value: int | None,
        rng: np.random.Generator,
        samples_per_case: int,
    ) -> None:
        """Add a sample of the case's intensities to each channel's sampler."""
        ...

    def partial_nodata_share(self, case: Case) -> float:
        """Share of the case's pixels where some channels are nodata and others are not
        (sampled; 0 for kinds whose files have no per-channel nodata)."""
        ...

    def modality_hint(self, channels: Sequence[ChannelStats]) -> ModalityHint:
        """``"ct"``, ``"mr"`` or ``"other"``, from the measured channels."""
        ...

    def channel_normalization(self, stats: ChannelStats) -> ChannelNormalization:
        """How the plan normalises a channel with these statistics."""
        ...

    # --- preprocessing and training ---------------------------------------------------------

    def transforms(self, plan: TrainingPlan, *, train: bool) -> Compose:
        """The MONAI pipeline of a plan of this kind (see :mod:`pipelines.preprocess`)."""
        ...

    def read_label_map(self, path: Path) -> np.ndarray:
        """A label file as stored, one channel (instance maps are scored against it)."""
        ...

    # --- inference --------------------------------------------------------------------------

    def check_input(self, channels: Sequence[Path]) -> None:
        """Read the headers of a case's files before any compute.

        Raises:
            InputError: a broken header, or channel files on different grids.
        """
        ...

    def sample_input(
        self, channels: Sequence[Path], *, rng: np.random.Generator, count: int
    ) -> InputSample:
        """The case's header and at most ``count`` pixel values per channel, cheaply (a
        decimated read where the format allows), for the drift check and its reference.

        Raises:
            InputError: a file cannot be read.
        """
        ...

    def read_fully(self, path: Path) -> None:
        """Read every pixel of ``path`` (to find the damaged file after a reader failed).

        Raises:
            InputError: the file cannot be read in full.
        """
        ...

    def segment(self, job: SegmentJob) -> dict[str, Path]:
        """Segment one case and write its outputs; returns them by role (``mask``,
        ``probabilities``, ``uncertainty``, ``polygons_gpkg``…), without the lineage sidecar.
        Reports the case's confidence measures through :meth:`SegmentJob.report_quality`."""
        ...

    # --- display ----------------------------------------------------------------------------

    def geometry_cells(self, geometry: AnyGeometry) -> tuple[str, str, str]:
        """``(size, spacing or resolution, orientation or CRS)`` for a manifest table."""
        ...
