"""``segflow segment``: the CLI face of the ``segment_archive`` flow."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from data_contracts import DriftPolicy, InferenceOptions, UsageError
from flows.console import error_console, short_path, shorten, show_summary
from flows.console_display import SegmentProgress, StageDisplay
from pipelines.interrupts import cooperative_stop

_MAX_TABLE_ROWS = 40


def summary_table(summary: dict[str, Any]) -> Table:
    """Per-file results (failed first, then at most 40 others) and the counts as a caption;
    one line per file in 80 columns (the case name shortened in the middle, errors folded)."""
    table = Table(title="segflow segment")
    table.add_column("case", no_wrap=True, max_width=24)
    table.add_column("status", no_wrap=True)
    table.add_column("seconds", no_wrap=True, justify="right")
    table.add_column("outputs / error", overflow="fold")
    items = sorted(summary.get("items", []), key=lambda row: row["status"] != "failed")
    for row in items[:_MAX_TABLE_ROWS]:
        style = {"failed": "red", "done": "green"}.get(row["status"], "dim")
        detail = row["error"] or row["outputs"]
        case = shorten(row["case"], 24)
        table.add_row(case, f"[{style}]{row['status']}", f"{row['seconds']:.1f}", detail)
    left_out = len(items) - _MAX_TABLE_ROWS
    table.caption = (
        f"done {summary['done']}, skipped {summary['skipped']} (done before), failed "
        f"{summary['failed']}; {summary['files_per_second']:.2f} files/s"
        + (f"; {left_out} more rows in the ledger" if left_out > 0 else "")
    )
    return table


def review_rows(summary: dict[str, Any], threshold: float) -> list[dict[str, Any]]:
    """The rows of files whose confidence is below ``threshold``, least confident first."""
    rows = [
        row
        for row in summary.get("items", [])
        if row.get("confidence") is not None and row["confidence"] < threshold
    ]
    return sorted(rows, key=lambda row: (row["confidence"], row["case"]))


def show_review_list(summary: dict[str, Any], threshold: float) -> None:
    """Print the files to review (``--review-below``); kept in the JSON summary too."""
    rows = review_rows(summary, threshold)
    listed = [{"case": row["case"], "confidence": row["confidence"]} for row in rows]
    table = Table(title=f"files to review (confidence below {threshold:g})")
    table.add_column("case", no_wrap=True, max_width=40)
    table.add_column("confidence", justify="right")
    table.add_column("drift", overflow="fold")
    for row in rows:
        table.add_row(shorten(row["case"], 40), f"{row['confidence']:.3f}", row.get("drift", ""))
    table.caption = f"{len(rows)} file(s) below {threshold:g}" if rows else "none"
    show_summary(table, data={"review": listed})


def segment(
    source: Annotated[
        str,
        typer.Argument(
            help="An image (.nii.gz, .tif, .png), a folder of them, a .zip/.tar.gz archive, or a "
            "manifest JSON from `segflow ingest`; local, or an s3:// URI.",
            metavar="SOURCE",
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
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Output folder, or an s3:// prefix (written locally under SEGFLOW_HOME/staging, "
            "then each file uploaded whole).",
        ),
    ] = "segmentations",
    channel_suffix: Annotated[
        bool,
        typer.Option(
            help="Group files named <case>_0000, <case>_0001… into the channels of one case "
            "<case>, written as <case>.<ext>: pat1_0000.nii.gz + pat1_0001.nii.gz → pat1.nii.gz. "
            "Without it every image is its own case named by its full stem (scene_8192.tif → "
            "scene_8192.tif). Automatic for models of multi-channel volumes, nnU-Net's "
            "imagesTr/imagesTs and a dataset.json declaring several channels."
        ),
    ] = False,
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
    postprocess: Annotated[
        bool,
        typer.Option(
            help="Apply the model's post-processing (the plan's choice, e.g. for a one-tumour "
            "or one-organ dataset: the foreground decided as one region, then only its largest "
            "component kept; plan.json and each output's lineage say which). "
            "--no-postprocess writes the network's argmax labels."
        ),
    ] = True,
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
    amp: Annotated[
        bool,
        typer.Option(
            help="Mixed precision: float16 on CUDA, bfloat16 on CPUs with native bf16 "
            "(AVX-512 BF16, AMX); --no-amp computes in float32 everywhere."
        ),
    ] = True,
    verify: Annotated[
        bool,
        typer.Option(help="Re-hash inputs and outputs instead of trusting size and mtime."),
    ] = False,
    task_runner: Annotated[
        str, typer.Option(help="threads (default) or dask: how files run in parallel.")
    ] = "threads",
    max_workers: Annotated[
        int | None, typer.Option(help="Threads or local Dask workers (default: CPU cores).")
    ] = None,
    dask_address: Annotated[
        str | None,
        typer.Option(help="Scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786."),
    ] = None,
    files_per_task: Annotated[
        int | None, typer.Option(help="Files per Prefect task (default: automatic).")
    ] = None,
    retry_crashed: Annotated[
        bool,
        typer.Option(
            help="Try again the files whose worker process crashed twice before (quarantined: "
            "skipped and reported by default)."
        ),
    ] = False,
    review_below: Annotated[
        float | None,
        typer.Option(
            help="List at the end the files whose confidence (0 to 1, from the model's own "
            "probabilities) is below this, least confident first.",
            min=0.0,
            max=1.0,
        ),
    ] = None,
    write_uncertainty: Annotated[
        bool,
        typer.Option(
            help="Also write the normalised entropy on the mask's grid (<case>_entropy: NIfTI "
            "for volumes, COG for rasters, TIFF for images; uint8 / 255)."
        ),
    ] = False,
    on_drift: Annotated[
        DriftPolicy,
        typer.Option(
            help="Inputs outside the model's training data (spacing, intensities, resolution, "
            "bands): warn (segment and flag them, default), skip or fail them."
        ),
    ] = "warn",
) -> None:
    """Segment volumes, rasters and images with a model; outputs keep the source geometry.

    Runs the `segment-archive` Prefect flow (Prefect's local API unless PREFECT_API_URL is
    set). The plan (spacing, normalisation, window size) and post-processing come with the
    model. Volumes give <case>.nii.gz in the source grid and header; rasters a COG <case>.tif in
    the source CRS and transform (nodata kept); 2D images <case>.png (instance ids as uint16).
    The run is resumable: a ledger in OUT/.segflow records every file, and a rerun skips files
    whose input, model and settings are unchanged, and retries failed ones. A file that is
    unreadable or has the wrong channels is reported; the others go on (exit code 3).

    Every image file is a case named by its full stem, and its outputs keep that name
    (scene_8192.tif → OUT/scene_8192.tif); _0000 channel files are grouped with
    --channel-suffix, and automatically for a model of multi-channel volumes. Inputs whose case
    ids clash (Tile.tif and tile.tif, scene.tif and scene.tiff) are reported, not segmented.

    Each file runs in a worker process: a file that crashes native code (a segfault in a
    decoder, an abort, the OOM killer) fails alone, is retried once in a fresh worker and,
    after a second crash, quarantined (reported; --retry-crashed tries it again). SIGTERM or
    Ctrl-C stops at the next batch of windows within seconds: finished files stay recorded,
    nothing half-written is left, and the same command resumes (exit 143 or 130).

    Examples:

        segflow segment scans/ --model models:/brats@champion --out masks/

        segflow segment scans/ --model models:/ct@champion --channel-suffix   # pat1_0000.nii.gz → pat1.nii.gz

        segflow segment s3://scans/incoming/ --model models:/brats@champion --out s3://scans/masks/

        segflow segment scene.tif --model models:/buildings/3 --polygons --probabilities

        segflow segment archive.zip --model ./exported-model --task-runner dask --max-workers 4
    """
    options = InferenceOptions(
        polygons=polygons,
        probabilities=probabilities,
        tta=tta,
        postprocess=postprocess,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        amp=amp,
        uncertainty=write_uncertainty,
        on_drift=on_drift,
    )
    if files_per_task is not None and files_per_task < 1:
        raise UsageError(f"--files-per-task must be at least 1, not {files_per_task}")
    from flows.dataset_flows import run_flow
    from flows.runners import task_runner as make_runner
    from flows.segment_flow import segment_archive_flow

    runner = make_runner(task_runner, max_workers=max_workers, dask_address=dask_address)
    if task_runner == "threads":
        from pipelines.services.case_workers import start_forkserver_early

        start_forkserver_early()  # its imports overlap with the Prefect API's start-up
    with cooperative_stop(), StageDisplay("segment", "loading the model") as display:
        summary, code = run_flow(
            segment_archive_flow.with_options(task_runner=runner),
            source=source,
            model=model,
            out=out,
            options=options,
            channel_suffix=channel_suffix,
            verify=verify,
            files_per_task=files_per_task,
            retry_crashed=retry_crashed,
            progress=SegmentProgress(display),
        )
    show_summary(
        summary_table(summary),
        f"Outputs in [bold]{short_path(out, 40)}[/bold] (model {summary['model']})",
        data=summary,
    )
    if summary.get("report"):
        show_summary(f"QA report: {summary['report']}", data={})
    if summary.get("report_error"):
        error_console.print(f"[yellow]QA report not written:[/yellow] {summary['report_error']}")
    if review_below is not None:
        show_review_list(summary, review_below)
    if summary.get("not_logged"):
        error_console.print(f"[yellow]not logged to MLflow:[/yellow] {summary['not_logged']}")
    raise typer.Exit(int(code))
