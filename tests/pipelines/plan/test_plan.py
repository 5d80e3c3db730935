"""Fingerprint → plan on seeded synthetic data with known spacing and intensities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_contracts import (
    ChannelStats,
    ConfigError,
    DatasetManifest,
    IngestOptions,
    MissingFileError,
    TrainingPlan,
    VolumeGeometry,
)
from pipelines.ingest import ingest
from pipelines.plan import (
    apply_overrides,
    compute_fingerprint,
    estimate_memory_mb,
    load_overrides_yaml,
    load_plan,
    make_plan,
    parse_override_flags,
    plan_table,
    save_plan,
)
from pipelines.plan.fingerprint import is_ct_channel
from pipelines.synthetic import make_image_dataset, make_raster_dataset, make_volume_dataset

SPACING = (0.9, 1.1, 3.0)
SHAPE = (24, 20, 12)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("plan")


@pytest.fixture(scope="module")
def ct(root: Path) -> DatasetManifest:
    make_volume_dataset(
        root / "ct", n_cases=3, shape=SHAPE, spacing=SPACING, n_channels=1, modality="ct", seed=1
    )
    return ingest(root / "ct", workdir=root / "ct_work")


@pytest.fixture(scope="module")
def mr(root: Path) -> DatasetManifest:
    make_volume_dataset(root / "mr", n_cases=2, shape=SHAPE, spacing=SPACING, seed=2)
    return ingest(root / "mr", workdir=root / "mr_work")


@pytest.fixture(scope="module")
def rasters(root: Path) -> DatasetManifest:
    make_raster_dataset(root / "ras", n_tiles=2, size=(64, 80), pixel_size=0.5, seed=3)
    return ingest(root / "ras", workdir=root / "ras_work")


@pytest.fixture(scope="module")
def images(root: Path) -> DatasetManifest:
    make_image_dataset(root / "img", n_images=2, size=(48, 48), seed=4)
    options = IngestOptions(label_kind="instance")
    return ingest(root / "img", workdir=root / "img_work", options=options)


def _with_shape(
    manifest: DatasetManifest, shape: tuple[int, int, int], copies: int = 1
) -> DatasetManifest:
    """The manifest with bigger (header-only) volumes, each case repeated ``copies`` times:
    planning never reads voxels."""
    cases = []
    for case in manifest.cases:
        assert isinstance(case.geometry, VolumeGeometry)
        geometry = case.geometry.model_copy(update={"shape": shape})
        cases += [
            case.model_copy(update={"geometry": geometry, "case_id": f"{case.case_id}_{copy}"})
            for copy in range(copies)
        ]
    return manifest.model_copy(update={"cases": tuple(cases)})


@pytest.mark.parametrize(
    ("axcodes", "expected"),
    [(("L", "P", "S"), SPACING), (("S", "L", "P"), (1.1, 3.0, 0.9))],
)
def test_fingerprint_spacing_and_shape_in_ras_order(
    root: Path, axcodes: tuple[str, str, str], expected: tuple[float, ...]
) -> None:
    folder = root / f"axes_{''.join(axcodes)}"
    make_volume_dataset(folder, n_cases=1, shape=SHAPE, spacing=SPACING, axcodes=axcodes)
    manifest = ingest(folder, workdir=root / f"{folder.name}_work")
    fingerprint = compute_fingerprint(manifest)
    order = [axcodes.index(code) for code in ("L", "P", "S")]  # RAS axis ← file axis
    assert fingerprint.median_spacing == pytest.approx(expected, abs=1e-5)
    assert fingerprint.median_shape == tuple(SHAPE[i] for i in order)
    plan = make_plan(fingerprint, manifest)
    assert plan.target_spacing == pytest.approx(expected, abs=1e-5)


def test_ct_plan_windows_the_foreground(ct: DatasetManifest) -> None:
    fingerprint = compute_fingerprint(ct)
    assert fingerprint.kind == "volume" and fingerprint.n_cases == 3
    assert fingerprint.modality_hint == "ct"
    assert sum(fingerprint.class_frequencies.values()) == pytest.approx(1.0)
    plan = make_plan(fingerprint, ct)
    assert plan.spatial_dims == 3
    assert plan.target_spacing == pytest.approx(SPACING, abs=1e-5)
    (norm,) = plan.normalization
    # Synthetic CT: objects at -10 HU and 60 HU (noise 15), background -80 HU.
    assert norm.scheme == "ct"
    assert norm.lower is not None and norm.upper is not None
    assert -60 < norm.lower < -10 and 60 < norm.upper < 120
    assert -10 < norm.mean < 60 and 15 < norm.std < 60
    assert plan.class_values == (0, 1, 2) and plan.class_names[0] == "background"


def test_mr_plan_uses_nonzero_zscore(mr: DatasetManifest) -> None:
    fingerprint = compute_fingerprint(mr)
    assert fingerprint.modality_hint == "mr"
    assert [c.name for c in fingerprint.channels] == ["T1", "T2"]
    plan = make_plan(fingerprint, mr)
    assert [n.scheme for n in plan.normalization] == ["zscore_nonzero"] * 2
    assert plan.in_channels == 2


@pytest.mark.parametrize(
    ("name", "low", "high", "expected"),
    [
        ("CT", 0.0, 100.0, True),
        ("ct_arterial", 0.0, 100.0, True),
        ("channel_0", -1024.0, 1500.0, True),
        ("T1", 0.0, 900.0, False),
        ("OCTAVE", 0.0, 100.0, False),
    ],
)
def test_ct_detection(name: str, low: float, high: float, expected: bool) -> None:
    stats = ChannelStats(
        name=name, mean=0, std=1, percentile_00_5=low, percentile_99_5=high, nonzero_fraction=1
    )
    assert is_ct_channel(stats) is expected


def test_raster_plan_scales_each_band(rasters: DatasetManifest) -> None:
    fingerprint = compute_fingerprint(rasters)
    assert fingerprint.median_shape == (64, 80)
    assert fingerprint.median_spacing == (0.5, 0.5)
    assert fingerprint.modality_hint == "other"
    # Valid pixels are ≥ 0.05 × 4000: the nodata strip (0) is excluded.
    assert all(c.percentile_00_5 >= 200 for c in fingerprint.channels)
    plan = make_plan(fingerprint, rasters)
    assert plan.spatial_dims == 2 and plan.target_spacing is None
    assert plan.patch_size == (64, 64)
    assert len(plan.normalization) == 3
    for norm, stats in zip(plan.normalization, fingerprint.channels, strict=True):
        assert norm.scheme == "percentile"
        assert (norm.lower, norm.upper) == (stats.percentile_00_5, stats.percentile_99_5)


def test_instance_images_plan_three_classes(images: DatasetManifest) -> None:
    fingerprint = compute_fingerprint(images)
    assert set(fingerprint.class_frequencies) == {0, 1}
    plan = make_plan(fingerprint, images)
    assert plan.label_kind == "instance"
    assert plan.class_values == (0, 1, 2)
    assert plan.class_names == ("background", "interior", "boundary")
    assert plan.patch_size == (32, 32) and plan.in_channels == 1


def test_patch_fits_budget_and_shrinks_with_it(ct: DatasetManifest) -> None:
    big = _with_shape(ct, (192, 160, 64))
    fingerprint = compute_fingerprint(ct, max_cases=1)
    assert fingerprint.n_cases == 1
    patches = []
    for budget in (4096, 1024, 256, 64):
        plan = make_plan(fingerprint, big, memory_budget_mb=budget)
        assert all(size % 16 == 0 for size in plan.patch_size)
        assert plan.batch_size >= 2
        assert estimate_memory_mb(plan.patch_size, 2) <= budget
        patches.append(int(np.prod(plan.patch_size)))
    assert patches == sorted(patches, reverse=True) and patches[0] > patches[-1]


def test_batch_fills_budget_but_at_most_five_percent_of_the_data(ct: DatasetManifest) -> None:
    fingerprint = compute_fingerprint(ct, max_cases=1)
    small = make_plan(fingerprint, ct)
    assert small.batch_size == 2  # 3 tiny cases: 5 % of their voxels is less than a patch
    many = _with_shape(ct, (48, 40, 16), copies=100)
    large = make_plan(fingerprint, many, memory_budget_mb=2048)
    assert large.patch_size == (48, 48, 16)
    assert large.batch_size > 2
    assert estimate_memory_mb(large.patch_size, large.batch_size) <= 2048
    voxels = 300 * 48 * 40 * 16
    assert large.batch_size * np.prod(large.patch_size) <= 0.05 * voxels


def test_anisotropic_low_resolution_axis_uses_tenth_percentile(ct: DatasetManifest) -> None:
    fingerprint = compute_fingerprint(ct)
    z = [3.0, 4.0, 5.0, 5.0, 6.0]
    spaced = fingerprint.model_copy(update={"spacings": tuple((0.8, 0.8, v) for v in z)})
    plan = make_plan(spaced, ct)
    assert plan.target_spacing == pytest.approx((0.8, 0.8, float(np.percentile(z, 10))))


def test_forced_2d_volume_plan(mr: DatasetManifest) -> None:
    plan = make_plan(compute_fingerprint(mr), mr, spatial_dims=2)
    assert plan.spatial_dims == 2
    assert plan.target_spacing == pytest.approx(SPACING[:2], abs=1e-5)
    assert len(plan.patch_size) == 2 and all(size % 32 == 0 for size in plan.patch_size)


def test_3d_raster_plan_is_refused(rasters: DatasetManifest) -> None:
    with pytest.raises(ConfigError, match="3D"):
        make_plan(compute_fingerprint(rasters), rasters, spatial_dims=3)


@pytest.fixture(scope="module")
def plan(ct: DatasetManifest) -> TrainingPlan:
    return make_plan(compute_fingerprint(ct, max_cases=1), ct)


def test_overrides_are_applied_and_recorded(plan: TrainingPlan) -> None:
    changed = apply_overrides(plan, {"batch_size": 4, "patch_size": [16, 16, 16]})
    assert changed.batch_size == 4 and changed.patch_size == (16, 16, 16)
    assert changed.overrides == ("batch_size", "patch_size")
    again = apply_overrides(changed, {"foreground_oversample": 0.5})
    assert again.overrides == ("batch_size", "foreground_oversample", "patch_size")
    rows = dict(plan_table(again))
    assert rows["batch_size *"] == "4" and rows["patch_size *"] == "16 × 16 × 16"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"patch_sise": [16, 16, 16]}, "patch_sise"),
        ({"overrides": ["x"]}, "overrides"),
        ({"batch_size": 0}, "batch_size"),
        ({"patch_size": [16, 16]}, "patch_size"),
        ({"normalization": [{"scheme": "minmax"}]}, "normalization"),
    ],
)
def test_bad_overrides_name_the_field(
    plan: TrainingPlan, overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        apply_overrides(plan, overrides)


def test_override_flags_parse_to_values() -> None:
    parsed = parse_override_flags(["patch_size=16,16,8", "ignore_value=null", "batch_size=3"])
    assert parsed == {"patch_size": [16, 16, 8], "ignore_value": None, "batch_size": 3}
    with pytest.raises(ConfigError, match="field=value"):
        parse_override_flags(["batch_size"])


def test_overrides_yaml(tmp_path: Path, plan: TrainingPlan) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 3\nplan:\n  batch_size: 5\n  patch_size: [32, 32, 16]\n")
    overrides = load_overrides_yaml(config)
    assert apply_overrides(plan, overrides).batch_size == 5
    for text in ("plan: [1, 2]\n", "plan: {a: [\n"):
        config.write_text(text)
        with pytest.raises(ConfigError, match=r"train\.yaml"):
            load_overrides_yaml(config)
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_overrides_yaml(tmp_path / "missing.yaml")


def test_plan_json_round_trip(tmp_path: Path, plan: TrainingPlan) -> None:
    path = save_plan(apply_overrides(plan, {"batch_size": 3}), tmp_path / "plan.json")
    loaded = load_plan(path)
    assert loaded == apply_overrides(plan, {"batch_size": 3})
    (tmp_path / "bad.json").write_text('{"dataset_name": "x"}')
    with pytest.raises(ConfigError, match=r"bad\.json"):
        load_plan(tmp_path / "bad.json")
    with pytest.raises(MissingFileError):
        load_plan(tmp_path / "absent.json")


def test_instance_plans_ignore_seeds_under_a_tenth_of_the_median_object(tmp_path: Path) -> None:
    from data_contracts import IngestOptions
    from pipelines.io.image2d import read_image

    dataset = make_image_dataset(tmp_path / "cells", n_images=2, size=(64, 64))
    manifest = ingest(dataset, options=IngestOptions(label_kind="instance"), workdir=tmp_path)
    sizes = [
        count
        for path in sorted((dataset / "labels").iterdir())
        for value, count in zip(*np.unique(read_image(path), return_counts=True), strict=True)
        if value != 0
    ]
    fingerprint = compute_fingerprint(manifest)
    assert fingerprint.median_object_size == pytest.approx(float(np.median(sizes)))
    plan = make_plan(fingerprint, manifest)
    assert plan.min_instance_seed == round(0.1 * float(np.median(sizes)))
    semantic = ingest(dataset, workdir=tmp_path / "semantic")
    assert make_plan(compute_fingerprint(semantic), semantic).min_instance_seed == 0
