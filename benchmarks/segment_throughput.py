"""Throughput of ``segflow segment`` on one large raster, as a user runs it (issue #16, point 4).

The scene is the SpaceNet Atlanta tile ``sn4_atl_nw`` mirrored into a 4096 × 4096 deflate GeoTIFF
(same CRS and pixel size). The model is a registered one, typically the buildings champion that
``benchmarks.accuracy --task buildings`` trained on the user's path, i.e. the network the plan
chose: pass that run's ``SEGFLOW_HOME`` (its work folder's ``segflow_home``). Each repeat is a
fresh ``segflow segment SCENE_FOLDER --model URI --out OUT`` process with the default options;
the figure is megapixels per second of the file's own time in the ledger (the command's wall time
is recorded beside it), against the issue's bound of 1 Mpx/s on 2 cores. One more run with
``--no-amp`` (float32 everywhere) is the baseline of the default mixed precision: its speed and
the share of pixels on which the two masks agree are recorded beside the default's.

Run: ``.venv/bin/python -m benchmarks.segment_throughput --home /tmp/segflow-accuracy-buildings-…/
segflow_home``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from benchmarks.accuracy_commands import SegflowCommands
from benchmarks.results import record

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCENE = SHARED_DATA / "spacenet4_atlanta_buildings" / "images" / "sn4_atl_nw.tif"
BOUND_MPX_PER_SECOND = 1.0


def write_mirrored_scene(source: Path, destination: Path, size: int) -> Path:
    """``source``'s first band mirrored into a ``size``² tiled deflate GeoTIFF on its CRS."""
    with rasterio.open(source) as dataset:
        band, transform, crs = dataset.read(1), dataset.transform, dataset.crs
    tile = np.block([[band, band[:, ::-1]], [band[::-1], band[::-1, ::-1]]])
    reps = (size // tile.shape[0] + 1, size // tile.shape[1] + 1)
    mosaic = np.tile(tile, reps)[:size, :size]
    profile = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "count": 1,
        "dtype": mosaic.dtype.name,
        "crs": crs,
        "transform": from_origin(transform.c, transform.f, transform.a, -transform.e),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }
    destination.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(destination, "w", **profile) as out:
        out.write(mosaic, 1)
    return destination


def _file_seconds(out: Path) -> float:
    ledger = json.loads((out / ".segflow" / "ledger.json").read_text(encoding="utf-8"))
    (case,) = ledger["cases"]
    return float(case["seconds"])


def _mask_agreement(first: Path, second: Path) -> float:
    """Share of pixels with the same class in two masks of the same scene."""
    with rasterio.open(first) as one, rasterio.open(second) as other:
        return float((one.read(1) == other.read(1)).mean())


def _segment(
    commands: SegflowCommands, name: str, scene: Path, model: str, out: Path, *extra: str
) -> tuple[float, float]:
    """(the file's own seconds, the command's wall seconds) of one ``segflow segment``."""
    run = commands.run(name, "segment", scene.parent, "--model", model, "--out", out, *extra)
    return _file_seconds(out), run.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="SEGFLOW_HOME with the model")
    parser.add_argument("--model", default="models:/accuracy-buildings@champion")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segflow-throughput-"))
    scene = write_mirrored_scene(SCENE, work / "scene" / f"atl_{args.size}.tif", args.size)
    commands = SegflowCommands(args.home, work / "logs")
    megapixels = args.size**2 / 1e6
    file_seconds, wall_seconds = [], []
    for repeat in range(args.repeats):
        seconds, wall = _segment(
            commands, f"segment{repeat}", scene, args.model, work / f"out{repeat}"
        )
        file_seconds.append(seconds)
        wall_seconds.append(wall)
    float32_seconds, _ = _segment(
        commands, "segment_float32", scene, args.model, work / "out_float32", "--no-amp"
    )
    mask_name = f"{scene.stem}.tif"
    agreement = _mask_agreement(work / "out0" / mask_name, work / "out_float32" / mask_name)
    rate = megapixels / statistics.median(file_seconds)
    print(
        f"{args.size}² ({megapixels:.1f} Mpx): {rate:.2f} Mpx/s of the file's time "
        f"(median of {file_seconds} s), command {statistics.median(wall_seconds):.1f} s; "
        f"bound ≥ {BOUND_MPX_PER_SECOND} Mpx/s. --no-amp (float32): "
        f"{megapixels / float32_seconds:.2f} Mpx/s; masks agree on {agreement:.4%} of pixels"
    )
    if not args.no_record:
        record(
            "segment_throughput",
            {
                "size": args.size,
                "model": args.model,
                "file_seconds": file_seconds,
                "command_seconds": wall_seconds,
                "mpx_per_second": round(rate, 3),
                "command_mpx_per_second": round(megapixels / statistics.median(wall_seconds), 3),
                "bound_mpx_per_second": BOUND_MPX_PER_SECOND,
                "float32_file_seconds": float32_seconds,
                "float32_mpx_per_second": round(megapixels / float32_seconds, 3),
                "mask_agreement_with_float32": round(agreement, 6),
            },
            command=f"python -m benchmarks.segment_throughput --home HOME --model {args.model} "
            f"--size {args.size}",
        )


if __name__ == "__main__":
    main()
