"""Resumable batch segmentation: ask the ledger what must run, run it, report every case.

A :class:`BatchRun` takes the output folder's lock, removes the temporary files of a killed
run, decides each case against the ledger (:mod:`pipelines.services.ledger`), segments those
that must run (:mod:`pipelines.services.batch_items`) and exports the ledger as JSON. A run
killed at any moment is resumed by running it again: finished cases are skipped, the
interrupted one is redone. A file that cannot be segmented is recorded as failed with its
reason and the batch goes on; the next run retries it.

No Prefect here: :func:`run_batch` runs the cases one after the other; the ``segment_archive``
flow plans with a :class:`BatchRun`, maps its own tasks over groups of cases
(:func:`~pipelines.services.batch_items.process_group`) and hands their results back to the
run (:meth:`BatchRun.add_results`).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from data_contracts import InferenceOptions, ModelError, OutputError
from pipelines.infer.inputs import channel_suffix_for, discover_inputs
from pipelines.infer.loaded_model import LoadedModel, ModelCard
from pipelines.plan.drift import reference_of
from pipelines.services.batch_items import (
    BatchItem,
    BatchItemResult,
    BatchReport,
    SegmentOne,
    process_group,
    process_item,
)
from pipelines.services.batch_progress import BatchProgress
from pipelines.services.ledger import (
    LEDGER_JSON,
    QUARANTINE_AFTER_CRASHES,
    STATE_DIR,
    Ledger,
    config_hash,
    model_identity,
)
from pipelines.services.ledger_records import describe_error
from pipelines.services.output_lock import OutputLock, clean_partials

__all__ = [
    "BatchItem",
    "BatchItemResult",
    "BatchProgress",
    "BatchReport",
    "BatchRun",
    "plan_batch",
    "process_group",
    "process_item",
    "run_batch",
]

logger = logging.getLogger(__name__)


def plan_batch(
    source: str | Path,
    out_dir: str | Path,
    model: LoadedModel | ModelCard,
    options: InferenceOptions | None = None,
    *,
    verify: bool = False,
    retry_crashed: bool = False,
    channel_suffix: bool = False,
    workdir: str | Path,
    ledger: Ledger | None = None,
) -> tuple[list[BatchItem], list[BatchItemResult]]:
    """Split the cases under ``source`` into those to run and those already settled.

    Args:
        source: an image file, a folder, a zip/tar archive, or a manifest JSON.
        out_dir: the output folder (its ledger decides).
        model: the model the cases would run with.
        options: inference settings (their :func:`~pipelines.services.ledger.config_hash` is compared).
        verify: re-hash inputs and outputs instead of trusting size and mtime.
        retry_crashed: run quarantined cases again (see :meth:`Ledger.decide`).
        channel_suffix: group ``<case>_0000``… files into one case; also done for a model
            of multi-channel volumes (:func:`~pipelines.infer.inputs.channel_suffix_for`).
        workdir: scratch folder; archives are extracted under it.
        ledger: an open ledger of ``out_dir`` (opened and closed here when ``None``).

    Returns:
        The items to run, and the settled results: skipped cases, and rejected inputs as failed.

    Raises:
        MissingFileError: ``source`` does not exist.
        DatasetLayoutError: a folder or archive without images.
    """
    grouped = channel_suffix_for(model.plan, requested=channel_suffix)
    found = discover_inputs(source, workdir=workdir, channel_suffix=grouped)
    settled = [
        BatchItemResult(
            str(error.path or source), "failed", "rejected", error=describe_error(error)
        )
        for error in found.rejected
    ]
    model_id, config = model_identity(model), config_hash(options or InferenceOptions(), model)
    to_run: list[BatchItem] = []
    with _ledger_of(out_dir, ledger) as book:
        for case in found.cases:
            decision = book.decide(
                case, model_id, config, verify=verify, retry_crashed=retry_crashed
            )
            if decision.action == "run":
                to_run.append(BatchItem(case, decision))
                continue
            entry = book.get(case.case_id)
            if decision.action == "quarantine":
                settled.append(_quarantined(case.case_id, entry.error if entry else None))
                continue
            outputs = {role: record.path for role, record in entry.outputs.items()} if entry else {}
            quality = entry.quality if entry else None
            settled.append(
                BatchItemResult(
                    case.case_id,
                    "skipped",
                    decision.reason,
                    outputs,
                    quality=quality,
                    inputs=tuple(case.channels),
                )
            )
    return to_run, settled


@contextlib.contextmanager
def _ledger_of(out_dir: str | Path, ledger: Ledger | None) -> Iterator[Ledger]:
    if ledger is not None:
        yield ledger
        return
    with Ledger.open(out_dir) as opened:
        yield opened


def _quarantined(case_id: str, cause: str | None) -> BatchItemResult:
    error = (
        f"CaseCrashed: quarantined: its worker process crashed {QUARANTINE_AFTER_CRASHES} times "
        f"({cause or 'see the ledger'}); not tried again. Fix: pass --retry-crashed to try it"
    )
    return BatchItemResult(case_id, "failed", "quarantined", error=error)


class BatchRun:
    """One resumable batch into an output folder, in the pieces a flow maps over.

    Entering takes the folder's lock, opens its ledger (once for the run: planning, every case
    processed in this process and the export use it) and removes the temporary files of a
    killed run; leaving removes what stopped writers left, exports the ledger as JSON and
    closes it. In between: :meth:`plan`, then :meth:`process` the items here or run them
    elsewhere (:func:`process_group`) and :meth:`add_results`; after: :meth:`report`.

    Args:
        source: an image file, a folder, a zip/tar archive, or a manifest JSON.
        model: from :func:`pipelines.services.model_loading.load_model`; or its card
            (:func:`~pipelines.services.model_loading.describe_model`), enough to
            :meth:`plan`, and replaced by the model (:meth:`use_model`) before cases run.
        out_dir: the output folder (created); its ledger is ``.segflow/ledger.sqlite``.
        options: extra outputs and window settings.
        verify: re-hash inputs and outputs instead of trusting size and mtime.
        retry_crashed: run quarantined cases again (their worker crashed twice before).
        channel_suffix: group ``<case>_0000``… files into one case (see :func:`plan_batch`).
        progress: told of the plan and of every case that ran (default: told nothing).
    """

    def __init__(
        self,
        source: str | Path,
        model: LoadedModel | ModelCard,
        out_dir: str | Path,
        options: InferenceOptions | None = None,
        *,
        verify: bool = False,
        retry_crashed: bool = False,
        channel_suffix: bool = False,
        progress: BatchProgress | None = None,
    ) -> None:
        self.source, self.model, self.out_dir = source, model, Path(out_dir)
        self.options = options or InferenceOptions()
        self._verify = verify
        self._retry_crashed = retry_crashed
        self._channel_suffix = channel_suffix
        self._progress = progress or BatchProgress()
        self._stack = contextlib.ExitStack()
        self._ledger: Ledger | None = None
        self._scratch = ""
        self._settled: list[BatchItemResult] = []
        self._ran: list[BatchItemResult] = []
        self._to_run = 0
        self._results_lock = threading.Lock()
        self._started = self._finished = 0.0

    def __enter__(self) -> BatchRun:
        self._started = time.monotonic()
        with contextlib.ExitStack() as stack:
            stack.enter_context(OutputLock(self.out_dir))
            self._ledger = stack.enter_context(Ledger.open(self.out_dir))
            self._scratch = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="segflow-batch-")
            )
            clean_partials(self.out_dir)  # what a killed run left
            stack.callback(self._finish_outputs)
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._stack.close()
        finally:
            self._ledger = None
            self._finished = time.monotonic()

    def _finish_outputs(self) -> None:
        clean_partials(self.out_dir)  # what workers killed at a stop left (no writer runs now)
        self.ledger.export_json(self.out_dir / STATE_DIR / LEDGER_JSON)

    @property
    def ledger(self) -> Ledger:
        """The output folder's ledger, open while the run is (thread-safe).

        Raises:
            OutputError: the run is not entered.
        """
        if self._ledger is None:
            raise OutputError("has no batch run open (use BatchRun as a context manager)")
        return self._ledger

    @property
    def done_count(self) -> int:
        """Cases that ran and whose results were added so far."""
        return len(self._ran)

    def plan(self) -> list[BatchItem]:
        """Decide every case against the ledger (see :func:`plan_batch`); the items to run.

        Raises:
            MissingFileError: ``source`` does not exist.
            DatasetLayoutError: a folder or archive without images.
        """
        to_run, self._settled = plan_batch(
            self.source,
            self.out_dir,
            self.model,
            self.options,
            verify=self._verify,
            retry_crashed=self._retry_crashed,
            channel_suffix=self._channel_suffix,
            workdir=self._scratch,
            ledger=self.ledger,
        )
        logger.info("%d case(s) to segment, %d settled", len(to_run), len(self._settled))
        if to_run and reference_of(self.model.processing) is None:
            logger.warning(
                "drift check not available: model %s carries no fingerprint of its training "
                "data (trained before segflow recorded one); files are segmented unchecked",
                self.model.uri,
            )
        self._to_run = len(to_run)
        self._progress.planned(len(to_run), self._settled)
        return to_run

    def use_model(self, model: LoadedModel) -> None:
        """Run the cases with ``model``, the loaded model of the card the run was planned with.

        Raises:
            ModelError: ``model`` is another model, or has other settings, than the card.
        """
        if (model_identity(model), config_hash(self.options, model)) != (
            model_identity(self.model),
            config_hash(self.options, self.model),
        ):
            raise ModelError(
                "differs from the model card the batch was planned with",
                path=model.uri,
                hint="the model changed while the batch started: run the batch again",
            )
        self.model = model

    @property
    def loaded_model(self) -> LoadedModel:
        """The loaded model the cases run with.

        Raises:
            ModelError: the run has only the model's card (see :meth:`use_model`).
        """
        if not isinstance(self.model, LoadedModel):
            raise ModelError("is not loaded: the batch has only its card", path=self.model.uri)
        return self.model

    def process(
        self, items: Iterable[BatchItem], *, segment: SegmentOne | None = None
    ) -> list[BatchItemResult]:
        """Segment ``items`` in this thread, one after the other, each recorded in the ledger
        and added to the run as it finishes (see :func:`process_item`)."""
        results = []
        for item in items:
            model = self.model if segment else self.loaded_model
            result = process_item(
                model, item, self.out_dir, self.options, self.ledger, segment=segment
            )
            self.add_results([result])
            results.append(result)
        return results

    def add_results(self, results: Iterable[BatchItemResult]) -> None:
        """Count the results of cases that ran (here or in a task) and tell the progress."""
        with self._results_lock:
            for result in results:
                self._ran.append(result)
                self._progress.case_done(result, len(self._ran), self._to_run)

    def report(self) -> BatchReport:
        """Every case's result (settled and ran, by case id) and the run's wall time."""
        items = sorted([*self._settled, *self._ran], key=lambda result: result.case_id)
        end = self._finished or time.monotonic()
        return BatchReport(items, round(end - self._started, 3))


def run_batch(
    source: str | Path,
    model: LoadedModel,
    out_dir: str | Path,
    options: InferenceOptions | None = None,
    *,
    verify: bool = False,
    retry_crashed: bool = False,
    channel_suffix: bool = False,
    progress: BatchProgress | None = None,
) -> BatchReport:
    """Segment every case under ``source`` into ``out_dir``, one after the other, resuming
    what a past run did (a :class:`BatchRun` from plan to report; arguments as there).

    Returns:
        Every case's result, the wall time and the exit status.

    Raises:
        OutputError: another run is writing ``out_dir``, or it cannot be written.
        MissingFileError: ``source`` does not exist.
        DatasetLayoutError: a folder or archive without images.
    """
    batch = BatchRun(
        source,
        model,
        out_dir,
        options,
        verify=verify,
        retry_crashed=retry_crashed,
        channel_suffix=channel_suffix,
        progress=progress,
    )
    with batch:
        batch.process(batch.plan())
    return batch.report()
