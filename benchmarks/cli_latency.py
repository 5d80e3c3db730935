"""C1–C4: what a command costs beyond its own work, measured on the user's path.

Each figure is the median of fresh processes of the installed ``segflow`` command with default
options, in a new ``SEGFLOW_HOME`` where nothing runs beforehand: the first command that does
work starts the warm process (:mod:`flows.warm_server`) and the shared Prefect API; its time
is recorded apart as ``first_command_s``. C4 is measured first, before any of them runs (help
never starts them), and again once they run (``c4_warm_max_s``). The work itself is measured
in the same run, in-process, with the same inputs:

- **C1** ``segflow ingest`` of 40 PNG images: wall time − ingest work ≤ 2 s.
- **C2** ``segflow segment`` again over a finished 60-raster folder: ≤ 3 s in all.
- **C3** ``segflow segment`` of one 512² raster with a small registered U-Net: wall time ≤ 2 s
  + model time (the in-process ``segment_case`` of that file with the model loaded).
- **C4** ``segflow --help`` and every subcommand's ``--help``: ≤ 1 s each.

Run: ``.venv/bin/python -m benchmarks.cli_latency`` (about 3 minutes on 2 cores; ``--runs 3``
for a quick look, ``--no-record`` to leave ``benchmarks/results.json`` alone).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.results import record

SEGFLOW = Path(sys.executable).with_name("segflow")
LIMITS_S = {"c1_fixed_s": 2.0, "c2_wall_s": 3.0, "c3_fixed_s": 2.0, "c4_max_s": 1.0}
SUBCOMMANDS = ("ingest", "train", "segment", "evaluate", "export", "serve", "server", "demo")
MODEL_NAME = "cli-bench"


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user with nothing configured but ``SEGFLOW_HOME``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SEGFLOW_"))}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["SEGFLOW_HOME"] = str(home)
    return env


def timed_command(args: Sequence[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> float:
    """Seconds one fresh ``segflow`` process takes; fails loudly on an unexpected exit code."""
    started = time.perf_counter()
    done = subprocess.run([str(SEGFLOW), *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in ok:
        raise SystemExit(
            f"segflow {' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}"
        )
    return seconds


def median_of(runs: int, measure: Callable[[int], float]) -> float:
    return statistics.median(measure(index) for index in range(runs))


def in_process_home(home: Path) -> None:
    """Point this process at ``home`` too (for the in-process measurements and the setup)."""
    from data_contracts import apply_environment, get_settings

    for variable in ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(variable, None)
    os.environ["SEGFLOW_HOME"] = str(home)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    get_settings.cache_clear()
    apply_environment()


def register_small_unet(root: Path) -> str:
    """A seeded 8-16-32 U-Net with the plan of a small raster dataset, registered as champion."""
    import torch

    import seg_models
    from pipelines.ingest import ingest
    from pipelines.services.model_registry import log_segmentation_model, register_model
    from pipelines.services.tracking import training_run
    from pipelines.synthetic import make_raster_dataset
    from pipelines.synthetic.models import oracle_model

    source = make_raster_dataset(root / "train", n_tiles=4, size=(64, 64), dtype="uint8", seed=7)
    oracle = oracle_model(ingest(source, workdir=root / "train-ingest"))
    torch.manual_seed(0)
    spec = oracle.spec.model_copy(
        update={"name": "unet", "options": {"base_features": 8, "depth": 3}}
    )
    with training_run(oracle.plan.dataset_name, system_metrics=False):
        uri = log_segmentation_model(
            seg_models.build_model(spec).eval(),
            spec,
            oracle.plan,
            class_names=oracle.class_names,
            channel_names=oracle.channel_names,
        )
        register_model(uri, MODEL_NAME, score=0.5, validation_key="0" * 64)
    return f"models:/{MODEL_NAME}@champion"


def measure_c1(root: Path, env: dict[str, str], runs: int) -> dict[str, float]:
    from pipelines.ingest import ingest
    from pipelines.synthetic import make_image_dataset

    source = make_image_dataset(root / "pngs", n_images=40, size=(64, 64), seed=1)
    first = timed_command(["ingest", str(source), "--out", str(root / "m-first.json")], env)
    wall = median_of(
        runs,
        lambda i: timed_command(["ingest", str(source), "--out", str(root / f"m{i}.json")], env),
    )

    def work(index: int) -> float:
        started = time.perf_counter()
        ingest(source, workdir=root / f"work-{index}")
        return time.perf_counter() - started

    work(-1)  # imports and caches, as a running command has them
    work_s = median_of(runs, work)
    return {
        "first_command_s": first,
        "c1_wall_s": wall,
        "c1_work_s": work_s,
        "c1_fixed_s": wall - work_s,
    }


def measure_c2(root: Path, env: dict[str, str], model: str, runs: int) -> dict[str, float]:
    from pipelines.synthetic import make_raster_dataset

    source = make_raster_dataset(root / "archive", n_tiles=60, size=(64, 64), dtype="uint8", seed=3)
    images = source / "images"
    out = root / "archive-out"
    first = timed_command(["segment", str(images), "--model", model, "--out", str(out)], env)
    wall = median_of(
        runs,
        lambda _: timed_command(["segment", str(images), "--model", model, "--out", str(out)], env),
    )
    return {"c2_first_run_s": first, "c2_wall_s": wall}


def measure_c3(root: Path, env: dict[str, str], model: str, runs: int) -> dict[str, float]:
    from data_contracts import InferenceOptions
    from pipelines.infer.inputs import discover_inputs
    from pipelines.infer.run import segment_case
    from pipelines.services.model_loading import load_model
    from pipelines.synthetic import make_raster_dataset

    source = make_raster_dataset(root / "big", n_tiles=1, size=(512, 512), dtype="uint8", seed=5)
    tif = source / "images" / "tile_000.tif"
    wall = median_of(
        runs,
        lambda i: timed_command(
            ["segment", str(tif), "--model", model, "--out", str(root / f"c3-{i}")], env
        ),
    )
    loaded = load_model(model)
    case = discover_inputs(tif, workdir=root / "c3-scratch").cases[0]

    def model_time(index: int) -> float:
        started = time.perf_counter()
        segment_case(loaded, case, root / f"c3-inproc-{index}", InferenceOptions())
        return time.perf_counter() - started

    model_time(-1)
    model_s = median_of(runs, model_time)
    return {"c3_wall_s": wall, "c3_model_s": model_s, "c3_fixed_s": wall - model_s}


def measure_c4(env: dict[str, str], runs: int) -> dict[str, Any]:
    def helped(name: str) -> Callable[[int], float]:
        return lambda _: timed_command([*([name] if name else []), "--help"], env)

    seconds = {name: median_of(runs, helped(name)) for name in ("", *SUBCOMMANDS)}
    slowest = max(seconds, key=lambda name: seconds[name])
    return {
        "c4_max_s": seconds[slowest],
        "c4_slowest": f"segflow {slowest} --help".replace("  ", " "),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per figure (median)")
    parser.add_argument("--no-record", action="store_true", help="leave results.json alone")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="segflow-cli-latency-"))
    home = root / "home"
    env = user_env(home)
    try:
        in_process_home(home)
        metrics: dict[str, Any] = {}
        metrics.update(measure_c4(env, args.runs))
        metrics.update(measure_c1(root, env, args.runs))
        warm = measure_c4(env, args.runs)
        metrics.update(c4_warm_max_s=warm["c4_max_s"], c4_warm_slowest=warm["c4_slowest"])
        model = register_small_unet(root)
        metrics.update(measure_c2(root, env, model, args.runs))
        metrics.update(measure_c3(root, env, model, args.runs))
    finally:
        subprocess.run([str(SEGFLOW), "server", "stop"], env=env, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    metrics = {k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()}
    metrics["limits_s"] = LIMITS_S
    metrics["within_limits"] = {name: metrics[name] <= limit for name, limit in LIMITS_S.items()}
    metrics["runs"] = args.runs
    for name, value in metrics.items():
        print(f"{name:<18} {value}")
    if not args.no_record:
        record(
            "cli_latency", metrics, command=f"python -m benchmarks.cli_latency --runs {args.runs}"
        )


if __name__ == "__main__":
    main()
