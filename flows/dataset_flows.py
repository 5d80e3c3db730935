"""segflow's Prefect flows: ingest, train, evaluate (thin wrappers over ``pipelines``).

Each flow calls tasks from :mod:`flows.tasks` with paths and options, publishes a markdown
summary artifact (the tasks publish the per-file tables), and ends in a state that tells the
outcome, the same way the CLI's exit codes do (:func:`outcome_state`):

- every input done: ``Completed`` with a one-line message (exit code 0);
- some inputs rejected or failed: ``Completed`` with a message starting ``"partial: "``
  (exit code 3);
- no input done: ``Failed`` with a message starting ``"nothing done: "`` (exit code 1), so that
  monitoring and automations see it; the summary is still the state's data.

Calling a flow returns its summary dict (``flow(...)``) or its final state
(``flow(..., return_state=True)``; the data is ``state.result(raise_on_failure=False)``). The
summary carries ``outcome`` and ``exit_code`` too. An exception raised by a step (a missing
source, a bad option) fails the flow with that exception.

Without ``PREFECT_API_URL`` a call starts a temporary local API (~15 s once per process:
Prefect's own, or in the ``segflow`` command line segflow's, which cannot outlive the command,
see :mod:`flows.local_api`); with a server (``prefect server start``) the runs, artifacts and
logs stay there.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from prefect import Flow, flow
from prefect.runtime import flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Completed, Failed, State

from data_contracts import IngestOptions, InputError, TrainConfig, UsageError, get_settings
from flows.artifacts import publish_summary
from flows.exit_codes import ExitCode, outcome
from flows.local_api import ensure_local_api
from flows.storage_tasks import stage_source
from flows.tasks import (
    IngestProgress,
    evaluate_task,
    evaluation_counts,
    ingest_task,
    train_task,
)
from pipelines.services.object_store import is_s3_uri

# Prefect validates parameters through a pydantic model whose base class (an ABC) has a
# `register` method; train_flow's `register` parameter (the CLI's --register) shadows it, harmlessly.
warnings.filterwarnings("ignore", message='Field name "register" in "Train_FlowModel" shadows')

OUTCOME_WORDS = {
    ExitCode.OK: "ok",
    ExitCode.PARTIAL: "partial",
    ExitCode.NOTHING_DONE: "nothing done",
}


def outcome_state(
    data: dict[str, Any],
    succeeded: int,
    failed: int,
    *,
    what: str = "inputs",
    verb: str = "failed",
    detail: str = "",
    done_message: str | None = None,
) -> State[dict[str, Any]]:
    """The final state of a batch flow with ``succeeded`` good and ``failed`` bad inputs.

    Args:
        data: the flow's summary; ``outcome`` and ``exit_code`` are added to it.
        succeeded: inputs done.
        failed: inputs rejected or failed.
        what: what the inputs are, for the message (``"cases"``, ``"files"``).
        verb: what happened to the bad ones (``"failed"``, ``"rejected"``).
        detail: appended to the message (``"; val_dice 0.91"``).
        done_message: the message when every input was done (default ``"N of N … done"``).

    Returns:
        ``Completed`` (all done, or ``"partial: F of N … failed"``), or ``Failed``
        (``"nothing done: …"``), carrying ``data``.
    """
    code = outcome(succeeded, failed)
    data.update(outcome=OUTCOME_WORDS[code], exit_code=int(code))
    total = succeeded + failed
    if code is ExitCode.OK:
        message = done_message or f"{succeeded} of {total} {what} done{detail}"
        return Completed(message=message, data=data)
    if code is ExitCode.PARTIAL:
        message = f"partial: {failed} of {total} {what} {verb}{detail}"
        return Completed(message=message, data=data)
    return Failed(message=f"nothing done: {failed} of {total} {what} {verb}{detail}", data=data)


def exit_code_of(state: State[Any]) -> ExitCode:
    """The CLI exit code that a flow's final state stands for (0, 1, 3; failures are 1)."""
    if state.is_completed():
        partial = (state.message or "").startswith("partial:")
        return ExitCode.PARTIAL if partial else ExitCode.OK
    return ExitCode.NOTHING_DONE


def run_flow(flow_to_run: Flow[..., Any], **parameters: Any) -> tuple[dict[str, Any], ExitCode]:
    """Run a segflow flow in this process; return its summary and the exit code it stands for.

    In the ``segflow`` command line, the flow runs on segflow's own temporary Prefect API when
    none is configured (:func:`flows.local_api.ensure_local_api`; started once per process).

    Raises:
        Exception: the exception that failed the flow (a ``SegflowError`` maps to its exit
            code in the CLI, anything else is an internal error).
    """
    own_api = ensure_local_api() is not None
    with contextlib.ExitStack() as stack:
        if own_api:  # no service watches heartbeats there; joining their thread costs ~1 s
            stack.enter_context(
                temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
            )
        state = cast("State[Any]", flow_to_run(**parameters, return_state=True))
    data = state.result(raise_on_failure=False)
    if isinstance(data, BaseException):
        raise data
    if not isinstance(data, dict):  # crashed or cancelled runs carry no summary
        raise RuntimeError(
            f"flow {flow_to_run.name!r} ended in {state.type.value}: {state.message}"
        )
    return data, exit_code_of(state)


