"""The ``segment_archive`` flow: resumable batch segmentation of a file, folder or archive.

The model URI is resolved once (``models:/NAME@champion`` → ``models:/NAME/VERSION``), so an
alias moved mid-batch does not mix models. :func:`pipelines.services.batch.run_batch` takes the output
folder's lock, asks the ledger what must run and exports the ledger; this flow only decides how
the cases run: as Prefect tasks of ``files_per_task`` cases each, on the flow's task runner
(threads by default, Dask with ``--task-runner dask``), with bounded concurrency. Tasks get
paths and URIs, and each worker process loads the model and opens the ledger once.

Artifacts: a progress bar while the batch runs, a markdown summary and a table of per-file
results. The batch is also an MLflow run (counts, throughput, the ledger as artifact).

``source`` and ``out`` may be ``s3://`` URIs: inputs are staged into a local folder first, the
batch writes (and keeps its ledger) in a local staging folder, and finished outputs are then
uploaded whole (:mod:`pipelines.services.object_store`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import State

from flows.artifacts import ProgressArtifact, publish_summary, publish_table
from flows.dataset_flows import outcome_state
from flows.storage_tasks import stage_source, upload_staged_outputs
from flows.tasks import IO_RETRIES, IO_RETRY_DELAYS, transient_io
from pipelines.infer.loaded_model import LoadedModel
from pipelines.infer.run import SegmentOptions
from pipelines.interrupts import (
    BatchInterrupted,
    stop_reason,
    stop_requested,
    stop_signals_handled,
)
from pipelines.redaction import redact
from pipelines.services.batch import (
    BatchItem,
    BatchItemResult,
    BatchReport,
    process_item,
    run_batch,
)
from pipelines.services.batch_tracking import log_batch_run
from pipelines.services.case_workers import (
    CaseWorkers,
    WorkerSettings,
    default_worker_count,
    local_model_folder,
    start_forkserver_early,
)
from pipelines.services.ledger import Ledger
from pipelines.services.model_loading import load_model, resolve_model_uri
from pipelines.services.object_store import is_s3_uri, staged_output_dir

__all__ = ["add_observer", "files_per_task_for", "reset_process_caches", "segment_archive_flow"]

logger = logging.getLogger(__name__)

_MAX_FILES_PER_TASK = 32
_TASKS_PER_WORKER = 4
Observer = Callable[[BatchItemResult, int, int], None]
_observers: list[Observer] = []
_ledgers: dict[tuple[int, str], Ledger] = {}
_ledgers_lock = threading.Lock()


def add_observer(observer: Observer) -> Callable[[], None]:
    """Call ``observer(result, done, total)`` for each finished case of flows run in this
    process (the CLI's progress bar); returns a function that removes it."""
    _observers.append(observer)
    return lambda: _observers.remove(observer)


_models_lock = threading.Lock()


def _model(uri: str, device: str | None = None) -> LoadedModel:
    """The model of a pinned URI, loaded and made ready for inference once per process;
    the tasks of a process share it and only read it."""
    with _models_lock:
        return _load_cached(uri, device)


def reset_process_caches() -> None:
    """Forget the models and close the ledgers this process keeps between flow runs, as in a
    new ``segflow segment`` process (benchmarks and tests)."""
    with _models_lock:
        _load_cached.cache_clear()
    with _ledgers_lock:
        for ledger in _ledgers.values():
            ledger.close()
        _ledgers.clear()


@functools.lru_cache(maxsize=4)
def _load_cached(uri: str, device: str | None) -> LoadedModel:
    return load_model(uri, device=device)


def _ledger(out: str) -> Ledger:
    """The output folder's ledger, opened once per process (thread-safe, WAL)."""
    key = (os.getpid(), str(Path(out).absolute()))
    with _ledgers_lock:
        if key not in _ledgers:
            _ledgers[key] = Ledger.open(out)
        return _ledgers[key]


@task(
    name="segment-files",
    cache_policy=NO_CACHE,
    task_run_name="segment {label}",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=transient_io,
)
def segment_files(
    items: list[BatchItem],
    model_uri: str,
    out: str,
    options: SegmentOptions,
    label: str,
    workers: CaseWorkers | None = None,
) -> list[BatchItemResult]:
    """Segment a group of cases and record each in the ledger.

    A file's own errors are recorded as failures, not raised; a transient ``OSError`` of the
    output folder (a network share that hiccups) retries the group, whose finished cases the
    ledger then skips. With ``workers`` (the threads runner), each case runs in one of the
    batch's worker processes, so that a native crash fails that case only; without (Dask),
    in this process.
    """
    from prefect.runtime import task_run

    model, ledger = _model(model_uri, options.device), _ledger(out)
    if task_run.run_count > 1:  # a retry: ask the ledger again, so finished cases are skipped
        items = [_decided_again(item, ledger) for item in items]
    segment = workers.segment if workers is not None else None
    return [
        process_item(model, item, Path(out), options, ledger, segment=segment) for item in items
    ]


def _decided_again(item: BatchItem, ledger: Ledger) -> BatchItem:
    key = item.decision.key
    return BatchItem(item.case, ledger.decide(item.case, key.model, key.config))


def files_per_task_for(n_items: int, workers: int) -> int:
    """Group small files so each worker gets a few tasks: fewer task runs, same parallelism."""
    if n_items == 0:
        return 1
    return max(1, min(_MAX_FILES_PER_TASK, math.ceil(n_items / (workers * _TASKS_PER_WORKER))))


def _workers() -> tuple[int, bool]:
    """(workers of the flow's task runner, whether they are threads of this process)."""
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    context = FlowRunContext.get()
    runner = getattr(context, "task_runner", None) if context else None
    if isinstance(runner, ThreadPoolTaskRunner):
        return int(getattr(runner, "_max_workers", None) or os.cpu_count() or 1), True
    cluster = getattr(runner, "cluster_kwargs", None) or {}
    return int(cluster.get("n_workers") or os.cpu_count() or 2), False


@contextlib.contextmanager
def _cores_shared(workers: int) -> Iterator[None]:
    """Several task threads each running torch on every core fight over them: give each
    thread its share while the tasks run (200 tiny forward passes took 1.56 s with 2 torch
    threads per worker thread on 2 cores, 0.002 s with 1)."""
    import torch

    before = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _map_as_tasks(
    model_uri: str,
    out: str,
    options: SegmentOptions,
    files_per_task: int | None,
    isolated: bool,
) -> Callable[[Callable[[BatchItem], BatchItemResult], list[BatchItem]], Iterable[BatchItemResult]]:
    """A ``map_items`` for :func:`run_batch` that runs the items as Prefect tasks."""

    def run(
        _process: Callable[[BatchItem], BatchItemResult], items: list[BatchItem]
    ) -> list[BatchItemResult]:
        workers, threads = _workers()
        if not items:
            return []
        with contextlib.ExitStack() as stack:
            pool: CaseWorkers | None = None
            if threads and isolated:
                workers = default_worker_count(len(items), workers)
                pool = stack.enter_context(_case_workers(model_uri, out, options, workers))
            else:
                stack.enter_context(_cores_shared(workers if threads else 1))
            size = files_per_task or files_per_task_for(len(items), workers)
            groups = [items[i : i + size] for i in range(0, len(items), size)]
            progress = ProgressArtifact("segment-progress", "files segmented")
            futures = [
                segment_files.submit(
                    group,
                    model_uri,
                    out,
                    options,
                    f"{group[0].case.case_id}+{len(group) - 1}",
                    pool,  # type: ignore[arg-type]
                )
                for group in groups
            ]
            results: list[BatchItemResult] = []
            for future in as_completed(futures):
                for result in future.result():
                    results.append(result)
                    for observer in list(_observers):
                        observer(result, len(results), len(items))
                progress.update(len(results) / max(len(items), 1))
            return results

    return run


@contextlib.contextmanager
def _case_workers(
    model_uri: str, out: str, options: SegmentOptions, workers: int
) -> Iterator[CaseWorkers]:
    """Worker processes for the batch, sharing the cores; ended when the batch ends (given a
    few seconds to reach a boundary when a stop was asked for)."""
    model = _model(model_uri, options.device)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with tempfile.TemporaryDirectory(prefix="segflow-model-") as scratch:
        folder = local_model_folder(model_uri, scratch)
        pool = CaseWorkers(WorkerSettings.of(model, folder, out, options, threads), workers)
        try:
            yield pool
        finally:
            pool.close(stopping=stop_requested())


def _rows(report: BatchReport) -> list[dict[str, Any]]:
    return [
        {
            "case": item.case_id,
            "status": item.status,
            "reason": item.reason,
            "seconds": item.seconds,
            "outputs": ", ".join(path.name for path in item.outputs.values()),
            "error": item.error or "",
        }
        for item in report.items
    ]


def _summary(report: BatchReport, source: str, model: str, out: str) -> dict[str, Any]:
    counts = report.counts
    return {
        "source": source,
        "model": model,
        "out": out if is_s3_uri(out) else str(Path(out).absolute()),
        **{str(status): count for status, count in counts.items()},
        "wall_seconds": report.wall_seconds,
        "files_per_second": round(report.files_per_second, 3),
        "failed_files": {item.case_id: item.error for item in report.items if item.error},
        "items": _rows(report),
    }


@flow(name="segment-archive", flow_run_name="segment-{source}", log_prints=True)
def segment_archive_flow(
    source: str,
    model: str,
    out: str,
    polygons: bool = False,
    probabilities: bool = False,
    tta: bool = False,
    overlap: float | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    verify: bool = False,
    files_per_task: int | None = None,
    track: bool = True,
    retry_crashed: bool = False,
    isolated: bool = True,
    channel_suffix: bool = False,
) -> State[dict[str, Any]]:
    """Segment every case under ``source`` into ``out``; a rerun skips what is done.

    Args:
        source: an image, a folder, a zip/tar archive, or a manifest JSON; or an ``s3://`` URI
            of any of these (staged locally first).
        model: ``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/…`` or a model folder.
        out: the output folder (its ledger is ``.segflow/ledger.sqlite``), or an ``s3://``
            prefix: outputs are written in ``$SEGFLOW_HOME/staging/outputs/…`` (ledger
            included) and uploaded whole when the batch ends.
        polygons: rasters also as GeoPackage/GeoJSON polygons.
        probabilities: also write class probabilities.
        tta: test-time flips (volumes and 2D images).
        overlap: window overlap (default per kind).
        batch_size: windows per forward pass (default per kind).
        device: ``cpu``/``cuda`` (default: CUDA when present).
        verify: re-hash inputs and outputs instead of trusting size and mtime.
        files_per_task: cases per task (default: a few tasks per worker, at most 32 cases each).
        track: log the batch as an MLflow run (counts, throughput, ledger artifact).
        retry_crashed: try quarantined files again (their worker crashed twice before).
        isolated: with the threads runner, segment in worker processes, so that a native
            crash (segfault, abort, OOM kill) fails one file, not the batch (default).
        channel_suffix: group ``<case>_0000``, ``<case>_0001``… files into one case; also
            on for a model of multi-channel volumes (:func:`pipelines.infer.inputs.channel_suffix_for`). Otherwise
            every file is a case named by its full stem.

    Returns:
        ``Completed`` (all done or skipped; ``partial: …`` when some failed) or ``Failed``
        (nothing done), carrying the summary.
    """
    if isolated:
        start_forkserver_early()  # imports the inference stack while the model loads
    pinned = resolve_model_uri(model)
    loaded = _model(pinned, device)
    options = SegmentOptions(
        polygons=polygons,
        probabilities=probabilities,
        tta=tta,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
    )
    local_out = str(staged_output_dir(out))
    with stop_signals_handled():  # SIGTERM/SIGINT: stop at a window batch or file
        report = run_batch(
            stage_source(source) if is_s3_uri(source) else source,
            loaded,
            local_out,
            options,
            verify=verify,
            retry_crashed=retry_crashed,
            channel_suffix=channel_suffix,
            map_items=_map_as_tasks(pinned, local_out, options, files_per_task, isolated),
        )
    if stop_requested() or report.counts["interrupted"]:
        raise _interrupted(report, local_out)
    summary = _summary(report, source, pinned, out)
    if is_s3_uri(out):
        summary["uploaded"] = len(upload_staged_outputs(local_out, out))
    if track:
        summary["mlflow_run"] = _track(report, summary, pinned, source, local_out, out)
    counts = report.counts
    publish_summary(
        f"Segmentation of {Path(source).name}",
        [
            f"model: `{pinned}`",
            f"done {counts['done']}, skipped {counts['skipped']}, failed {counts['failed']}",
            f"{report.files_per_second:.2f} files/s over {report.wall_seconds:.1f} s",
            f"outputs: `{summary['out']}`",
            *([f"**not logged**: {summary['not_logged']}"] if summary.get("not_logged") else []),
        ],
        key="segment-summary",
    )
    publish_table("segment-files", _rows(report), description="one row per file")
    return outcome_state(
        summary,
        counts["done"] + counts["skipped"],
        counts["failed"],
        what="files",
        detail="; MLflow run not logged" if summary.get("not_logged") else "",
    )


def _interrupted(report: BatchReport, out: str) -> BatchInterrupted:
    counts, name = report.counts, stop_reason() or "SIGTERM"
    total = sum(counts.values())
    return BatchInterrupted(
        f"stopped by {name}: {counts['done']} file(s) segmented by this run, "
        f"{counts['skipped']} done before, {counts['failed']} failed, "
        f"{counts['interrupted']} of {total} left to do; finished files are recorded in the "
        "ledger and no partial output is left",
        path=out,
        signal_name=name,
    )


def _track(
    report: BatchReport,
    summary: dict[str, Any],
    model: str,
    source: str,
    local_out: str,
    out: str,
) -> str | None:
    """Log the batch as an MLflow run; when the tracking server is gone, say so in the
    summary (``not_logged``) instead of failing a batch whose outputs and ledger are complete."""
    try:
        return log_batch_run(
            report, Path(local_out), model_uri=model, source=source, destination=out
        )
    except (MlflowException, OSError) as error:
        ledger = Path(local_out) / ".segflow" / "ledger.json"
        summary["not_logged"] = (
            "the batch's MLflow run (params, counts, throughput, ledger artifact) was not "
            f"logged: {type(error).__name__}: {redact(str(error))[:300]}. The outputs and the "
            f"ledger ({ledger}) are complete; run the same command again once MLflow is back "
            "to log it (every file is skipped)"
        )
        logger.warning("%s", summary["not_logged"])
        return None
