"""The demo: the whole job on embedded defaults, for volumes and rasters, in a few minutes.

``demo_flow`` (which runs the ``demo`` flow, :func:`demo_job`) builds a sample archive (NIfTI
volumes and georeferenced GeoTIFFs that segflow generates), and for each kind: ingests it,
trains a small U-Net briefly (tracked in MLflow on a sqlite file), registers it (the first
version becomes ``champion``), segments every case with ``models:/demo-<kind>@champion``
through the resumable ``segment-archive`` flow, and scores the masks against the labels.
Everything runs on a temporary local Prefect API; no server to start. The Dice it reports is
computed from the files it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from rich.table import Table

from data_contracts import IngestOptions, TrainConfig, get_settings
from flows.artifacts import publish_summary, publish_table
from flows.console import short_path, show_summary
from flows.console_display import SegmentProgress
from flows.dataset_flows import evaluate_flow, ingest_flow, train_flow
from flows.local_api import ensure_local_api
from flows.segment_flow import segment_archive_flow

__all__ = ["DEMO_TRAINING", "demo_flow", "demo_job", "demo_table", "show_demo_summary"]

#: Small networks and budgets that fit the demo's five minutes on two CPU cores.
DEMO_TRAINING: dict[str, dict[str, Any]] = {
    "volumes": {"model_options": {"base_features": 8, "depth": 2}, "minutes": 1.2},
    "rasters": {"model_options": {"base_features": 8, "depth": 3}, "minutes": 0.8},
}


_MASK_SUFFIX = {"volumes": ".nii.gz", "rasters": ".tif"}


def _labels_folder(manifest_path: Path) -> Path:
    from pipelines.ingest import read_manifest

    manifest = read_manifest(manifest_path)
    labelled = [case for case in manifest.cases if case.label is not None]
    if not labelled or labelled[0].label is None:
        raise ValueError(f"{manifest_path} has no labelled case")
    return Path(labelled[0].label.path).parent


def _run_kind(
    kind: str,
    archive: Path,
    out: Path,
    minutes_scale: float,
    seed: int,
    progress: SegmentProgress | None,
) -> list[dict[str, Any]]:
    """Ingest → train + register → segment → evaluate one kind; rows for the results table."""

    def stage(detail: str) -> None:
        if progress is not None:
            progress.display.restart(f"demo {kind}", detail)

    manifest = out / f"{kind}_manifest.json"
    stage("ingest")
    ingest_flow(archive, manifest, IngestOptions(subdir=kind), out / f"{kind}.files")
    settings = DEMO_TRAINING[kind]
    config = TrainConfig(
        model="unet",
        model_options=settings["model_options"],
        loss="dice+ce",
        max_minutes=settings["minutes"] * minutes_scale,
        max_epochs=200,
        steps_per_epoch=8,
        val_every=2,
        seed=seed,
    )
    stage("training")
    trained = train_flow(
        manifest=manifest,
        config=config,
        register=f"demo-{kind}",
        workdir=out / f"{kind}.train",
        progress_bar=progress is not None,  # the command line's display (or none)
    )
    masks = out / "masks" / kind
    stage("segmenting")
    segment_archive_flow(
        str(manifest), f"models:/demo-{kind}@champion", str(masks), progress=progress
    )
    metrics = out / f"{kind}_metrics.json"
    stage("scoring")
    report = evaluate_flow(masks, _labels_folder(manifest), metrics)
    held_out = set(trained["validation_cases"])
    rows = []
    for case, result in sorted(report["cases"].items()):
        dice = [scores["dice"] for scores in result.get("classes", {}).values()]
        rows.append(
            {
                "kind": kind,
                "case": case,
                "split": _split_label(case, held_out, trained.get("validation_region")),
                "dice": sum(dice) / len(dice) if dice else float("nan"),
                "mask": str(masks / f"{case}{_MASK_SUFFIX[kind]}"),
            }
        )
    return rows


def _split_label(case: str, validated: set[str], region: str | None) -> str:
    """``"held out"``, ``"train"``, or with few cases ``"train+end"`` (its end validated)."""
    if case not in validated:
        return "train"
    return "train+end" if region else "held out"


def demo_flow(
    out: Path,
    seed: int = 0,
    minutes_scale: float = 1.0,
    progress: SegmentProgress | None = None,
) -> dict[str, Any]:
    """Run the ``demo`` flow (:func:`demo_job`) into ``out``, on segflow's temporary Prefect API
    in the command line (:func:`flows.local_api.ensure_local_api`).

    Args:
        out: folder for the archive, manifests, masks and metrics.
        seed: seed of the sample data and of training.
        minutes_scale: multiplies the training budgets (tests run a reduced demo).
        progress: the command line's display, told of each stage and of segmenting.

    Returns:
        The per-case Dice rows and where everything is.
    """
    ensure_local_api()
    return demo_job(out, seed=seed, minutes_scale=minutes_scale, progress=progress)


@flow(name="demo", flow_run_name="demo")
def demo_job(
    out: Path,
    seed: int = 0,
    minutes_scale: float = 1.0,
    progress: SegmentProgress | None = None,
) -> dict[str, Any]:
    """The demo flow: run the demo into ``out``; return the per-case Dice rows and where
    everything is.

    Args:
        out: folder for the archive, manifests, masks and metrics.
        seed: seed of the sample data and of training.
        minutes_scale: multiplies the training budgets (tests run a reduced demo).
        progress: the command line's display, told of each stage and of segmenting.
    """
    from pipelines.synthetic import make_sample_archive

    out.mkdir(parents=True, exist_ok=True)
    archive = make_sample_archive(out / "sample_archive.zip", seed=seed)
    rows = [
        row
        for kind in ("volumes", "rasters")
        for row in _run_kind(kind, archive, out, minutes_scale, seed, progress)
    ]
    settings = get_settings()
    summary = {
        "archive": str(archive),
        "rows": rows,
        "masks": str(out / "masks"),
        "tracking_uri": settings.tracking_uri,
        "mlflow_ui": f"mlflow ui --backend-store-uri {settings.tracking_uri}",
    }
    publish_table("demo-dice", rows, description="Dice per case (mean over foreground classes)")
    publish_summary(
        "segflow demo",
        [f"masks: `{summary['masks']}`", f"MLflow UI: `{summary['mlflow_ui']}`"],
        key="demo-summary",
    )
    return summary


def demo_table(summary: dict[str, Any]) -> Table:
    """The demo's closing table: Dice per case, its split, and its mask (relative, shortened)."""
    table = Table(title="segflow demo: Dice per case (mean over foreground classes)")
    for column in ("kind", "case", "split", "Dice"):
        table.add_column(column, no_wrap=True)
    table.add_column("mask", no_wrap=True)
    for row in summary["rows"]:
        dice = f"{row['dice']:.3f}"
        table.add_row(row["kind"], row["case"], row["split"], dice, short_path(row["mask"]))
    return table


def show_demo_summary(summary: dict[str, Any]) -> None:
    """The demo's closing summary: the table, then where the masks and the MLflow runs are."""
    show_summary(
        demo_table(summary),
        f"Masks:          [bold]{short_path(summary['masks'], 60)}[/bold]",
        f"MLflow runs:    [bold]{summary['tracking_uri']}[/bold]",
        f"MLflow UI:      [bold]{summary['mlflow_ui']}[/bold]",
        f"Archive:        {short_path(summary['archive'], 60)}",
        data=summary,
    )
