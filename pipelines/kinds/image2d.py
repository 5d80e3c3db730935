"""The ``image`` kind: plain 2D PNG/TIFF images without georeferencing (microscopy, photos).

MONAI and torch are imported by the members that need them (as in :mod:`pipelines.kinds.volume`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_contracts import (
    Case,
    ImageGeometry,
    IngestOptions,
    InvalidGeometryError,
    TrainingPlan,
)
from pipelines.io import PixelStats, image2d
from pipelines.kinds import register_kind
from pipelines.kinds.base import (
    AnyGeometry,
    GridDifference,
    InputSample,
    SegmentJob,
    narrow,
    refuse_vector_label,
)
from pipelines.kinds.planar import PlanarKind
from pipelines.plan.drift import nonzero_sample
from pipelines.plan.fingerprint import (
    ChannelSampler,
    image_channels_after_alpha,
    sample_values,
    to_channels_first,
)

if TYPE_CHECKING:
    from monai.transforms.compose import Compose

__all__ = ["IMAGE", "ImageKind"]


class ImageKind(PlanarKind):
    """2D images held in memory; grey, RGB and alpha are converted to the plan's channels."""

    name = "image"
    suffixes: tuple[str, ...] = (".png", ".tif", ".tiff")
    georeferenced = False
    network_norm = "instance"
    fixed_channels = False
    lineage_in_outputs = False

    def read_channel(self, path: Path, options: IngestOptions) -> tuple[AnyGeometry, int]:
        """Header geometry, and the non-finite pixels of the decoded image."""
        geometry = image2d.read_image_geometry(path)
        stats = PixelStats(track_values=False)
        stats.update(image2d.read_image(path))
        return geometry, stats.nonfinite

    def read_label(
        self, path: Path, options: IngestOptions
    ) -> tuple[AnyGeometry, Iterable[np.ndarray]]:
        """The label's geometry, and its pixels once decoded (one channel, or equal ones)."""
        return image2d.read_image_geometry(path), _single_channel_label(path)

    def grid_differences(
        self, reference: AnyGeometry, other: AnyGeometry, options: IngestOptions
    ) -> list[GridDifference]:
        """Size (images have no position to compare)."""
        first, second = narrow(reference, ImageGeometry), narrow(other, ImageGeometry)
        if (first.height, first.width) == (second.height, second.width):
            return []
        return [("size", (first.height, first.width), (second.height, second.width))]

    def channels_of(self, geometry: AnyGeometry) -> int:
        """The image's channels as stored (alpha included)."""
        return narrow(geometry, ImageGeometry).channels

    def is_ungeoreferenced(self, geometry: AnyGeometry) -> bool:
        """Images have no CRS to lack."""
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
        """Refused: an image has no CRS."""
        refuse_vector_label(vector_path)

    def grid_axes(self, geometry: AnyGeometry) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """(H, W) pixels, at a nominal spacing of one pixel."""
        image = narrow(geometry, ImageGeometry)
        return (image.height, image.width), (1.0, 1.0)

    def input_channels(self, cases: Sequence[Case], source: str) -> int:
        """3 when any image has colour (alpha dropped), else 1: grey and RGB are converted."""
        kept = [
            image_channels_after_alpha(narrow(case.geometry, ImageGeometry).channels)
            for case in cases
        ]
        return 3 if max(kept) >= 3 else 1

    def measure_case(
        self,
        case: Case,
        samplers: Sequence[ChannelSampler],
        *,
        ignore_value: int | None,
        rng: np.random.Generator,
        samples_per_case: int,
    ) -> None:
        """Sample all pixels of the image, converted to the plan's channels."""
        image = to_channels_first(image2d.read_image(case.channels[0].path), len(samplers))
        for sampler, channel in zip(samplers, image, strict=True):
            nonzero = int(np.count_nonzero(channel))
            values = sample_values(channel.ravel(), rng, samples_per_case)
            sampler.add(values, nonzero=nonzero, total=channel.size)

    def transforms(self, plan: TrainingPlan, *, train: bool) -> Compose:
        """Read (alpha dropped, channels matched), labels, normalise (+ chips)."""
        from pipelines.preprocess.loaders import LoadImage2Dd
        from pipelines.preprocess.transforms import planar_transforms

        return planar_transforms(plan, LoadImage2Dd, train=train)

    def read_label_map(self, path: Path) -> np.ndarray:
        """The label image as stored, its first channel."""
        array = image2d.read_image(path)
        return array if array.ndim == 2 else array[..., 0]

    def check_input(self, channels: Sequence[Path]) -> None:
        """Every header valid."""
        for path in channels:
            image2d.read_image_geometry(path)

    def sample_input(
        self, channels: Sequence[Path], *, rng: np.random.Generator, count: int
    ) -> InputSample:
        """Size (H, W), a nominal spacing of 1, and the non-zero values of each channel
        (alpha dropped)."""
        array = image2d.read_image(channels[0])
        image = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        image = image[: image_channels_after_alpha(image.shape[0])]
        values = tuple(nonzero_sample(plane, None, rng, count) for plane in image)
        return InputSample((image.shape[1], image.shape[2]), (1.0, 1.0), values)

    def read_fully(self, path: Path) -> None:
        """Decode the image."""
        image2d.read_image(path)

    def segment(self, job: SegmentJob) -> dict[str, Path]:
        """Semantic or instance labels (U-Net with boundary, or tiled Mask R-CNN) as a PNG,
        probabilities as a float TIFF."""
        from pipelines.infer.confidence import ConfidenceAccumulator
        from pipelines.infer.in_memory import class_values_of, predict_image
        from pipelines.infer.maskrcnn import scored_instances
        from pipelines.postprocess.decision import foreground_cut
        from pipelines.postprocess.labels import postprocess_labels
        from pipelines.write.image2d import write_label_image, write_probability_image

        model = job.model
        outputs: dict[str, Path] = {}
        instance = model.spec.task == "instance" or model.plan.label_kind == "instance"
        if model.spec.task == "instance":
            labels, scores = scored_instances(
                model, job.channels[0], device=job.options.device, progress=job.progress
            )
            job.report_quality(ConfidenceAccumulator().quality(scores=scores))
        else:
            prediction = predict_image(
                model,
                job.channels[0],
                job.options,
                keep_probabilities=job.options.probabilities,
                foreground_cut=foreground_cut(job.postprocess, model.plan),
            )
            if prediction.instance:
                labels = prediction.classes.astype(np.uint16)
            else:
                labels = postprocess_labels(
                    class_values_of(prediction.classes, model.plan),
                    job.postprocess,
                    spacing=(1.0, 1.0),
                )
            job.report_quality(prediction.quality)
            if prediction.entropy is not None:
                outputs["uncertainty"] = write_probability_image(
                    prediction.entropy[None], job.output("_entropy.tif")
                )
            if prediction.probabilities is not None:
                outputs["probabilities"] = write_probability_image(
                    prediction.probabilities, job.output("_prob.tif")
                )
        outputs["mask"] = write_label_image(labels, job.output(".png"), instance=instance)
        return outputs

    def geometry_cells(self, geometry: AnyGeometry) -> tuple[str, str, str]:
        """Width × height; images have no spacing or frame."""
        image = narrow(geometry, ImageGeometry)
        return f"{image.width}×{image.height}", "-", "-"


def _single_channel_label(path: Path) -> Iterator[np.ndarray]:
    """The label's pixels, once decoded: one channel, or several that are equal.

    Raises:
        InvalidGeometryError: the channels differ.
    """
    array = image2d.read_image(path)
    if array.ndim == 3:
        if not all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, array.shape[-1])):
            raise InvalidGeometryError(
                f"is a label with {array.shape[-1]} different channels; labels must be "
                "single-channel",
                path=path,
            )
        array = array[..., 0]
    yield array


IMAGE = register_kind(ImageKind())
