"""``segflow train`` with no ``--model`` on data of every kind, then ``segflow segment`` with the
registered champion: the plan's network trains, registers and segments whatever the data.

Each dataset stresses a different rule: anisotropic two-channel volumes (3D depth from a small
patch), instance labels (the interior/boundary route), and a single raster scene (validated on
its held-out rows).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from data_contracts import IngestOptions
from flows.cli import main
from flows.exit_codes import ExitCode
from pipelines.ingest import ingest, write_manifest
from pipelines.synthetic import make_image_dataset, make_raster_dataset, make_volume_dataset

Maker = Callable[[Path], Path]

DATASETS: dict[str, tuple[Maker, dict[str, object]]] = {
    "volumes": (
        lambda root: make_volume_dataset(
            root, n_cases=3, shape=(40, 36, 12), spacing=(0.8, 0.8, 4.0), n_channels=2, seed=1
        ),
        {},
    ),
    "nuclei": (
        lambda root: make_image_dataset(root, n_images=5, size=(72, 80), seed=2),
        {"label_kind": "instance"},
    ),
    "one-scene": (lambda root: make_raster_dataset(root, n_tiles=1, size=(96, 80), seed=3), {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_the_plans_network_trains_registers_and_segments(name: str, tmp_path: Path) -> None:
    make, options = DATASETS[name]
    data = make(tmp_path / "data")
    cases = ingest(data, options=IngestOptions(**options), workdir=tmp_path / "ingest")  # type: ignore[arg-type]
    manifest = write_manifest(cases, tmp_path / "manifest.json")
    work = tmp_path / "train"
    argv = ["train", str(manifest), "--max-minutes", "0.5", "--register", f"auto-{name}"]
    assert main([*argv, "--workdir", str(work)]) == ExitCode.OK
    network = json.loads((work / "plan.json").read_text())["network"]
    assert network["model"] == "dynunet" and network["rule"]
    out = tmp_path / "masks"
    model = f"models:/auto-{name}@champion"
    assert main(["segment", str(manifest), "--model", model, "--out", str(out)]) == ExitCode.OK
    ledger = json.loads((out / ".segflow" / "ledger.json").read_text())
    done = [entry for entry in ledger["cases"] if entry["status"] == "done"]
    assert len(done) == len(cases.cases)
