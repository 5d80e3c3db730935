"""``segflow evaluate``: the command-line face of :func:`pipelines.evaluate.evaluate_outputs`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from data_contracts import MissingFileError
from flows.console import short_path, show_summary
from flows.console_display import StageDisplay


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "inf" if value == math.inf else "-"
    return f"{value:.3f}"


def _cases(count: int) -> str:
    return f"{count} case" if count == 1 else f"{count} cases"


def semantic_table(report: Mapping[str, Any]) -> Table | None:
    """One row per (case, class) scored as semantic maps, then the mean per class and overall."""
    cases = {c: r for c, r in report["cases"].items() if "classes" in r}
    if not cases:
        return None
    units = {r["units"] for r in cases.values()}
    table = Table(title=f"Semantic scores ({_cases(len(cases))})")
    for column in ("case", "class", "Dice", "IoU", f"HD95 ({', '.join(sorted(units))})"):
        table.add_column(column, overflow="fold")
    for case, result in cases.items():
        for name, scores in result["classes"].items():
            table.add_row(case, name, *(_number(scores[m]) for m in ("dice", "iou", "hd95")))
        if not result["classes"]:
            table.add_row(case, "[dim]no foreground[/dim]", "-", "-", "-")
    summary = report["summary"]
    table.add_section()
    for name, means in summary["classes"].items():
        table.add_row(
            f"mean of {means['cases']}",
            name,
            *(_number(means[m]) for m in ("dice", "iou", "hd95")),
            style="bold",
        )
    if "overall" in summary:
        overall = summary["overall"]
        table.add_row(
            "mean", "all", *(_number(overall[m]) for m in ("dice", "iou", "hd95")), style="bold"
        )
    return table


def instance_table(report: Mapping[str, Any]) -> Table | None:
    """One row per case scored as instance maps, then the means."""
    cases = {c: r["instance"] for c, r in report["cases"].items() if "instance" in r}
    if not cases:
        return None
    table = Table(title=f"Instance scores ({_cases(len(cases))})")
    for column in ("case", "objects (pred / truth)", "DSB-2018", "AP@[.5:.95]", "F1@.5"):
        table.add_column(column, overflow="fold")
    metrics = ("dsb2018", "ap_50_95", "f1_50")
    for case, scores in cases.items():
        objects = f"{scores['objects_prediction']} / {scores['objects_truth']}"
        table.add_row(case, objects, *(_number(scores[m]) for m in metrics))
    table.add_section()
    means = report["summary"]["instance"]
    table.add_row("mean", "", *(_number(means[m]) for m in metrics), style="bold")
    return table


def problems_table(report: Mapping[str, Any]) -> Table | None:
    """Failed cases with their reason, and files that found no partner."""
    unpaired = report["unpaired"]
    if not (report["failed"] or unpaired["prediction"] or unpaired["truth"]):
        return None
    table = Table(title="Not scored", title_style="bold red")
    table.add_column("case or file", overflow="fold")
    table.add_column("reason", overflow="fold")
    for case, message in report["failed"].items():
        table.add_row(case, f"[red]{message}[/red]")
    for path in unpaired["truth"]:
        table.add_row(path, "truth without a prediction")
    for path in unpaired["prediction"]:
        table.add_row(path, "[dim]prediction without a truth (not counted as failed)[/dim]")
    return table


def evaluate(
    prediction: Annotated[
        Path,
        typer.Argument(help="Predicted label map, or a folder of them (as written by predict)."),
    ],
    truth: Annotated[Path, typer.Argument(help="Reference label map, or a folder of them.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write every metric as JSON here (inf HD95 as null)."),
    ] = None,
    instance: Annotated[
        bool | None,
        typer.Option(
            "--instance/--semantic",
            help="Score instance maps (DSB-2018, AP, F1) or class maps (Dice, IoU, HD95). "
            "Default: instances for 2D maps with more than 20 distinct labels, else classes.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Score predictions against reference labels: Dice, IoU and HD95 per class (HD95 in mm for
    NIfTI, in CRS units for GeoTIFF), or DSB-2018, AP@[.5:.95] and F1@.5 for instance maps.

    Files pair by case id, the file name without its extension, as segment names its
    outputs: the mask tile_2023.tif pairs with the truth tile_2023.tif. A name that finds no
    partner pairs after dropping a _0000 channel suffix (case_0000.nii.gz with case.nii.gz)
    when no other file claims that partner. Sidecars (*.lineage.json, *_prob.*) are skipped;
    a GeoTIFF's nodata pixels count nowhere. Exit code 3 when some cases failed or lack a
    prediction.

    Examples:

        segflow evaluate predictions/ labelsTs/ --out metrics.json

        segflow evaluate pred/nuclei_7.png truth/nuclei_7.png --instance
    """
    from flows.dataset_flows import evaluate_flow, run_flow

    for role, path in (("prediction", prediction), ("truth", truth)):
        if not path.exists():  # fail fast, before a Prefect API is started for the flow
            raise MissingFileError(f"{role} does not exist", path=path)
    with StageDisplay("evaluate", f"scoring {short_path(prediction)}"):
        report, code = run_flow(
            evaluate_flow, prediction=prediction, truth=truth, out=out, instance=instance
        )
    tables = (semantic_table(report), instance_table(report), problems_table(report))
    written = [f"Metrics written to [bold]{short_path(out, 60)}[/bold]"] if out else []
    show_summary(*(table for table in tables if table is not None), *written, data=report)
    raise typer.Exit(int(code))
