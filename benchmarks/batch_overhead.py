"""P4 + P5: per-file overhead of ``segment_archive_flow`` beyond model time, and rerun cost.

Setup, not timed: a temporary ``SEGFLOW_HOME``; seeded files packed into zips (``--kind image``:
grey PNGs of blobs, ``make_image_dataset``, whose blob ids ingest reads as 9 classes; ``raster``:
3-band uint8 GeoTIFFs, ``make_raster_dataset``, the streamed COG route); models planned on 4
labelled 64² files of that kind, registered in MLflow; the Prefect API, its start-up reported
apart: ``--api ephemeral`` (Prefect's temporary API, started by a trivial flow) or ``server``
(``prefect server start`` on 127.0.0.1). Before each timed flow call the flow's per-process
model cache is cleared, as in a new ``segflow segment`` process.

- P4 (``batch_per_file_overhead``): the flow over ``--files`` (200) files of ``--size``² (64) px
  into a new folder with the ``pixel_linear`` oracle (a 1×1 convolution fitted in closed form,
  ``pipelines/synthetic/models.py``), ``--workers`` threads, default ``files_per_task``, MLflow
  batch run on (``--no-track``: off). Flow seconds: wall time of the flow call (flow run,
  extraction, model load, ledger, tasks, reading, windows, writers, hashing, MLflow, artifacts).
  Model seconds: the network's own time on exactly the windows of that run: forward hooks copy every
  batch it gets; after the flow the copies go through the same network again, one by one, in this
  process (``inference_mode``; least of 3 passes with torch's threads and 3 with one thread, so that
  waits for busy cores count as overhead). The rest, decoding and post-processing included, is
  overhead: (flow seconds - model seconds) / files. Floor: <= 50 ms per file.
- P5 (``batch_rerun_fraction``): the flow again on the same archive into the same finished
  folder (all skipped) / the first run, on ``--rerun-files`` (200) files of ``--rerun-size``²
  (512) px and a seeded small 2D U-Net (segflow's ``unet``, 16 base features, depth 4, same
  plan: ~120 windows of 64² per file), so that the first run does a few hundred ms of real work
  per file (the oracle does almost none). The P4 archive's rerun is printed too. Floor: <= 5 %.

``--profile FILE``: two more runs under cProfile in every thread (slower; the measured runs are
never profiled), a P4 first run (stats in FILE) and a P5 rerun (FILE.rerun), and the seconds of
segflow's and Prefect's parts in each (ledger, hashing, tasks, writers, MLflow, heartbeat).

Run: ``.venv/bin/python -m benchmarks.batch_overhead`` (``--no-record``: a trial that must not
touch ``benchmarks/results.json``; a small check: ``--rerun-files 12 --no-record``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from benchmarks.results import record
from data_contracts import apply_environment, get_settings
from pipelines.services.batch_progress import BatchProgress

if TYPE_CHECKING:
    from prefect import Flow

    from flows.server_process import ServerProcess
    from pipelines.infer.loaded_model import LoadedModel

OVERHEAD_FLOOR_MS = 50.0
RERUN_FLOOR = 0.05
MODEL_NAME = "bench"
UNET_NAME = "bench-unet"
UNET_OPTIONS = {"base_features": 16, "depth": 4}


def isolated_home(root: Path) -> None:
    """Point segflow, MLflow and Prefect at ``root/home`` (call before importing Prefect)."""
    for variable in ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(variable, None)
    os.environ["SEGFLOW_HOME"] = str(root / "home")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    get_settings.cache_clear()
    apply_environment()


def start_api(kind: str, root: Path) -> tuple[float, float, ServerProcess | None]:
    """Bring the Prefect API up (``ephemeral``: by a first trivial flow; ``server``: ``prefect
    server start`` on 127.0.0.1, then a first flow); start-up and one more flow's seconds."""
    from flows.server_process import free_port, prefect_server

    started, server = time.perf_counter(), None
    if kind == "server":
        port = free_port()
        server = prefect_server(port, home=root / "server", log_path=root / "server.log").start()
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    from prefect import flow

    @flow(name="api-warm-up")
    def warm_up() -> int:
        return 1

    warm_up()
    startup, started = time.perf_counter() - started, time.perf_counter()
    warm_up()
    return startup, time.perf_counter() - started, server


