"""The accuracy benchmark's user path: hold-out folders, commands, written-mask scoring.

The pieces that can fail without training are tested on tiny synthetic sets: the folder of
linked training cases ingests to exactly those cases, a mask off its label's grid is refused,
written masks score as computed by hand, and a failed command raises with its log. One slow
test runs the whole path (``segflow ingest``, ``train``, ``segment`` as fresh processes) on a
few 64² PNGs with a 12-second budget and the baseline skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine

from benchmarks import accuracy
from benchmarks.accuracy_commands import (
    CommandFailedError,
    SegflowCommands,
    command_environment,
)
from benchmarks.accuracy_inputs import link_cases
from benchmarks.accuracy_scoring import (
    check_same_grid,
    read_label_grid,
    score_written_masks,
    whole_tumour_dice,
    written_mask,
)
from benchmarks.baselines import DEFAULT_BUDGET_MINUTES, METRICS, split_cases
from data_contracts import Case, DatasetManifest, IngestOptions
from data_contracts.errors import (
    DatasetLayoutError,
    GeometryMismatchError,
    MissingFileError,
    UsageError,
)
from pipelines.ingest import ingest
from pipelines.metrics import dsb2018_score
from pipelines.synthetic import make_image_dataset, make_raster_dataset, make_volume_dataset


def _ingest(root: Path, options: IngestOptions | None = None) -> DatasetManifest:
    manifest = ingest(root, options=options, workdir=root.parent / f"{root.name}-work")
    assert not manifest.rejected, manifest.rejected
    return manifest


# --- the folders of linked cases ----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["images_labels", "nnunet", "png"])
def test_linked_folder_ingests_to_exactly_the_training_cases(tmp_path: Path, layout: str) -> None:
    source = tmp_path / "dataset"
    options = IngestOptions()
    if layout == "png":
        make_image_dataset(source, n_images=4)
        options = IngestOptions(label_kind="instance")
    else:
        make_volume_dataset(source, n_cases=4, n_test=1, layout=layout)  # type: ignore[arg-type]
    full = _ingest(source, options)
    train, val = split_cases(full.labelled_cases, n_val=1, seed=0)

    linked = link_cases(source, train, tmp_path / "train" / "dataset")
    again = _ingest(linked, options)

    assert sorted(c.case_id for c in again.cases) == [c.case_id for c in train]
    assert again.name == full.name and again.channel_names == full.channel_names
    assert [len(c.channels) for c in again.cases] == [len(c.channels) for c in train]
    files = [path for path in linked.rglob("*") if not path.is_dir()]
    assert all(path.is_symlink() for path in files if path.name != "dataset.json")
    for case in again.cases:
        for record in (*case.channels, case.label):
            assert record is not None
            assert Path(record.path).resolve().is_relative_to(source.resolve())
    if (source / "dataset.json").is_file():
        meta = json.loads((linked / "dataset.json").read_text())
        assert meta.get("numCases", meta.get("numTraining")) == len(train)
        listed = json.dumps(meta.get("cases", []))
        assert val[0].case_id not in listed


def test_linking_refuses_files_outside_the_dataset_and_an_existing_target(tmp_path: Path) -> None:
    source = make_raster_dataset(
        tmp_path / "tiles", n_tiles=2, size=(32, 32), vector_labels=True, raster_labels=False
    )
    manifest = _ingest(source)  # vector labels are rasterised into the work folder
    with pytest.raises(DatasetLayoutError, match="outside the dataset"):
        link_cases(source, manifest.cases, tmp_path / "linked")
    (tmp_path / "taken").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        link_cases(source, manifest.cases, tmp_path / "taken")
    with pytest.raises(UsageError, match="no case"):
        link_cases(source, (), tmp_path / "empty")


# --- written masks: grids and scores ------------------------------------------------------------


@pytest.fixture
def volumes(tmp_path: Path) -> tuple[Case, ...]:
    root = make_volume_dataset(tmp_path / "volumes", n_cases=2, n_classes=2, layout="images_labels")
    return _ingest(root).cases


def _save_like(label: Path, values: np.ndarray, target: Path, affine: Any = None) -> None:
    """Save ``values`` as a NIfTI mask with ``label``'s affine (or ``affine``)."""
    if affine is None:
        affine = read_label_grid(label, "volume").affine
    target.parent.mkdir(parents=True, exist_ok=True)
    mask = nib.Nifti1Image(values.astype(np.uint8), affine)  # type: ignore[no-untyped-call]
    nib.save(mask, target)


