"""Prefect tasks over the ``pipelines`` steps: ingest, train, evaluate.

Each task takes and returns paths, plain options and small dicts (never arrays or models),
calls one ``pipelines`` function, attaches its per-file table (and progress) as artifacts, and
returns a summary a flow can publish. They stay callable without Prefect: ``task.fn(...)`` runs
the body directly, where the artifact helpers do nothing.

Policies:

- Every task has side effects (manifest and metrics files, MLflow runs, registry aliases), so
  none is cached (``cache_policy=NO_CACHE``): a rerun redoes the work.
- I/O tasks (ingest, evaluate) retry with ``retry_delay_seconds`` only on *transient* I/O
  errors (:func:`transient_io`): an ``OSError`` that is not a segflow error. A missing folder or
  an invalid file is not retried, it fails (or is quarantined) at once.
- Training is not retried automatically: it is long, and a rerun on the same workdir resumes
  from its last checkpoint anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.runtime import task_run
from prefect.states import State

from data_contracts import DatasetManifest, IngestOptions, SegflowError, TrainConfig
from flows.artifacts import ProgressArtifact, publish_summary, publish_table

#: Told ``(done, total, rejected so far)`` after each case of an ingest.
IngestProgress = Callable[[int, int, int], None]
IO_RETRIES = 2
IO_RETRY_DELAYS: list[float] = [5.0, 30.0]


def transient_io(_task: Any, _run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: only an ``OSError`` that segflow did not raise on purpose (a network
    share that hiccups, a busy file) is worth retrying; invalid inputs and bugs are not."""
    error = state.data if isinstance(state.data, BaseException) else None
    return isinstance(error, OSError) and not isinstance(error, SegflowError)


def _task_run_name(prefix: str, parameter: str) -> Any:
    def name() -> str:
        value = task_run.parameters.get(parameter)
        return f"{prefix}-{Path(str(value)).name}" if value else prefix

    return name


def ingest_summary(manifest: DatasetManifest, path: Path) -> dict[str, Any]:
    """The small dict a flow returns for an ingest: counts and where the manifest is."""
    return {
        "manifest": str(path),
        "name": manifest.name,
        "valid": len(manifest.cases),
        "labelled": len(manifest.labelled_cases),
        "rejected": len(manifest.rejected),
        "rejected_errors": sorted({item.error for item in manifest.rejected}),
    }


def manifest_rows(manifest: DatasetManifest) -> Iterator[dict[str, Any]]:
    """One table row per case: valid ones first, then the rejected with their reason."""
    for case in manifest.cases:
        yield {
            "case": case.case_id,
            "status": "valid" if case.label else "valid (unlabelled)",
            "kind": case.kind,
            "file": Path(case.channels[0].path).name,
            "error": "",
            "reason": "; ".join(case.warnings),
        }
    for item in manifest.rejected:
        yield {
            "case": item.case_id or "",
            "status": "rejected",
            "kind": "",
            "file": item.path,
            "error": item.error,
            "reason": item.reason,
        }


@task(
    name="ingest",
    task_run_name=_task_run_name("ingest", "source"),
    cache_policy=NO_CACHE,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=transient_io,
)
def ingest_task(
    source: Path,
    out: Path,
    options: IngestOptions | None = None,
    workdir: Path | None = None,
    on_case: IngestProgress | None = None,
) -> dict[str, Any]:
    """Ingest ``source`` into the manifest ``out``; publish one table row per case.

    Args:
        source: dataset folder, archive or CSV.
        out: manifest JSON to write.
        options: pairing and validation options.
        workdir: extracted archives and rasterised labels (default ``<out>.files/``).
        on_case: told ``(done, total, rejected so far)`` after each case (the CLI's display).

    Returns:
        :func:`ingest_summary` of the manifest.
    """
    from pipelines.ingest import ingest, write_manifest

    source, out = Path(source), Path(out)
    workdir = Path(workdir) if workdir else out.with_name(f"{out.stem}.files")
    artifact = ProgressArtifact("ingest-progress", f"ingest of {source.name}")

    def progress(done: int, total: int, case_id: str, rejected: int) -> None:
        artifact.callback(done, total, case_id)
        if on_case is not None:
            on_case(done, total, rejected)

    manifest = ingest(source, options=options, workdir=workdir, progress=progress)
    write_manifest(manifest, out)
    artifact.update(1.0)
    publish_table("ingest-cases", manifest_rows(manifest), description=f"cases of {source.name}")
    return ingest_summary(manifest, out)


