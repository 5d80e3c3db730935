"""Peak memory of ingesting a 20,000 × 20,000 label raster (and its image), streamed.

Builds a tiled, deflate-compressed GeoTIFF image and label of SIZE × SIZE pixels, then measures
in this process how far peak RSS rises above the RSS just before ``ingest`` starts (imports
done). The issue's bound is 300 MB; the printed ratio is (peak increase) / (300 MB), ≤ 1 passes.

Run: ``.venv/bin/python -m benchmarks.ingest_memory [--size 20000]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from benchmarks.results import record
from data_contracts import IngestOptions
from pipelines.ingest import ingest

BUDGET_MB = 300.0


def write_scene(root: Path, size: int) -> Path:
    """Write ``images/scene.tif`` (1 band uint8) and ``labels/scene.tif`` (classes 0..3)."""
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 4_000_000 + size, 1.0, 1.0),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }
    columns = np.arange(size, dtype=np.int64)
    for folder, nodata in (("images", 0), ("labels", None)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        with rasterio.open(root / folder / "scene.tif", "w", **profile, nodata=nodata) as out:
            for top in range(0, size, 1024):
                rows = np.arange(top, min(top + 1024, size), dtype=np.int64)[:, None]
                block = ((rows // 700 + columns[None, :] // 900) % 4).astype(np.uint8)
                if folder == "images":
                    block = (block * 60 + 10).astype(np.uint8)
                out.write(block, 1, window=Window(0, top, size, len(rows)))
    return root


class PeakSampler:
    """Samples this process's RSS every few milliseconds on a thread; keeps the maximum."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _reset_kernel_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux), so VmHWM covers ingestion only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _kernel_peak_bytes() -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="scene width and height in pixels")
    parser.add_argument("--keep", action="store_true", help="keep the generated scene")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="segflow-ingest-memory-"))
    try:
        started = time.perf_counter()
        write_scene(root / "data", args.size)
        print(f"scene {args.size}² written in {time.perf_counter() - started:.1f} s")
        # Imports done: ingest loads the readers of each data kind on first use, so a small
        # scene goes through first and the baseline holds every module ingest needs.
        ingest(write_scene(root / "warm-up", 1024), workdir=root / "warm-up-work")
        baseline = psutil.Process().memory_info().rss
        kernel = _reset_kernel_peak()
        started = time.perf_counter()
        with PeakSampler() as sampler:
            manifest = ingest(root / "data", options=IngestOptions(), workdir=root / "work")
        seconds = time.perf_counter() - started
        peak = max(sampler.peak, (_kernel_peak_bytes() or 0) if kernel else 0)
        if manifest.rejected or len(manifest.cases) != 1:
            raise SystemExit(f"ingestion did not accept the scene: {manifest.rejected}")
        increase_mb = (peak - baseline) / 1024**2
        ratio = increase_mb / BUDGET_MB
        print(
            f"RSS before ingest {baseline / 1024**2:.0f} MB, peak {peak / 1024**2:.0f} MB, increase {increase_mb:.0f} MB "
            f"(budget {BUDGET_MB:.0f} MB) -> ratio {ratio:.3f}; ingest took {seconds:.1f} s"
        )
        record(
            "ingest_memory_20k",
            {
                "size_px": args.size,
                "rss_before_mb": round(baseline / 1024**2, 1),
                "peak_increase_mb": round(increase_mb, 1),
                "budget_mb": BUDGET_MB,
                "ratio_to_budget": round(ratio, 3),
                "ingest_seconds": round(seconds, 1),
            },
            command=f"python -m benchmarks.ingest_memory --size {args.size}",
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
