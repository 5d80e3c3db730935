"""``segflow evaluate``: pairing by case id, physical HD95, nodata, instance scores, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import typer
from PIL import Image
from rasterio.transform import Affine
from typer.testing import CliRunner

from data_contracts import MissingFileError, PairingError
from flows.evaluate_cli import evaluate
from flows.exit_codes import ExitCode
from pipelines.evaluate import case_id, evaluate_outputs, pair_files, report_json

SPACING = (2.0, 1.0, 0.5)  # mm along the array axes (x, y, z)


def write_nifti(path: Path, labels: np.ndarray, spacing: tuple[float, ...] = SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-30.0, 12.0, 4.0)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), path)
    return path


def write_geotiff(path: Path, labels: np.ndarray, nodata: float | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": labels.shape[1],
        "height": labels.shape[0],
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32631",
        "transform": Affine(10, 0, 500_000, 0, -5, 4_000_000),  # 10 m columns, 5 m rows
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(labels.astype(np.uint8), 1)
    return path


def write_png(path: Path, labels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8)).save(path)
    return path


def cube(offset: int = 0, shape: tuple[int, int, int] = (32, 32, 32)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[8 + offset : 18 + offset, 8:18, 8:18] = 1
    labels[24:28, 24:28, 24:28] = 2
    return labels


def nuclei(split: bool = False) -> np.ndarray:
    """25 square objects on a 5 × 5 grid; ``split`` cuts the first one in two."""
    labels = np.zeros((80, 80), np.uint8)
    for k in range(25):
        row, col = divmod(k, 5)
        labels[row * 16 + 2 : row * 16 + 14, col * 16 + 2 : col * 16 + 14] = k + 1
    if split:
        labels[2:14, 8:14][labels[2:14, 8:14] == 1] = 26
    return labels


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("brain_0000.nii.gz", "brain_0000"),
        ("brain.nii", "brain"),
        ("tile_7.tif", "tile_7"),
        ("scene_2020.tiff", "scene_2020"),
        ("cells_01.png", "cells_01"),
    ],
)
def test_case_id_is_the_full_stem(name: str, expected: str) -> None:
    """The case id drops the extension only, as ``segflow segment`` names its outputs."""
    assert case_id(name) == expected


def test_pairing_by_case_id_skips_sidecars(tmp_path: Path) -> None:
    labels = cube()
    sidecars = ("a_prob.nii.gz", ".a.part.nii")
    predictions = ("a_0000.nii.gz", "b.nii.gz", "only_pred.nii.gz", "d.nii", "d_0000.nii")
    for name in (*predictions, "e_0000.nii", "e_0001.nii", "f.nii", "f.nii.gz", *sidecars):
        write_nifti(tmp_path / "pred" / name, labels)
    (tmp_path / "pred" / "a.lineage.json").write_text("{}")
    (tmp_path / "pred" / "a.geojson").write_text("{}")
    for name in ("a.nii.gz", "b.nii.gz", "d.nii.gz", "e.nii.gz", "f.nii", "only_truth.nii.gz"):
        write_nifti(tmp_path / "truth" / name, labels)
    pairing = pair_files(tmp_path / "pred", tmp_path / "truth")
    # a_0000 finds no truth of its own name: it pairs with a after dropping its channel suffix.
    # d pairs by its full stem, so d_0000 (another case) is left unpaired.
    assert {case: (p.name, t.name) for case, (p, t) in pairing.pairs.items()} == {
        "a": ("a_0000.nii.gz", "a.nii.gz"),
        "b": ("b.nii.gz", "b.nii.gz"),
        "d": ("d.nii", "d.nii.gz"),
    }
    assert [Path(p).name for p in pairing.unpaired_prediction] == ["d_0000.nii", "only_pred.nii.gz"]
    assert [Path(p).name for p in pairing.unpaired_truth] == ["only_truth.nii.gz"]
    # Two predictions claim truth e after dropping their suffixes; f.nii and f.nii.gz share a
    # stem: both are reported, not guessed.
    assert list(pairing.duplicates) == ["e", "f"]
    assert "e_0000.nii" in pairing.duplicates["e"] and "e_0001.nii" in pairing.duplicates["e"]
    assert "f.nii.gz" in pairing.duplicates["f"]
    # Two single files pair whatever their names.
    single = pair_files(tmp_path / "pred" / "only_pred.nii.gz", tmp_path / "truth" / "a.nii.gz")
    assert list(single.pairs) == ["a"]


def test_nothing_paired_or_missing_is_fatal(tmp_path: Path) -> None:
    write_nifti(tmp_path / "pred" / "x.nii.gz", cube())
    write_nifti(tmp_path / "truth" / "y.nii.gz", cube())
    with pytest.raises(PairingError, match="no prediction pairs"):
        evaluate_outputs(tmp_path / "pred", tmp_path / "truth")
    with pytest.raises(MissingFileError):
        evaluate_outputs(tmp_path / "nowhere", tmp_path / "truth")


def test_hd95_of_a_shifted_cube_is_in_millimetres(tmp_path: Path) -> None:
    # The prediction is the truth cube moved 2 voxels along x (2 mm voxels). Its far face, a
    # fifth of its surface voxels, lies 2 × 2 mm = 4 mm from the truth's surface; the rest is
    # nearer, so the 95th percentile is 4 mm in both directions (2 if the spacing were ignored,
    # 1 if its axes were reversed). Overlap 8 of 10 slices: Dice 0.8, IoU 800 / 1200.
    write_nifti(tmp_path / "pred" / "c.nii.gz", cube(offset=2))
    write_nifti(tmp_path / "truth" / "c.nii.gz", cube())
    report = evaluate_outputs(tmp_path / "pred", tmp_path / "truth")
    result = report["cases"]["c"]
    assert result["mode"] == "semantic" and result["units"] == "mm"
    assert result["spacing"] == list(SPACING)
    assert result["classes"]["1"] == pytest.approx({"dice": 0.8, "iou": 2 / 3, "hd95": 4.0})
    assert result["classes"]["2"] == pytest.approx({"dice": 1.0, "iou": 1.0, "hd95": 0.0})
    assert report["summary"]["overall"] == pytest.approx(
        {"dice": 0.9, "iou": 5 / 6, "hd95": 2.0, "cases": 2}
    )


def test_geotiff_nodata_is_ignored_and_hd95_is_in_crs_units(tmp_path: Path) -> None:
    truth = np.zeros((32, 32), np.uint8)
    truth[8:16, 8:16] = 1
    truth[0:4] = 255  # truth nodata
    truth[24:28, 0:8] = 2  # hidden by the prediction's nodata below
    pred = np.zeros((32, 32), np.uint8)
    pred[8:16, 9:17] = 1  # one column (10 m) to the right
    pred[0:4, 20:32] = 1  # wrong, but where the truth has no data
    pred[24:28, 0:8] = 254
    write_geotiff(tmp_path / "pred" / "t.tif", pred, nodata=254)
    write_geotiff(tmp_path / "truth" / "t.tif", truth, nodata=255)
    result = evaluate_outputs(tmp_path / "pred", tmp_path / "truth")["cases"]["t"]
    assert list(result["classes"]) == ["1"]
    assert result["classes"]["1"] == pytest.approx({"dice": 56 / 64, "iou": 56 / 72, "hd95": 10.0})
    assert result["spacing"] == [5.0, 10.0] and result["units"] == "metre"
    assert result["ignored_pixels"] == 4 * 32 + 4 * 8


def test_png_instance_maps_score_dsb(tmp_path: Path) -> None:
    write_png(tmp_path / "truth" / "n.png", nuclei())
    write_png(tmp_path / "same" / "n.png", nuclei())
    write_png(tmp_path / "split" / "n.png", nuclei(split=True))
    same = evaluate_outputs(tmp_path / "same", tmp_path / "truth")["cases"]["n"]
    assert same["mode"] == "instance"  # 25 distinct values in a 2D map
    assert same["instance"] == pytest.approx(
        {
            "dsb2018": 1.0,
            "ap_50_95": 1.0,
            "f1_50": 1.0,
            "objects_prediction": 25,
            "objects_truth": 25,
        }
    )
    split = evaluate_outputs(tmp_path / "split", tmp_path / "truth")["cases"]["n"]
    assert split["instance"]["dsb2018"] < 1.0 and split["instance"]["objects_prediction"] == 26
    forced = evaluate_outputs(tmp_path / "same", tmp_path / "truth", instance=False)
    assert forced["cases"]["n"]["mode"] == "semantic" and len(forced["cases"]["n"]["classes"]) == 25


def _mismatched_batch(root: Path) -> tuple[Path, Path]:
    write_nifti(root / "pred" / "good.nii.gz", cube())
    write_nifti(root / "truth" / "good.nii.gz", cube())
    write_nifti(root / "pred" / "bad.nii.gz", cube(shape=(32, 32, 30)))
    write_nifti(root / "truth" / "bad.nii.gz", cube())
    return root / "pred", root / "truth"


def test_shape_mismatch_fails_one_case_only(tmp_path: Path) -> None:
    prediction, truth = _mismatched_batch(tmp_path)
    report = evaluate_outputs(prediction, truth)
    assert list(report["cases"]) == ["good"] and list(report["failed"]) == ["bad"]
    message = report["failed"]["bad"]
    assert str(prediction / "bad.nii.gz") in message and str(truth / "bad.nii.gz") in message
    assert "(32, 32, 30)" in message


def test_infinite_hd95_is_null_in_json(tmp_path: Path) -> None:
    pred = cube()
    pred[0:2, 0:2, 0:2] = 3  # a class the truth lacks
    write_nifti(tmp_path / "pred" / "c.nii.gz", pred)
    write_nifti(tmp_path / "truth" / "c.nii.gz", cube())
    report = evaluate_outputs(tmp_path / "pred", tmp_path / "truth")
    assert report["cases"]["c"]["classes"]["3"]["hd95"] == np.inf
    document = json.loads(report_json(report))
    assert document["cases"]["c"]["classes"]["3"] == {"dice": 0.0, "iou": 0.0, "hd95": None}


def test_cli_writes_metrics_and_exits_partial(tmp_path: Path) -> None:
    prediction, truth = _mismatched_batch(tmp_path)
    app = typer.Typer()
    app.command()(evaluate)
    runner = CliRunner()
    out = tmp_path / "reports" / "metrics.json"
    result = runner.invoke(app, [str(prediction), str(truth), "--out", str(out)])
    assert result.exit_code == ExitCode.PARTIAL, result.output
    assert "good" in result.output and "bad" in result.output
    document = json.loads(out.read_text())
    assert set(document) == {"cases", "summary", "failed", "unpaired"}
    assert document["cases"]["good"]["classes"]["1"]["dice"] == 1.0
    assert list(document["failed"]) == ["bad"]
    help_text = runner.invoke(app, ["--help"]).output
    assert "segflow evaluate" in help_text and "--instance" in help_text
