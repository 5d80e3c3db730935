"""A file is a case unless told otherwise (issue 14, point 5).

Numbered names (years, sequence numbers: ``tile_2023.tif``, ``site_0001.tif``) are cases named
by their full stems in flat folders, archives and single files, for ``segflow ingest`` and
``segflow segment`` alike. ``_0000`` channel files group only in the nnU-Net layout, with a
``dataset.json`` declaring several channels, with ``--channel-suffix``, or for a model of
multi-channel volumes. Inputs whose case ids clash are rejected naming both files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from typer.testing import CliRunner

from data_contracts import (
    DatasetManifest,
    IngestOptions,
    OutputNameCollisionError,
    PairingError,
    get_settings,
)
from flows.cli import app
from pipelines.evaluate import pair_files
from pipelines.infer.inputs import channel_suffix_for, discover_inputs
from pipelines.ingest import ingest, write_manifest
from pipelines.synthetic import make_volume_dataset, pack_archive
from pipelines.synthetic.models import oracle_model
from tests.oracle_registry import register_oracle

NUMBERED = ("tile_2023", "tile_2024", "site_0001", "scene_8192", "scene_0000", "scene_0001")
SIZE = 32


def write_tile(path: Path, seed: int, *, label: bool = False) -> Path:
    """A seeded single-band 32×32 GeoTIFF in EPSG:32616 (10 m pixels); ``label`` writes the
    0/1 map of the image of the same seed (bright pixels are class 1)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 200, size=(SIZE, SIZE)).astype(np.uint8)
    data = (pixels > 100).astype(np.uint8) if label else pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": SIZE,
        "height": SIZE,
        "count": 1,
        "dtype": "uint8",
        "crs": CRS.from_epsg(32616),
        "transform": from_origin(500_000, 3_700_000, 10, 10),
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data, 1)
    return path


def flat_folder(folder: Path, stems: tuple[str, ...] = NUMBERED, suffix: str = ".tif") -> Path:
    for seed, stem in enumerate(stems):
        write_tile(folder / f"{stem}{suffix}", seed)
    return folder


def labelled_tiles(root: Path, pairs: dict[str, str], seed: int = 0) -> Path:
    """``images/<image>.tif`` + ``labels/<label>.tif`` for each ``image: label`` pair (the
    label of the first image that names it)."""
    for offset, (image, label) in enumerate(pairs.items()):
        write_tile(root / "images" / f"{image}.tif", seed + offset)
        if not (root / "labels" / f"{label}.tif").exists():
            write_tile(root / "labels" / f"{label}.tif", seed + offset, label=True)
    return root


def _ids(manifest: DatasetManifest) -> dict[str, int]:
    return {case.case_id: len(case.channels) for case in manifest.cases}


# --- ingest ---------------------------------------------------------------------------------------


def test_ingest_names_every_file_of_a_flat_folder_by_its_full_stem(tmp_path: Path) -> None:
    manifest = ingest(flat_folder(tmp_path / "tiles"), workdir=tmp_path / "work")
    assert manifest.rejected == (), [r.reason for r in manifest.rejected]
    assert _ids(manifest) == dict.fromkeys(NUMBERED, 1)


def test_ingest_groups_channel_suffixes_when_asked(tmp_path: Path) -> None:
    folder = flat_folder(tmp_path / "tiles", ("scene_0000", "scene_0001"))
    options = IngestOptions(channel_suffix=True)
    manifest = ingest(folder, options=options, workdir=tmp_path / "work")
    assert manifest.rejected == () and _ids(manifest) == {"scene": 2}
    assert [Path(c.path).name for c in manifest.cases[0].channels] == [
        "scene_0000.tif",
        "scene_0001.tif",
    ]
    # Years are not channels: asked to group them, ingest says which channels are missing.
    years = flat_folder(tmp_path / "years", ("tile_2023", "tile_2024"))
    (rejected,) = ingest(years, options=options, workdir=tmp_path / "w2").rejected
    assert rejected.error == "PairingError" and "missing tile_0000.tif" in rejected.reason


