"""Preprocessing pipelines, splits and cached datasets on tiny seeded synthetic data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose
from torch.utils.data import DataLoader

from data_contracts import (
    ChannelNormalization,
    ConfigError,
    DatasetManifest,
    IngestOptions,
    LabelValueError,
    TrainingPlan,
)
from pipelines.ingest import ingest
from pipelines.plan import apply_overrides, compute_fingerprint, make_plan
from pipelines.plan.fingerprint import to_channels_first
from pipelines.preprocess import IGNORE_INDEX, build_datasets, seed_augmentation, split_cases
from pipelines.preprocess.array import map_labels, normalize_channel
from pipelines.preprocess.loaders import LoadRasterd
from pipelines.synthetic import make_image_dataset, make_raster_dataset, make_volume_dataset
from seg_models import build_loss

torch.set_num_threads(1)
Built = tuple[DatasetManifest, TrainingPlan]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("preprocess")


def _build(root: Path, name: str, options: IngestOptions | None = None) -> Built:
    manifest = ingest(root / name, workdir=root / f"{name}_work", options=options)
    plan = make_plan(compute_fingerprint(manifest, samples_per_case=5000), manifest)
    return manifest, plan


@pytest.fixture(scope="module")
def volumes(root: Path) -> Built:
    make_volume_dataset(root / "vol", n_cases=3, shape=(20, 18, 10), seed=5)
    return _build(root, "vol")


@pytest.fixture(scope="module")
def rasters(root: Path) -> Built:
    make_raster_dataset(root / "ras", n_tiles=3, size=(64, 64), seed=6)
    return _build(root, "ras")


@pytest.fixture(scope="module")
def images(root: Path) -> Built:
    make_image_dataset(root / "img", n_images=3, size=(48, 48), seed=7)
    return _build(root, "img", IngestOptions(label_kind="instance"))


KINDS = ["volumes", "rasters", "images"]


def _datasets(
    manifest: DatasetManifest,
    plan: TrainingPlan,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> tuple[Any, Any]:
    """The datasets of a training: the cases split once, then built from that split."""
    train_cases, val_cases = split_cases(manifest, val_fraction=val_fraction, seed=seed)
    return build_datasets(train_cases, val_cases, plan, cache_dir=cache_dir, seed=seed)


@pytest.mark.parametrize("kind", KINDS)
def test_training_sample_is_a_normalised_patch(kind: str, request: pytest.FixtureRequest) -> None:
    manifest, plan = request.getfixturevalue(kind)
    train, _ = _datasets(manifest, plan, val_fraction=0.34)
    for index in range(len(train)):  # type: ignore[arg-type]
        sample = train[index]
        assert sample["image"].shape == (plan.in_channels, *plan.patch_size)
        assert sample["label"].shape == (1, *plan.patch_size)
        assert torch.isfinite(sample["image"]).all()
        assert sample["label"].dtype == torch.int64
        allowed = {*range(plan.num_classes), IGNORE_INDEX}
        assert set(torch.unique(sample["label"]).tolist()) <= allowed
    batch = next(iter(DataLoader(train, batch_size=2)))  # plain torch collation works
    assert batch["image"].shape == (2, plan.in_channels, *plan.patch_size)
    loss = build_loss("dice+ce", ignore_index=IGNORE_INDEX)
    logits = torch.zeros(2, plan.num_classes, *plan.patch_size, requires_grad=True)
    assert torch.isfinite(loss(logits, batch["label"]))


def test_volume_is_reoriented_from_lps_to_ras(volumes: Built) -> None:
    manifest, plan = volumes
    _, val = _datasets(manifest, plan)
    item = val[0]
    assert manifest.cases[0].geometry.kind == "volume"
    assert manifest.cases[0].geometry.orientation == ("L", "P", "S")
    affine = np.asarray(item["image"].affine)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    assert np.diag(affine)[:3] == pytest.approx(plan.target_spacing, abs=1e-4)
    assert item["image"].shape[1:] == item["label"].shape[1:]
    coarse = apply_overrides(plan, {"target_spacing": [1.8, 2.2, 3.0]})
    resampled = _datasets(manifest, coarse)[1][0]
    assert tuple(resampled["image"].shape[1:]) == pytest.approx((10, 9, 10), abs=1)  # ceil
    assert resampled["label"].shape[1:] == resampled["image"].shape[1:]


def test_permuted_axes_follow_the_plan_order(root: Path) -> None:
    make_volume_dataset(root / "psr", n_cases=2, shape=(20, 16, 8), axcodes=("S", "L", "P"))
    manifest, plan = _build(root, "psr")
    assert plan.target_spacing == pytest.approx((1.1, 3.0, 0.9), abs=1e-5)
    _, val = _datasets(manifest, plan)
    image = val[0]["image"]
    assert tuple(image.shape[1:]) == (16, 8, 20)
    assert tuple(image.pixdim.tolist()) == pytest.approx(plan.target_spacing, abs=1e-4)


def test_nodata_pixels_become_ignored(rasters: Built) -> None:
    manifest, plan = rasters
    _, val = _datasets(manifest, plan)
    item = val[0]
    strip = (slice(None), slice(0, 64 // 8), slice(0, 64 // 3))  # synthetic nodata corner
    assert (item["label"][strip] == IGNORE_INDEX).all()
    assert (item["image"][(slice(None), *strip[1:])] == 0).all()
    assert (item["label"][:, 16:, :] != IGNORE_INDEX).all()


def test_instance_labels_become_three_classes(images: Built) -> None:
    manifest, plan = images
    train, val = _datasets(manifest, plan)
    item = val[0]
    assert set(torch.unique(item["label"]).tolist()) == {0, 1, 2}
    assert int(item["instances"].max()) >= 2
    assert (item["label"] > 0).eq(item["instances"] > 0).all()
    assert train[0]["instances"].shape == (1, *plan.patch_size)


def test_forced_2d_volume_plan_samples_slices(volumes: Built) -> None:
    manifest, _ = volumes
    fingerprint = compute_fingerprint(manifest, samples_per_case=5000)
    plan = make_plan(fingerprint, manifest, spatial_dims=2)
    train, val = _datasets(manifest, plan)
    assert train[0]["image"].shape == (2, *plan.patch_size)
    assert val[0]["image"].ndim == 4


def _split_ids(manifest: DatasetManifest, **kwargs: Any) -> tuple[list[str], list[str]]:
    train, val = split_cases(manifest, **kwargs)
    return [c.case_id for c in train], [c.case_id for c in val]


def test_split_is_deterministic_and_disjoint(rasters: Built) -> None:
    manifest, _ = rasters
    first = _split_ids(manifest, val_fraction=0.2, seed=3)
    assert first == _split_ids(manifest, val_fraction=0.2, seed=3)
    train, val = first
    assert len(val) == 1 and not set(train) & set(val)
    assert sorted(train + val) == sorted(c.case_id for c in manifest.labelled_cases)
    folds = [_split_ids(manifest, folds=3, fold=k)[1] for k in range(3)]
    assert sorted(cid for fold in folds for cid in fold) == sorted(
        c.case_id for c in manifest.cases
    )
    with pytest.raises(ConfigError, match="fold"):
        split_cases(manifest, folds=3, fold=3)
    with pytest.raises(ConfigError, match="4 folds"):
        split_cases(manifest, folds=4)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original: Callable[..., Any] = LoadRasterd.__call__

    def counted(self: LoadRasterd, data: Any) -> Any:
        calls.append(data["case_id"])
        return original(self, data)

    monkeypatch.setattr(LoadRasterd, "__call__", counted)
    return calls


def test_memory_cache_loads_each_case_once(rasters: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, plan = rasters
    calls = _counting(monkeypatch)
    train, val = _datasets(manifest, plan)
    for _ in range(2):  # two epochs
        list(DataLoader(train, batch_size=2))
        list(DataLoader(val, batch_size=1))
    assert sorted(calls) == sorted(c.case_id for c in manifest.cases)


def test_disk_cache_is_reused_and_keyed_on_the_plan(
    rasters: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, plan = rasters
    calls = _counting(monkeypatch)
    train, _ = _datasets(manifest, plan, cache_dir=tmp_path)
    first = train[0]
    assert len(calls) == 1
    again, _ = _datasets(manifest, plan, cache_dir=tmp_path)
    second = again[0]
    assert len(calls) == 1  # read back from disk
    assert second["image"].shape == first["image"].shape
    changed = apply_overrides(plan, {"foreground_oversample": 1.0})
    _datasets(manifest, changed, cache_dir=tmp_path)[0][0]
    assert len(calls) == 2  # another plan, another cache


def test_same_seed_gives_same_patches(rasters: Built) -> None:
    manifest, plan = rasters
    patches = [_datasets(manifest, plan, seed=11)[0][0]["image"] for _ in range(2)]
    assert torch.equal(patches[0], patches[1])
    train, _ = _datasets(manifest, plan, seed=11)
    epoch = [train[i]["image"] for i in range(len(train))]  # type: ignore[arg-type]
    seed_augmentation(train, 11)  # as a resumed run would at this epoch's start
    assert all(torch.equal(train[i]["image"], patch) for i, patch in enumerate(epoch))


@pytest.mark.parametrize(
    ("values", "class_values", "ignore", "expected"),
    [
        ([0, 255, 255], (0, 255), None, [0, 1, 1]),
        ([1, 7, 0], (1, 7), 0, [0, 1, IGNORE_INDEX]),
        ([2.0, 0.0, -1.0], (0, 2), -1, [1, 0, IGNORE_INDEX]),
    ],
)
def test_map_labels(
    values: list[float], class_values: tuple[int, ...], ignore: int | None, expected: list[int]
) -> None:
    mapped = map_labels(torch.tensor([values]), class_values, ignore)
    assert mapped.dtype == torch.int64 and mapped.tolist() == [expected]


def test_map_labels_rejects_undeclared_values() -> None:
    with pytest.raises(LabelValueError, match=r"a\.tif.*\[3\.0\]"):
        map_labels(torch.tensor([[0, 3]]), (0, 1), None, source="a.tif")


@pytest.mark.parametrize(
    ("norm", "values", "expected"),
    [
        (ChannelNormalization(scheme="ct", mean=10, std=20, lower=-50, upper=50),
         [-1000, 10, 30, 900], [-3.0, 0.0, 1.0, 2.0]),
        (ChannelNormalization(scheme="zscore", mean=1, std=2), [1, 3], [0.0, 1.0]),
        (ChannelNormalization(scheme="percentile", lower=100, upper=300),
         [0, 200, 400], [0.0, 0.5, 1.0]),
        (ChannelNormalization(scheme="zscore_nonzero"), [0, 1, 3], [0.0, -1 / 2**0.5, 1 / 2**0.5]),
        (ChannelNormalization(scheme="none"), [5, 6], [5.0, 6.0]),
    ],
)  # fmt: skip
def test_normalize_channel(
    norm: ChannelNormalization, values: list[float], expected: list[float]
) -> None:
    out = normalize_channel(torch.tensor(values, dtype=torch.float32), norm)
    assert out.tolist() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    ("shape", "channels", "expected"),
    [
        ((4, 5), 1, (1, 4, 5)),
        ((4, 5, 4), 3, (3, 4, 5)),  # RGBA: alpha dropped
        ((4, 5, 2), 1, (1, 4, 5)),  # grey + alpha
        ((4, 5), 3, (3, 4, 5)),  # grey repeated
        ((4, 5, 3), 1, (1, 4, 5)),  # RGB averaged
    ],
)
def test_image_channels(shape: tuple[int, ...], channels: int, expected: tuple[int, ...]) -> None:
    assert to_channels_first(np.ones(shape, np.uint8), channels).shape == expected


def test_image_channel_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="3 channels"):
        to_channels_first(np.ones((4, 5, 3), np.uint8), 2)


def test_explicit_validation_ids_share_a_split(tmp_path: Path) -> None:
    from data_contracts import ConfigError
    from pipelines.ingest import ingest
    from pipelines.preprocess.datasets import split_cases
    from pipelines.synthetic import make_raster_dataset

    make_raster_dataset(tmp_path / "d", n_tiles=3, size=(32, 32), seed=0)
    manifest = ingest(tmp_path / "d", workdir=tmp_path / "w")
    train, val = split_cases(manifest, val_ids=["tile_001"])
    assert [c.case_id for c in val] == ["tile_001"] and [c.case_id for c in train] == [
        "tile_000",
        "tile_002",
    ]
    with pytest.raises(ConfigError, match="tile_009"):
        split_cases(manifest, val_ids=["tile_009"])
    with pytest.raises(ConfigError, match="no labelled case left for training"):
        split_cases(manifest, val_ids=["tile_000", "tile_001", "tile_002"])


def test_datasets_hold_exactly_the_cases_they_are_given(rasters: Built) -> None:
    """``build_datasets`` does not split again: a split it is handed is the split it builds."""
    manifest, plan = rasters
    first, second, third = sorted(manifest.labelled_cases, key=lambda case: case.case_id)
    train, val = build_datasets([second], [third, first], plan)
    assert len(train) == 1  # type: ignore[arg-type]
    assert [val[index]["case_id"] for index in range(2)] == [third.case_id, first.case_id]


def test_planar_rotation_moves_image_and_labels_together(
    images: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotated and scaled chips keep labels on the image's pixels, as integers."""
    from pipelines.preprocess import transforms

    _, plan = images
    monkeypatch.setattr(transforms, "_AFFINE_PROB", 1.0)
    augment = Compose(transforms._planar_augmentation(plan)).set_random_state(seed=4)
    rows, cols = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    square = ((rows - 24).abs() < 12) & ((cols - 20).abs() < 9)
    instances = (square.long() * 7)[None]
    label = square.long()[None]
    label[:, :3] = IGNORE_INDEX
    item = {"image": square.float()[None] * 4.0, "label": label, "instances": instances}
    out = augment(dict(item))
    assert out["label"].dtype == torch.int64 and out["instances"].dtype == torch.int64
    assert set(torch.unique(out["label"]).tolist()) <= {0, 1, IGNORE_INDEX}
    assert set(torch.unique(out["instances"]).tolist()) == {0, 7}
    assert not torch.equal(out["label"], label)  # the chip did move
    inside = out["label"] == 1
    assert (out["instances"][inside] == 7).all()
    agreement = ((out["image"] > 2.0) == (out["instances"] == 7)).float().mean()
    assert agreement > 0.97  # bilinear and nearest differ only along the edges
