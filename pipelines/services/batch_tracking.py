"""A batch segmentation as an MLflow run: counts, throughput, quality (mean confidence, share
drifted, failures: a time series over scheduled runs), the ledger and the QA report as
artifacts."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
from mlflow.exceptions import MlflowException

from data_contracts import OutputError
from pipelines.infer.loaded_model import LoadedModel, ModelCard
from pipelines.redaction import redact
from pipelines.services.batch import BatchReport
from pipelines.services.ledger import LEDGER_JSON, STATE_DIR
from pipelines.services.qa_report import FOOTPRINTS_NAME, REPORT_NAME, quality_metrics
from pipelines.services.tracking import experiment_for

__all__ = ["BATCH_EXPERIMENT", "log_batch_run", "require_tracking_server", "training_run_of"]

#: The experiment that holds one run per batch segmentation.
BATCH_EXPERIMENT = "segflow-batches"


def log_batch_run(
    report: BatchReport,
    out_dir: Path,
    *,
    model_uri: str,
    source: str,
    destination: str | None = None,
) -> str:
    """Record a finished batch in MLflow and return the run id.

    Params: source, output folder, model URI (passwords in URLs masked); metrics: cases done,
    skipped and failed, wall seconds, files per second, and the quality of the batch
    (:func:`~pipelines.services.qa_report.quality_metrics`: mean confidence, share drifted,
    failures); artifacts: the exported ledger (``ledger/ledger.json``) and, when written, the
    QA report and its footprints (``report/``).

    Raises:
        OutputError: the tracking server does not answer (checked first, in a few seconds,
            rather than after MLflow's retries of every request).
        MlflowException: MLflow refused the run.
    """
    require_tracking_server()
    counts = report.counts
    with mlflow.start_run(
        experiment_id=experiment_for(BATCH_EXPERIMENT),
        run_name=f"segment-{Path(source).name}",
        tags={"segflow.kind": "batch-segmentation"},
        nested=mlflow.active_run() is not None,
    ) as run:
        params = {
            "source": source,
            "out": destination or str(Path(out_dir).absolute()),
            "model_uri": model_uri,
        }
        mlflow.log_params({key: redact(value) for key, value in params.items()})
        mlflow.log_metrics(
            {
                "files_done": counts["done"],
                "files_skipped": counts["skipped"],
                "files_failed": counts["failed"],
                "wall_seconds": report.wall_seconds,
                "files_per_second": report.files_per_second,
                **quality_metrics(report),
            }
        )
        ledger = Path(out_dir) / STATE_DIR / LEDGER_JSON
        if ledger.is_file():
            mlflow.log_artifact(str(ledger), artifact_path="ledger")
        for name in (REPORT_NAME, FOOTPRINTS_NAME):
            if (Path(out_dir) / name).is_file():
                mlflow.log_artifact(str(Path(out_dir) / name), artifact_path="report")
        return str(run.info.run_id)


def training_run_of(model: LoadedModel | ModelCard) -> str | None:
    """The MLflow run that trained a registered model (``None``: not registered, or the
    registry does not say)."""
    if not (model.name and model.version):
        return None
    try:
        version = mlflow.MlflowClient().get_model_version(model.name, model.version)
    except (MlflowException, OSError):
        return None
    return version.run_id or None


def require_tracking_server(timeout: float = 5.0) -> None:
    """Check that an HTTP tracking server answers at all (any HTTP status, even 401 behind
    an auth proxy, counts); local stores always do.

    Raises:
        OutputError: nothing answers within ``timeout`` seconds (refused, unreachable).
    """
    uri = mlflow.get_tracking_uri()
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    health = f"{uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as error:
        reason = str(getattr(error, "reason", error))
    raise OutputError(
        f"the MLflow tracking server does not answer ({reason})",
        path=redact(uri),
        hint="start the tracking server again (or unset MLFLOW_TRACKING_URI for the local store)",
    )