def test_the_nnunet_layout_and_declared_channels_still_group(tmp_path: Path) -> None:
    nnunet = make_volume_dataset(tmp_path / "nnunet", n_cases=2, shape=(12, 10, 6), n_test=1)
    manifest = ingest(nnunet, workdir=tmp_path / "w1")
    assert manifest.rejected == ()
    assert _ids(manifest) == {"case_000": 2, "case_001": 2, "test_000": 2}
    found = discover_inputs(nnunet / "imagesTr", workdir=tmp_path)
    assert {case.case_id: len(case.channels) for case in found.cases} == {
        "case_000": 2,
        "case_001": 2,
    }
    # images/ + labels/ with a dataset.json declaring two channels (and listing no cases).
    declared = make_volume_dataset(
        tmp_path / "declared",
        n_cases=2,
        shape=(12, 10, 6),
        layout="images_labels",
        list_cases=False,
    )
    assert _ids(ingest(declared, workdir=tmp_path / "w2")) == {"case_000": 2, "case_001": 2}
    found = discover_inputs(declared / "images", workdir=tmp_path)
    assert [case.case_id for case in found.cases] == ["case_000", "case_001"]


def test_images_pair_with_labels_after_dropping_the_suffix_but_never_fuse(tmp_path: Path) -> None:
    root = labelled_tiles(
        tmp_path / "data",
        {"y_0000": "y", "x_0000": "x", "x_0001": "x", "tile_2023": "tile_2023"},
    )
    manifest = ingest(root, workdir=tmp_path / "work")
    labels = {case.case_id: Path(case.label.path).name for case in manifest.cases if case.label}
    assert labels == {"y": "y.tif", "tile_2023": "tile_2023.tif"}
    rejected = {Path(r.path).name: r for r in manifest.rejected}
    assert set(rejected) == {"x_0000.tif", "x_0001.tif"}
    for name, other in (("x_0000.tif", "x_0001.tif"), ("x_0001.tif", "x_0000.tif")):
        assert rejected[name].error == PairingError.__name__
        assert other in rejected[name].reason and "--channel-suffix" in rejected[name].reason
    grouped = ingest(root, options=IngestOptions(channel_suffix=True), workdir=tmp_path / "w2")
    assert _ids(grouped) == {"x": 2}
    # Asked to group, every case is grouped: y and tile (channel 2023) lack channels, and the
    # label tile_2023.tif names no case.
    assert {(r.case_id, r.error) for r in grouped.rejected} == {
        ("y", "PairingError"),
        ("tile", "PairingError"),
        ("tile_2023", "PairingError"),
    }


@pytest.mark.parametrize(
    ("names", "why"),
    [
        (("Tile.tif", "tile.tif"), "letter case"),
        (("scene.tif", "scene.tiff"), "only in extension"),
    ],
)
def test_clashing_names_are_rejected_naming_both_files(
    names: tuple[str, str], why: str, tmp_path: Path
) -> None:
    folder = flat_folder(tmp_path / "in", ("site_0001",))
    for seed, name in enumerate(names, start=1):
        write_tile(folder / name, seed)
    manifest = ingest(folder, workdir=tmp_path / "work")
    assert list(_ids(manifest)) == ["site_0001"]
    assert sorted(Path(r.path).name for r in manifest.rejected) == sorted(names)
    for rejected in manifest.rejected:
        assert rejected.error == OutputNameCollisionError.__name__
        assert all(name in rejected.reason for name in names) and why in rejected.reason
        assert "rename one of them" in rejected.reason
    found = discover_inputs(folder, workdir=tmp_path)
    assert [case.case_id for case in found.cases] == ["site_0001"]
    assert len(found.rejected) == 2
    for error in found.rejected:
        assert isinstance(error, OutputNameCollisionError)
        assert all(str(folder / name) in str(error) for name in names)