def register_bench_model(
    model: LoadedModel, name: str, processing: dict[str, Any] | None = None
) -> str:
    """Log ``model`` with ``processing`` to MLflow, register it; ``models:/name@champion``."""
    from pipelines.services.model_registry import log_segmentation_model, register_model
    from pipelines.services.tracking import training_run

    with training_run(model.plan.dataset_name, system_metrics=False):
        uri = log_segmentation_model(
            model.network,
            model.spec,
            model.plan,
            class_names=model.class_names,
            channel_names=model.channel_names,
            processing=processing,
        )
        register_model(uri, name, score=0.5, validation_key="0" * 64)
    return f"models:/{name}@champion"


def make_files(folder: Path, kind: str, count: int, size: int, seed: int) -> Path:
    """Write ``count`` seeded ``size``² inputs with labels under ``folder``; return ``folder``."""
    from pipelines.synthetic import make_image_dataset, make_raster_dataset

    if kind == "image":
        return make_image_dataset(folder, n_images=count, size=(size, size), seed=seed)
    return make_raster_dataset(folder, n_tiles=count, size=(size, size), dtype="uint8", seed=seed)


def bench_models(root: Path, kind: str, patch: int | None) -> tuple[str, str]:
    """Register the oracle (P4) and a seeded small U-Net with the same plan (P5); their URIs."""
    import seg_models
    from pipelines.ingest import ingest
    from pipelines.synthetic.models import oracle_model

    manifest = ingest(make_files(root / "train", kind, 4, 64, seed=100), workdir=root / "ingest")
    oracle = oracle_model(manifest, patch=(patch, patch) if patch else None)
    torch.manual_seed(0)
    spec = oracle.spec.model_copy(update={"name": "unet", "options": dict(UNET_OPTIONS)})
    unet = dataclasses.replace(oracle, network=seg_models.build_model(spec).eval(), spec=spec)
    return register_bench_model(oracle, MODEL_NAME), register_bench_model(unet, UNET_NAME)


