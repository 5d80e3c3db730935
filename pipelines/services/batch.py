"""Resumable batch segmentation: ask the ledger what must run, run it, report every case.

:func:`run_batch` takes the output folder's lock, removes the temporary files of a killed run,
decides each case against the ledger (:mod:`pipelines.services.ledger`), segments those that must run
and exports the ledger as JSON. A run killed at any moment is resumed by running it again:
finished cases are skipped, the interrupted one is redone. A file that cannot be segmented is
recorded as failed with its reason and the batch goes on; the next run retries it.

Pure steps (no Prefect): a flow passes ``map_items`` to run the items as concurrent tasks.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_contracts import SegflowError
from pipelines.infer.inputs import InferenceInput, channel_suffix_for, discover_inputs
from pipelines.infer.loaded_model import LoadedModel
from pipelines.infer.run import CaseResult, SegmentOptions, remove_case_outputs, segment_case
from pipelines.interrupts import StopRequested, stop_requested
from pipelines.services.case_workers import CaseCrashed
from pipelines.services.ledger import (
    LEDGER_JSON,
    QUARANTINE_AFTER_CRASHES,
    STATE_DIR,
    CaseKey,
    Decision,
    Ledger,
    config_hash,
    describe_error,
    model_identity,
)
from pipelines.services.output_lock import OutputLock, clean_partials

__all__ = [
    "BatchItem",
    "BatchItemResult",
    "BatchReport",
    "MapItems",
    "plan_batch",
    "process_item",
    "run_batch",
]

logger = logging.getLogger(__name__)

ItemStatus = Literal["done", "skipped", "failed", "interrupted"]
#: Segments one case and returns its result (in this thread, or in a worker process).
SegmentOne = Callable[[InferenceInput], CaseResult]
# Errors that fail one file (readers raise the builtins); anything else is a bug and stops the run.
_FILE_ERRORS = (SegflowError, OSError, RuntimeError, ValueError)


@dataclass(frozen=True)
class BatchItem:
    """A case that must run, with the ledger's decision (its reason and key)."""

    case: InferenceInput
    decision: Decision


@dataclass(frozen=True)
class BatchItemResult:
    """What happened to one case (or to a rejected input, named by its path).

    Attributes:
        case_id: the case id (the path for an input rejected before it became a case).
        status: ``done`` (segmented now), ``skipped`` (done before), ``failed`` (its error,
            a crash of its worker, or quarantined) or ``interrupted`` (a stop was asked for
            before it finished; the next run does it).
        reason: why it ran (``new``, ``input changed``…), ``done`` when skipped, ``rejected``
            for an input that did not become a case, ``quarantined`` for a case whose worker
            crashed twice (not run again unless asked).
        outputs: output files by role (for skipped cases, those recorded).
        seconds: time spent on it.
        error: ``"ClassName: message"`` when it failed.
    """

    case_id: str
    status: ItemStatus
    reason: str
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


@dataclass
class BatchReport:
    """Every case of a batch run and how long the run took."""

    items: list[BatchItemResult]
    wall_seconds: float

    @property
    def counts(self) -> dict[ItemStatus, int]:
        """Number of items by status (every status present)."""
        counts: dict[ItemStatus, int] = {"done": 0, "skipped": 0, "failed": 0, "interrupted": 0}
        for item in self.items:
            counts[item.status] += 1
        return counts

    @property
    def files_per_second(self) -> float:
        """Cases segmented by this run per second of wall time."""
        return self.counts["done"] / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def exit_status(self) -> Literal["ok", "partial", "nothing"]:
        """``ok`` when nothing failed, ``partial`` when some did, ``nothing`` when none is done."""
        counts = self.counts
        if counts["done"] + counts["skipped"] == 0:
            return "nothing"
        return "partial" if counts["failed"] else "ok"


#: Runs ``process`` on every item and returns the results, like the builtin ``map`` (default)
#: or ``ThreadPoolExecutor.map``; a Prefect flow maps a task instead.
MapItems = Callable[
    [Callable[[BatchItem], BatchItemResult], list[BatchItem]], Iterable[BatchItemResult]
]