def test_one_stem_in_two_folders_of_an_archive_a_csv_or_a_manifest_clashes(tmp_path: Path) -> None:
    # An nnU-Net archive whose training and test images hold the same case.
    dataset = tmp_path / "nnunet"
    (dataset / "dataset.json").parent.mkdir()
    (dataset / "dataset.json").write_text(json.dumps({"channel_names": {"0": "gray"}}))
    write_tile(dataset / "imagesTr" / "scene_0000.tif", 1)
    write_tile(dataset / "imagesTs" / "scene_0000.tif", 2)
    write_tile(dataset / "imagesTs" / "other_0000.tif", 3)
    manifest = ingest(pack_archive(dataset, tmp_path / "nnunet.zip"), workdir=tmp_path / "w1")
    assert list(_ids(manifest)) == ["other"]
    reasons = {Path(r.path).parent.name: r.reason for r in manifest.rejected}
    assert set(reasons) == {"imagesTr", "imagesTs"}
    assert all("imagesTr/scene_0000.tif" in reason for reason in reasons.values())
    assert all("imagesTs/scene_0000.tif" in reason for reason in reasons.values())
    # A CSV listing one stem from two folders.
    flat_folder(tmp_path / "a", ("scene",))
    flat_folder(tmp_path / "b", ("site", "Scene"))
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("image,label\na/scene.tif,\nb/Scene.tif,\nb/site.tif,\n")
    manifest = ingest(csv_path, workdir=tmp_path / "w2")
    assert list(_ids(manifest)) == ["site"]
    assert len(manifest.rejected) == 2
    for rejected in manifest.rejected:
        assert rejected.error == OutputNameCollisionError.__name__
        assert str(tmp_path / "a" / "scene.tif") in rejected.reason
        assert str(tmp_path / "b" / "Scene.tif") in rejected.reason
    # A manifest whose cases from two folders clash ignoring letter case (ingested apart).
    first = ingest(tmp_path / "a", workdir=tmp_path / "wa")
    second = ingest(tmp_path / "b", workdir=tmp_path / "wb")
    merged = first.model_copy(update={"cases": first.cases + second.cases})
    found = discover_inputs(write_manifest(merged, tmp_path / "m.json"), workdir=tmp_path)
    assert [case.case_id for case in found.cases] == ["site"]
    assert len(found.rejected) == 2
    for error in found.rejected:
        assert isinstance(error, OutputNameCollisionError)
        assert str(tmp_path / "a" / "scene.tif") in str(error)
        assert str(tmp_path / "b" / "Scene.tif") in str(error)


# --- segment inputs -------------------------------------------------------------------------------


def test_discover_inputs_keeps_full_stems_in_folders_archives_and_files(tmp_path: Path) -> None:
    folder = flat_folder(tmp_path / "tiles")
    archive = pack_archive(folder, tmp_path / "tiles.zip")
    for source in (folder, archive):
        found = discover_inputs(source, workdir=tmp_path / "scratch" / source.name)
        assert found.rejected == []
        assert {case.case_id: len(case.channels) for case in found.cases} == dict.fromkeys(
            NUMBERED, 1
        )
    for stem in NUMBERED:
        (case,) = discover_inputs(folder / f"{stem}.tif", workdir=tmp_path).cases
        assert case.case_id == stem and case.channels == (folder / f"{stem}.tif",)


def test_discover_inputs_groups_when_asked(tmp_path: Path) -> None:
    folder = flat_folder(tmp_path / "tiles", ("scene_0000", "scene_0001", "site"))
    for found in (
        discover_inputs(folder, workdir=tmp_path, channel_suffix=True),
        discover_inputs(
            pack_archive(folder, tmp_path / "t.zip"), workdir=tmp_path / "z", channel_suffix=True
        ),
    ):
        assert {case.case_id: len(case.channels) for case in found.cases} == {"scene": 2, "site": 1}
    assert len(discover_inputs(folder, workdir=tmp_path).cases) == 3  # not unless asked


def test_only_multi_channel_volume_models_group_by_themselves(tmp_path: Path) -> None:
    manifest = ingest(
        labelled_tiles(tmp_path / "data", {"a": "a", "b": "b"}), workdir=tmp_path / "w"
    )
    plan = oracle_model(manifest, patch=(SIZE, SIZE)).plan
    table = [
        ({"kind": "raster", "in_channels": 1}, False, False),
        ({"kind": "raster", "in_channels": 3}, False, False),  # bands live in one file
        ({"kind": "image", "in_channels": 3}, False, False),
        ({"kind": "volume", "in_channels": 1}, False, False),
        ({"kind": "volume", "in_channels": 2}, False, True),  # nnU-Net: a file per channel
        ({"kind": "raster", "in_channels": 1}, True, True),
    ]
    for update, requested, expected in table:
        assert channel_suffix_for(plan.model_copy(update=update), requested=requested) is expected