class NetworkTimer(BatchProgress):
    """Forward hooks on the network of every batch it is the progress of (the flow hands it
    the model it loaded): copies of its input batches, and the summed in-flow forward time
    (over threads)."""

    def __init__(self) -> None:
        self.capture, self.in_flow_seconds = False, 0.0
        self.batches: list[torch.Tensor] = []
        self.network: nn.Module | None = None
        self._starts: dict[int, float] = {}
        self._lock = threading.Lock()

    def model_ready(self, model: LoadedModel) -> None:
        """Hook the batch's network (once, when a later batch reuses it)."""
        if model.network is self.network:
            return
        model.network.register_forward_pre_hook(self._before)
        model.network.register_forward_hook(self._after)
        self.network = model.network

    def _before(self, _module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if self.capture:  # list.append is atomic: no lock
            self.batches.append(inputs[0].detach().clone())
        self._starts[threading.get_ident()] = time.perf_counter()

    def _after(self, _module: nn.Module, _inputs: tuple[Any, ...], _output: Any) -> None:
        elapsed = time.perf_counter() - self._starts.pop(threading.get_ident())
        with self._lock:
            self.in_flow_seconds += elapsed

    def replay(self, rounds: int = 3) -> float:
        """Least seconds, over ``rounds`` passes with torch's threads and as many with one
        thread, that the last network needs for every captured batch, one after the other."""
        if self.network is None or not self.batches:
            return 0.0
        self.capture, best, threads = False, float("inf"), torch.get_num_threads()
        with torch.inference_mode():
            self.network.forward(self.batches[0])  # warm-up; forward(): no hooks
            for count in [threads] * rounds + [1] * rounds:
                torch.set_num_threads(count)
                started = time.perf_counter()
                for batch in self.batches:
                    self.network.forward(batch)
                best = min(best, time.perf_counter() - started)
        torch.set_num_threads(threads)
        return best


def run_segment(
    flow: Flow[..., Any], archive: Path, uri: str, out: Path, skipped: int = -1, **options: Any
) -> tuple[float, dict[str, Any]]:
    """Wall seconds and summary of a flow call; exits if a file failed or not ``skipped`` were."""
    from flows.dataset_flows import run_flow
    from flows.segment_flow import reset_process_caches

    reset_process_caches()  # no model loaded: as a new process
    # `segflow segment` starts the worker processes' forkserver at its own start, where its
    # imports overlap with the Prefect API's start-up (not counted either): start it here too.
    from pipelines.services.case_workers import start_forkserver_early

    start_forkserver_early(wait=True)
    started = time.perf_counter()
    summary, code = run_flow(flow, source=str(archive), model=uri, out=str(out), **options)
    seconds = time.perf_counter() - started
    if int(code) != 0:
        raise SystemExit(f"{archive.name}: exit code {int(code)}: {summary['failed_files']}")
    if skipped >= 0 and summary["skipped"] != skipped:
        raise SystemExit(f"{archive.name}: {summary['skipped']} of {skipped} files skipped")
    return seconds, summary


@contextmanager
def thread_profiles(path: Path, files: int) -> Iterator[None]:
    """cProfile every thread started inside the block (and this one), save the stats to
    ``path`` and print the cumulative seconds of :data:`PROFILE_PARTS`, summed over threads."""
    import cProfile
    import pstats
    import sys

    profiles = [cProfile.Profile()]

    def start(_frame: Any, _event: str, _arg: Any) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()

    threading.setprofile(start)
    profiles[0].enable()
    try:
        yield
    finally:
        profiles[0].disable()
        threading.setprofile(None)
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(str(path))
        raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
        print(f"profile ({path}; thread-seconds, cumulative; ms per file over {files} files):")
        for (suffix, function), what in PROFILE_PARTS.items():
            seconds = sum(
                row[3]
                for (filename, _, name), row in raw.items()
                if name == function and filename.replace(os.sep, "/").endswith(suffix)
            )
            if seconds:
                print(f"  {what:<45} {seconds:8.2f} s {1000 * seconds / files:8.1f} ms/file")


PROFILE_PARTS = {  # (file suffix, function): what it stands for
    ("prefect/flow_engine.py", "run_flow_sync"): "flow run (all of it)",
    ("prefect/flow_engine.py", "_send_heartbeats"): "flow-run heartbeat thread (joined at exit)",
    ("pipelines/services/batch.py", "plan_batch"): "plan_batch (extraction, ledger decisions)",
    ("flows/segment_flow.py", "segment_files"): "task bodies (segment_files)",
    ("prefect/task_engine.py", "run_task_sync"): "task runs incl. Prefect's engine",
    ("pipelines/infer/run.py", "segment_case"): "segment_case (read, infer, post, write)",
    ("pipelines/infer/in_memory.py", "predict_image"): "  predict_image",
    ("pipelines/infer/raster.py", "segment_raster"): "  segment_raster",
    ("pipelines/infer/sliding.py", "sliding_probabilities"): "    sliding windows",
    ("pipelines/write/image2d.py", "write_label_image"): "  write_label_image",
    ("pipelines/write/lineage.py", "write_lineage"): "  write_lineage",
    ("pipelines/services/ledger.py", "record_done"): "ledger.record_done (hashes outputs)",
    ("pipelines/files.py", "sha256_file"): "sha256_file (all hashing)",
    ("pipelines/services/ledger.py", "decide"): "ledger.decide",
    ("pipelines/services/ledger.py", "export_json"): "ledger.export_json",
    ("pipelines/infer/inputs.py", "discover_inputs"): "discover_inputs (archive extraction)",
    ("pipelines/services/model_loading.py", "load_model"): "load_model",
    ("pipelines/services/batch_tracking.py", "log_batch_run"): "MLflow batch run",
    ("flows/artifacts.py", "update"): "progress artifact updates",
}


def measure_p4(
    flow: Flow[..., Any], archive: Path, uri: str, root: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """P4's first run (hooked), model replay, the rerun, and the optional profiled run."""
    from flows.segment_flow import files_per_task_for

    options = {"files_per_task": args.files_per_task, "track": not args.no_track}
    timer = NetworkTimer()
    timer.capture = True
    first, _ = run_segment(flow, archive, uri, root / "out-small", progress=timer, **options)
    timer.capture = False
    model_seconds = timer.replay()
    rerun, _ = run_segment(flow, archive, uri, root / "out-small", skipped=args.files, **options)
    if args.profile:  # an extra first run, under the profiler (slower), into a new folder
        with thread_profiles(args.profile, args.files):
            run_segment(flow, archive, uri, root / "out-profile", **options)
    return {
        "files": args.files,
        "size": args.size,
        "flow_seconds": round(first, 3),
        "model_seconds": round(model_seconds, 4),
        "model_batches": len(timer.batches),
        "in_flow_forward_seconds": round(timer.in_flow_seconds, 3),
        "overhead_ms_per_file": round(1000 * (first - model_seconds) / args.files, 2),
        "files_per_task": args.files_per_task or files_per_task_for(args.files, args.workers),
        "rerun_seconds": round(rerun, 3),
        "floor_ms": OVERHEAD_FLOOR_MS,
    }


def measure_p5(
    flow: Flow[..., Any], archive: Path, uri: str, root: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """P5's first run and rerun into the same folder (and the optional profiled rerun)."""
    options = {"files_per_task": args.files_per_task, "track": not args.no_track}
    out, files = root / "out-big", args.rerun_files
    first, _ = run_segment(flow, archive, uri, out, **options)
    rerun, _ = run_segment(flow, archive, uri, out, skipped=files, **options)
    if args.profile:  # an extra rerun, under the profiler
        with thread_profiles(args.profile.with_name(args.profile.name + ".rerun"), files):
            run_segment(flow, archive, uri, out, skipped=files, **options)
    return {
        "files": files,
        "size": args.rerun_size,
        "first_seconds": round(first, 3),
        "rerun_seconds": round(rerun, 3),
        "fraction": round(rerun / first, 4),
        "floor": RERUN_FLOOR,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("image", "raster"), default="image")
    for name, default in (("files", 200), ("size", 64), ("rerun-files", 200), ("rerun-size", 512)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--patch", type=int, default=None, help="window size (default: plan's)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--files-per-task", type=int, default=None)
    parser.add_argument("--api", choices=("ephemeral", "server"), default="ephemeral")
    parser.add_argument("--no-track", action="store_true", help="no MLflow batch run")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile into this file")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="segflow-batch-bench-"))
    server = None
    try:
        isolated_home(root)
        from pipelines.synthetic import pack_archive

        small = make_files(root / "small", args.kind, args.files, args.size, seed=1)
        small_zip = pack_archive(small / "images", root / "small.zip")
        big = make_files(root / "big", args.kind, args.rerun_files, args.rerun_size, seed=2)
        big_zip = pack_archive(big / "images", root / "big.zip")
        uri, unet_uri = bench_models(root, args.kind, args.patch)
        startup, per_flow, server = start_api(args.api, root)
        print(f"Prefect API ({args.api}) up in {startup:.1f} s; one more flow {per_flow:.2f} s")
        from flows.runners import task_runner
        from flows.segment_flow import segment_archive_flow

        runner = task_runner("threads", max_workers=args.workers)
        flow = segment_archive_flow.with_options(task_runner=runner)
        p4 = measure_p4(flow, small_zip, uri, root, args)
        print(
            f"P4 {args.files} {args.kind} files of {args.size}² ({args.workers} threads, "
            f"{p4['files_per_task']} files/task): flow {p4['flow_seconds']:.2f} s, model "
            f"{p4['model_seconds']:.3f} s ({p4['model_batches']} batches; "
            f"{p4['in_flow_forward_seconds']:.3f} s in the flow, summed over threads) -> "
            f"overhead {p4['overhead_ms_per_file']:.1f} ms/file (floor <= {OVERHEAD_FLOOR_MS:g}); "
            f"Prefect start-up {startup:.1f} s not included; rerun {p4['rerun_seconds']:.2f} s"
        )
        p5 = measure_p5(flow, big_zip, unet_uri, root, args)
        print(
            f"P5 rerun of {args.rerun_files} finished {args.kind} files of {args.rerun_size}²: "
            f"{p5['rerun_seconds']:.2f} s vs first run {p5['first_seconds']:.2f} s "
            f"({1000 * p5['first_seconds'] / args.rerun_files:.0f} ms/file) -> fraction "
            f"{p5['fraction']:.3f} (floor <= {RERUN_FLOOR:g})"
        )
        if not args.no_record:
            common = {"kind": args.kind, "api": args.api, "workers": args.workers}
            common.update(mlflow_tracking=not args.no_track)
            p4.update(
                prefect_startup_seconds=round(startup, 2), trivial_flow_seconds=round(per_flow, 3)
            )
            command = f"python -m benchmarks.batch_overhead --kind {args.kind} --api {args.api}"
            record("batch_per_file_overhead", {**common, **p4}, command=command)
            record("batch_rerun_fraction", {**common, **p5}, command=command)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
