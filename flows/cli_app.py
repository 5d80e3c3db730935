"""The ``segflow`` command line: one entry point, consistent exit codes, rich output."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from data_contracts import (
    IngestOptions,
    MissingFileError,
    UsageError,
    apply_environment,
)
from flows.console import (
    begin_session,
    close_routing,
    console,
    end_session,
    manifest_table,
    rejected_table,
    short_path,
    show_summary,
)
from flows.console_display import StageDisplay
from flows.console_errors import run_reporting_errors
from flows.evaluate_cli import evaluate as evaluate_command
from flows.exit_codes import ExitCode
from flows.log_routing import console_mode
from flows.segment_cli import segment as segment_command
from flows.serve import serve as serve_command
from flows.server_cli import server_app
from flows.train_cli import train as train_command
from pipelines.interrupts import (
    SIGINT_EXIT_CODE,
    SIGTERM_EXIT_CODE,
    arm_stop_deadline,
    install_stop_handlers,
)
from pipelines.kinds import registered_kinds

app = typer.Typer(
    name="segflow",
    help=(
        "Segment medical volumes (NIfTI) and georeferenced rasters (GeoTIFF) with deep learning.\n\n"
        "Exit codes: 0 all inputs done, 3 partial (some rejected or failed), 1 nothing valid or "
        "nothing done, 2 usage error, 70 internal error (traceback saved under SEGFLOW_HOME/crashes)."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def parse_labels(text: str | None) -> dict[str, int] | None:
    """``"background=0,road=255"`` → ``{"background": 0, "road": 255}``.

    Raises:
        UsageError: an item is not ``name=integer``.
    """
    if not text:
        return None
    labels: dict[str, int] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if not name.strip() or not value.strip().lstrip("-").isdigit():
            raise UsageError(
                f"--labels item {item!r} is not name=integer",
                hint="write e.g. --labels background=0,building=1",
            )
        labels[name.strip()] = int(value)
    return labels


@app.command()
def ingest(
    source: Annotated[
        Path,
        typer.Argument(
            help="Dataset folder, .zip/.tar/.tar.gz archive, or CSV (columns image,label)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest JSON to write.")] = Path(
        "manifest.json"
    ),
    label_suffix: Annotated[
        str, typer.Option(help="Text between case id and extension of label files, e.g. _mask.")
    ] = "",
    channel_suffix: Annotated[
        bool,
        typer.Option(
            help="Group files named <case>_0000, <case>_0001… into the channels of one case "
            "<case>: pat1_0000.nii.gz + pat1_0001.nii.gz → case pat1 with 2 channels. Without "
            "it every image file is its own case named by its full stem (tile_2023.tif → case "
            "tile_2023); the nnU-Net layout and a dataset.json declaring several channels "
            "group without it."
        ),
    ] = False,
    labels: Annotated[
        str | None,
        typer.Option(
            help="Label set as name=value pairs, e.g. background=0,building=1 (overrides dataset.json)."
        ),
    ] = None,
    ignore_value: Annotated[
        int | None, typer.Option(help="Label value meaning 'no label' (nodata), e.g. -1 or 0.")
    ] = None,
    label_kind: Annotated[
        str, typer.Option(help="semantic (class maps) or instance (0 background, 1..N objects).")
    ] = "semantic",
    kind: Annotated[str, typer.Option(help="auto, volume, raster or image.")] = "auto",
    allow_ungeoreferenced: Annotated[
        bool, typer.Option(help="Accept TIFFs without CRS/transform as rasters.")
    ] = False,
    vector_attribute: Annotated[
        str | None, typer.Option(help="Feature property holding the class of vector labels.")
    ] = None,
    vector_crs: Annotated[
        str | None,
        typer.Option(
            help="CRS of vector label coordinates when the file has none (default EPSG:4326, RFC 7946)."
        ),
    ] = None,
    subdir: Annotated[
        str | None, typer.Option(help="Folder inside SOURCE (or the archive) to ingest.")
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Where extracted archives and rasterised vector labels go (default: <out>.files/ beside the manifest)."
        ),
    ] = None,
) -> None:
    """Validate a dataset into a manifest: pair images and labels, check grids and label values.

    Every file is opened and hashed (SHA-256, streamed); invalid cases are quarantined into the
    manifest's rejected list with their reason and the others go on. Every image file is a
    case named by its full stem (tile_2023.tif → tile_2023) unless channels are grouped
    (--channel-suffix, the nnU-Net layout, a dataset.json declaring several channels); inputs
    whose case ids clash (Tile.tif and tile.tif, scene.tif and scene.tiff) are rejected.

    Examples:

        segflow ingest ../shared/data/brats2015_deepmedic --out brats.json

        segflow ingest scans/ --channel-suffix   # scans/pat1_0000.nii.gz + pat1_0001.nii.gz → pat1

        segflow ingest tiles.zip --label-suffix _mask --labels background=0,building=1

        segflow ingest scenes/ --ignore-value 0 --label-kind instance
    """
    if label_kind not in ("semantic", "instance"):
        raise UsageError(f"--label-kind must be semantic or instance, not {label_kind!r}")
    kinds = ("auto", *registered_kinds())
    if kind not in kinds:
        raise UsageError(f"--kind must be {', '.join(kinds[:-1])} or {kinds[-1]}, not {kind!r}")
    options = IngestOptions(
        label_suffix=label_suffix,
        channel_suffix=channel_suffix,
        labels=parse_labels(labels),
        ignore_value=ignore_value,
        label_kind=label_kind,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        allow_ungeoreferenced=allow_ungeoreferenced,
        vector_attribute=vector_attribute,
        vector_crs=vector_crs,
        subdir=subdir,
    )
    if not source.exists():  # fail fast, before a Prefect API is started for the flow
        raise MissingFileError("does not exist", path=source.expanduser().resolve())
    raise typer.Exit(int(run_ingest_flow(source, out, options, workdir)))


def run_ingest_flow(
    source: Path, out: Path, options: IngestOptions, workdir: Path | None
) -> ExitCode:
    """Ingest through :func:`flows.dataset_flows.ingest_flow`, then print the summary tables.

    Returns:
        The exit code of the flow's outcome (0 all valid, 3 partial, 1 nothing valid).
    """
    from flows.dataset_flows import ingest_flow, run_flow
    from pipelines.ingest import read_manifest

    workdir = workdir or out.with_name(f"{out.stem}.files")
    with StageDisplay("ingest", f"validating {short_path(source)}") as display:

        def on_case(done: int, total: int, rejected: int) -> None:
            display.update(
                f"{done} of {total} files checked, {rejected} rejected so far",
                completed=done,
                total=total,
            )

        summary, code = run_flow(
            ingest_flow,
            source=source,
            out=out,
            options=options,
            workdir=workdir,
            on_case=on_case,
        )
    manifest = read_manifest(summary["manifest"])
    tables = [manifest_table(manifest), *([rejected_table(manifest)] if manifest.rejected else [])]
    show_summary(
        *tables,
        f"Manifest written to [bold]{short_path(out, 60)}[/bold]",
        data={**summary, "rejected_inputs": manifest.rejected},
    )
    return code


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the archive, masks and metrics.")
    ] = Path("segflow-demo"),
    seed: Annotated[int, typer.Option(help="Seed of the sample data and of training.")] = 0,
    minutes_scale: Annotated[
        float, typer.Option(help="Multiplies the training budgets (1.0: about 2 minutes).")
    ] = 1.0,
) -> None:
    """Run the whole job on embedded defaults, in a few minutes on a laptop CPU.

    Builds a sample archive (NIfTI volumes and georeferenced GeoTIFFs that segflow generates);
    for each kind ingests it, trains a small U-Net, registers it (champion), segments every
    case with models:/demo-<kind>@champion, and scores the masks against the labels. Uses
    Prefect's local API and MLflow on a sqlite file under SEGFLOW_HOME: no server to start.
    """
    from flows.console_display import SegmentProgress
    from flows.console_train import training_stage
    from flows.demo import demo_flow, show_demo_summary

    if minutes_scale <= 0:
        raise UsageError(f"--minutes-scale must be positive, not {minutes_scale}")
    with training_stage("demo", "building the sample archive") as display:
        progress = SegmentProgress(display)
        summary = demo_flow(out, seed=seed, minutes_scale=minutes_scale, progress=progress)
    show_demo_summary(summary)
    raise typer.Exit(0)


app.command()(train_command)
app.command()(segment_command)
app.command()(evaluate_command)
app.command()(serve_command)
app.add_typer(server_app)


@app.command()
def export(
    model: Annotated[
        str, typer.Argument(help="models:/NAME@alias, models:/NAME/VERSION or runs:/ID/model.")
    ],
    destination: Annotated[Path, typer.Argument(help="A new (or empty) folder.")],
) -> None:
    """Copy a model out of the registry into a folder, for offline use with `segflow segment`.

    Example:

        segflow export models:/brats@champion ./brats-model
    """
    from pipelines.services.model_registry import export_model

    folder = export_model(model, destination)
    show_summary(
        f"Exported {model} to [bold]{short_path(folder, 60)}[/bold]",
        data={"model": model, "folder": folder},
    )


def _version_callback(value: bool) -> None:
    if value:
        from pipelines import __version__

        console.print(f"segflow {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Show every line, other libraries' too (each once)."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Show only errors and the summary (for cron).")
    ] = False,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the summary as one JSON object on stdout, nothing else there."
        ),
    ] = False,
) -> None:
    """Segment medical volumes and georeferenced rasters; see each command's --help.

    Other libraries' lines (Prefect, Lightning, MLflow, warnings) go to a log file under
    SEGFLOW_HOME/logs, named on the command's last line. SEGFLOW_CONSOLE=quiet|json|verbose
    sets the mode without a flag (cron).
    """
    mode = console_mode(verbose, quiet, json_output)
    if ctx.invoked_subcommand is None or (ctx.obj or {}).get("help"):
        return  # the command's help prints before it runs: nothing to route
    begin_session(mode, ctx.invoked_subcommand)
    ctx.call_on_close(close_routing)  # also when the command fails: errors print after it


def _exit_now(code: int) -> NoReturn:
    """Exit the console script after a stop signal: run the exit handlers (servers stopped,
    logs flushed), then end the process without the interpreter's teardown of every imported
    native library, which took seconds after a batch (and counts against the 10 s a stop
    signal allows)."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segflow`` console script; returns (and exits with) the exit code."""
    settings = apply_environment()
    install_stop_handlers()
    if argv is None:  # the console script's own process: a stop signal ends it
        arm_stop_deadline(settings.stop_deadline_seconds)
    from flows import local_api

    local_api.enable()  # flows run on a temporary Prefect API that cannot outlive segflow
    args = sys.argv[1:] if argv is None else argv
    asks_help = "--help" in args or "-h" in args  # the callback cannot see the command's args
    code, error = run_reporting_errors(
        lambda: app(args=argv, standalone_mode=False, obj={"help": asks_help})
    )
    end_session(code, error)  # the last line: "log: …" (or the JSON object)
    if __name__ == "__main__" or argv is None:
        if code in (SIGTERM_EXIT_CODE, SIGINT_EXIT_CODE):
            _exit_now(code)  # a stop signal: within its time budget
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