def _returned(state: State[dict[str, Any]]) -> dict[str, Any]:
    """A flow's final state, typed for the flow's callers: Prefect makes a returned state the
    run's final state and hands ``flow(...)`` callers its data (``return_state=True``: the state).
    """
    return cast(dict[str, Any], state)


def _flow_run_name(prefix: str, *parameters: str) -> Callable[[], str]:
    """``prefix-<name of the first parameter given>``, e.g. ``ingest-tiles.zip``."""

    def name() -> str:
        for parameter in parameters:
            value = flow_run.parameters.get(parameter)
            if value:
                return f"{prefix}-{Path(str(value)).name}"
        return prefix

    return name


def _train_run_name() -> str:
    config = flow_run.parameters.get("config")
    model = getattr(config, "model", None) or (config or {}).get("model", "unet")
    source = flow_run.parameters.get("manifest") or flow_run.parameters.get("source") or ""
    return f"train-{model}-{Path(str(source)).stem.removesuffix('.tar')}"


def _stem(path: Path) -> str:
    return path.name.split(".")[0] or "data"


@flow(name="ingest", flow_run_name=_flow_run_name("ingest", "source"))
def ingest_flow(
    source: str | Path,
    out: Path | None = None,
    options: IngestOptions | None = None,
    workdir: Path | None = None,
    on_case: IngestProgress | None = None,
) -> dict[str, Any]:
    """Validate a dataset into a manifest (what ``segflow ingest`` does).

    Args:
        source: dataset folder, ``.zip``/``.tar[.gz]`` archive, or CSV (columns image,label);
            local, or an ``s3://`` URI (staged into ``$SEGFLOW_HOME/staging`` first).
        out: manifest JSON to write (default ``$SEGFLOW_HOME/manifests/<source>.json``).
        options: pairing (``label_suffix``; ``channel_suffix`` groups ``<case>_0000``,
            ``<case>_0001``… files into one case, otherwise every file is a case named by its
            full stem), label and tolerance options (``IngestOptions`` fields).
        workdir: extracted archives and rasterised labels (default ``<out>.files/``).
        on_case: told ``(done, total, rejected so far)`` after each case (the CLI's display;
            it stays in this process).

    Returns:
        A state whose data is ``{"manifest", "name", "valid", "labelled", "rejected",
        "rejected_errors", "outcome", "exit_code"}``; partial when inputs were rejected.
    """
    out = out or get_settings().home_dir / "manifests" / f"{_stem(Path(str(source)))}.json"
    summary = ingest_task(_local(source), out, options, workdir, on_case)
    state = outcome_state(summary, summary["valid"], summary["rejected"], verb="rejected")
    lines = [
        f"outcome: **{state.message}**",
        f"manifest: `{summary['manifest']}`",
        f"valid cases: {summary['valid']} ({summary['labelled']} labelled)",
        f"rejected inputs: {summary['rejected']} {', '.join(summary['rejected_errors'])}",
    ]
    publish_summary(f"Ingest of {Path(str(source)).name}", lines, key="ingest-summary")
    return _returned(state)


def default_train_workdir(name: str) -> Path:
    """A fresh training folder per run: ``$SEGFLOW_HOME/train/<name>-<UTC time>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return get_settings().home_dir / "train" / f"{name}-{stamp}"


def _local(source: str | Path) -> Path:
    """The local path of ``source``: staged first when it is an ``s3://`` URI."""
    return Path(stage_source(str(source))) if is_s3_uri(source) else Path(source)


def _ingest_for_training(
    source: str | Path, workdir: Path, options: IngestOptions | None
) -> dict[str, Any]:
    local = _local(source)
    ingested = ingest_task(local, workdir / "manifest.json", options, workdir / "manifest.files")
    if ingested["labelled"] == 0:
        raise InputError(
            f"no labelled case to train on ({ingested['rejected']} inputs rejected)",
            path=source,
            hint=f"see the rejected inputs in {ingested['manifest']}",
        )
    return ingested


def _training_lines(summary: Mapping[str, Any]) -> list[str]:
    lines = [
        f"{summary['metric']}: **{summary['score']:.4f}** on {len(summary['validation_cases'])}"
        " validation cases",
        f"epochs: {summary['epochs']} (stopped by {summary['stopped_by']}); "
        f"{summary.get('weights', 'best')} weights kept",
        f"MLflow run: `{summary['run_id']}`; model `{summary['model_uri']}`",
        f"manifest: `{summary['manifest']}`; workdir `{summary['workdir']}`",
    ]
    registration = summary["registration"]
    if registration:
        lines.append(
            f"registered **{registration['name']} v{registration['version']}**: "
            f"{registration['decision']} ({registration['reason']})"
        )
    return lines


