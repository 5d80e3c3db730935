"""Cases and dataset manifests: what ``segflow ingest`` produces."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, model_validator

from data_contracts._base import Contract
from data_contracts.geometry import Geometry

CaseKind = Literal["volume", "raster", "image"]
LabelKind = Literal["semantic", "instance"]

_SHA256_PATTERN = r"^[0-9a-f]{64}$"


class FileRecord(Contract):
    """One file of a case, with its content hash.

    Attributes:
        path: absolute path of the file as read (inside the extraction folder for archives).
        sha256: hex SHA-256 of the file's bytes, streamed.
        size_bytes: file size.
        source: where the file came from when it differs from ``path`` (archive member,
            vector label that was rasterised onto the image grid).
    """

    path: str
    sha256: str = Field(pattern=_SHA256_PATTERN)
    size_bytes: int = Field(ge=0)
    source: str | None = None


class LabelStats(Contract):
    """What a label file holds, counted by streaming its blocks.

    Attributes:
        values: every distinct label value found, ascending.
        voxel_counts: voxels (pixels) per value, aligned with ``values``.
    """

    values: tuple[int, ...]
    voxel_counts: tuple[int, ...]

    @model_validator(mode="after")
    def _aligned(self) -> LabelStats:
        if len(self.values) != len(self.voxel_counts):
            raise ValueError("values and voxel_counts must have the same length")
        return self


class Case(Contract):
    """One training or inference case: channel files, an optional label, their geometry.

    Attributes:
        case_id: stable identifier (file stem without the ``_0000`` channel suffix).
        kind: volume (NIfTI), raster (GeoTIFF) or image (PNG/TIFF without georeferencing).
        channels: one record per channel file, in channel order.
        label: the label file, ``None`` for images to segment.
        geometry: geometry of the first channel; every other file matches it within tolerance.
        label_stats: label values and counts, when a label is present.
        nonfinite_pixels: count of NaN/inf pixels per channel file, reported, not fatal.
        channel_counts: channels (bands) each channel file contributes, in file order.
        warnings: anything worth a look that did not reject the case.
    """

    case_id: str = Field(min_length=1)
    kind: CaseKind
    channels: tuple[FileRecord, ...] = Field(min_length=1)
    label: FileRecord | None = None
    geometry: Geometry
    label_stats: LabelStats | None = None
    nonfinite_pixels: tuple[int, ...] = ()
    channel_counts: tuple[int, ...] = ()
    warnings: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _geometry_matches_kind(self) -> Case:
        if self.geometry.kind != self.kind:
            raise ValueError(f"case kind {self.kind!r} but geometry kind {self.geometry.kind!r}")
        return self


class RejectedInput(Contract):
    """An input that was quarantined, and why.

    Attributes:
        path: the offending file (or the case's first file).
        case_id: the case it belonged to, when known.
        error: the segflow exception class name, e.g. ``"GeometryMismatchError"``.
        reason: the full message: file, reason and what to do.
    """

    path: str
    case_id: str | None = None
    error: str
    reason: str


class DatasetManifest(Contract):
    """A validated dataset: valid cases, quarantined inputs, label and channel names.

    Attributes:
        name: dataset name (from dataset.json, else the source folder/archive name).
        source: the folder, archive or CSV that was ingested (absolute).
        created_at: when the manifest was made (UTC).
        segflow_version: version of segflow that made it.
        label_kind: semantic class maps, or instance maps (0 background, 1..N objects).
        labels: label name → value, e.g. ``{"background": 0, "tumour": 1}``.
        ignore_value: label value meaning "no label here" (excluded from losses and metrics).
        channel_names: one name per channel (modalities or bands).
        cases: the valid cases.
        rejected: inputs that failed validation, with their reasons.
    """

    name: str
    source: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    segflow_version: str
    label_kind: LabelKind = "semantic"
    labels: dict[str, int] = Field(default_factory=dict)
    ignore_value: int | None = None
    channel_names: tuple[str, ...] = ()
    cases: tuple[Case, ...] = ()
    rejected: tuple[RejectedInput, ...] = ()

    @model_validator(mode="after")
    def _unique_case_ids(self) -> DatasetManifest:
        seen: set[str] = set()
        for case in self.cases:
            if case.case_id in seen:
                raise ValueError(f"duplicate case id {case.case_id!r}")
            seen.add(case.case_id)
        return self

    @property
    def total_channels(self) -> int:
        """Input channels of the first case (sum over its channel files)."""
        return sum(self.cases[0].channel_counts) if self.cases else 0

    @property
    def labelled_cases(self) -> tuple[Case, ...]:
        """Cases that have a label (usable for training and evaluation)."""
        return tuple(case for case in self.cases if case.label is not None)
