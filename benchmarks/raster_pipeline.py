"""Raster inference end to end: overhead over the model alone (P2) and memory vs scene size (P3).

A pinned small 2D U-Net (seeded, 3 bands in, 2 classes out) segments a synthetic 3-band uint8
GeoTIFF of SIZE × SIZE pixels (tiled, deflate, EPSG:32633, 0.5 m), ROI 256, overlap 0.25,
gaussian blending: open → ``stream_raster`` → argmax → ``GeoTiffMaskWriter`` → COG.

- P2: end-to-end seconds / model-only seconds (the same windows and batch sizes, random tensors
  already in memory, the same threads). Floor: ≤ 1.2.
- P3: peak RSS of the end-to-end run at SIZE² / at SMALL_SIZE², each in a fresh process.
  Floors: ratio ≤ 1.1 and peak ≤ 1.5 GB.

Every measurement runs in its own freshly spawned process; the scenes are generated tile by tile
(bounded memory) in a temporary folder that is removed afterwards.

Run: ``.venv/bin/python -m benchmarks.raster_pipeline [--size 32768] [--small-size 8192]``
(add ``--no-record`` for a trial run that must not touch ``benchmarks/results.json``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from monai.networks.nets.unet import UNet
from numpy.typing import NDArray
from rasterio.transform import Affine
from rasterio.windows import Window

from benchmarks.results import record
from data_contracts import ChannelNormalization, InferenceOptions
from pipelines.infer.stream import (
    Predictor,
    Sink,
    stream_raster,
    window_starts,
)
from pipelines.io.raster import bounded_gdal_env, open_raster
from pipelines.postprocess.decision import class_indices
from pipelines.preprocess.array import normalize_channels
from pipelines.write.geotiff import GeoTiffMaskWriter

ROI = 256
OVERLAP = 0.25
CLASSES = ("background", "foreground")
MASK_NODATA = 255
OVERHEAD_FLOOR = 1.2
MEMORY_FLOOR = 1.1
MEMORY_LIMIT_MB = 1536.0
_TILE = 512
_NODATA_ROWS = 32


def write_scene(path: Path, size: int, seed: int = 0) -> Path:
    """Write a ``size``² 3-band uint8 GeoTIFF tile by tile; 0 is nodata (a corner block)."""
    rng = np.random.default_rng(seed)
    transform = Affine.translation(500_000.0, 4_000_000.0 + size / 2) @ Affine.scale(0.5, -0.5)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
        crs="EPSG:32633", transform=transform, nodata=0, tiled=True, blockxsize=_TILE,
        blockysize=_TILE, compress="deflate", BIGTIFF="IF_SAFER",
    ) as dst:  # fmt: skip
        for top in range(0, size, _TILE):
            for left in range(0, size, _TILE):
                window = Window(left, top, min(_TILE, size - left), min(_TILE, size - top))
                dst.write(_tile(rng, window, size), window=window)
    return path


def _tile(rng: np.random.Generator, window: Window, size: int) -> NDArray[np.uint8]:
    """Fields of different brightness per band, with a little noise; nodata in one corner."""
    rows = np.arange(window.row_off, window.row_off + window.height)[:, None]
    cols = np.arange(window.col_off, window.col_off + window.width)[None, :]
    fields = (rows // 301 * 7 + cols // 173 * 3) % 5
    shape = (3, window.height, window.width)
    tile = 30 + 40 * fields[None] + np.arange(3)[:, None, None] * 10
    tile = tile + rng.integers(0, 8, shape)
    tile[:, (rows < size // 16) & (cols < size // 16)] = 0
    return np.asarray(tile, dtype=np.uint8)


def build_predictor(threads: int) -> Predictor:
    """The pinned U-Net, seeded and in eval mode, returning softmax probabilities."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = UNet(
        spatial_dims=2, in_channels=3, out_channels=len(CLASSES), channels=(8, 16, 32, 64),
        strides=(2, 2, 2),
    ).eval()  # fmt: skip
    predictor: Predictor = lambda patches: torch.softmax(model(patches), dim=1)  # noqa: E731
    with torch.inference_mode():  # one warm-up batch, as in the model-only run
        predictor(torch.rand(1, 3, ROI, ROI))
    return predictor


def _mask_sink(writer: GeoTiffMaskWriter) -> Sink:
    def sink(window: Window, probabilities: NDArray[np.float32], valid: NDArray[np.bool_]) -> None:
        labels = class_indices(probabilities)
        for top in range(0, len(labels), _NODATA_ROWS):  # small temporaries
            rows = slice(top, top + _NODATA_ROWS)
            np.copyto(labels[rows], np.uint8(MASK_NODATA), where=~valid[rows])
        writer.write(labels, window)

    return sink


@dataclass(frozen=True)
class Run:
    """The settings every measurement shares (picklable, for the spawned processes)."""

    batch_size: int
    threads: int
    read_ahead: int


