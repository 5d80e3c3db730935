"""Does data loading starve training? Step time with the real loader vs tensors in memory.

Builds segflow's real training data path for a dataset (ingest → plan → cached MONAI datasets →
DataLoader with random patch sampling), then times ``--steps`` optimiser steps of the same
network twice in one run: (a) pulling each batch from the real loader, (b) from batches that
were materialised in memory beforehand. The ratio (a)/(b) should stay ≤ 1.1.

Run: ``.venv/bin/python -m benchmarks.loader_speed --data ../shared/data/brats2015_deepmedic``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.results import record
from data_contracts import IngestOptions, TrainConfig
from pipelines.ingest import ingest
from pipelines.preprocess.datasets import build_datasets, split_cases
from pipelines.train import SegmentationModule, make_loaders, seed_everything
from pipelines.train.prepare import plan_for
from pipelines.train.route import spec_for


def _step(
    module: SegmentationModule, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]
) -> None:
    optimizer.zero_grad()
    loss = module.loss_fn(module(batch["image"]), batch["label"].long())
    loss.backward()
    optimizer.step()


def _timed_steps(
    module: SegmentationModule, optimizer: torch.optim.Optimizer, batches: Any, steps: int
) -> list[float]:
    times: list[float] = []
    iterator = iter(batches)
    for _ in range(steps):
        started = time.perf_counter()
        _step(module, optimizer, next(iterator))
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/data/brats2015_deepmedic",
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument(
        "--patch", type=int, nargs="+", default=None, help="override the plan's patch size"
    )
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    seed_everything(0)
    workdir = Path(tempfile.mkdtemp(prefix="segflow-loader-"))
    manifest = ingest(args.data, options=IngestOptions(), workdir=workdir / "ingest")
    config = TrainConfig(
        model="unet",
        model_options={"base_features": 16, "depth": 4},
        accelerator="cpu",
        steps_per_epoch=args.steps + 2,
        num_workers=args.workers,
    )
    plan = plan_for(manifest, config, {"patch_size": args.patch} if args.patch else None)
    train_set, val_set = build_datasets(
        *split_cases(manifest), plan, cache_dir=workdir / "cache", num_workers=args.workers
    )
    module = SegmentationModule(spec_for(plan, config).model_dump(), roi_size=plan.patch_size)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    loader, _ = make_loaders(train_set, val_set, config, plan.batch_size)
    warm = iter(loader)
    _step(module, optimizer, next(warm))  # warm-up: caches filled, kernels chosen
    real = _timed_steps(module, optimizer, loader, args.steps)
    in_memory_batches = [batch for _, batch in zip(range(args.steps), loader, strict=False)]
    memory = _timed_steps(module, optimizer, in_memory_batches, args.steps)
    ratio = statistics.median(real) / statistics.median(memory)
    print(
        f"patch {plan.patch_size} batch {plan.batch_size}: real loader {statistics.median(real):.3f} s/step, "
        f"in memory {statistics.median(memory):.3f} s/step -> ratio {ratio:.3f} (bound 1.1)"
    )
    record(
        "loader_starvation",
        {
            "dataset": manifest.name,
            "patch_size": list(plan.patch_size),
            "batch_size": plan.batch_size,
            "steps": args.steps,
            "real_s_per_step": round(statistics.median(real), 4),
            "in_memory_s_per_step": round(statistics.median(memory), 4),
            "ratio": round(ratio, 3),
        },
        command=f"python -m benchmarks.loader_speed --data {args.data} --steps {args.steps}",
    )


if __name__ == "__main__":
    main()