def training_summary(report: Any, workdir: Path) -> dict[str, Any]:
    """The small dict a flow returns for a training (see ``TrainingReport``)."""
    from pipelines.plan import plan_table

    registration = None
    if report.registration is not None:
        decision = report.registration.decision
        registration = {
            "name": report.registration.name,
            "version": report.registration.version,
            "model_uri": report.registration.model_uri,
            "promoted": decision.promoted,
            "decision": decision.decision,
            "reason": decision.reason,
        }
    return {
        "run_id": report.run_id,
        "model_uri": report.model_uri,
        "metric": report.evaluation.metric,
        "score": float(report.evaluation.score),
        "epochs": report.result.epochs,
        "stopped_by": report.result.stopped_by,
        "weights": report.result.weights,
        "foreground_cut": (
            report.evaluation.foreground_cut.describe()
            if report.evaluation.foreground_cut is not None
            else None
        ),
        "workdir": str(workdir),
        "validation_cases": list(report.validation_cases),
        "validation_region": report.validation_region,
        "per_case": report.evaluation.per_case,
        "plan": [list(row) for row in plan_table(report.plan)],
        "registration": registration,
        "left_out": dict(report.left_out),
        "cases_used": report.cases_used,
    }


def score_rows(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """One row per (case, class) of a ``{case: {class: {metric: value}}}`` mapping."""
    return [
        {"case": case, "class": name, **dict(metrics)}
        for case, classes in per_case.items()
        for name, metrics in classes.items()
    ]


@task(name="train", task_run_name=_task_run_name("train", "manifest"), cache_policy=NO_CACHE)
def train_task(
    manifest: Path,
    config: TrainConfig,
    workdir: Path,
    *,
    plan_overrides: Mapping[str, Any] | None = None,
    register: str | None = None,
    val_fraction: float = 0.2,
    folds: int | None = None,
    fold: int = 0,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Plan, train, evaluate and (optionally) register on a manifest; track it in MLflow.

    Wraps :func:`pipelines.services.training.train_from_manifest`; the plan is published as a
    markdown artifact before training starts, the validation scores as a table after.

    Returns:
        :func:`training_summary` of the report.
    """
    from pipelines.ingest import read_manifest
    from pipelines.plan import plan_table
    from pipelines.services.training import train_from_manifest

    workdir = Path(workdir)

    def on_plan(plan: Any) -> None:
        rows = (f"**{field}**: {value}" for field, value in plan_table(plan))
        publish_summary(f"Training plan of {plan.dataset_name}", rows, key="training-plan")

    report = train_from_manifest(
        read_manifest(manifest),
        config,
        workdir,
        plan_overrides=plan_overrides,
        register=register,
        val_fraction=val_fraction,
        folds=folds,
        fold=fold,
        on_plan=on_plan,
        progress_bar=progress_bar,
    )
    publish_table(
        "training-validation-scores",
        score_rows(report.evaluation.per_case),
        description=f"{report.evaluation.metric} per validation case (MLflow run {report.run_id})",
    )
    return training_summary(report, workdir)


def evaluation_rows(report: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """One row per scored (case, class) or instance case, then one per failed or unpaired file."""
    for case, result in report["cases"].items():
        for name, scores in result.get("classes", {}).items():
            yield {"case": case, "class": name, "status": "scored", **scores, "reason": ""}
        if "instance" in result:
            yield {"case": case, "class": "instances", "status": "scored", **result["instance"]}
    for case, message in report["failed"].items():
        yield {"case": case, "status": "failed", "reason": message}
    for path in report["unpaired"]["truth"]:
        yield {"case": Path(path).name, "status": "no prediction", "reason": path}


def evaluation_counts(report: Mapping[str, Any]) -> tuple[int, int]:
    """``(scored, failed)`` of an evaluation report: a truth without prediction counts failed."""
    return len(report["cases"]), len(report["failed"]) + len(report["unpaired"]["truth"])


@task(
    name="evaluate",
    task_run_name=_task_run_name("evaluate", "prediction"),
    cache_policy=NO_CACHE,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=transient_io,
)
def evaluate_task(
    prediction: Path, truth: Path, out: Path | None = None, instance: bool | None = None
) -> dict[str, Any]:
    """Score predictions against truths (:func:`pipelines.evaluate.evaluate_outputs`).

    Returns:
        The evaluation report (per-case metrics, summary, failed and unpaired files).
    """
    from pipelines.evaluate import evaluate_outputs

    progress = ProgressArtifact("evaluate-progress", f"evaluation of {Path(prediction).name}")
    report = evaluate_outputs(
        prediction, truth, instance=instance, out=out, progress=progress.callback
    )
    progress.update(1.0)
    publish_table("evaluation-cases", evaluation_rows(report), description="scores per case")
    return report
