"""segflow's Mask R-CNN route on the nuclei set, sized for a CPU (reported, no floor).

The issue asks for Mask R-CNN's own DSB-2018 score beside the U-Net + boundary route, "with a
lighter backbone and right-sized inputs so it is usable on CPU". This trains segflow's Mask R-CNN
(``seg_models`` factory: ResNet-18 FPN, ``min_size = max_size = 256``, up to 300 detections, the
training images' channel statistics) with :class:`pipelines.train.maskrcnn.MaskRCNNModule` on
random 256² chips for the budget, then segments each held-out image whole with segflow's tiled
inference (:func:`pipelines.infer.tiled_instances.segment_instances_tiled`: 256² tiles overlapping
by 32 px, detections merged across tile edges) and scores it. Same data, split (8 held-out
images, seed 0) and budget as ``benchmarks.accuracy --task nuclei``.

Run: ``.venv/bin/python -m benchmarks.maskrcnn_route`` (``--budget`` minutes, default 20).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.accuracy import SHARED_DATA, TASKS
from benchmarks.baselines.common import configure_torch, split_cases
from benchmarks.baselines.nuclei import load_case
from benchmarks.results import record
from data_contracts import Case, ModelSpec
from pipelines.infer.tiled_instances import TileConfig, segment_instances_tiled
from pipelines.ingest import ingest
from pipelines.metrics import dsb2018_score
from pipelines.train.maskrcnn import InstanceChips, MaskRCNNModule, collate_instances
from seg_models import predict_instances

CHIP = 256
BATCH_SIZE = 2
BACKBONE = "resnet18"
TILES = TileConfig(tile=CHIP, overlap=32, batch_size=2, score_threshold=0.5)


def _spec(images: Sequence[np.ndarray]) -> ModelSpec:
    pixels = np.concatenate([image.reshape(image.shape[0], -1) for image in images], axis=1)
    return ModelSpec(
        name="maskrcnn",
        task="instance",
        in_channels=3,
        num_classes=2,
        options={
            "backbone": BACKBONE,
            "min_size": CHIP,
            "max_size": CHIP,
            "detections_per_image": 300,
            "image_mean": [float(value) for value in pixels.mean(axis=1)],
            "image_std": [float(max(value, 1e-3)) for value in pixels.std(axis=1)],
        },
    )


def run_segflow_maskrcnn(
    train_cases: Sequence[Case], val_cases: Sequence[Case], budget_minutes: float, seed: int
) -> dict[str, Any]:
    """Train within ``budget_minutes`` on ``train_cases``; DSB-2018 score of ``val_cases``."""
    L.seed_everything(seed, workers=True)
    train = [load_case(case) for case in train_cases]
    spec = _spec([image for image, _ in train])
    module = MaskRCNNModule(spec.model_dump(mode="json"), max_epochs=1000)
    chips = InstanceChips(
        [image for image, _ in train], [labels for _, labels in train], chip_size=CHIP, seed=seed
    )
    loader = DataLoader(chips, batch_size=BATCH_SIZE, shuffle=True, collate_fn=collate_instances)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=-1,
        max_time=timedelta(minutes=budget_minutes),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    started = time.monotonic()
    trainer.fit(module, train_dataloaders=loader)
    train_seconds = time.monotonic() - started

    network = module.network.eval()
    per_case = {}
    for case in val_cases:
        image, truth = load_case(case)

        def detect(batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            return predict_instances(network, batch, spec)

        found = segment_instances_tiled(torch.from_numpy(image), detect, TILES)
        per_case[case.case_id] = float(dsb2018_score(found.labels, truth))
    return {
        "method": f"segflow-maskrcnn-{BACKBONE}-{CHIP}",
        "score": float(np.mean(list(per_case.values()))),
        "per_case": per_case,
        "train_seconds": round(train_seconds, 1),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=20.0, help="training minutes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task = TASKS["nuclei"]
    threads = configure_torch(args.seed)
    workdir = tempfile.mkdtemp(prefix="segflow-maskrcnn-")
    manifest = ingest(SHARED_DATA / task.dataset, options=task.ingest, workdir=workdir)
    train, val = split_cases(manifest.labelled_cases, n_val=task.n_val, seed=args.seed)
    result = run_segflow_maskrcnn(train, val, args.budget, args.seed)
    print(
        f"nuclei: {result['method']} DSB-2018 {result['score']:.4f} after {result['steps']} steps "
        f"({args.budget:g} min, {threads} threads; no floor)"
    )
    record(
        "accuracy_nuclei_maskrcnn",
        {"metric": "dsb2018", "budget_minutes": args.budget, "threads": threads, **result},
        command=f"python -m benchmarks.maskrcnn_route --budget {args.budget:g} --seed {args.seed}",
    )


if __name__ == "__main__":
    main()
