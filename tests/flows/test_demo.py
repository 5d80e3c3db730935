"""The demo (the README's first command), reduced: every file it reports exists and its Dice
is what the masks and labels say."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio

from data_contracts import get_settings
from flows.cli import main
from pipelines.ingest import read_manifest

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def _read(path: Path) -> np.ndarray:
    if path.name.endswith(".nii.gz"):
        return np.asarray(nib.load(path).dataobj)  # type: ignore[attr-defined]
    with rasterio.open(path) as dataset:
        return dataset.read(1)


def _mean_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the foreground values of either map; mask nodata (255) is ignored."""
    valid = prediction != 255
    prediction, truth = prediction[valid], truth[valid]
    scores = []
    for value in sorted((set(np.unique(truth)) | set(np.unique(prediction))) - {0, 255}):
        a, b = prediction == value, truth == value
        if a.sum() + b.sum():
            scores.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    return float(np.mean(scores))


def test_reduced_demo_writes_what_it_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes-scale", "0.15"]) == 0
    printed = capsys.readouterr().out
    assert "Dice per case" in printed and "mlflow ui --backend-store-uri" in printed
    assert Path(get_settings().tracking_uri.removeprefix("sqlite:///")).is_file()
    for kind, suffix in (("volumes", ".nii.gz"), ("rasters", ".tif")):
        manifest = read_manifest(out / f"{kind}_manifest.json")
        metrics = json.loads((out / f"{kind}_metrics.json").read_text())
        assert set(metrics["cases"]) == {case.case_id for case in manifest.cases}
        for case in manifest.cases:
            assert case.label is not None
            mask = out / "masks" / kind / f"{case.case_id}{suffix}"
            assert mask.is_file()
            reported = np.mean(
                [scores["dice"] for scores in metrics["cases"][case.case_id]["classes"].values()]
            )
            computed = _mean_dice(_read(mask), _read(Path(case.label.path)))
            assert reported == pytest.approx(computed, abs=1e-6), (kind, case.case_id)
            assert f"{reported:.3f}" in printed
