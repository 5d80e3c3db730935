"""Pinned plain baselines of the accuracy benchmark: split, budget, and a smoke run of each.

Each smoke run trains on tiny seeded synthetic data for about a second and checks that it
stops on budget and returns a score in [0, 1]: first with shrunk patches, then with the pinned
sizes (96³ patches, 256² crops) through ``run_baseline``; the pinned Mask R-CNN is marked slow.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from benchmarks.baselines import (
    DEFAULT_BUDGET_MINUTES,
    METHODS,
    BaselineResult,
    Budget,
    brats_unet3d,
    buildings_unet2d,
    landcover_rf,
    nuclei,
    run_baseline,
    spinalcord_unet3d,
    split_cases,
)
from benchmarks.baselines.common import (
    UNet2DConfig,
    flip_rotate,
    percentile_scale,
    random_crop,
    train_until,
)
from data_contracts import Case, DatasetManifest, IngestOptions, UsageError
from pipelines.ingest import ingest
from pipelines.synthetic import make_image_dataset, make_raster_dataset, make_volume_dataset

BUDGET_MINUTES = 1.0 / 60  # one second
SLACK_SECONDS = 30.0  # one step may overrun the budget; generous for a loaded 2-core machine


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep the smoke runs on one core (the baselines ask torch for os.cpu_count())."""
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    yield
    torch.set_num_threads(1)


def _manifest(root: Path, options: IngestOptions | None = None) -> DatasetManifest:
    manifest = ingest(root, options=options, workdir=root.parent / f"{root.name}-work")
    assert not manifest.rejected, manifest.rejected
    return manifest


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, ...]:
    root = tmp_path_factory.mktemp("brats") / "volumes"
    make_volume_dataset(root, n_cases=2, shape=(32, 28, 16), n_classes=4, layout="images_labels")
    return _manifest(root).cases


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, ...]:
    root = tmp_path_factory.mktemp("nuclei") / "cells"
    make_image_dataset(root, n_images=3, size=(64, 64), rgb=True)
    return _manifest(root, IngestOptions(label_kind="instance")).cases


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, ...]:
    root = tmp_path_factory.mktemp("buildings") / "tiles"
    make_raster_dataset(root, n_tiles=2, size=(64, 64), bands=1, n_classes=1)
    return _manifest(root).cases


@pytest.fixture(scope="module")
def landsat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, ...]:
    root = tmp_path_factory.mktemp("landcover") / "landsat"
    make_raster_dataset(root, n_tiles=2, size=(48, 48), bands=6, dtype="uint8", n_classes=3)
    return _manifest(root, IngestOptions(ignore_value=0)).cases


def _check(result: BaselineResult, task: str, method: str, budget_minutes: float) -> None:
    assert (result.task, result.method) == (task, method)
    assert 0.0 <= result.score <= 1.0
    assert result.per_case and all(0.0 <= s <= 1.0 for s in result.per_case.values())
    assert result.score == pytest.approx(np.mean(list(result.per_case.values())))
    assert 0.0 <= result.train_seconds <= 60 * budget_minutes + SLACK_SECONDS


# --- split and budget ---------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_order_free(cells: tuple[Case, ...]) -> None:
    train, val = split_cases(cells, n_val=1, seed=3)
    again = split_cases(tuple(reversed(cells)), n_val=1, seed=3)
    assert (train, val) == again
    assert len(val) == 1 and len(train) == len(cells) - 1
    assert {c.case_id for c in train}.isdisjoint(c.case_id for c in val)
    assert [c.case_id for c in train] == sorted(c.case_id for c in train)


@pytest.mark.parametrize("n_val", [0, 3, -1])
def test_split_refuses_impossible_holdouts(cells: tuple[Case, ...], n_val: int) -> None:
    with pytest.raises(UsageError, match="cannot hold out"):
        split_cases(cells, n_val=n_val)


def test_budget_expires_and_training_stops_on_it() -> None:
    assert Budget(0).expired()
    assert not Budget(1).expired()
    with pytest.raises(UsageError):
        Budget(-1)

    def step() -> float:
        time.sleep(0.02)
        return 1.0

    log = train_until(Budget(0.1 / 60), step)
    assert log.steps >= 1 and 0.1 <= log.seconds < 0.1 + 0.5
    assert log.summary()["last_loss"] == 1.0


