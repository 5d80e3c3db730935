"""Volume and 2D-image inference: inputs, windows, inversion to the source grid, outputs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from data_contracts import (
    Case,
    ChannelCountError,
    DatasetLayoutError,
    DatasetManifest,
    InferenceOptions,
    MissingFileError,
    PostprocessConfig,
    UnsupportedFormatError,
)
from pipelines.infer.in_memory import predict_image, predict_volume
from pipelines.infer.inputs import case_id_of, discover_inputs
from pipelines.infer.run import segment_case
from pipelines.infer.sliding import probability_predictor, sliding_probabilities
from pipelines.ingest import ingest, write_manifest
from pipelines.postprocess.decision import class_indices, foreground_cut
from pipelines.postprocess.labels import postprocess_labels
from pipelines.services.batch import BatchReport, run_batch
from pipelines.synthetic import make_image_dataset, make_volume_dataset, pack_archive
from pipelines.synthetic.models import oracle_model


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetManifest]:
    """Rotated LPS volumes with anisotropic spacing, two channels, three classes."""
    root = tmp_path_factory.mktemp("volumes")
    dataset = make_volume_dataset(root / "data", n_cases=3, rotation_deg=12, n_classes=2)
    manifest = ingest(dataset, workdir=root / "work")
    return dataset, manifest


def _done(report: BatchReport) -> list[str]:
    return [item.case_id for item in report.items if item.status == "done"]


def _failed(report: BatchReport) -> dict[str, str]:
    """Failed case id → ``"ErrorClass: message"``."""
    return {item.case_id: item.error or "" for item in report.items if item.status == "failed"}


def _truth(case: Case) -> np.ndarray:
    assert case.label is not None
    return np.asarray(nib.load(case.label.path).dataobj)  # type: ignore[attr-defined]


def test_case_ids_are_full_stems_unless_channels_are_grouped() -> None:
    assert case_id_of("pat1_0001.nii.gz") == "pat1_0001"
    assert case_id_of("pat1_0001.nii.gz", channel_suffix=True) == "pat1"
    assert case_id_of("scene.tif") == "scene"
    assert case_id_of("a_b_12.png") == "a_b_12"


def test_volume_prediction_lands_in_the_source_grid(volumes: tuple[Path, DatasetManifest]) -> None:
    _, manifest = volumes
    model = oracle_model(manifest)
    for case in manifest.cases:
        prediction = predict_volume(model, [c.path for c in case.channels], keep_probabilities=True)
        truth = _truth(case)
        assert prediction.classes.shape == truth.shape
        assert (prediction.classes == truth).mean() > 0.99
        assert prediction.probabilities is not None
        assert prediction.probabilities.shape == (3, *truth.shape)
        np.testing.assert_allclose(prediction.probabilities.sum(axis=0), 1.0, atol=1e-4)


def test_volume_planned_in_2d_runs_slice_by_slice(volumes: tuple[Path, DatasetManifest]) -> None:
    _, manifest = volumes
    model = oracle_model(manifest, spatial_dims=2)
    case = manifest.cases[0]
    prediction = predict_volume(model, [c.path for c in case.channels])
    assert (prediction.classes == _truth(case)).mean() > 0.99


def test_tta_and_overlap_do_not_move_pixels(volumes: tuple[Path, DatasetManifest]) -> None:
    _, manifest = volumes
    model = oracle_model(manifest)
    case = manifest.cases[1]
    options = InferenceOptions(overlap=0.25, batch_size=2, tta=True)
    prediction = predict_volume(model, [c.path for c in case.channels], options)
    assert (prediction.classes == _truth(case)).mean() > 0.99


def test_blending_matches_monai_and_batching_changes_nothing() -> None:
    from monai.inferers import sliding_window_inference

    from data_contracts import ModelSpec

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1)).eval()
    spec = ModelSpec(name="unet", in_channels=1, num_classes=2, spatial_dims=3)
    image = torch.randn(1, 20, 18, 9)
    with torch.no_grad():
        expected = sliding_window_inference(
            image[None], (8, 8, 8), 1, lambda x: torch.softmax(network(x), 1), 0.5, "gaussian"
        )[0]
    for batch_size, channels_last in ((1, False), (5, True)):
        predictor = probability_predictor(network, spec, channels_last=channels_last)
        options = InferenceOptions(overlap=0.5, batch_size=batch_size, channels_last=channels_last)
        ours = sliding_probabilities(predictor, image, (8, 8, 8), 2, options)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_wrong_channel_count_names_the_file(volumes: tuple[Path, DatasetManifest]) -> None:
    _, manifest = volumes
    model = oracle_model(manifest)
    first = manifest.cases[0].channels[0].path
    with pytest.raises(ChannelCountError, match="expects 2") as raised:
        predict_volume(model, [first])
    assert str(first) in str(raised.value)


def test_inputs_from_folder_archive_manifest_and_file(
    volumes: tuple[Path, DatasetManifest], tmp_path: Path
) -> None:
    dataset, manifest = volumes
    found = discover_inputs(dataset, workdir=tmp_path)  # nnU-Net layout: imagesTr
    assert [c.case_id for c in found.cases] == sorted(c.case_id for c in manifest.cases)
    assert all(len(c.channels) == 2 for c in found.cases)
    assert all(c.channels[0].name.endswith("_0000.nii.gz") for c in found.cases)
    archive = pack_archive(dataset, tmp_path / "cases.zip")
    from_archive = discover_inputs(archive, workdir=tmp_path / "scratch")
    assert [c.case_id for c in from_archive.cases] == [c.case_id for c in found.cases]
    manifest_path = write_manifest(manifest, tmp_path / "manifest.json")
    assert len(discover_inputs(manifest_path, workdir=tmp_path).cases) == len(manifest.cases)
    single = discover_inputs(found.cases[0].channels[0], workdir=tmp_path)
    assert single.cases[0].case_id == f"{found.cases[0].case_id}_0000"  # a file is a case
    grouped = discover_inputs(found.cases[0].channels[0], workdir=tmp_path, channel_suffix=True)
    assert grouped.cases[0].case_id == found.cases[0].case_id
    with pytest.raises(MissingFileError):
        discover_inputs(tmp_path / "nope", workdir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError):
        discover_inputs(tmp_path / "empty", workdir=tmp_path)


def test_segment_writes_masks_in_source_geometry_and_goes_past_bad_cases(
    volumes: tuple[Path, DatasetManifest], tmp_path: Path
) -> None:
    _, manifest = volumes
    model = oracle_model(manifest)
    folder = tmp_path / "in"
    folder.mkdir()
    for case in manifest.cases[:2]:
        for channel in case.channels:
            shutil.copy(channel.path, folder / Path(channel.path).name)
    lone = Path(manifest.cases[2].channels[0].path)
    shutil.copy(lone, folder / "lonely.nii.gz")  # one channel: cannot be segmented
    (folder / "broken_0000.nii.gz").write_bytes(b"not a nifti")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    report = run_batch(folder, model, tmp_path / "out", InferenceOptions(probabilities=True))
    assert sorted(_done(report)) == sorted(c.case_id for c in manifest.cases[:2])
    failed = _failed(report)
    assert set(failed) == {"lonely", "broken"}
    assert failed["lonely"].startswith(f"{ChannelCountError.__name__}: ")
    assert "lonely.nii.gz" in failed["lonely"]
    assert "broken_0000.nii.gz" in failed["broken"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # inputs untouched
    for case in manifest.cases[:2]:
        source: Any = nib.load(case.channels[0].path)
        mask: Any = nib.load(tmp_path / "out" / f"{case.case_id}.nii.gz")
        assert mask.shape == source.shape[:3]
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
        assert mask.get_data_dtype() == np.uint8
        assert (np.asarray(mask.dataobj) == _truth(case)).mean() > 0.99
        assert (tmp_path / "out" / f"{case.case_id}_prob.nii.gz").is_file()
        assert (tmp_path / "out" / f"{case.case_id}.lineage.json").is_file()
    assert not list((tmp_path / "out").glob(".*part*"))


def test_kind_mismatch_is_an_input_error(
    volumes: tuple[Path, DatasetManifest], tmp_path: Path
) -> None:
    _, manifest = volumes
    model = oracle_model(manifest)
    images = make_image_dataset(tmp_path / "images", n_images=1)
    case = discover_inputs(images, workdir=tmp_path).cases[0]
    with pytest.raises(UnsupportedFormatError, match="segments volumes"):
        segment_case(model, case, tmp_path / "out")


def test_instance_images_become_uint16_instance_maps(tmp_path: Path) -> None:
    from data_contracts import IngestOptions
    from pipelines.io.image2d import read_image

    dataset = make_image_dataset(tmp_path / "cells", n_images=2, size=(80, 72))
    manifest = ingest(dataset, options=IngestOptions(label_kind="instance"), workdir=tmp_path / "w")
    model = oracle_model(manifest, patch=(32, 32))
    case = manifest.cases[0]
    prediction = predict_image(model, case.channels[0].path)
    assert prediction.instance and prediction.classes.shape == (80, 72)
    report = run_batch(dataset, model, tmp_path / "out")
    assert not _failed(report) and _done(report)
    written = read_image(tmp_path / "out" / f"{case.case_id}.png")
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, prediction.classes)
    truth = read_image(case.label.path)  # type: ignore[union-attr]
    # The oracle cannot tell a rim from an interior (same intensity): check the foreground only.
    overlap = ((written > 0) & (truth > 0)).sum() / ((written > 0) | (truth > 0)).sum()
    assert overlap > 0.7


def test_the_foreground_is_cut_first_where_it_is_one_region_beside_a_background(
    volumes: tuple[Path, DatasetManifest],
) -> None:
    plan = oracle_model(volumes[1]).plan
    one_region = PostprocessConfig(keep_largest_foreground=True)
    assert foreground_cut(one_region, plan) == 0.5
    assert foreground_cut(PostprocessConfig(), plan) is None
    no_background = plan.model_copy(update={"class_values": (1, 2, 3)})
    assert foreground_cut(one_region, no_background) is None
    binary = plan.model_copy(update={"class_values": (0, 1), "class_names": ("a", "b")})
    assert foreground_cut(one_region, binary) is None  # two classes: the argmax already is
    assert foreground_cut(PostprocessConfig(threshold=0.3), binary) == 0.3
    assert foreground_cut(one_region.model_copy(update={"threshold": 0.7}), plan) == 0.7


@pytest.mark.parametrize("switched_on", [True, False])
def test_the_models_postprocessing_runs_unless_switched_off(
    volumes: tuple[Path, DatasetManifest],
    tmp_path: Path,
    switched_on: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decisions: list[float | None] = []

    def spy(probabilities: np.ndarray, *, foreground_cut: float | None = None) -> np.ndarray:
        decisions.append(foreground_cut)
        return class_indices(probabilities, foreground_cut=foreground_cut)

    monkeypatch.setattr("pipelines.infer.in_memory.class_indices", spy)
    _, manifest = volumes
    case = manifest.cases[0]
    truth = _truth(case).astype(np.uint8)
    cleaning = PostprocessConfig(keep_largest_foreground=True)
    expected = postprocess_labels(truth, cleaning, spacing=(1.0, 1.0, 1.0))
    assert (expected != truth).sum() > 100  # the case has a second foreground region
    model = oracle_model(manifest)
    processing = {**model.processing, "postprocess": {"keep_largest_foreground": True}}
    model = dataclasses.replace(model, processing=processing)
    folder = tmp_path / "in"
    folder.mkdir()
    for channel in case.channels:
        shutil.copy(channel.path, folder / Path(channel.path).name)
    options = InferenceOptions(postprocess=switched_on)
    assert _done(run_batch(folder, model, tmp_path / "out", options)) == [case.case_id]
    mask = np.asarray(nib.load(tmp_path / "out" / f"{case.case_id}.nii.gz").dataobj)
    assert (mask == (expected if switched_on else truth)).mean() > 0.995
    lineage = json.loads((tmp_path / "out" / f"{case.case_id}.lineage.json").read_text())
    recorded = {"keep_largest_foreground": True} if switched_on else {}
    assert lineage["settings"]["postprocess"] == recorded
    assert decisions == [0.5 if switched_on else None]