@flow(name="train", flow_run_name=_train_run_name)
def train_flow(
    manifest: Path | None = None,
    source: str | Path | None = None,
    config: TrainConfig | None = None,
    register: str | None = None,
    plan_overrides: dict[str, Any] | None = None,
    ingest_options: IngestOptions | None = None,
    workdir: Path | None = None,
    val_fraction: float = 0.2,
    folds: int | None = None,
    fold: int = 0,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Plan, train, evaluate and register a model (what ``segflow train`` does).

    Give a ``manifest``, or a ``source`` to ingest first (into ``<workdir>/manifest.json``).

    Args:
        manifest: manifest JSON written by ``segflow ingest``.
        source: dataset folder, archive or CSV to ingest first instead.
        config: model, loss, budgets and hardware (``TrainConfig`` fields).
        register: registered model name; the new version becomes ``challenger``, and
            ``champion`` when it beats the current champion on the same validation cases.
        plan_overrides: plan fields to override, e.g. ``{"patch_size": [96, 96, 64]}``.
        ingest_options: options of the ingest of ``source``.
        workdir: checkpoints, cache, plan (default: a fresh ``$SEGFLOW_HOME/train/<name>-<time>``;
            a rerun on the same folder resumes from its last checkpoint).
        val_fraction: share of labelled cases held out for validation.
        folds: k-fold cross-validation: number of folds (with ``fold``).
        fold: which fold validates (0-based).
        progress_bar: show Lightning's progress bar (for terminals, not for workers' logs).

    Returns:
        A state whose data is the training summary (run id, model URI, score, registration,
        plan rows…); partial when the ingest of ``source`` rejected inputs.

    Raises:
        UsageError: both or neither of ``manifest`` and ``source``.
        InputError: the ingest of ``source`` found no labelled case.
    """
    if (manifest is None) == (source is None):
        raise UsageError("train_flow needs a manifest or a source to ingest (exactly one)")
    config = config or TrainConfig()
    workdir = workdir or default_train_workdir(_stem(Path(str(manifest or source))))
    ingested = _ingest_for_training(source, workdir, ingest_options) if source else None
    manifest_path = Path(ingested["manifest"]) if ingested else Path(str(manifest))
    summary = train_task(
        manifest_path,
        config,
        workdir,
        plan_overrides=plan_overrides,
        register=register,
        val_fraction=val_fraction,
        folds=folds,
        fold=fold,
        progress_bar=progress_bar,
    )
    summary.update(manifest=str(manifest_path), ingest=ingested)
    detail = f"{summary['metric']} {summary['score']:.3f}"
    left_out = len(summary.get("left_out") or {})
    if ingested or left_out:
        # Cases left out of training (files changed since ingest) count as rejected inputs.
        valid = ingested["valid"] - left_out if ingested else summary["cases_used"]
        rejected = (ingested["rejected"] if ingested else 0) + left_out
        state = outcome_state(summary, valid, rejected, verb="rejected", detail=f"; {detail}")
    else:
        state = outcome_state(summary, 1, 0, done_message=f"trained {config.model}: {detail}")
    lines = [f"outcome: **{state.message}**", *_training_lines(summary)]
    publish_summary(f"Training of {config.model} on {_stem(manifest_path)}", lines, key="training")
    return _returned(state)


@flow(name="evaluate", flow_run_name=_flow_run_name("evaluate", "prediction"))
def evaluate_flow(
    prediction: Path,
    truth: Path,
    out: Path | None = None,
    instance: bool | None = None,
) -> dict[str, Any]:
    """Score predictions against reference labels (what ``segflow evaluate`` does).

    Args:
        prediction: predicted label map, or a folder of them.
        truth: reference label map, or a folder of them.
        out: write every metric as JSON here.
        instance: score instance maps (True), class maps (False), or decide per pair (None).

    Returns:
        A state whose data is the evaluation report; partial when some pairs failed or some
        truths have no prediction.
    """
    report = evaluate_task(prediction, truth, out, instance)
    scored, failed = evaluation_counts(report)
    state = outcome_state(report, scored, failed, what="cases")
    lines = [f"outcome: **{state.message}**", *_evaluation_lines(report["summary"])]
    if out is not None:
        lines.append(f"metrics JSON: `{out}`")
    publish_summary(f"Evaluation of {prediction.name}", lines, key="evaluation-summary")
    return _returned(state)


def _evaluation_lines(summary: Mapping[str, Any]) -> list[str]:
    lines = []
    if "overall" in summary:
        overall = summary["overall"]
        lines.append(
            f"mean over classes: Dice **{overall['dice']:.4f}**, IoU {overall['iou']:.4f}, "
            f"HD95 {overall['hd95']:.3f}"
        )
    for name, means in summary.get("classes", {}).items():
        lines.append(f"class {name}: Dice {means['dice']:.4f} ({means['cases']} cases)")
    if "instance" in summary:
        means = summary["instance"]
        lines.append(
            f"instances: DSB-2018 **{means['dsb2018']:.4f}**, AP@[.5:.95] "
            f"{means['ap_50_95']:.4f}, F1@.5 {means['f1_50']:.4f}"
        )
    return lines
