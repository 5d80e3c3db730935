"""``segflow segment``: apply a registered or exported model to files, folders and archives."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from data_contracts import SegflowError, UsageError
from flows.console import console, error_console, progress_bar
from flows.exit_codes import outcome


def _summary(report: object) -> Table:
    from pipelines.infer.run import SegmentReport

    if not isinstance(report, SegmentReport):
        raise TypeError("expected a SegmentReport")
    table = Table(title="segflow segment", show_lines=False)
    for column in ("case", "status", "seconds", "outputs"):
        table.add_column(column)
    for result in report.succeeded:
        names = ", ".join(path.name for path in result.outputs.values())
        table.add_row(result.case_id, "[green]done", f"{result.seconds:.1f}", names)
    for case_id, error in report.failed.items():
        table.add_row(case_id, "[red]failed", "", str(error))
    return table


def segment(
    source: Annotated[
        Path,
        typer.Argument(
            help="An image (.nii.gz, .tif, .png), a folder of them, a .zip/.tar.gz archive, or a "
            "manifest JSON from `segflow ingest`."
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="models:/NAME@champion, models:/NAME/VERSION, runs:/ID/model, or a folder "
            "from `segflow export`.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "segmentations"
    ),
    polygons: Annotated[
        bool,
        typer.Option(help="Rasters: also polygons (GeoPackage, source CRS; GeoJSON, WGS84)."),
    ] = False,
    probabilities: Annotated[
        bool, typer.Option(help="Also write class probabilities (<case>_prob, uint8 / 255).")
    ] = False,
    tta: Annotated[
        bool, typer.Option(help="Test-time augmentation: average over flips (volumes, images).")
    ] = False,
    overlap: Annotated[
        float | None,
        typer.Option(help="Window overlap, 0 to <1 (default 0.5 volumes, 0.25 2D)."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Windows per forward pass (default 4 volumes, 8 2D).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda or cuda:N (default: CUDA when present).")
    ] = None,
) -> None:
    """Segment volumes, rasters and images with a model; outputs keep the source geometry.

    The plan (spacing, normalisation, window size) and post-processing come with the model.
    Volumes give <case>.nii.gz in the source grid and header; rasters a COG <case>.tif in the
    source CRS and transform (nodata kept); 2D images <case>.png (instance ids as uint16).
    A case whose file is unreadable or has the wrong channels is reported; the others go on.

    Examples:

        segflow segment scans/ --model models:/brats@champion --out masks/

        segflow segment scene.tif --model models:/buildings/3 --polygons --probabilities

        segflow segment archive.zip --model ./exported-model --tta
    """
    if overlap is not None and not 0 <= overlap < 1:
        raise UsageError(f"--overlap must be in [0, 1), not {overlap}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
    from pipelines.infer.run import SegmentOptions, segment_inputs
    from pipelines.registry import load_model

    loaded = load_model(model)
    options = SegmentOptions(
        polygons=polygons,
        probabilities=probabilities,
        tta=tta,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
    )
    with progress_bar() as bar:
        files = bar.add_task("cases", total=None, current="")
        windows = bar.add_task("windows", total=None, current="", visible=False)

        def start(case: object, index: int, total: int) -> None:
            bar.update(files, completed=index, total=total, current=getattr(case, "case_id", ""))
            bar.reset(windows, visible=True)

        def advance(done: int, total: int) -> None:
            bar.update(windows, completed=done, total=total)

        def done(case: object, result: object) -> None:
            bar.advance(files)
            if isinstance(result, SegflowError):
                error_console.print(f"[red]failed[/red] {result}")

        report = segment_inputs(
            source, loaded, out, options, on_start=start, on_done=done, window_progress=advance
        )
    console.print(_summary(report))
    console.print(f"Outputs in [bold]{out}[/bold] (model {loaded.uri})")
    raise typer.Exit(int(outcome(len(report.succeeded), len(report.failed))))