def test_array_helpers() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(1, 1000, (2, 20, 30)).astype(np.float32)
    valid = np.ones((20, 30), bool)
    valid[0] = False
    scaled = percentile_scale(image, valid)
    assert scaled.dtype == np.float32 and scaled.min() >= 0 and scaled.max() <= 1
    assert (scaled[:, 0] == 0).all()
    crop, label = random_crop(rng, image, np.ones((20, 30), np.int64), 24)
    assert crop.shape == (2, 24, 24) and label.shape == (24, 24) and label[20:].sum() == 0
    turned, turned_label = flip_rotate(rng, crop, label)
    assert turned.shape == crop.shape and turned_label.sum() == label.sum()


def test_run_baseline_refuses_unknown_task_and_method(cells: tuple[Case, ...]) -> None:
    with pytest.raises(UsageError, match="unknown task"):
        run_baseline("roads", cells, cells, budget_minutes=0)
    with pytest.raises(UsageError, match="unknown nuclei baseline"):
        run_baseline("nuclei", cells, cells, budget_minutes=0, method="yolo")
    assert set(METHODS) == set(DEFAULT_BUDGET_MINUTES)


# --- smoke runs of every baseline ---------------------------------------------------------------


def test_brats_unet3d_trains_stops_and_scores(volumes: tuple[Case, ...]) -> None:
    train, val = split_cases(volumes)
    config = brats_unet3d.UNet3DConfig(patch=(32, 32, 16))
    result = brats_unet3d.run(train, val, budget_minutes=BUDGET_MINUTES, config=config)
    _check(result, "brats", "monai-unet3d-dicece-96", BUDGET_MINUTES)
    assert result.metric == "whole_tumour_dice" and result.details["steps"] >= 1


@pytest.mark.parametrize(
    ("method", "config"),
    [
        ("monai-unet2d-3class", UNet2DConfig(in_channels=3, out_channels=3, crop=64, batch_size=2)),
        ("otsu-watershed", None),
        ("maskrcnn-r50-scratch", nuclei.MaskRCNNConfig(crop=64, batch_size=1, min_size=64)),
    ],
)
def test_nuclei_baselines_train_stop_and_score(
    cells: tuple[Case, ...], method: str, config: object
) -> None:
    train, val = split_cases(cells)
    result = nuclei.run(
        train,
        val,
        budget_minutes=BUDGET_MINUTES,
        method=method,
        config=config,  # type: ignore[arg-type]
    )
    _check(result, "nuclei", method, BUDGET_MINUTES)
    assert result.metric == "dsb2018"
    assert (result.details["steps"] >= 1) == (method != "otsu-watershed")


def test_otsu_watershed_finds_bright_and_dark_blobs() -> None:
    image = np.full((3, 40, 40), 0.1, np.float32)
    image[:, 5:15, 5:15] = image[:, 25:35, 22:32] = 0.9
    truth = np.zeros((40, 40), np.int32)
    truth[5:15, 5:15], truth[25:35, 22:32] = 1, 2
    for picture in (image, 1.0 - image):  # fluorescence, then bright field
        assert nuclei.otsu_watershed(picture).max() == 2


def test_buildings_unet2d_trains_stops_and_scores(tiles: tuple[Case, ...]) -> None:
    train, val = split_cases(tiles)
    config = UNet2DConfig(in_channels=1, out_channels=2, crop=64, batch_size=2)
    result = buildings_unet2d.run(train, val, budget_minutes=BUDGET_MINUTES, config=config)
    _check(result, "buildings", "monai-unet2d", BUDGET_MINUTES)
    assert result.metric == "building_iou" and result.details["steps"] >= 1


