"""The ``segment_archive`` flow: resumable batch segmentation of a file, folder or archive.

The model URI is resolved once (``models:/NAME@champion`` → ``models:/NAME/VERSION``), so an
alias moved mid-batch does not mix models, and the model is downloaded once per batch (this
process and the batch's worker processes load the same local copy). A
:class:`pipelines.services.batch.BatchRun` takes the output folder's lock, asks the ledger what
must run and exports the ledger; this flow only decides how the cases run: as Prefect tasks of
``files_per_task`` cases each, on the flow's task runner (threads by default, Dask with
``--task-runner dask``), with bounded concurrency, each task's results handed back to the run.
Threads share the run's open ledger; a Dask task gets paths and URIs, and its process loads the
model once and opens the ledger for its group.

Artifacts: a progress bar while the batch runs, a markdown summary and a table of per-file
results. The batch is also an MLflow run (counts, throughput, the ledger as artifact).

``source`` and ``out`` may be ``s3://`` URIs: inputs are staged into a local folder first, the
batch writes (and keeps its ledger) in a local staging folder, and finished outputs are then
uploaded whole (:mod:`pipelines.services.object_store`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.futures import as_completed

from data_contracts import InferenceOptions
from flows.artifacts import ProgressArtifact, publish_summary, publish_table
from flows.dataset_flows import outcome_state
from flows.segment_report import write_report
from flows.storage_tasks import stage_source, upload_staged_outputs
from flows.tasks import IO_RETRIES, IO_RETRY_DELAYS, transient_io
from pipelines.infer.loaded_model import LoadedModel, ModelCard
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
    BatchProgress,
    BatchReport,
    BatchRun,
    process_group,
)
from pipelines.services.batch_tracking import log_batch_run
from pipelines.services.case_workers import (
    CaseWorkers,
    ModelFolder,
    WorkerSettings,
    default_worker_count,
    start_forkserver_early,
)
from pipelines.services.ledger import Ledger
from pipelines.services.model_loading import describe_model, load_model, resolve_model_uri
from pipelines.services.object_store import is_s3_uri, staged_output_dir

__all__ = ["files_per_task_for", "reset_process_caches", "segment_archive_flow"]

logger = logging.getLogger(__name__)

_MAX_FILES_PER_TASK = 32
_TASKS_PER_WORKER = 4
_MODELS_KEPT = 4
_models: dict[tuple[str, str | None], LoadedModel] = {}
_models_lock = threading.Lock()


def _model(uri: str, device: str | None = None, folder: ModelFolder | None = None) -> LoadedModel:
    """The model of a pinned URI, loaded and made ready for inference once per process (from
    ``folder``, the batch's local copy, when given); the tasks of a process share it and only
    read it."""
    key = (uri, device)
    with _models_lock:
        if key not in _models:
            if len(_models) >= _MODELS_KEPT:
                del _models[next(iter(_models))]  # the oldest
            _models[key] = folder.load(device) if folder else load_model(uri, device=device)
        return _models[key]


def reset_process_caches() -> None:
    """Forget the models this process keeps between flow runs, as in a new ``segflow segment``
    process (benchmarks and tests)."""
    with _models_lock:
        _models.clear()


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
    options: InferenceOptions,
    label: str,
    ledger: Ledger | None = None,
    workers: CaseWorkers | None = None,
    card: LoadedModel | ModelCard | None = None,
) -> list[BatchItemResult]:
    """Segment a group of cases and record each in the ledger.

    A file's own errors are recorded as failures, not raised; a transient ``OSError`` of the
    output folder (a network share that hiccups) retries the group, whose finished cases the
    ledger then skips. With the threads runner, the batch's open ``ledger`` records them and
    each case runs in one of the batch's ``workers`` processes, so that a native crash fails
    that case only (``card``, the batch's model or its card, is then all this process needs);
    on Dask, the task opens the ledger and runs the cases in its own process.
    """
    from prefect.runtime import task_run

    # Worker processes load the weights themselves: this process needs only the card.
    model = card if workers is not None and card is not None else _model(model_uri, options.device)
    with contextlib.ExitStack() as stack:
        book = ledger or stack.enter_context(Ledger.open(out))
        return process_group(
            model,
            items,
            Path(out),
            options,
            book,
            segment=workers.segment if workers is not None else None,
            decide_again=task_run.run_count > 1,  # a retry: finished cases are skipped
        )


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


def _run_as_tasks(
    batch: BatchRun,
    items: list[BatchItem],
    model: ModelFolder,
    files_per_task: int | None,
    isolated: bool,
) -> None:
    """Segment the planned ``items`` as Prefect tasks of ``files_per_task`` cases each on the
    flow's task runner, handing every task's results back to the batch."""
    workers, threads = _workers()
    with contextlib.ExitStack() as stack:
        pool: CaseWorkers | None = None
        if threads and isolated:
            workers = default_worker_count(len(items), workers)
            pool = stack.enter_context(_case_workers(batch, model, workers))
        else:
            stack.enter_context(_cores_shared(workers if threads else 1))
        size = files_per_task or files_per_task_for(len(items), workers)
        groups = [items[i : i + size] for i in range(0, len(items), size)]
        artifact = ProgressArtifact("segment-progress", "files segmented")
        out = str(batch.out_dir)
        futures = [
            segment_files.submit(
                group,
                model.model_uri,
                out,
                batch.options,
                f"{group[0].case.case_id}+{len(group) - 1}",
                batch.ledger if threads else None,
                pool,
                batch.model if pool is not None else None,
            )
            for group in groups
        ]
        for future in as_completed(futures):
            batch.add_results(future.result())
            artifact.update(batch.done_count / len(items))


@contextlib.contextmanager
def _case_workers(batch: BatchRun, model: ModelFolder, workers: int) -> Iterator[CaseWorkers]:
    """Worker processes for the batch, sharing the cores and loading the batch's copy of the
    model; ended when the batch ends (given a few seconds to reach a boundary when a stop was
    asked for)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    settings = WorkerSettings.of(batch.model, model.path, batch.out_dir, batch.options, threads)
    pool = CaseWorkers(settings, workers)
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
            "confidence": item.quality.confidence if item.quality else None,
            "drift": item.quality.drift_text() if item.quality else "",
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
    options: InferenceOptions | None = None,
    verify: bool = False,
    files_per_task: int | None = None,
    track: bool = True,
    retry_crashed: bool = False,
    isolated: bool = True,
    channel_suffix: bool = False,
    progress: BatchProgress | None = None,
) -> State[dict[str, Any]]:
    """Segment every case under ``source`` into ``out``; a rerun skips what is done.

    Args:
        source: an image, a folder, a zip/tar archive, or a manifest JSON; or an ``s3://`` URI
            of any of these (staged locally first).
        model: ``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/…`` or a model folder.
        out: the output folder (its ledger is ``.segflow/ledger.sqlite``), or an ``s3://``
            prefix: outputs are written in ``$SEGFLOW_HOME/staging/outputs/…`` (ledger
            included) and uploaded whole when the batch ends.
        options: extra outputs (polygons, probabilities), TTA, window overlap and batch size
            (default per kind), device… (default: all defaults).
        verify: re-hash inputs and outputs instead of trusting size and mtime.
        files_per_task: cases per task (default: a few tasks per worker, at most 32 cases each).
        track: log the batch as an MLflow run (counts, throughput, ledger artifact).
        retry_crashed: try quarantined files again (their worker crashed twice before).
        isolated: with the threads runner, segment in worker processes, so that a native
            crash (segfault, abort, OOM kill) fails one file, not the batch (default).
        channel_suffix: group ``<case>_0000``, ``<case>_0001``… files into one case; also on
            for a model of multi-channel volumes
            (:func:`pipelines.infer.inputs.channel_suffix_for`). Otherwise every file is a
            case named by its full stem.
        progress: told of the model, the plan and every finished case (the CLI's bar); it
            stays in this process and is not stored with the run.

    Returns:
        ``Completed`` (all done or skipped; ``partial: …`` when some failed) or ``Failed``
        (nothing done), carrying the summary.
    """
    options = options or InferenceOptions()
    progress = progress or BatchProgress()
    if isolated:
        start_forkserver_early()  # imports the inference stack while the model loads
    pinned = resolve_model_uri(model)
    with tempfile.TemporaryDirectory(prefix="segflow-model-") as scratch:
        model_files = ModelFolder(pinned, scratch)  # downloaded once, for this process and workers
        # The card decides from the ledger; a batch with nothing left never loads the weights.
        known = describe_model(pinned) or _model(pinned, options.device, model_files)
        progress.model_ready(known)
        local_out = str(staged_output_dir(out))
        with stop_signals_handled():  # SIGTERM/SIGINT: stop at a window batch or file
            batch = BatchRun(
                stage_source(source) if is_s3_uri(source) else source,
                known,
                local_out,
                options,
                verify=verify,
                retry_crashed=retry_crashed,
                channel_suffix=channel_suffix,
                progress=progress,
            )
            report_entry: dict[str, str] = {}
            with batch:
                items = batch.plan()
                if items:
                    if not (isolated and _workers()[1]):  # else workers load the weights
                        batch.use_model(_model(pinned, options.device, model_files))
                    _run_as_tasks(batch, items, model_files, files_per_task, isolated)
                if not stop_requested():
                    settings = {"source": source, "out": out}
                    report_entry = write_report(
                        batch.report(), batch.model, model, options, local_out, settings
                    )
    report = batch.report()
    if stop_requested() or report.counts["interrupted"]:
        raise _interrupted(report, local_out)
    summary = {**_summary(report, source, pinned, out), **report_entry}
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
