"""Dataset fingerprint and training plan: what segflow derives from the data, nnU-Net style.

The fingerprint is measured from a manifest; the plan is derived from the fingerprint (and can
be overridden field by field from flags or a YAML config). Both travel with a registered model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue, model_validator

from data_contracts._base import Contract
from data_contracts.dataset import CaseKind, LabelKind
from data_contracts.postprocess import PostprocessConfig

NormalizationScheme = Literal["ct", "zscore", "zscore_nonzero", "percentile", "none"]
MissingChannels = Literal["nodata", "predict"]


class ChannelStats(Contract):
    """Intensity statistics of one input channel (foreground-only for medical volumes).

    Attributes:
        name: channel (modality or band) name.
        mean: mean intensity.
        std: standard deviation.
        percentile_00_5: 0.5th percentile.
        percentile_99_5: 99.5th percentile.
        nonzero_fraction: fraction of voxels that are non-zero (MRI background is 0).
    """

    name: str
    mean: float
    std: float = Field(ge=0)
    percentile_00_5: float
    percentile_99_5: float
    nonzero_fraction: float = Field(ge=0, le=1)


class DatasetFingerprint(Contract):
    """What a dataset looks like, measured once from its manifest.

    Attributes:
        dataset_name: the manifest's name.
        kind: volume, raster or image cases.
        n_cases: labelled cases measured.
        median_shape: median spatial shape (volumes: X, Y, Z voxels; 2D: H, W pixels).
        median_spacing: median voxel spacing in mm (volumes) or pixel size in CRS units.
        spacings: per-case spacing (same units), for anisotropy checks.
        channels: intensity statistics per input channel.
        class_frequencies: label value → fraction of labelled pixels.
        modality_hint: ``"ct"`` when channel names or intensities say CT, else ``"mr"``/``"other"``.
        median_object_size: instance labels: median object size in pixels (voxels).
        foreground_component_share: semantic labels with a background (value 0): the smallest,
            over the measured cases, share of a case's foreground (every other class, as one
            region) held by its largest connected component; ``None`` when not measured.
        partial_nodata_fraction: share of the measured pixels where some channels are nodata
            and others are not (a raster's band with its own gaps, e.g. Landsat 7's SLC-off
            stripes); 0 where every channel is missing together or nothing is.
    """

    dataset_name: str
    kind: CaseKind
    n_cases: int = Field(ge=0)
    median_shape: tuple[int, ...]
    median_spacing: tuple[float, ...]
    spacings: tuple[tuple[float, ...], ...] = ()
    channels: tuple[ChannelStats, ...]
    class_frequencies: dict[int, float] = Field(default_factory=dict)
    modality_hint: Literal["ct", "mr", "other"] = "other"
    median_object_size: float | None = Field(default=None, ge=0)
    foreground_component_share: float | None = Field(default=None, ge=0, le=1)
    partial_nodata_fraction: float = Field(default=0.0, ge=0, le=1)


class ChannelNormalization(Contract):
    """How one channel is normalised before the network sees it.

    Attributes:
        scheme: ``ct`` (clip to [lower, upper] then z-score with mean/std), ``zscore``,
            ``zscore_nonzero`` (statistics and output only inside the non-zero mask, MRI),
            ``percentile`` (scale [lower, upper] to [0, 1], rasters), ``none``.
        mean: subtracted mean (z-score schemes).
        std: divisor (z-score schemes).
        lower: clip or scale lower bound.
        upper: clip or scale upper bound.
    """

    scheme: NormalizationScheme
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)
    lower: float | None = None
    upper: float | None = None


class NetworkChoice(Contract):
    """The network the plan chose for ``--model auto``, and why (see :mod:`pipelines.plan.network`).

    Attributes:
        model: model name in the factory (``dynunet``).
        options: its keyword options (depth, filters, normalisation).
        depth: poolings; the deepest feature map of a patch stays at least 8 px.
        base_width: features of the first level (doubled per level, capped).
        budget_minutes: the training budget the width was fitted to (``--max-minutes``, or the
            default budget when none was given).
        train_seconds: seconds of that budget left for optimiser steps (probe, validation,
            final evaluation and registering set aside).
        seconds_per_step: probe: measured seconds per training step, by base width.
        planned_steps: optimiser steps the chosen width is expected to reach.
        min_steps: the fewest steps a width had to reach to be chosen.
        device: where the probe ran (``cpu``, ``cuda``).
        precision: the training's Lightning precision, which the probe ran under
            (``bf16-mixed`` on CPUs with native bf16; ``32-true`` in plans made before it).
        rule: one sentence a person reads: budget, probe, steps, network, patch, batch.
    """

    model: str
    options: dict[str, JsonValue] = Field(default_factory=dict)
    depth: int = Field(ge=1)
    base_width: int = Field(ge=1)
    budget_minutes: float = Field(gt=0)
    train_seconds: float = Field(ge=0)
    seconds_per_step: dict[str, float] = Field(default_factory=dict)
    planned_steps: int = Field(ge=0)
    min_steps: int = Field(ge=0)
    device: str = "cpu"
    precision: str = "32-true"
    rule: str = ""


class TrainingPlan(Contract):
    """Everything training and inference need to treat the data identically.

    Attributes:
        dataset_name: name of the dataset the plan was made for.
        kind: volume, raster or image.
        label_kind: semantic or instance labels.
        spatial_dims: 2 or 3.
        target_spacing: resampling target in mm for volumes; ``None`` keeps the native grid.
        patch_size: training patch (and sliding-window ROI) size, spatial axes only.
        batch_size: patches per training step.
        in_channels: network input channels.
        class_values: label values in the files, in class-index order (index 0 = background).
        class_names: one name per class index.
        ignore_value: label value excluded from losses and metrics (nodata), if any.
        normalization: one entry per input channel.
        foreground_oversample: fraction of patches centred on foreground.
        memory_budget_mb: activation memory the patch and batch size were fitted to.
        min_instance_seed: instance plans: interior regions with fewer pixels are noise, not
            objects (they join their neighbour or vanish); about a tenth of the median object.
        overrides: fields the user set explicitly (flag or YAML), for the record.
        network: the network chosen for ``--model auto`` (``None`` when the user named one).
        postprocess: the clean-up ``segflow segment`` applies to this model's label maps,
            chosen from the training labels (logged with the model as
            ``processing.postprocess``).
        missing_channels: what a pixel with some channels nodata and others not is:
            ``nodata`` (ignored by training, written as nodata; the rule of older plans) or
            ``predict`` (trained on and segmented, each missing channel set to 0 after
            normalisation, in training as in inference; only pixels where every channel is
            nodata are nodata). Planned ``predict`` when the training data holds such pixels.
    """

    dataset_name: str
    kind: CaseKind
    label_kind: LabelKind = "semantic"
    spatial_dims: Literal[2, 3]
    target_spacing: tuple[float, ...] | None = None
    patch_size: tuple[int, ...]
    batch_size: int = Field(ge=1)
    in_channels: int = Field(ge=1)
    class_values: tuple[int, ...] = Field(min_length=1)
    class_names: tuple[str, ...] = Field(min_length=1)
    ignore_value: int | None = None
    normalization: tuple[ChannelNormalization, ...]
    foreground_oversample: float = Field(default=0.33, ge=0, le=1)
    memory_budget_mb: int = Field(default=2048, ge=64)
    min_instance_seed: int = Field(default=0, ge=0)
    overrides: tuple[str, ...] = ()
    network: NetworkChoice | None = None
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    missing_channels: MissingChannels = "nodata"

    @model_validator(mode="after")
    def _consistent(self) -> TrainingPlan:
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(f"patch_size {self.patch_size} does not have {self.spatial_dims} axes")
        if self.target_spacing is not None and len(self.target_spacing) != self.spatial_dims:
            raise ValueError(
                f"target_spacing {self.target_spacing} does not have {self.spatial_dims} axes"
            )
        if len(self.class_names) != len(self.class_values):
            raise ValueError("class_names and class_values must have the same length")
        if len(self.normalization) != self.in_channels:
            raise ValueError(
                f"{len(self.normalization)} normalisation entries for {self.in_channels} channels"
            )
        if self.ignore_value is not None and self.ignore_value in self.class_values:
            raise ValueError(f"ignore_value {self.ignore_value} is also a class value")
        if self.missing_channels == "predict" and self.in_channels < 2:
            raise ValueError(
                "missing_channels 'predict' needs at least two channels: with one, a missing "
                "channel is a missing pixel"
            )
        threshold = self.postprocess.threshold
        if threshold is not None and len(self.class_values) > 2 and self.class_values[0] != 0:
            raise ValueError(
                f"postprocess threshold {threshold:g} needs class value 0 (the background) "
                f"first; this plan's classes are {list(self.class_values)}"
            )
        return self

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_values)
