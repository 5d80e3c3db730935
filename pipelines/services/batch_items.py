"""One case of a batch: run it, record it in the ledger, retry it once when its worker dies.

:func:`process_item` segments one case that the ledger said must run and records what happened
(``running``, then ``done``, ``failed`` or ``crashed``); :func:`process_group` does a group of
them, as a flow's task does in any process. The results (:class:`BatchItemResult`) are what a
batch reports, case by case (:class:`BatchReport`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_contracts import (
    DriftFlag,
    FileQuality,
    InferenceOptions,
    InputDriftError,
    ModelError,
    SegflowError,
)
from pipelines.infer.inputs import InferenceInput
from pipelines.infer.loaded_model import LoadedModel, ModelCard
from pipelines.infer.run import CaseResult, remove_case_outputs, segment_case
from pipelines.interrupts import StopRequested, stop_requested
from pipelines.services.case_workers import CaseCrashed
from pipelines.services.ledger import QUARANTINE_AFTER_CRASHES, Ledger
from pipelines.services.ledger_records import CaseKey, Decision, describe_error

__all__ = [
    "BatchItem",
    "BatchItemResult",
    "BatchReport",
    "ItemStatus",
    "SegmentOne",
    "process_group",
    "process_item",
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
        quality: its confidence and drift flags (for skipped cases, those recorded).
        inputs: the case's input files (empty for a rejected input).
    """

    case_id: str
    status: ItemStatus
    reason: str
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    quality: FileQuality | None = None
    inputs: tuple[Path, ...] = ()


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


def process_item(
    model: LoadedModel | ModelCard,
    item: BatchItem,
    out_dir: str | Path,
    options: InferenceOptions | None,
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
    ``interrupted``: the ledger keeps it ``running``, so the next run does it. A case whose
    input drifted, with ``--on-drift skip|fail``, is recorded failed with its drift flags and
    returned ``skipped`` or ``failed``.

    Args:
        model: the batch's model; its card is enough when ``segment`` runs the case (in a
            worker process that loads the weights itself).
        item: the case and the ledger's decision.
        out_dir: the output folder.
        options: inference options.
        ledger: the output folder's ledger.
        segment: runs the case (default: :func:`segment_case` in this thread).
    """
    result = _process_item(model, item, out_dir, options, ledger, segment=segment)
    return dataclasses.replace(result, inputs=tuple(item.case.channels))


def _process_item(
    model: LoadedModel | ModelCard,
    item: BatchItem,
    out_dir: str | Path,
    options: InferenceOptions | None,
    ledger: Ledger,
    *,
    segment: SegmentOne | None = None,
) -> BatchItemResult:
    """:func:`process_item` without the case's inputs in the result."""
    case, decision = item.case, item.decision
    if decision.action == "skip":
        return BatchItemResult(case.case_id, "skipped", decision.reason)
    if stop_requested():
        return BatchItemResult(case.case_id, "interrupted", decision.reason)
    run = segment or _in_this_thread(model, out_dir, options)
    key, started = decision.key, time.monotonic()
    try:
        key = key.hashed()
        ledger.record_running(case, key)
        result = _with_crash_retry(run, case, key, Path(out_dir), ledger)
        ledger.record_done(case, key, result.outputs, result.seconds, result.quality)
    except StopRequested:
        return BatchItemResult(
            case.case_id, "interrupted", decision.reason, seconds=_since(started)
        )
    except CaseCrashed as error:
        return BatchItemResult(
            case.case_id, "failed", "crashed", seconds=_since(started), error=describe_error(error)
        )
    except InputDriftError as error:
        return _drifted(case, key, error, ledger, _since(started))
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
        case.case_id,
        "done",
        decision.reason,
        dict(result.outputs),
        result.seconds,
        quality=result.quality,
    )


def _in_this_thread(
    model: LoadedModel | ModelCard, out_dir: str | Path, options: InferenceOptions | None
) -> SegmentOne:
    """:func:`segment_case` with ``model`` here.

    Raises:
        ModelError: ``model`` is only a card (a programming error: workers were meant to run).
    """
    if not isinstance(model, LoadedModel):
        raise ModelError("is not loaded: only its card is here", path=model.uri)
    return lambda one: segment_case(model, one, out_dir, options)


def _drifted(
    case: InferenceInput, key: CaseKey, error: InputDriftError, ledger: Ledger, seconds: float
) -> BatchItemResult:
    """A case not segmented for its drift (``--on-drift skip|fail``): recorded failed with its
    flags, so that a later run (say with ``--on-drift warn``) takes it up again; reported
    ``skipped`` or ``failed`` as the policy says."""
    flags = tuple(DriftFlag(check=check, message=message) for check, message in error.checks)
    quality = FileQuality(drift_status="flagged", drift=flags)
    ledger.record_failed(case, key, error, seconds=seconds, quality=quality)
    logger.warning("%s not segmented (--on-drift %s): %s", case.case_id, error.policy, error)
    status: ItemStatus = "skipped" if error.policy == "skip" else "failed"
    return BatchItemResult(
        case.case_id,
        status,
        "drift",
        seconds=seconds,
        error=describe_error(error),
        quality=quality,
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


def process_group(
    model: LoadedModel | ModelCard,
    items: Iterable[BatchItem],
    out_dir: str | Path,
    options: InferenceOptions,
    ledger: Ledger,
    *,
    segment: SegmentOne | None = None,
    decide_again: bool = False,
) -> list[BatchItemResult]:
    """Segment a group of cases one after the other (:func:`process_item` for each): what a
    flow's task runs, in any process.

    Args:
        decide_again: ask the ledger again first (a retried group: its finished cases are
            skipped); other arguments as for :func:`process_item`.
    """
    if decide_again:
        items = [_decided_again(item, ledger) for item in items]
    return [process_item(model, item, out_dir, options, ledger, segment=segment) for item in items]


def _decided_again(item: BatchItem, ledger: Ledger) -> BatchItem:
    key = item.decision.key
    return BatchItem(item.case, ledger.decide(item.case, key.model, key.config))
