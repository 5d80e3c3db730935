"""The ``raster`` kind: georeferenced GeoTIFFs (COGs), read and segmented window by window.

MONAI and torch are imported by the members that need them (as in :mod:`pipelines.kinds.volume`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.windows import Window

from data_contracts import (
    Case,
    IngestOptions,
    LabelGeometryError,
    NoValidPixelsError,
    RasterGeometry,
    TrainingPlan,
)
from pipelines.io import PixelStats, raster
from pipelines.kinds import register_kind
from pipelines.kinds.base import AnyGeometry, GridDifference, InputSample, SegmentJob, narrow
from pipelines.kinds.planar import PlanarKind
from pipelines.plan.drift import nonzero_sample
from pipelines.plan.fingerprint import ChannelSampler, common_channel_count

if TYPE_CHECKING:
    from monai.transforms.compose import Compose

__all__ = ["RASTER", "RasterKind"]


class RasterKind(PlanarKind):
    """GeoTIFF rasters: bands of one file are the channels; nodata pixels are ignored."""

    name = "raster"
    suffixes: tuple[str, ...] = (".tif", ".tiff")
    georeferenced = True
    network_norm = "batch"
    fixed_channels = True
    lineage_in_outputs = True  # the mask's ``segflow_lineage`` tag

    def read_channel(self, path: Path, options: IngestOptions) -> tuple[AnyGeometry, int]:
        """Geometry (CRS required unless allowed), non-finite pixels over every band window.

        Raises:
            NoValidPixelsError: every pixel is nodata.
        """
        stats = PixelStats(track_values=False)
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
        return geometry, stats.nonfinite

    def read_label(
        self, path: Path, options: IngestOptions
    ) -> tuple[AnyGeometry, Iterable[np.ndarray]]:
        """The label's geometry, and its first band window by window."""
        geometry = raster.read_raster_geometry(
            path, allow_ungeoreferenced=options.allow_ungeoreferenced
        )
        return geometry, _first_band(path)

    def grid_differences(
        self, reference: AnyGeometry, other: AnyGeometry, options: IngestOptions
    ) -> list[GridDifference]:
        """Size, CRS, and the transform within ``options.rtol_pixel`` pixels."""
        first, second = narrow(reference, RasterGeometry), narrow(other, RasterGeometry)
        found: list[GridDifference] = []
        if (first.width, first.height) != (second.width, second.height):
            found.append(("size", (first.width, first.height), (second.width, second.height)))
        if not _same_crs(first.crs_wkt, second.crs_wkt):
            found.append(("crs", _crs_name(first.crs_wkt), _crs_name(second.crs_wkt)))
        pixel = min(first.resolution)
        if not np.allclose(
            first.transform, second.transform, rtol=0, atol=options.rtol_pixel * pixel
        ):
            found.append(("transform", first.transform, second.transform))
        return found

    def channels_of(self, geometry: AnyGeometry) -> int:
        """The file's band count."""
        return narrow(geometry, RasterGeometry).count

    def is_ungeoreferenced(self, geometry: AnyGeometry) -> bool:
        """True for a raster ingested without a CRS."""
        return narrow(geometry, RasterGeometry).crs_wkt is None

    def rasterize_vector_label(
        self,
        vector_path: Path,
        grid: AnyGeometry,
        destination: Path,
        options: IngestOptions,
        *,
        instance: bool,
    ) -> Path:
        """Burn the polygons (reprojected to the raster's CRS) into a tiled GeoTIFF label.

        Raises:
            LabelGeometryError: the raster has no CRS.
        """
        from pipelines.io.vector import rasterize_to_file, read_vector_labels  # GDAL/OGR: slow

        raster_grid = narrow(grid, RasterGeometry)
        if raster_grid.crs_wkt is None:
            raise LabelGeometryError(
                "is a vector label but its image is not a georeferenced raster", path=vector_path
            )
        labels = read_vector_labels(
            vector_path,
            raster_grid.crs_wkt,
            attribute=options.vector_attribute,
            label_names=options.labels,
            instance=instance,
            vector_crs=options.vector_crs,
        )
        dtype = "uint16" if instance else "uint8"
        return rasterize_to_file(labels, raster_grid, destination, dtype=dtype)

    def grid_axes(self, geometry: AnyGeometry) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """(H, W) pixels and the pixel size (y, x) in CRS units."""
        scene = narrow(geometry, RasterGeometry)
        res_x, res_y = scene.resolution
        return (scene.height, scene.width), (res_y, res_x)

    def input_channels(self, cases: Sequence[Case], source: str) -> int:
        """Every case's band count, which must be the same."""
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
        """Sample the valid (non-nodata, finite) pixels of every band, window by window."""
        scene = narrow(case.geometry, RasterGeometry)
        keep = min(1.0, samples_per_case / (scene.width * scene.height))
        channel = 0
        with raster.bounded_gdal_env():
            for record in case.channels:
                with raster.open_raster(record.path) as dataset:
                    for band in range(1, dataset.count + 1):
                        _sample_band(dataset, record.path, band, samplers[channel], rng, keep)
                        channel += 1

    def transforms(self, plan: TrainingPlan, *, train: bool) -> Compose:
        """Read bands (nodata → NaN → ignored), labels, normalise (+ chips)."""
        from pipelines.preprocess.loaders import LoadRasterd
        from pipelines.preprocess.transforms import planar_transforms

        return planar_transforms(plan, LoadRasterd, train=train)

    def read_label_map(self, path: Path) -> np.ndarray:
        """The label's first band as stored."""
        with raster.open_raster(path) as dataset:
            return np.asarray(dataset.read(1))

    def check_input(self, channels: Sequence[Path]) -> None:
        """Every header valid. Rasters are segmented on their own grid: a TIFF without CRS
        gives a mask without CRS, but a rotated or sheared transform is refused, as at ingest."""
        for path in channels:
            raster.read_raster_geometry(path, allow_ungeoreferenced=True)

    def sample_input(
        self, channels: Sequence[Path], *, rng: np.random.Generator, count: int
    ) -> InputSample:
        """Grid and CRS units from the header; pixels from a decimated read or a grid of
        windows (see :func:`_decimated`), flattened."""
        values: list[np.ndarray] = []
        nodata = 0.0
        with raster.bounded_gdal_env():
            geometry = raster.read_raster_geometry(channels[0], allow_ungeoreferenced=True)
            for path in channels:
                with raster.open_raster(path) as dataset:
                    bands, masked = _decimated(dataset)
                missing = np.asarray(masked.any(axis=0), dtype=bool)
                nodata = max(nodata, float(missing.mean()) if missing.size else 0.0)
                values.extend(nonzero_sample(band, ~missing, rng, count) for band in bands)
        shape, spacing = self.grid_axes(geometry)
        return InputSample(shape, spacing, tuple(values), _crs_units(geometry.crs_wkt), nodata)

    def partial_nodata_share(self, case: Case) -> float:
        """Share of the pixels where some bands are nodata and others are not, from the
        decimated read the drift check uses (bands of one file compared with each other)."""
        partial, total = 0, 0
        with raster.bounded_gdal_env():
            for record in case.channels:
                with raster.open_raster(record.path) as dataset:
                    _, masked = _decimated(dataset)
                partial += int(np.count_nonzero(masked.any(axis=0) & ~masked.all(axis=0)))
                total += masked.shape[1]
        return partial / total if total else 0.0

    def read_fully(self, path: Path) -> None:
        """Decode every band."""
        from pipelines.preprocess.loaders import read_raster_stack

        read_raster_stack([path])

    def segment(self, job: SegmentJob) -> dict[str, Path]:
        """Stream the scene into a COG mask (lineage in its tags), then polygons if asked."""
        from pipelines.infer.polygons import write_raster_polygons
        from pipelines.infer.raster import segment_raster

        written = segment_raster(
            job.model,
            job.channels[0],
            job.output(".tif"),
            probabilities_path=job.output("_prob.tif") if job.options.probabilities else None,
            uncertainty_path=job.output("_entropy.tif") if job.options.uncertainty else None,
            options=job.options,
            postprocess=job.postprocess,
            tags={"segflow_lineage": json.dumps(job.lineage, sort_keys=True, default=str)},
            progress=job.progress,
        )
        outputs = {"mask": written.mask}
        job.report_quality(written.quality)
        if written.probabilities is not None:
            outputs["probabilities"] = written.probabilities
        if written.uncertainty is not None:
            outputs["uncertainty"] = written.uncertainty
        if job.options.polygons:
            outputs.update(
                write_raster_polygons(written.mask, job.model, job.out_dir / job.case_id)
            )
        return outputs

    def geometry_cells(self, geometry: AnyGeometry) -> tuple[str, str, str]:
        """Width × height, pixel size, EPSG code (or WKT, or none)."""
        scene = narrow(geometry, RasterGeometry)
        crs = f"EPSG:{scene.epsg}" if scene.epsg else ("WKT" if scene.crs_wkt else "none")
        return f"{scene.width}×{scene.height}", f"{scene.resolution[0]:.3g}", crs