def test_landcover_rf_fits_once_and_scores(landsat: tuple[Case, ...]) -> None:
    train, val = split_cases(landsat)
    result = run_baseline("landcover", train, val, budget_minutes=BUDGET_MINUTES)
    _check(result, "landcover", "random-forest-multiscale", BUDGET_MINUTES)
    assert result.metric == "miou" and result.details["train_pixels"] > 0


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ([[1, 1, 2, 2]], 1.0),  # perfect
        ([[2, 1, 2, 2]], 1.0),  # the prediction under the ignored pixel does not count
        ([[1, 1, 3, 3]], 0.5),  # class 2 missed; class 3 is absent from the truth, not scored
        ([[2, 2, 1, 2]], 1 / 6),  # class 1: IoU 0; class 2: 1 of 3 pixels
    ],
)
def test_landcover_miou_scores_present_classes_ignoring_zero(
    prediction: list[list[int]], expected: float
) -> None:
    truth = np.array([[0, 1, 2, 2]])
    score = landcover_rf.miou(np.array(prediction), truth)
    assert score == pytest.approx(expected)


# --- the pinned sizes, through the public entry point ------------------------------------------


@pytest.mark.parametrize("task", ["brats", "nuclei", "buildings"])
def test_pinned_baselines_run_through_run_baseline(
    task: str, volumes: tuple[Case, ...], cells: tuple[Case, ...], tiles: tuple[Case, ...]
) -> None:
    cases = {"brats": volumes, "nuclei": cells, "buildings": tiles}[task]
    train, val = split_cases(cases)
    result = run_baseline(task, train, val, budget_minutes=BUDGET_MINUTES)
    _check(result, task, METHODS[task][0], BUDGET_MINUTES)
    assert result.details["steps"] >= 1


@pytest.mark.slow
def test_pinned_maskrcnn_runs_through_run_baseline(cells: tuple[Case, ...]) -> None:
    train, val = split_cases(cells)
    result = run_baseline(
        "nuclei", train, val, budget_minutes=BUDGET_MINUTES, method="maskrcnn-r50-scratch"
    )
    _check(result, "nuclei", "maskrcnn-r50-scratch", BUDGET_MINUTES)


# --- spinal cord: cases on different grids -----------------------------------------------------


@pytest.fixture(scope="module")
def cords(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[Case, ...], tuple[Case, ...]]:
    """Two one-channel training cases on an LAS 0.5 × 0.5 × 3 mm grid, one held-out case on a
    PSR 1 mm grid (as the real set mixes RAS, PSR and LAS, isotropic and 7.5 mm slices)."""
    base = tmp_path_factory.mktemp("spinalcord")
    grids = {
        "train": (("L", "A", "S"), (0.5, 0.5, 3.0), 2),
        "val": (("P", "S", "R"), (1.0,) * 3, 1),
    }
    found = {}
    for name, (axcodes, spacing, n_cases) in grids.items():
        root = make_volume_dataset(
            base / name,
            n_cases=n_cases,
            shape=(32, 28, 12),
            spacing=spacing,
            axcodes=axcodes,
            n_channels=1,
            n_classes=1,
            layout="images_labels",
            seed=len(name),
        )
        found[name] = _manifest(root).cases
    return found["train"], found["val"]


def test_spinalcord_unet3d_predicts_onto_each_label_grid(
    cords: tuple[tuple[Case, ...], tuple[Case, ...]],
) -> None:
    train, val = cords
    config = spinalcord_unet3d.SpinalCordConfig(patch=(32, 32, 32))
    result = spinalcord_unet3d.run(train, val, budget_minutes=BUDGET_MINUTES, config=config)
    _check(result, "spinalcord", METHODS["spinalcord"][0], BUDGET_MINUTES)
    assert result.metric == "cord_dice" and result.details["steps"] >= 1
    common = spinalcord_unet3d.load_case(val[0], config)["image"]
    assert common.shape[1:] == (12, 32, 28)  # PSR 1 mm brought to RAS 1 mm
    model = spinalcord_unet3d.build_model().eval()
    for case in (*train, *val):
        assert case.label is not None
        label_shape = nib.load(case.label.path).shape  # type: ignore[attr-defined]
        assert spinalcord_unet3d.segment(model, case, config).shape == label_shape


def test_pinned_spinalcord_baseline_runs_through_run_baseline(
    cords: tuple[tuple[Case, ...], tuple[Case, ...]],
) -> None:
    train, val = cords
    result = run_baseline("spinalcord", train, val, budget_minutes=BUDGET_MINUTES)
    _check(result, "spinalcord", METHODS["spinalcord"][0], BUDGET_MINUTES)
    assert result.details["config"]["patch"] == (64, 64, 64)