def run_end_to_end(scene: Path, out: Path, run: Run) -> dict[str, Any]:
    """Segment ``scene`` into a COG mask at ``out``; seconds and this process's peak RSS."""
    predictor = build_predictor(run.threads)
    options = InferenceOptions(
        overlap=OVERLAP, batch_size=run.batch_size, read_ahead=run.read_ahead
    )
    normalize = partial(
        normalize_channels,
        norms=[ChannelNormalization(scheme="percentile", lower=0, upper=255)] * 3,
    )
    started, cpu = time.perf_counter(), time.process_time()
    with (
        bounded_gdal_env(),
        open_raster(scene) as source,
        GeoTiffMaskWriter(out, source.profile, class_names=CLASSES) as writer,
    ):
        sink = _mask_sink(writer)
        summary = stream_raster(
            source, predictor, len(CLASSES), (ROI, ROI), options, normalize=normalize, sink=sink
        )
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "windows": summary.windows,
        "batches": summary.batches,
        "peak_band_mb": summary.peak_band_bytes / 1024**2,
    }


def run_model_only(size: int, run: Run) -> dict[str, Any]:
    """The predictor alone on random in-memory patches, batched as ``stream_raster`` batches."""
    predictor = build_predictor(run.threads)
    per_axis = len(window_starts(size, ROI, OVERLAP))  # strips, and windows per strip
    sizes = [min(run.batch_size, per_axis - first) for first in range(0, per_axis, run.batch_size)]
    patches = {n: torch.rand(n, 3, ROI, ROI) for n in set(sizes)}
    started, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for _ in range(per_axis):
            for n in sizes:
                predictor(patches[n])
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "windows": per_axis * per_axis,
        "batches": per_axis * len(sizes),
    }


def _in_fresh_process(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``function(*args)`` in a newly spawned interpreter, so RSS peaks do not mix."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def measure(root: Path, size: int, small_size: int, run: Run) -> dict[str, dict[str, Any]]:
    """Generate both scenes and run the three measurements; returns the raw results."""
    runs: dict[str, dict[str, Any]] = {}
    for name, pixels in (("small", small_size), ("large", size)):
        started = time.perf_counter()
        scene = write_scene(root / f"scene_{pixels}.tif", pixels)
        print(f"scene {pixels}² written in {time.perf_counter() - started:.1f} s")
        runs[name] = _in_fresh_process(run_end_to_end, scene, root / f"mask_{pixels}.tif", run)
        print(f"end to end {pixels}²: {_describe(runs[name])}")
    runs["model"] = _in_fresh_process(run_model_only, size, run)
    print(f"model only {size}²: {_describe(runs['model'])}")
    if runs["model"]["batches"] != runs["large"]["batches"]:
        raise SystemExit(f"batch counts differ: {runs['model']} vs {runs['large']}")
    return runs


def _describe(run: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value:.1f}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in run.items())  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32_768, help="large scene side in pixels")
    parser.add_argument("--small-size", type=int, default=8_192, help="reference scene side")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per model call")
    threads = torch.get_num_threads()
    parser.add_argument("--threads", type=int, default=threads, help="torch threads")
    parser.add_argument("--read-ahead", type=int, default=0, help="batches read on a thread")
    parser.add_argument("--no-record", action="store_true", help="print only; leave results.json")
    args = parser.parse_args()
    run = Run(args.batch_size, args.threads, args.read_ahead)
    root = Path(tempfile.mkdtemp(prefix="segflow-raster-pipeline-"))
    try:
        runs = measure(root, args.size, args.small_size, run)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    metrics = _metrics(args.size, args.small_size, run, runs)
    overhead, memory = metrics["raster_pipeline_overhead"], metrics["raster_pipeline_memory"]
    print(
        f"P2 overhead: {overhead['end_to_end_seconds']:.2f} s end to end / "
        f"{overhead['model_only_seconds']:.2f} s model only = {overhead['ratio']} "
        f"(floor ≤ {OVERHEAD_FLOOR}; CPU-time ratio {overhead['cpu_ratio']})\n"
        f"P3 memory: {memory['peak_rss_mb']:.0f} MB at {args.size}² / "
        f"{memory['small_peak_rss_mb']:.0f} MB "
        f"at {args.small_size}² = {memory['ratio']} (floor ≤ {MEMORY_FLOOR}, "
        f"peak ≤ {MEMORY_LIMIT_MB:.0f} MB)"
    )
    if not args.no_record:
        command = (
            f"python -m benchmarks.raster_pipeline --size {args.size} --small-size "
            f"{args.small_size} --batch-size {run.batch_size} --threads {run.threads} "
            f"--read-ahead {run.read_ahead}"
        )
        for name, values in metrics.items():
            record(name, values, command=command)


def _metrics(
    size: int, small_size: int, run: Run, runs: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The two results entries, P2 and P3, from the raw measurements."""
    large, small, model = runs["large"], runs["small"], runs["model"]
    common = {"size_px": size, **asdict(run)}
    overhead = {
        **common,
        "windows": large["windows"],
        "batches": large["batches"],
        "end_to_end_seconds": round(large["seconds"], 2),
        "model_only_seconds": round(model["seconds"], 2),
        "ratio": round(large["seconds"] / model["seconds"], 3),
        "cpu_ratio": round(large["cpu_seconds"] / model["cpu_seconds"], 3),
        "floor": OVERHEAD_FLOOR,
    }
    memory = {
        **common,
        "small_size_px": small_size,
        "peak_rss_mb": round(large["peak_rss_mb"], 1),
        "small_peak_rss_mb": round(small["peak_rss_mb"], 1),
        "peak_band_mb": round(large["peak_band_mb"], 1),
        "ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "floor": MEMORY_FLOOR,
        "limit_mb": MEMORY_LIMIT_MB,
    }
    return {"raster_pipeline_overhead": overhead, "raster_pipeline_memory": memory}


if __name__ == "__main__":
    main()
