"""A batch segmentation as an MLflow run: counts, throughput, and the ledger as an artifact."""

from __future__ import annotations

from pathlib import Path

import mlflow

from pipelines.batch import BatchReport
from pipelines.ledger import LEDGER_JSON, STATE_DIR
from pipelines.tracking import experiment_for

__all__ = ["BATCH_EXPERIMENT", "log_batch_run"]

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

    Params: source, output folder, model URI; metrics: cases done, skipped and failed, wall
    seconds, files per second; artifact: the exported ledger (``ledger/ledger.json``).
    """
    counts = report.counts
    with mlflow.start_run(
        experiment_id=experiment_for(BATCH_EXPERIMENT),
        run_name=f"segment-{Path(source).name}",
        tags={"segflow.kind": "batch-segmentation"},
        nested=mlflow.active_run() is not None,
    ) as run:
        mlflow.log_params(
            {
                "source": source,
                "out": destination or str(Path(out_dir).absolute()),
                "model_uri": model_uri,
            }
        )
        mlflow.log_metrics(
            {
                "files_done": counts["done"],
                "files_skipped": counts["skipped"],
                "files_failed": counts["failed"],
                "wall_seconds": report.wall_seconds,
                "files_per_second": report.files_per_second,
            }
        )
        ledger = Path(out_dir) / STATE_DIR / LEDGER_JSON
        if ledger.is_file():
            mlflow.log_artifact(str(ledger), artifact_path="ledger")
        return str(run.info.run_id)
