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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from monai.networks.nets import UNet
from numpy.typing import NDArray
from rasterio.transform import Affine
from rasterio.windows import Window

from benchmarks.results import record
from data_contracts import ChannelNormalization
from pipelines.infer.stream import Predictor, Sink, StreamConfig, stream_raster, window_starts
from pipelines.io.raster import bounded_gdal_env, open_raster
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
_ARGMAX_ROWS = 32  # argmax in slices: a full-width int64 index of every band row would be large


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
    return tile.astype(np.uint8)


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
        labels = np.empty(valid.shape, dtype=np.uint8)
        for top in range(0, len(labels), _ARGMAX_ROWS):
            labels[top : top + _ARGMAX_ROWS] = probabilities[:, top : top + _ARGMAX_ROWS].argmax(0)
        labels[~valid] = MASK_NODATA
        writer.write(labels, window)

    return sink


def run_end_to_end(scene: Path, out: Path, batch_size: int, threads: int) -> dict[str, Any]:
    """Segment ``scene`` into a COG mask at ``out``; seconds and this process's peak RSS."""
    predictor = build_predictor(threads)
    config = StreamConfig((ROI, ROI), OVERLAP, batch_size)
    normalize = partial(
        normalize_channels,
        norms=[ChannelNormalization(scheme="percentile", lower=0, upper=255)] * 3,
    )
    started = time.perf_counter()
    with (
        bounded_gdal_env(),
        open_raster(scene) as source,
        GeoTiffMaskWriter(out, source.profile, class_names=CLASSES) as writer,
    ):
        summary = stream_raster(
                source, predictor, len(CLASSES), config, normalize=normalize,
                sink=_mask_sink(writer),
            )  # fmt: skip
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "windows": summary.windows,
        "batches": summary.batches,
        "peak_band_mb": summary.peak_band_bytes / 1024**2,
    }


def run_model_only(size: int, batch_size: int, threads: int) -> dict[str, Any]:
    """The predictor alone on random in-memory patches, batched as ``stream_raster`` batches."""
    predictor = build_predictor(threads)
    strips = len(window_starts(size, ROI, OVERLAP))
    per_strip = len(window_starts(size, ROI, OVERLAP))
    sizes = [min(batch_size, per_strip - first) for first in range(0, per_strip, batch_size)]
    patches = {n: torch.rand(n, 3, ROI, ROI) for n in set(sizes)}
    started = time.perf_counter()
    with torch.inference_mode():
        for _ in range(strips):
            for n in sizes:
                predictor(patches[n])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "windows": strips * per_strip, "batches": strips * len(sizes)}


def _in_fresh_process(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``function(*args)`` in a newly spawned interpreter, so RSS peaks do not mix."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def measure(root: Path, size: int, small_size: int, batch_size: int, threads: int) -> dict:
    """Generate both scenes and run the three measurements; returns the raw results."""
    runs: dict[str, dict[str, Any]] = {}
    for name, pixels in (("small", small_size), ("large", size)):
        started = time.perf_counter()
        scene = write_scene(root / f"scene_{pixels}.tif", pixels)
        print(f"scene {pixels}² written in {time.perf_counter() - started:.1f} s")
        runs[name] = _in_fresh_process(
            run_end_to_end, scene, root / f"mask_{pixels}.tif", batch_size, threads
        )
        print(f"end to end {pixels}²: {_describe(runs[name])}")
    runs["model"] = _in_fresh_process(run_model_only, size, batch_size, threads)
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
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads"
    )
    parser.add_argument("--no-record", action="store_true", help="print only; leave results.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="segflow-raster-pipeline-"))
    try:
        runs = measure(root, args.size, args.small_size, args.batch_size, args.threads)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    large, small, model = runs["large"], runs["small"], runs["model"]
    overhead = large["seconds"] / model["seconds"]
    memory = large["peak_rss_mb"] / small["peak_rss_mb"]
    print(
        f"P2 overhead: {large['seconds']:.1f} s end to end / {model['seconds']:.1f} s model only "
        f"= {overhead:.3f} (floor ≤ {OVERHEAD_FLOOR})\n"
        f"P3 memory: {large['peak_rss_mb']:.0f} MB at {args.size}² / {small['peak_rss_mb']:.0f} MB "
        f"at {args.small_size}² = {memory:.3f} (floor ≤ {MEMORY_FLOOR}, "
        f"peak ≤ {MEMORY_LIMIT_MB:.0f} MB)"
    )
    if args.no_record:
        return
    command = (
        f"python -m benchmarks.raster_pipeline --size {args.size} --small-size {args.small_size} "
        f"--batch-size {args.batch_size} --threads {args.threads}"
    )
    common = {"size_px": args.size, "batch_size": args.batch_size, "threads": args.threads}
    record(
        "raster_pipeline_overhead",
        {
            **common,
            "windows": large["windows"],
            "batches": large["batches"],
            "end_to_end_seconds": round(large["seconds"], 2),
            "model_only_seconds": round(model["seconds"], 2),
            "ratio": round(overhead, 3),
            "floor": OVERHEAD_FLOOR,
        },
        command=command,
    )
    record(
        "raster_pipeline_memory",
        {
            **common,
            "small_size_px": args.small_size,
            "peak_rss_mb": round(large["peak_rss_mb"], 1),
            "small_peak_rss_mb": round(small["peak_rss_mb"], 1),
            "peak_band_mb": round(large["peak_band_mb"], 1),
            "ratio": round(memory, 3),
            "floor": MEMORY_FLOOR,
            "limit_mb": MEMORY_LIMIT_MB,
        },
        command=command,
    )


if __name__ == "__main__":
    main()
