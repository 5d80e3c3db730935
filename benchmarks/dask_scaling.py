"""P6: ``segment_archive_flow`` on two Dask workers vs one, on large GeoTIFFs with real work.

Setup (not timed): a temporary ``SEGFLOW_HOME``; ``prefect server start`` on 127.0.0.1 (its
start-up printed; stopped at the end), so that Dask can run worker processes that all talk to
it; ``--files`` (16) seeded 3-band uint8 GeoTIFFs of ``--size``² (4096²) px, tiled 64², deflate,
0.5 m pixels (``make_raster_dataset``: rectangles and discs on a textured, noisy background),
packed into one zip; segflow's ``pixel_linear`` oracle (a 1×1 convolution fitted in closed form
on 4 small tiles of the same kind, ``pipelines/synthetic/models.py``), registered with
``processing.postprocess.min_object_size`` = ``--min-object-size`` (25 m² = 100 px) so that
inference stays cheap and the per-file work is the rest of the raster route: decoding the
deflate tiles, streamed windows (``--patch``² = 512²) and blending, connected components and
small-object removal in blocks of rows, the COG mask (GDAL compresses with all CPUs), the
polygons (``polygons=True``: GeoPackage + GeoJSON) and the hashing of inputs and outputs.

Measured: the wall time of the flow call (cluster start included, as a user waits for it) with
``task_runner("dask", max_workers=N)`` for N = 1 and 2, into a fresh output folder each time,
``--files-per-task`` (1) file per task, MLflow batch run on (``--no-track`` turns it off). Worker
kind ``processes`` (default): a local cluster of worker processes, one thread each (Dask sets
``OMP_NUM_THREADS=1`` in them, so torch uses one core per worker); ``threads``: the same cluster
as threads of this process (GIL shared, torch's own thread pool); ``both`` measures each.
Worker processes start cold in every timed run, as a fresh cluster does: each imports segflow
(torch, MONAI, Prefect, MLflow: ~7 s on the busy 2-core dev machine) and loads the model, so
the default input (16 × 4096²) keeps that small next to the per-file work. ``--repeats``
alternates 1, 2, 1, 2, …; the speed-up is median(1 worker) / median(2 workers).
Floor: >= 1.5 (needs a machine with at least 2 free cores). The batch-only speed-up (the
ledger's ``wall_seconds``: extraction and tasks, no cluster start) is printed too.

Run: ``.venv/bin/python -m benchmarks.dask_scaling`` (``--no-record`` for a trial that must
not touch ``benchmarks/results.json``; a small check: ``--files 4 --size 1024 --no-record``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.batch_overhead import isolated_home, register_bench_model, run_segment, start_api
from benchmarks.results import record
from data_contracts import InferenceOptions

SPEEDUP_FLOOR = 1.5
MODEL_NAME = "bench-raster"


def make_inputs(root: Path, files: int, size: int) -> Path:
    """The archive of ``files`` seeded ``size``² scenes (3 bands, uint8, tiled, deflate)."""
    from pipelines.synthetic import make_raster_dataset, pack_archive

    scenes = make_raster_dataset(
        root / "scenes",
        n_tiles=files,
        size=(size, size),
        dtype="uint8",
        raster_labels=False,
        seed=1,
    )
    return pack_archive(scenes / "images", root / "scenes.zip")


def raster_model(root: Path, patch: int, min_object_size: float) -> str:
    """The oracle for such scenes, with small-object removal, registered; its URI."""
    from pipelines.ingest import ingest
    from pipelines.synthetic import make_raster_dataset
    from pipelines.synthetic.models import oracle_model

    train = make_raster_dataset(root / "train", n_tiles=4, size=(256, 256), dtype="uint8", seed=9)
    model = oracle_model(ingest(train, workdir=root / "train-ingest"), patch=(patch, patch))
    processing = {"postprocess": {"min_object_size": min_object_size}}
    return register_bench_model(model, MODEL_NAME, processing)


def measure(
    archive: Path, uri: str, root: Path, kind: str, workers: int, run: int, **options: Any
) -> tuple[float, float, float]:
    """Flow seconds, batch seconds and mean seconds per file (inside its task) of one run with
    ``workers`` Dask workers of ``kind``."""
    from flows.runners import task_runner
    from flows.segment_flow import segment_archive_flow

    runner = task_runner("dask", max_workers=workers, processes=kind == "processes")
    flow = segment_archive_flow.with_options(task_runner=runner)
    out = root / f"out-{kind}-{workers}-{run}"
    polygons = InferenceOptions(polygons=True)
    seconds, summary = run_segment(flow, archive, uri, out, options=polygons, **options)
    missing = [item["case"] for item in summary["items"] if ".gpkg" not in item["outputs"]]
    if missing:
        raise SystemExit(f"no polygons for {missing}")
    shutil.rmtree(out, ignore_errors=True)
    per_file = statistics.mean(float(item["seconds"]) for item in summary["items"])
    return seconds, float(summary["wall_seconds"]), per_file


def summarise(
    times: dict[tuple[str, int], list[tuple[float, float, float]]], kind: str
) -> dict[str, Any]:
    """Speed-ups (flow and batch wall time, medians) and every run's times of one worker kind."""
    runs = {label: times[kind, n] for label, n in (("one_worker", 1), ("two_workers", 2))}
    flow = {label: statistics.median(t[0] for t in runs[label]) for label in runs}
    batch = {label: statistics.median(t[1] for t in runs[label]) for label in runs}
    result: dict[str, Any] = {
        "speedup": round(flow["one_worker"] / flow["two_workers"], 3),
        "batch_speedup": round(batch["one_worker"] / batch["two_workers"], 3),
    }
    for label, rows in runs.items():
        result[f"{label}_seconds"] = [round(t[0], 3) for t in rows]
        result[f"{label}_batch_seconds"] = [round(t[1], 3) for t in rows]
        result[f"{label}_seconds_per_file"] = [round(t[2], 3) for t in rows]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--patch", type=int, default=512)
    parser.add_argument("--min-object-size", type=float, default=25.0, help="m²")
    parser.add_argument(
        "--worker-kind", choices=("processes", "threads", "both"), default="processes"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--files-per-task", type=int, default=1)
    parser.add_argument("--no-track", action="store_true", help="no MLflow batch run")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="segflow-dask-bench-"))
    server = None
    try:
        isolated_home(root)
        os.environ["DASK_TEMPORARY_DIRECTORY"] = str(root / "dask")
        started = time.perf_counter()
        archive = make_inputs(root, args.files, args.size)
        uri = raster_model(root, args.patch, args.min_object_size)
        print(f"inputs and model ready in {time.perf_counter() - started:.1f} s (not timed)")
        startup, per_flow, server = start_api("server", root)
        print(f"Prefect server up in {startup:.1f} s; a trivial flow then {per_flow:.2f} s")
        kinds = ("processes", "threads") if args.worker_kind == "both" else (args.worker_kind,)
        options = {"files_per_task": args.files_per_task, "track": not args.no_track}
        times: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for run in range(args.repeats):
            for kind, workers in itertools.product(kinds, (1, 2)):
                flow_s, batch_s, file_s = measure(archive, uri, root, kind, workers, run, **options)
                times.setdefault((kind, workers), []).append((flow_s, batch_s, file_s))
                print(
                    f"  {kind}, {workers} worker(s): flow {flow_s:.1f} s, batch {batch_s:.1f} s, "
                    f"{file_s:.2f} s per file inside its task"
                )
        results = {kind: summarise(times, kind) for kind in kinds}
        for kind, result in results.items():
            one, two = (
                statistics.median(result[key])
                for key in ("one_worker_seconds", "two_workers_seconds")
            )
            print(
                f"P6 {args.files} files of {args.size}² (deflate, min object "
                f"{args.min_object_size:g} m², polygons), Dask worker {kind}: 1 worker {one:.1f} s "
                f"vs 2 workers {two:.1f} s -> speed-up {result['speedup']:.2f} (floor >= "
                f"{SPEEDUP_FLOOR:g}); batch only {result['batch_speedup']:.2f}; "
                f"{os.cpu_count()} CPUs"
            )
        if not args.no_record:
            primary = kinds[0]
            record(
                "dask_two_workers_speedup",
                {
                    **results[primary],
                    "worker_kind": primary,
                    "by_worker_kind": results,
                    "files": args.files,
                    "size": [args.size, args.size],
                    "patch": args.patch,
                    "min_object_size_m2": args.min_object_size,
                    "files_per_task": args.files_per_task,
                    "repeats": args.repeats,
                    "mlflow_tracking": not args.no_track,
                    "prefect_server_startup_seconds": round(startup, 2),
                    "floor": SPEEDUP_FLOOR,
                },
                command=(
                    f"python -m benchmarks.dask_scaling --files {args.files} --size {args.size} "
                    f"--worker-kind {args.worker_kind} --repeats {args.repeats}"
                ),
            )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