def test_written_volume_masks_score_per_case(tmp_path: Path, volumes: tuple[Case, ...]) -> None:
    out = tmp_path / "masks"
    perfect, empty = volumes
    assert perfect.label is not None and empty.label is not None
    truth = read_label_grid(Path(perfect.label.path), "volume").values
    _save_like(Path(perfect.label.path), truth, written_mask(out, perfect))
    shape = read_label_grid(Path(empty.label.path), "volume").values.shape
    _save_like(Path(empty.label.path), np.zeros(shape), written_mask(out, empty))

    scores = score_written_masks(out, volumes, whole_tumour_dice)

    assert scores == {perfect.case_id: 1.0, empty.case_id: 0.0}
    assert written_mask(out, perfect).name == f"{perfect.case_id}.nii.gz"


def test_a_mask_off_the_label_grid_or_missing_fails_loudly(
    tmp_path: Path, volumes: tuple[Case, ...]
) -> None:
    case = volumes[0]
    assert case.label is not None
    label = Path(case.label.path)
    truth = read_label_grid(label, "volume")
    shifted = truth.affine.copy()  # type: ignore[union-attr]
    shifted[:3, 3] += 0.5
    _save_like(label, truth.values, written_mask(tmp_path, case), affine=shifted)
    with pytest.raises(GeometryMismatchError, match="affine"):
        score_written_masks(tmp_path, [case], whole_tumour_dice)
    _save_like(label, truth.values[:-1], written_mask(tmp_path, case))
    with pytest.raises(GeometryMismatchError, match="shape"):
        score_written_masks(tmp_path, [case], whole_tumour_dice)
    with pytest.raises(MissingFileError):
        score_written_masks(tmp_path / "nothing", [case], whole_tumour_dice)


def test_raster_masks_must_keep_the_transform_and_crs(tmp_path: Path) -> None:
    root = make_raster_dataset(tmp_path / "tiles", n_tiles=1, size=(32, 32), bands=1)
    case = _ingest(root).cases[0]
    assert case.label is not None
    with rasterio.open(case.label.path) as source:
        profile, values = source.profile, source.read(1)
    out = tmp_path / "masks"
    out.mkdir()
    with rasterio.open(written_mask(out, case), "w", **profile) as mask:
        mask.write(values, 1)
    assert score_written_masks(out, [case], whole_tumour_dice) == {case.case_id: 1.0}
    truth = read_label_grid(Path(case.label.path), "raster")
    moved = read_label_grid(written_mask(out, case), "raster")
    moved = type(moved)(
        moved.values,
        transform=tuple(profile["transform"] @ Affine.translation(1, 0))[:6],
        crs=moved.crs,
    )
    with pytest.raises(GeometryMismatchError, match="transform"):
        check_same_grid(moved, truth, mask_path=out, case_id=case.case_id)
    no_crs = type(moved)(truth.values, transform=truth.transform, crs=None)
    with pytest.raises(GeometryMismatchError, match="CRS"):
        check_same_grid(no_crs, truth, mask_path=out, case_id=case.case_id)


def test_instance_pngs_score_with_the_dsb_metric(tmp_path: Path) -> None:
    root = make_image_dataset(tmp_path / "cells", n_images=1)
    case = _ingest(root, IngestOptions(label_kind="instance")).cases[0]
    assert case.label is not None
    truth = np.asarray(Image.open(case.label.path))
    out = tmp_path / "masks"
    out.mkdir()
    relabelled = np.where(truth > 0, truth.max() + 1 - truth, 0).astype(np.uint16)  # ids differ
    Image.fromarray(relabelled).save(written_mask(out, case))
    assert score_written_masks(out, [case], dsb2018_score) == {case.case_id: 1.0}


# --- commands, tasks and options ----------------------------------------------------------------


