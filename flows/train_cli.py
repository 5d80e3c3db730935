"""``segflow train``: the command-line face of
:func:`pipelines.services.training.train_from_manifest`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from data_contracts import ConfigError, TrainConfig, TrainingPlan
from flows.console import shorten, show_detail, show_summary


def load_train_yaml(path: Path | None) -> dict[str, Any]:
    """Top-level TrainConfig fields of a YAML config (the ``plan:`` section is read separately).

    Raises:
        ConfigError: unreadable file or not a mapping.
    """
    if path is None:
        return {}
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot be read as YAML ({error})", path=path) from error
    if not isinstance(document, dict):
        raise ConfigError("must hold a mapping of training options", path=path)
    return {key: value for key, value in document.items() if key != "plan"}


def build_config(
    yaml_fields: dict[str, Any], flags: dict[str, Any], source: Path | None
) -> TrainConfig:
    """Merge YAML fields and explicit flags (flags win) into a validated TrainConfig."""
    merged = {**yaml_fields, **{key: value for key, value in flags.items() if value is not None}}
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"training option {field!r}: {first['msg']}", path=source) from error


def plan_rich_table(plan: TrainingPlan | Sequence[Sequence[str]]) -> Table:
    """The plan (or its ``plan_table`` rows) as a two-column table (overrides marked with *)."""
    from pipelines.plan import plan_table

    rows = plan_table(plan) if isinstance(plan, TrainingPlan) else plan
    table = Table(title="Training plan", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for field, value in rows:
        table.add_row(field, value)
    return table


def train(
    manifest: Annotated[Path, typer.Argument(help="Manifest JSON written by `segflow ingest`.")],
    model: Annotated[
        str | None,
        typer.Option(
            help="auto (default): the plan chooses the network for the data, the budget and "
            "this device (a short probe times a few steps; the rule is in plan.json). Or a "
            "model name: unet, dynunet, fcn8s, deeplabv3, pspnet… (see docs/models.md), or "
            "maskrcnn on instance labels."
        ),
    ] = None,
    model_option: Annotated[
        list[str] | None,
        typer.Option(
            "--model-option",
            help="Model option key=value, repeatable, e.g. --model-option base_features=16.",
        ),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            help="Loss name or sum, e.g. dice+ce, dice+focal, 0.5*dice+ce (Mask R-CNN has its "
            "own). Default: dice+ce; in 2D with nnU-Net's Dice (summed over the batch, the "
            "background class left out), in 3D per patch with the background."
        ),
    ] = None,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            help="Wall-clock budget of the whole command, in minutes: the network, the "
            "validation cadence and the epochs are fitted to it, and training stops early "
            "enough for the final evaluation and registering."
        ),
    ] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Epochs at most.")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Training batches per epoch.")] = None,
    register: Annotated[
        str | None,
        typer.Option(
            help="Register the model under this name (alias challenger; champion if it beats the current one)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML file: training options at top level, plan overrides under `plan:`."
        ),
    ] = None,
    plan: Annotated[
        list[str] | None,
        typer.Option(
            "--plan", help="Plan override field=value, repeatable, e.g. --plan patch_size=96,96,64."
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="Weights to keep and register: auto (default: the final ones when "
            "--max-minutes sets the epochs, where the learning rate decays to 0 at the end, "
            "as nnU-Net; the best validation's when early stopping runs), final or best."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random generator.")] = None,
    deterministic: Annotated[
        bool | None, typer.Option(help="Deterministic algorithms (slower on GPU).")
    ] = None,
    accelerator: Annotated[
        str | None, typer.Option(help="auto (CUDA when present), cpu or gpu.")
    ] = None,
    strategy: Annotated[str | None, typer.Option(help="auto, or ddp for several GPUs.")] = None,
    devices: Annotated[
        str | None,
        typer.Option(help="How many GPUs (or CPU processes) to train on, or auto: all of them."),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            help="Share held out for validation: of the labelled cases, or with fewer than 5 "
            "cases of each case's end (rows, or the S axis of volumes)."
        ),
    ] = 0.2,
    folds: Annotated[
        int | None, typer.Option(help="k-fold cross-validation: number of folds (with --fold).")
    ] = None,
    fold: Annotated[int, typer.Option(help="Which fold validates (0-based), with --folds.")] = 0,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoints, cache and plan (default: <manifest>.train/); a rerun resumes from it."
        ),
    ] = None,
) -> None:
    """Train a segmentation model on a manifest: plan from the data, train, validate, track in
    MLflow, and optionally register (champion only when it beats the current one).

    The plan also chooses the post-processing that segflow segment applies to the model's
    predictions: when every training case holds one foreground object (a tumour, a spinal cord,
    an organ), decide the foreground as one region (background probability below 0.5) and keep
    only its largest component; --plan 'postprocess={}' drops it.

    Examples:

        segflow train brats.json --max-minutes 20 --register brats

        segflow train brats.json --model unet --loss dice+focal --max-minutes 20

        segflow train tiles.json --model fcn8s --plan patch_size=256,256 --config train.yaml

        segflow train nuclei.json --model maskrcnn --max-minutes 20 --register nuclei-mrcnn
    """
    from flows.dataset_flows import run_flow, train_flow
    from pipelines.ingest import read_manifest
    from pipelines.plan import load_overrides_yaml, parse_override_flags

    flags: dict[str, Any] = {
        "model": model,
        "loss": loss,
        "max_minutes": max_minutes,
        "max_epochs": max_epochs,
        "steps_per_epoch": steps_per_epoch,
        "weights": weights,
        "seed": seed,
        "deterministic": deterministic,
        "accelerator": accelerator,
        "strategy": strategy,
        "devices": int(devices) if devices and devices.isdigit() else devices,
        "budget_started_at": process_started_at(),
    }
    yaml_fields = load_train_yaml(config)
    if model_option:
        flags["model_options"] = {
            **yaml_fields.get("model_options", {}),
            **parse_override_flags(model_option),
        }
    settings = build_config(yaml_fields, flags, config)
    overrides = {
        **(load_overrides_yaml(config) if config else {}),
        **parse_override_flags(plan or []),
    }
    read_manifest(manifest)  # fail fast on a missing or invalid manifest, before Prefect starts
    if settings.model != "maskrcnn":  # …and on an unknown loss (Mask R-CNN has its own)
        from seg_models.losses import loss_terms

        loss_terms(settings.loss)
    from flows.console_train import training_stage
    from pipelines.train.budget import deadline_of

    workdir = workdir or manifest.with_name(f"{manifest.stem}.train")
    title = f"train {settings.model}"
    with training_stage(title, "checking files, planning", deadline=deadline_of(settings)):
        summary, code = run_flow(
            train_flow,
            manifest=manifest,
            config=settings,
            register=register,
            plan_overrides=overrides,
            workdir=workdir,
            val_fraction=val_fraction,
            folds=folds,
            fold=fold,
            progress_bar=True,
        )
    show_detail(plan_rich_table(summary["plan"]))
    show_summary(result_table(summary), *result_lines(summary), data=summary)
    raise typer.Exit(int(code))


def result_table(summary: Mapping[str, Any]) -> Table:
    """Validation scores per case and class (the case shortened to fit 80 columns)."""
    cases = len(summary["validation_cases"])
    plural = "" if cases == 1 else "s"
    where = f"{cases} validation case{plural}"
    if summary.get("validation_region"):
        where = f"the held-out end of {cases} case{plural}"
    table = Table(title=f"Training result ({summary['metric']} on {where})")
    table.add_column("case", no_wrap=True, max_width=24)
    table.add_column("class", no_wrap=True, max_width=16)
    table.add_column("scores")
    for case_id, per_class in summary["per_case"].items():
        for class_name, metrics in per_class.items():
            scores = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            table.add_row(shorten(case_id, 24), class_name, scores)
    return table


def result_lines(summary: Mapping[str, Any]) -> list[Text]:
    """Score, epochs, MLflow run, model and registry decision: one short line each."""
    lines = [
        f"score {summary['score']:.3f} · epochs {summary['epochs']} "
        f"(stopped by {summary['stopped_by']}) · {summary.get('weights', 'best')} weights kept",
        f"MLflow run {summary['run_id']}",
        f"model {summary['model_uri']}",
    ]
    if summary.get("foreground_cut"):
        lines.insert(1, str(summary["foreground_cut"]))
    registration = summary["registration"]
    if registration is not None:
        lines.append(
            f"registered {registration['name']} v{registration['version']}: "
            f"{registration['reason']}"
        )
    return [Text(line) for line in lines]


def process_started_at() -> float:
    """When the user's ``segflow`` process started (Unix time): ``--max-minutes`` counts from
    there (in a warm process's child, the command's start, which it sent)."""
    from flows.warm_server import STARTED_AT_VARIABLE

    pid, _, sent = os.environ.get(STARTED_AT_VARIABLE, "").partition(":")
    if sent and pid == str(os.getpid()):
        return float(sent)
    import psutil

    return float(psutil.Process().create_time())
