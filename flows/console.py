"""Rich rendering shared by the CLI commands: summaries, rejections, progress."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from data_contracts import DatasetManifest
from pipelines.kinds import adapter_for_geometry

console = Console(stderr=False)
error_console = Console(stderr=True)


def progress_bar() -> Progress:
    """A progress bar for per-file work, on stderr so stdout stays parseable."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}"),
        console=error_console,
        transient=True,
    )


def manifest_table(manifest: DatasetManifest, *, max_rows: int = 30) -> Table:
    """One row per valid case: kind, channels, size, spacing/resolution, CRS, label values."""
    table = Table(
        title=f"{manifest.name}: {len(manifest.cases)} valid, {len(manifest.rejected)} rejected"
    )
    table.add_column("case", overflow="fold")
    for column in ("kind", "channels", "size", "spacing / res.", "orient. / CRS", "label values"):
        table.add_column(column)
    for case in manifest.cases[:max_rows]:
        size, spacing, frame = adapter_for_geometry(case.geometry).geometry_cells(case.geometry)
        values = case.label_stats.values if case.label_stats else ()
        shown = ", ".join(map(str, values[:8])) + (" …" if len(values) > 8 else "")
        table.add_row(
            case.case_id[:40],
            case.kind,
            str(sum(case.channel_counts)),
            size,
            spacing,
            frame,
            shown if case.label else "[dim]unlabelled[/dim]",
        )
    if len(manifest.cases) > max_rows:
        table.caption = f"… and {len(manifest.cases) - max_rows} more cases"
    return table


def rejected_table(manifest: DatasetManifest) -> Table:
    """One row per rejected input: the file, the error class and the reason."""
    table = Table(title="Rejected inputs", title_style="bold red")
    table.add_column("file", overflow="fold")
    table.add_column("error", style="red")
    table.add_column("reason", overflow="fold")
    for item in manifest.rejected:
        reason = item.reason.removeprefix(f"{item.path}: ") if item.path else item.reason
        table.add_row(item.path, item.error, reason)
    return table