def test_a_failed_command_prints_its_log_tail_and_raises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = SegflowCommands(tmp_path / "home", tmp_path / "logs")
    with pytest.raises(CommandFailedError, match="exited with"):
        commands.run("ingest nothing", "ingest", tmp_path / "missing", "--out", tmp_path / "m.json")
    printed = capsys.readouterr().out
    assert "[ingest nothing] exit code" in printed and "missing" in printed
    assert (tmp_path / "logs" / "ingest_nothing.log").is_file() and not commands.runs


def test_commands_get_their_own_home_and_default_servers(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "SEGFLOW_HOME": "/elsewhere", "SEGFLOW_API": "per-command"}
    base |= {"MLFLOW_TRACKING_URI": "http://x", "PREFECT_API_URL": "http://y"}
    environment = command_environment(tmp_path, base)
    assert environment["SEGFLOW_HOME"] == str(tmp_path) and environment["PATH"] == "/bin"
    assert not {"SEGFLOW_API", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"} & set(environment)


def test_read_plan_copies_the_train_folder_plan(tmp_path: Path) -> None:
    manifest = tmp_path / "train.json"
    assert accuracy.read_plan(manifest) == {}
    (tmp_path / "train.train").mkdir()
    (tmp_path / "train.train" / "plan.json").write_text('{"network": {"name": "unet"}}')
    assert accuracy.read_plan(manifest) == {"network": {"name": "unet"}}


def test_tasks_pass_only_what_a_user_passes() -> None:
    assert set(accuracy.TASKS) == set(METRICS) == set(DEFAULT_BUDGET_MINUTES)
    for name, task in accuracy.TASKS.items():
        assert task.metric == METRICS[name]
        assert task.budget_minutes == DEFAULT_BUDGET_MINUTES[name]
        assert all(option.startswith("--") for option in task.ingest_options[::2])
    assert accuracy.TASKS["spinalcord"].budget_minutes == 10.0


def test_spinalcord_holds_out_one_contrast(shared_data: Path, tmp_path: Path) -> None:
    manifest = ingest(shared_data / "sct_spinalcord_mri", workdir=tmp_path)
    train, val = split_cases(manifest.labelled_cases, n_val=1, seed=0)
    assert [case.case_id for case in val] == ["t2"] and len(train) == 3


def test_also_needs_the_baseline() -> None:
    with pytest.raises(SystemExit):
        accuracy.main(["--task", "nuclei", "--skip-baseline", "--also", "otsu-watershed"])


# --- the whole user path ------------------------------------------------------------------------


@pytest.mark.slow
def test_user_path_end_to_end_on_tiny_pngs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_image_dataset(tmp_path / "data" / "cells", n_images=5, size=(64, 64))
    task = accuracy.Task("cells", ("--label-kind", "instance"), "dsb2018", dsb2018_score, 1, 0.2)
    monkeypatch.setitem(accuracy.TASKS, "cells", task)
    recorded: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(accuracy, "record", lambda name, m, command: recorded.append((name, m)))
    workdir = tmp_path / "work"
    argv = ["--task", "cells", "--data", str(tmp_path / "data"), "--skip-baseline"]

    metrics = accuracy.main([*argv, "--workdir", str(workdir)])

    assert recorded == [("accuracy_cells", metrics)]
    ours = metrics["segflow"]
    assert metrics["ratio"] is None and metrics["baseline"] is None
    assert (
        list(ours["per_case"]) == metrics["validation_cases"]
        and len(metrics["validation_cases"]) == 1
    )
    assert 0.0 <= ours["score"] <= 1.0 and metrics["training_cases"] == 4
    assert ours["train_command_seconds"] > 0 and ours["plan"]["kind"] == "image"
    assert ours["model"] == "models:/accuracy-cells@champion"
    phases = {"ingest all", "ingest train", "train", "ingest held-out", "segment"}
    assert set(ours["commands"]) == phases
    assert all((workdir / "logs" / f"{p.replace(' ', '_')}.log").is_file() for p in phases)
    assert (workdir / "masks" / f"{metrics['validation_cases'][0]}.png").is_file()
    state = workdir / "segflow_home" / "server" / "state.json"
    assert not state.is_file() or not _alive(json.loads(state.read_text()).get("pid"))


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