def plan_batch(
    source: str | Path,
    out_dir: str | Path,
    model: LoadedModel,
    options: SegmentOptions | None = None,
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
    model_id, config = model_identity(model), config_hash(options or SegmentOptions(), model)
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
            settled.append(BatchItemResult(case.case_id, "skipped", decision.reason, outputs))
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


def process_item(
    model: LoadedModel,
    item: BatchItem,
    out_dir: str | Path,
    options: SegmentOptions | None,
    ledger: Ledger,
    *,
    segment: SegmentOne | None = None,
) -> BatchItemResult:
    """Segment one case and record it: ``running``, then ``done``, ``failed`` or ``crashed``.

    An error of the file (a :class:`SegflowError`, or ``OSError``/``RuntimeError``/
    ``ValueError`` from a reader) is recorded and returned as a failed result; any other
    exception is recorded and raised. When ``segment`` runs the case in a worker process that
    dies (:class:`~pipelines.services.case_workers.CaseCrashed`), the case is recorded ``crashed``, what
    it wrote is removed, and it is tried once more in a fresh worker; a second crash
    quarantines it. A stop request (SIGTERM) before or during the case returns it
    ``interrupted``: the ledger keeps it ``running``, so the next run does it.

    Args:
        model: the batch's model.
        item: the case and the ledger's decision.
        out_dir: the output folder.
        options: inference options.
        ledger: the output folder's ledger.
        segment: runs the case (default: :func:`segment_case` in this thread).
    """
    case, decision = item.case, item.decision
    if decision.action == "skip":
        return BatchItemResult(case.case_id, "skipped", decision.reason)
    if stop_requested():
        return BatchItemResult(case.case_id, "interrupted", decision.reason)
    run = segment or (lambda one: segment_case(model, one, out_dir, options))
    key, started = decision.key, time.monotonic()
    try:
        key = key.hashed()
        ledger.record_running(case, key)
        result = _with_crash_retry(run, case, key, Path(out_dir), ledger)
        ledger.record_done(case, key, result.outputs, result.seconds)
    except StopRequested:
        return BatchItemResult(
            case.case_id, "interrupted", decision.reason, seconds=_since(started)
        )
    except CaseCrashed as error:
        return BatchItemResult(
            case.case_id, "failed", "crashed", seconds=_since(started), error=describe_error(error)
        )
    except _FILE_ERRORS as error:
        seconds = round(time.monotonic() - started, 2)
        ledger.record_failed(case, key, error, seconds=seconds)
        logger.warning("%s failed: %s", case.case_id, error)
        return BatchItemResult(
            case.case_id, "failed", decision.reason, seconds=seconds, error=describe_error(error)
        )
    except Exception as error:
        ledger.record_failed(case, key, error, seconds=round(time.monotonic() - started, 2))
        raise
    return BatchItemResult(
        case.case_id, "done", decision.reason, dict(result.outputs), result.seconds
    )


def _since(started: float) -> float:
    return round(time.monotonic() - started, 2)


def _with_crash_retry(
    run: SegmentOne, case: InferenceInput, key: CaseKey, out: Path, ledger: Ledger
) -> CaseResult:
    """``run(case)``; when its worker dies, record the crash and try once more (a crash may be
    the OOM killer's choice under load), unless it has crashed often enough to quarantine."""
    while True:
        started = time.monotonic()
        try:
            return run(case)
        except CaseCrashed as error:
            remove_case_outputs(out, case.case_id)
            crashes = ledger.record_crashed(case, key, error.cause, seconds=_since(started))
            logger.warning("%s: %s (crash %d)", case.case_id, error.cause, crashes)
            if crashes >= QUARANTINE_AFTER_CRASHES or stop_requested():
                if crashes >= QUARANTINE_AFTER_CRASHES:
                    raise CaseCrashed(
                        f"{error.cause}; crashed {crashes} times, quarantined: later runs "
                        "report it without trying it (--retry-crashed tries it again)",
                        path=case.channels[0],
                    ) from None
                raise
            ledger.record_running(case, key)


def run_batch(
    source: str | Path,
    model: LoadedModel,
    out_dir: str | Path,
    options: SegmentOptions | None = None,
    *,
    verify: bool = False,
    retry_crashed: bool = False,
    channel_suffix: bool = False,
    map_items: MapItems | None = None,
    on_result: Callable[[BatchItemResult], None] | None = None,
) -> BatchReport:
    """Segment every case under ``source`` into ``out_dir``, resuming what a past run did.

    Args:
        source: an image file, a folder, a zip/tar archive, or a manifest JSON.
        model: from :func:`pipelines.services.model_loading.load_model`.
        out_dir: the output folder (created); its ledger is ``.segflow/ledger.sqlite``.
        options: extra outputs and window settings.
        verify: re-hash inputs and outputs instead of trusting size and mtime.
        retry_crashed: run quarantined cases again (their worker crashed twice before).
        channel_suffix: group ``<case>_0000``… files into one case (see :func:`plan_batch`).
        map_items: runs the items (default: one after the other); see :data:`MapItems`.
        on_result: called with every result: the settled ones first, then each case as it
            finishes (from the worker running it, when ``map_items`` uses threads).

    Returns:
        Every case's result, the wall time and the exit status.

    Raises:
        OutputError: another run is writing ``out_dir``, or it cannot be written.
        MissingFileError: ``source`` does not exist.
        DatasetLayoutError: a folder or archive without images.
    """
    options = options or SegmentOptions()
    out, started = Path(out_dir), time.monotonic()
    notify = on_result or (lambda result: None)
    with (
        OutputLock(out),
        Ledger.open(out) as ledger,
        tempfile.TemporaryDirectory(prefix="segflow-batch-") as scratch,
    ):
        clean_partials(out)
        try:
            to_run, settled = plan_batch(
                source,
                out,
                model,
                options,
                verify=verify,
                retry_crashed=retry_crashed,
                channel_suffix=channel_suffix,
                workdir=scratch,
                ledger=ledger,
            )
            logger.info("%d case(s) to segment, %d settled", len(to_run), len(settled))
            for result in settled:
                notify(result)

            def process(item: BatchItem) -> BatchItemResult:
                result = process_item(model, item, out, options, ledger)
                notify(result)
                return result

            ran = list((map_items or map)(process, to_run))
        finally:
            clean_partials(out)  # what workers killed at a stop left (no writer runs now)
            ledger.export_json(out / STATE_DIR / LEDGER_JSON)
    items = sorted([*settled, *ran], key=lambda result: result.case_id)
    return BatchReport(items, round(time.monotonic() - started, 3))
