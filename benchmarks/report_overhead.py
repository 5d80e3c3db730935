"""Q1 + Q2: P4's per-file overhead with the drift check and confidence on, and the QA report's time.

Setup as for P4 (:mod:`benchmarks.batch_overhead`: temporary ``SEGFLOW_HOME``, ``--files``
(200) seeded ``--size``² (64) px files of ``--kind`` in a zip, the ``pixel_linear`` oracle, the
Prefect API started and reported apart), except that the oracle is registered **with its drift
reference** (``processing["drift_reference"]``), so every file is sampled and compared with the
training data before it is segmented, and its confidence is computed from its probabilities (as
always) and written to the ledger, lineage and report.

- Q1 (``batch_overhead_with_quality``): P4's measure, (flow seconds - model seconds) / files,
  with drift and confidence on. Floor: <= 50 ms per file.
- Q2 (``qa_report_seconds``): the seconds the flow spends writing ``report.html`` (measures of
  every mask, 24 thumbnails, footprints) for that batch, timed around
  :func:`pipelines.services.qa_report.write_qa_report`. Floor: <= 10 s for 200 files.

Run: ``.venv/bin/python -m benchmarks.report_overhead`` (``--no-record``: a trial that must not
touch ``benchmarks/results.json``; a small check: ``--files 20 --no-record``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.batch_overhead import (
    NetworkTimer,
    isolated_home,
    make_files,
    register_bench_model,
    run_segment,
    start_api,
)
from benchmarks.results import record

OVERHEAD_FLOOR_MS = 50.0
REPORT_FLOOR_SECONDS = 10.0
MODEL_NAME = "bench-quality"


@contextmanager
def timed_reports() -> Iterator[list[float]]:
    """Seconds of every QA report the flow writes meanwhile (wraps the flow's writer)."""
    import flows.segment_report as segment_report

    original: Callable[..., Path] = segment_report.write_qa_report  # type: ignore[attr-defined]
    seconds: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> Path:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    setattr(segment_report, "write_qa_report", timed)  # noqa: B010 (not exported)
    try:
        yield seconds
    finally:
        setattr(segment_report, "write_qa_report", original)  # noqa: B010


def quality_model(root: Path, kind: str, patch: int | None) -> str:
    """The P4 oracle, registered with the drift reference of its training files."""
    from pipelines.ingest import ingest
    from pipelines.synthetic.models import oracle_model

    manifest = ingest(make_files(root / "train", kind, 4, 64, seed=100), workdir=root / "ingest")
    oracle = oracle_model(manifest, patch=(patch, patch) if patch else None)
    assert "drift_reference" in oracle.processing
    return register_bench_model(oracle, MODEL_NAME, processing=oracle.processing)


def measure(
    flow: Any, archive: Path, uri: str, root: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Q1 and Q2 from one hooked first run (and the model replay)."""
    timer = NetworkTimer()
    timer.capture = True
    options = {"files_per_task": args.files_per_task, "track": not args.no_track}
    with timed_reports() as reports:
        first, summary = run_segment(flow, archive, uri, root / "out", progress=timer, **options)
    timer.capture = False
    model_seconds = timer.replay()
    drift = {row["drift"] != "" for row in summary["items"]}
    scored = sum(row["confidence"] is not None for row in summary["items"])
    if scored != args.files or not reports:
        raise SystemExit(f"{scored} of {args.files} files scored; reports written: {len(reports)}")
    return {
        "files": args.files,
        "size": args.size,
        "flow_seconds": round(first, 3),
        "model_seconds": round(model_seconds, 4),
        "overhead_ms_per_file": round(1000 * (first - model_seconds) / args.files, 2),
        "report_seconds": round(reports[0], 3),
        "files_flagged": int(True in drift),
        "overhead_floor_ms": OVERHEAD_FLOOR_MS,
        "report_floor_seconds": REPORT_FLOOR_SECONDS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("image", "raster"), default="image")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=None, help="window size (default: plan's)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--files-per-task", type=int, default=None)
    parser.add_argument("--api", choices=("ephemeral", "server"), default="ephemeral")
    parser.add_argument("--no-track", action="store_true", help="no MLflow batch run")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="segflow-report-bench-"))
    server = None
    try:
        isolated_home(root)
        from pipelines.synthetic import pack_archive

        files = make_files(root / "files", args.kind, args.files, args.size, seed=1)
        archive = pack_archive(files / "images", root / "files.zip")
        uri = quality_model(root, args.kind, args.patch)
        startup, per_flow, server = start_api(args.api, root)
        print(f"Prefect API ({args.api}) up in {startup:.1f} s; one more flow {per_flow:.2f} s")
        from flows.runners import task_runner
        from flows.segment_flow import segment_archive_flow

        flow = segment_archive_flow.with_options(
            task_runner=task_runner("threads", max_workers=args.workers)
        )
        result = measure(flow, archive, uri, root, args)
        print(
            f"Q1 {args.files} {args.kind} files of {args.size}² with drift + confidence: flow "
            f"{result['flow_seconds']:.2f} s, model {result['model_seconds']:.3f} s -> overhead "
            f"{result['overhead_ms_per_file']:.1f} ms/file (floor <= {OVERHEAD_FLOOR_MS:g}); "
            f"Q2 report {result['report_seconds']:.2f} s (floor <= {REPORT_FLOOR_SECONDS:g})"
        )
        if not args.no_record:
            common = {"kind": args.kind, "api": args.api, "workers": args.workers}
            common.update(mlflow_tracking=not args.no_track, prefect_startup_seconds=startup)
            command = f"python -m benchmarks.report_overhead --kind {args.kind} --api {args.api}"
            record("batch_overhead_with_quality", {**common, **result}, command=command)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