def test_a_mask_pairs_with_the_label_of_its_own_case(tmp_path: Path) -> None:
    for stem in ("tile_2023", "tile_2024"):
        write_tile(tmp_path / "pred" / f"{stem}.tif", 1, label=True)
        write_tile(tmp_path / "truth" / f"{stem}.tif", 2, label=True)
    pairing = pair_files(tmp_path / "pred", tmp_path / "truth")
    assert {case: (p.name, t.name) for case, (p, t) in pairing.pairs.items()} == {
        "tile_2023": ("tile_2023.tif", "tile_2023.tif"),
        "tile_2024": ("tile_2024.tif", "tile_2024.tif"),
    }
    assert not pairing.duplicates and not pairing.unpaired_prediction


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _module_home(in_mlflow_home: None) -> None:
    """Every test of this module uses the module's MLflow home (registered models)."""


@pytest.fixture(scope="module")
def one_band(mlflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``models:/naming-one-band@champion``: an oracle for the single-band tiles."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGFLOW_HOME", str(mlflow_home))
        get_settings.cache_clear()
        root = labelled_tiles(tmp_path_factory.mktemp("one-band"), {"a": "a", "b": "b"})
        manifest = ingest(root, workdir=root / "work")
        return register_oracle(oracle_model(manifest, patch=(SIZE, SIZE)), "naming-one-band")


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.usefixtures("prefect_api")
def test_segflow_segment_of_one_numbered_file_keeps_its_name(one_band: str, tmp_path: Path) -> None:
    source = write_tile(tmp_path / "in" / "scene_8192.tif", 5)
    out = tmp_path / "out"
    code, output = _cli("segment", str(source), "--model", one_band, "--out", str(out))
    assert code == 0, output
    assert sorted(p.name for p in out.glob("*.tif")) == ["scene_8192.tif"]
    with rasterio.open(out / "scene_8192.tif") as mask, rasterio.open(source) as image:
        assert mask.crs == image.crs and mask.transform == image.transform


@pytest.mark.usefixtures("prefect_api")
def test_channel_suffix_on_the_command_line(one_band: str, tmp_path: Path) -> None:
    """``segflow ingest --channel-suffix`` makes one two-channel case of ``scene_0000`` and
    ``scene_0001``; ``segflow segment --channel-suffix`` names ``scene_0000.tif`` case
    ``scene``."""
    folder = flat_folder(tmp_path / "in", ("scene_0000", "scene_0001"))
    manifest_path = tmp_path / "m.json"
    code, output = _cli("ingest", str(folder), "--out", str(manifest_path), "--channel-suffix")
    assert code == 0, output
    cases = json.loads(manifest_path.read_text())["cases"]
    assert [(case["case_id"], len(case["channels"])) for case in cases] == [("scene", 2)]
    (folder / "scene_0001.tif").unlink()
    out = tmp_path / "out"
    code, output = _cli(
        "segment", str(folder), "--model", one_band, "--out", str(out), "--channel-suffix"
    )
    assert code == 0, output
    assert sorted(p.name for p in out.glob("*.tif")) == ["scene.tif"]


@pytest.mark.usefixtures("prefect_api")
def test_a_model_of_two_channel_volumes_groups_by_itself(tmp_path: Path) -> None:
    """The segment flow groups ``_0000``/``_0001`` volumes for a two-channel volume model."""
    data = make_volume_dataset(tmp_path / "data", n_cases=2, shape=(12, 10, 6), seed=3)
    champion = register_oracle(oracle_model(ingest(data, workdir=tmp_path / "w")), "naming-mr")
    folder = tmp_path / "in"
    folder.mkdir()
    for channel in ("0000", "0001"):
        shutil.copy(data / "imagesTr" / f"case_001_{channel}.nii.gz", folder)
    out = tmp_path / "out"
    code, output = _cli("segment", str(folder), "--model", champion, "--out", str(out))
    assert code == 0, output
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_001.nii.gz"]