def _first_band(path: Path) -> Iterator[np.ndarray]:
    with raster.open_raster(path) as dataset:
        for values, _ in raster.iter_band_windows(dataset, path, 1):
            yield values


def _sample_band(
    dataset: rasterio.DatasetReader,
    path: str,
    band: int,
    sampler: ChannelSampler,
    rng: np.random.Generator,
    keep: float,
) -> None:
    """Add about ``keep`` of the band's valid pixels to ``sampler``, window by window."""
    for values, valid in raster.iter_band_windows(dataset, path, band):
        ok = np.isfinite(values) if valid is None else valid & np.isfinite(values)
        kept = values[ok]
        chosen = kept[rng.random(kept.size) < keep]
        sampler.add(chosen.astype(np.float64), nonzero=int(np.count_nonzero(kept)), total=kept.size)


#: Side of the decimated read the drift check samples a raster from.
SAMPLE_SIDE = 256


#: Without overviews, a large scene is sampled in this many windows a side (a decimated read
#: of the whole scene would decode every tile).
SAMPLE_GRID = 4


def _decimated(dataset: rasterio.DatasetReader) -> tuple[np.ndarray, np.ndarray]:
    """Every band at most :data:`SAMPLE_SIDE` pixels a side (a scene with overviews or a
    small one), else :data:`SAMPLE_GRID`² windows spread over it; and where each band is
    masked, ``(bands, pixels)``."""
    height, width = dataset.height, dataset.width
    if dataset.overviews(1) or max(height, width) <= SAMPLE_SIDE * SAMPLE_GRID:
        scale = max(1.0, max(height, width) / SAMPLE_SIDE)
        shape = (max(1, round(height / scale)), max(1, round(width / scale)))
        reads = [dataset.read(out_shape=(dataset.count, *shape), masked=True)]
    else:
        side = SAMPLE_SIDE // SAMPLE_GRID
        rows = np.linspace(0, height - side, SAMPLE_GRID).astype(int)
        cols = np.linspace(0, width - side, SAMPLE_GRID).astype(int)
        reads = [
            dataset.read(window=Window(int(col), int(row), side, side), masked=True)
            for row in rows
            for col in cols
        ]
    data = np.concatenate([read.data.reshape(dataset.count, -1) for read in reads], axis=1)
    masked = np.concatenate(
        [np.ma.getmaskarray(read).reshape(dataset.count, -1) for read in reads], axis=1
    )
    return np.asarray(data, dtype=np.float64), np.asarray(masked, dtype=bool)


def _crs_units(wkt: str | None) -> str | None:
    """The linear unit of a CRS (``metre``, ``degree``…), or ``None`` without one."""
    if wkt is None:
        return None
    crs = CRS.from_wkt(wkt)
    if crs.is_geographic:
        return "degree"
    return str(crs.linear_units or "unknown")


def _same_crs(first: str | None, second: str | None) -> bool:
    if first is None or second is None:
        return first == second
    return first == second or CRS.from_wkt(first) == CRS.from_wkt(second)


def _crs_name(wkt: str | None) -> str:
    return "none" if wkt is None else CRS.from_wkt(wkt).to_string()[:60]


RASTER = register_kind(RasterKind())
