"""A stop signal is a clean stop: SIGTERM or SIGINT during ``segflow segment`` ends it within
10 s at the next batch of windows or file; finished files are in the ledger, nothing partial is
left, the message says how to resume, the exit status is 143 or 130, and the same command
resumes. Runs the installed ``segflow`` command (against the module's Prefect API, so that its
start-up does not count against the 10 s)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from data_contracts import get_settings
from pipelines.ingest import ingest
from pipelines.synthetic import make_raster_dataset, make_volume_dataset
from pipelines.synthetic.models import oracle_model
from tests.oracle_registry import register_oracle

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

SEGFLOW = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "segflow"
_CRS = "EPSG:32633"


@pytest.fixture(autouse=True)
def _module_home(in_mlflow_home: None) -> None:
    """Every test of this module uses the module's MLflow home."""


def _champion(data: Path, name: str, root: Path, mlflow_home: Path, patch: tuple[int, ...]) -> str:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("SEGFLOW_HOME", str(mlflow_home))
        get_settings.cache_clear()
        model = oracle_model(ingest(data, workdir=root / f"work-{name}"), patch=patch)
        return register_oracle(model, name)


def _environment() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}


def _rows(out: Path) -> dict[str, str]:
    path = out / ".segflow" / "ledger.sqlite"
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(path, timeout=1) as connection:
            return dict(connection.execute("SELECT case_id, status FROM cases").fetchall())
    except sqlite3.Error:
        return {}


def _stop_when(
    command: list[str], out: Path, ready: str, signum: int, wait: float = 0.0
) -> tuple[int, str, float]:
    """Start ``command``; ``wait`` seconds after the ledger has a row in status ``ready``, send
    ``signum``; return (exit status, output, seconds from the signal to the exit)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_environment(), text=True
    )
    deadline = time.monotonic() + 240
    while ready not in _rows(out).values():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the batch never reached the state to interrupt"
        time.sleep(0.1)
    time.sleep(wait)
    sent = time.monotonic()
    process.send_signal(signum)
    output, _ = process.communicate(timeout=30)
    return process.returncode, output, time.monotonic() - sent


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.rglob("*") if ".part" in p.name or ".work" in p.name]


def test_sigterm_during_a_4096_raster(mlflow_home: Path, tmp_path: Path) -> None:
    data = make_raster_dataset(tmp_path / "data", n_tiles=2, size=(48, 48), bands=1, crs=_CRS)
    model = _champion(data, "stop-raster", tmp_path, mlflow_home, (16, 16))
    scene = tmp_path / "in" / "scene_4096.tif"
    scene.parent.mkdir()
    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": 4096, "height": 4096, "count": 1, "dtype": "uint16"}
    profile.update(crs=_CRS, transform=from_origin(500_000, 4_600_000, 0.5, 0.5), tiled=True)
    with rasterio.open(scene, "w", **profile) as dataset:
        dataset.write(rng.integers(500, 4000, (1, 4096, 4096), dtype="uint16"))
    out = tmp_path / "out"
    command = [str(SEGFLOW), "segment", str(scene.parent), "--model", model, "--out", str(out)]

    code, output, seconds = _stop_when(command, out, "running", signal.SIGTERM, wait=1.0)

    assert code == 143, output
    assert seconds <= 10, f"took {seconds:.1f} s after SIGTERM: {output}"
    assert "run the same command again" in " ".join(output.split())
    assert not _leftovers(out) and not (out / "scene_4096.tif").exists()
    assert _rows(out) == {"scene_4096": "running"}  # the next run redoes it


def test_sigint_during_a_batch_of_volumes_then_resume(mlflow_home: Path, tmp_path: Path) -> None:
    data = make_volume_dataset(
        tmp_path / "data",
        n_cases=10,
        shape=(96, 90, 64),
        n_channels=1,
        n_classes=1,
        layout="images_labels",
        list_cases=False,
    )
    model = _champion(data, "stop-volumes", tmp_path, mlflow_home, (8, 8, 8))
    out = tmp_path / "out"
    command = [str(SEGFLOW), "segment", str(data / "images"), "--model", model, "--out", str(out)]
    command += ["--max-workers", "1"]

    code, output, seconds = _stop_when(command, out, "done", signal.SIGINT)

    assert code == 130, output
    assert seconds <= 10, f"took {seconds:.1f} s after SIGINT"
    assert "run the same command again" in " ".join(output.split())
    assert not _leftovers(out)
    rows = _rows(out)
    done = sorted(case for case, status in rows.items() if status == "done")
    assert 1 <= len(done) < 10
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{case}.nii.gz" for case in done]
    finished = {case: (out / f"{case}.nii.gz").stat().st_mtime_ns for case in done}

    again = subprocess.run(command, capture_output=True, text=True, env=_environment())

    assert again.returncode == 0, again.stdout + again.stderr
    assert set(_rows(out).values()) == {"done"} and len(_rows(out)) == 10
    assert {case: (out / f"{case}.nii.gz").stat().st_mtime_ns for case in done} == finished
