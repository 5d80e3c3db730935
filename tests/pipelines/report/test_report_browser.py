"""The QA report in a real browser: headless Chromium (Debian's ``chromium``, installed by
``scripts/ensure_chromium.sh``) opens it with no console error, shows every file, and takes the
README's screenshot (saved to ``docs/images/qa_report.png`` with ``SEGFLOW_SAVE_SCREENSHOTS=1``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from data_contracts import InferenceOptions
from pipelines.ingest import ingest
from pipelines.services.batch import run_batch
from pipelines.services.qa_report import model_facts, write_qa_report
from pipelines.synthetic import make_raster_dataset
from pipelines.synthetic.models import oracle_model

CHROMIUM = shutil.which("chromium")
SCREENSHOT = Path(__file__).parents[3] / "docs" / "images" / "qa_report.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Chromium is not installed (bash scripts/ensure_chromium.sh)"
    ),
]


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _shifted_batch(root: Path) -> tuple[Path, list[str]]:
    """A raster batch of in-distribution scenes, one at 3× the pixel size and one at 6× the
    intensities; its report's path and case ids."""
    train = make_raster_dataset(root / "train", n_tiles=4, size=(96, 96), seed=21)
    model = oracle_model(ingest(train, workdir=root / "work"), patch=(32, 32))
    inputs = Path(shutil.copytree(train / "images", root / "inputs"))
    coarse = make_raster_dataset(root / "coarse", n_tiles=1, size=(96, 96), pixel_size=1.5)
    shutil.copy(next((coarse / "images").iterdir()), inputs / "coarse.tif")
    with rasterio.open(inputs / "tile_000.tif") as source:
        profile = {**source.profile, "dtype": "float32"}
        brighter = source.read().astype(np.float32) * 6
    with rasterio.open(inputs / "bright.tif", "w", **profile) as out:
        out.write(brighter)
    report = run_batch(inputs, model, root / "out")
    facts = model_facts(model, "models:/buildings@champion", None)
    path = write_qa_report(
        report, root / "out", model=model, model_info=facts, options=InferenceOptions()
    )
    return path, [item.case_id for item in report.items]


def test_report_opens_without_console_errors_and_shows_every_file(tmp_path: Path) -> None:
    report, cases = _shifted_batch(tmp_path)
    url = report.resolve().as_uri()
    shot = tmp_path / "report.png"
    taken = _chromium(
        tmp_path / "profile-1", f"--screenshot={shot}", "--window-size=1100,1500", url
    )
    console = [line for line in taken.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert shot.is_file() and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    dom = _chromium(tmp_path / "profile-2", "--dump-dom", url).stdout
    for case in cases:
        assert f'id="row-{case}"' in dom
    assert "resolution" in dom and "intensity" in dom  # the drifted files' flags
    if os.environ.get("SEGFLOW_SAVE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOT)
