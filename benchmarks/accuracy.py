"""Accuracy of segflow vs a pinned plain baseline on the real sets, same split, same budget.

For one task, in one run: ingest the real dataset, split it with the baselines' own
``split_cases`` (same seed, same held-out cases), train segflow for the budget, then train the
pinned baseline (``benchmarks/baselines``) for the same wall-clock budget with the same torch
threads, score both on the held-out cases with the task's metric, and record both scores and
their ratio (segflow / baseline; the floor is 1.0) in the results file.

Run: ``.venv/bin/python -m benchmarks.accuracy --task buildings`` (tasks: brats, nuclei,
buildings, landcover; budgets 20/20/10/10 minutes unless ``--budget`` says otherwise).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.baselines import DEFAULT_BUDGET_MINUTES, METRICS, run_baseline
from benchmarks.baselines.common import configure_torch, split_cases
from benchmarks.baselines.landcover_rf import miou
from benchmarks.results import record
from data_contracts import IngestOptions, TrainConfig
from pipelines.ingest import ingest
from pipelines.metrics import dsb2018_score, region_dice, semantic_scores
from pipelines.services.training import train_from_manifest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
Scorer = Callable[[np.ndarray, np.ndarray], float]


def _whole_tumour(prediction: np.ndarray, truth: np.ndarray) -> float:
    return region_dice(prediction, truth, (1, 2, 3, 4), ignore_value=-1)


def _building_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    return semantic_scores(prediction, truth, [1], ignore_value=-1, class_names=["building"])[
        "building"
    ]["iou"]


@dataclass(frozen=True)
class Task:
    """How segflow trains on one benchmark task, and how its output is scored."""

    dataset: str
    ingest: IngestOptions
    scorer: Scorer
    model: str = "unet"
    model_options: dict[str, Any] = field(default_factory=lambda: {"base_features": 16, "depth": 4})
    plan: dict[str, Any] = field(default_factory=dict)
    steps_per_epoch: int = 25
    #: Held-out cases. One image of nuclei is too noisy a score (a hard histology image scores
    #: 0.1 where the set averages 0.3), so that set holds out a fifth of its 40 images.
    n_val: int = 1
    #: Validate (and keep the best checkpoint) every this many epochs.
    val_every: int = 4


TASKS: dict[str, Task] = {
    "brats": Task("brats2015_deepmedic", IngestOptions(), _whole_tumour, steps_per_epoch=40),
    "nuclei": Task(
        "dsb2018_nuclei",
        IngestOptions(label_kind="instance"),
        dsb2018_score,
        # Fluorescence and bright-field images in one batch: instance norm (nnU-Net's DynUNet)
        # normalises each image on its own, where batch-norm running statistics mix them.
        model="dynunet",
        model_options={"filters": [16, 32, 64, 128, 256]},
        plan={"patch_size": [256, 256]},
        n_val=8,
    ),
    "buildings": Task(
        "spacenet4_atlanta_buildings",
        IngestOptions(label_suffix="_mask"),
        _building_iou,
        plan={"patch_size": [256, 256]},
    ),
    "landcover": Task(
        "nc_landsat7_landcover",
        IngestOptions(ignore_value=0),
        miou,
        # One training tile, classes told apart mostly by their spectra: a shallow U-Net (small
        # receptive field) has less room to memorise the tile's layout than a 4-level one.
        model_options={"base_features": 32, "depth": 2},
        plan={"patch_size": [128, 128]},
    ),
}


def run_segflow(
    task: Task, manifest: Any, val_ids: list[str], budget: float, seed: int, workdir: Path
) -> dict[str, Any]:
    """Train segflow within ``budget`` minutes on the training cases; score the held-out ones."""
    config = TrainConfig(
        model=task.model,
        model_options=task.model_options,
        loss="dice+ce",
        max_minutes=budget,
        max_epochs=100_000,
        steps_per_epoch=task.steps_per_epoch,
        seed=seed,
        patience=1_000,
        val_every=task.val_every,
    )
    started = time.monotonic()
    report = train_from_manifest(
        manifest,
        config,
        workdir,
        plan_overrides=task.plan,
        val_case_ids=val_ids,
        keep_predictions=True,
        progress_bar=False,
    )
    per_case = {
        case: float(task.scorer(pred, truth))
        for case, (pred, truth) in report.evaluation.predictions.items()
    }
    return {
        "score": float(np.mean(list(per_case.values()))),
        "per_case": per_case,
        "seconds": round(time.monotonic() - started, 1),
        "epochs": report.result.epochs,
        "stopped_by": report.result.stopped_by,
        "model": task.model,
        "model_options": task.model_options,
        "patch_size": list(report.plan.patch_size),
        "batch_size": report.batch_size,
        "mlflow_run": report.run_id,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument(
        "--budget", type=float, default=None, help="minutes per side (default: the issue's budget)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--n-val", type=int, default=None, help="held-out cases (default: the task's)"
    )
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument(
        "--also",
        nargs="*",
        default=[],
        help="extra baseline methods to report (e.g. otsu-watershed)",
    )
    args = parser.parse_args()
    task = TASKS[args.task]
    budget = args.budget or DEFAULT_BUDGET_MINUTES[args.task]
    threads = configure_torch(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix=f"segflow-accuracy-{args.task}-"))
    manifest = ingest(args.data / task.dataset, options=task.ingest, workdir=workdir / "ingest")
    n_val = args.n_val or task.n_val
    train_cases, val_cases = split_cases(manifest.labelled_cases, n_val=n_val, seed=args.seed)
    val_ids = [case.case_id for case in val_cases]
    ours = run_segflow(task, manifest, val_ids, budget, args.seed, workdir / "segflow")
    configure_torch(args.seed)
    baseline = run_baseline(
        args.task, train_cases, val_cases, budget_minutes=budget, seed=args.seed
    )
    extras = {
        method: run_baseline(
            args.task, train_cases, val_cases, budget_minutes=budget, seed=args.seed, method=method
        ).score
        for method in args.also
    }
    ratio = ours["score"] / baseline.score if baseline.score > 0 else float("inf")
    print(
        f"{args.task}: segflow {ours['score']:.4f} vs {baseline.method} {baseline.score:.4f} ({METRICS[args.task]}) "
        f"-> ratio {ratio:.3f} (floor 1.0); budget {budget:g} min each, {threads} threads, held out {val_ids}"
    )
    record(
        f"accuracy_{args.task}",
        {
            "metric": METRICS[args.task],
            "budget_minutes": budget,
            "threads": threads,
            "validation_cases": val_ids,
            "segflow": ours,
            "baseline": {
                "method": baseline.method,
                "score": baseline.score,
                "per_case": baseline.per_case,
                "train_seconds": baseline.train_seconds,
            },
            "other_baselines": extras,
            "ratio": round(ratio, 4),
        },
        command=f"python -m benchmarks.accuracy --task {args.task} --budget {budget:g} "
        f"--seed {args.seed} --n-val {n_val}",
    )


if __name__ == "__main__":
    main()
