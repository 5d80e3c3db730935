"""Label post-processing in physical units, and polygons in the source CRS / RFC 7946."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import shapely
from pydantic import ValidationError
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform as warp_points

from data_contracts import ChannelNormalization, PostprocessConfig, TrainingPlan, UsageError
from pipelines.plan.overrides import plan_table
from pipelines.postprocess.decision import class_indices
from pipelines.postprocess.labels import pixel_area, postprocess_labels, voxel_volume
from pipelines.postprocess.polygons import label_polygons, write_polygons
from pipelines.synthetic.rasters import custom_albers_wkt
from pipelines.train.route import planned_processing

# ---------------------------------------------------------------- config and helpers


def test_config_json_round_trip_and_validation() -> None:
    config = PostprocessConfig(
        min_object_size=12.5, fill_holes=True, keep_largest=(1, 3), opening_radius=2,
        threshold=0.4, connectivity=1,
    )  # fmt: skip
    assert PostprocessConfig.model_validate_json(config.model_dump_json()) == config
    assert config.changes_labels and not PostprocessConfig().changes_labels
    for bad in ({"min_object_size": -1}, {"keep_largest": (1, 1)}, {"threshold": 1.5},
                {"connectivity": 4}, {"opening_radius": -1}, {"unknown": 1}):  # fmt: skip
        with pytest.raises(ValidationError):
            PostprocessConfig.model_validate(bad)


def test_pixel_area_and_voxel_volume() -> None:
    rotated = Affine.translation(500_000, 4_000_000) @ Affine.rotation(30) @ Affine.scale(10, -10)
    assert pixel_area(rotated) == pytest.approx(100.0)
    assert voxel_volume((0.8, 1.1, 3.0)) == pytest.approx(2.64)
    with pytest.raises(UsageError):
        voxel_volume((1.0, 0.0))


def test_class_indices_take_the_argmax_or_cut_the_foreground_first() -> None:
    probabilities = np.array([[[0.7, 0.2]], [[0.2, 0.3]], [[0.1, 0.5]]])  # (3, 1, 2)
    labels = class_indices(probabilities)
    assert labels.dtype == np.uint8 and labels.tolist() == [[0, 2]]
    # foreground 0.3 and 0.8: a cut of 0.25 makes the first pixel its likeliest foreground class
    assert class_indices(probabilities, foreground_cut=0.25).tolist() == [[1, 2]]
    assert class_indices(probabilities, foreground_cut=0.9).tolist() == [[0, 0]]
    binary = np.array([[[0.7, 0.4]], [[0.3, 0.6]]])
    assert class_indices(binary, foreground_cut=0.25).tolist() == [[1, 1]]
    assert class_indices(binary, foreground_cut=0.6).tolist() == [[0, 1]]  # at the cut
    assert class_indices(binary).tolist() == [[0, 1]]
    assert class_indices(np.zeros((300, 2, 2))).dtype == np.uint16


def test_a_threshold_needs_a_background_first_beyond_two_classes() -> None:
    plan = TrainingPlan(
        dataset_name="tiles",
        kind="raster",
        spatial_dims=2,
        patch_size=(32, 32),
        batch_size=2,
        in_channels=1,
        class_values=(0, 1, 2),
        class_names=("background", "road", "water"),
        normalization=(ChannelNormalization(scheme="zscore"),),
        postprocess=PostprocessConfig(threshold=0.3),
    )
    assert dict(plan_table(plan))["postprocess"] == "foreground at probability ≥ 0.3"
    with pytest.raises(ValidationError, match="class value 0"):
        TrainingPlan.model_validate({**plan.model_dump(), "class_values": (1, 2, 3)})
    binary = {**plan.model_dump(), "class_values": (1, 2), "class_names": ("a", "b")}
    assert TrainingPlan.model_validate(binary).postprocess.threshold == 0.3
    assert PostprocessConfig(threshold=0.3).changes_output
    assert not PostprocessConfig(threshold=0.3).changes_labels
    # the model keeps it: ``segflow segment`` reads it from the model's processing
    assert planned_processing(plan) == {"postprocess": {"threshold": 0.3}}
    assert planned_processing(plan.model_copy(update={"postprocess": PostprocessConfig()})) == {}


# ---------------------------------------------------------------- postprocess_labels


@pytest.mark.parametrize(("spacing", "kept"), [((1.0, 1.0), False), ((2.0, 1.0), True)])
def test_min_size_is_physical_2d(spacing: tuple[float, float], kept: bool) -> None:
    labels = np.zeros((12, 12), np.uint8)
    labels[2:4, 2:7] = 1  # 10 pixels: 10 or 20 units²
    out = postprocess_labels(labels, PostprocessConfig(min_object_size=12), spacing=spacing)
    assert bool((out == 1).sum() == 10) is kept


@pytest.mark.parametrize(("spacing", "kept"), [((0.8, 1.1, 3.0), True), ((0.5, 0.5, 1.0), False)])
def test_min_size_is_physical_3d(spacing: tuple[float, ...], kept: bool) -> None:
    labels = np.zeros((6, 6, 6), np.uint16)
    labels[1:3, 1:3, 1:3] = 5  # 8 voxels: 21.1 mm³ or 2 mm³
    out = postprocess_labels(labels, PostprocessConfig(min_object_size=20), spacing=spacing)
    assert bool((out == 5).sum() == 8) is kept and out.dtype == np.uint16


def test_min_size_equal_to_the_threshold_is_kept() -> None:
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 5:15] = 1  # 100 pixels of 0.1 × 0.1 = 1.0 (up to rounding)
    out = postprocess_labels(labels, PostprocessConfig(min_object_size=1.0), spacing=(0.1, 0.1))
    np.testing.assert_array_equal(out, labels)


def test_connectivity_decides_what_an_object_is() -> None:
    labels = np.zeros((6, 6), np.uint8)
    labels[2, 2] = labels[3, 3] = 1  # diagonal neighbours
    faces = PostprocessConfig(min_object_size=2, connectivity=1)
    assert postprocess_labels(labels, faces, spacing=(1, 1)).sum() == 0
    full = PostprocessConfig(min_object_size=2)
    assert postprocess_labels(labels, full, spacing=(1, 1)).sum() == 2


def test_fill_holes_only_fills_background() -> None:
    labels = np.zeros((9, 9), np.uint8)
    labels[1:8, 1:8] = 1
    labels[3:6, 3:6] = 0
    labels[4, 4] = 2  # another class inside the hole stays
    labels[0:3, 0] = 0
    out = postprocess_labels(labels, PostprocessConfig(fill_holes=True), spacing=(1, 1))
    expected = labels.copy()
    expected[3:6, 3:6] = 1
    expected[4, 4] = 2
    np.testing.assert_array_equal(out, expected)


def test_fill_holes_in_3d() -> None:
    labels = np.zeros((7, 7, 7), np.uint8)
    labels[1:6, 1:6, 1:6] = 3
    labels[3, 3, 3] = 0
    out = postprocess_labels(labels, PostprocessConfig(fill_holes=True), spacing=(1, 1, 2))
    assert out[3, 3, 3] == 3


def test_keep_largest_only_for_listed_classes() -> None:
    labels = np.zeros((12, 12), np.uint8)
    labels[0:4, 0:4], labels[8:10, 8:10] = 1, 1
    labels[0:2, 8:12], labels[6:9, 0:3] = 2, 2
    out = postprocess_labels(labels, PostprocessConfig(keep_largest=(1,)), spacing=(1, 1))
    assert (out[0:4, 0:4] == 1).all() and (out[8:10, 8:10] == 0).all()
    np.testing.assert_array_equal(out == 2, labels == 2)


def test_keep_largest_foreground_treats_every_class_as_one_region() -> None:
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[1:5, 1:5, 1:5] = 2  # edema around…
    labels[2:4, 2:4, 2:4] = 4  # …an enhancing core: one region of two classes
    labels[5, 5, 5] = 1  # touches the region by a corner only: still one region
    labels[7, 7, 7] = 4  # a stray voxel of the core's class, far away
    labels[6:8, 0:2, 6:8] = 1  # a small region of a third class
    config = PostprocessConfig(keep_largest_foreground=True)
    assert config.changes_labels and config.needs_whole_map
    out = postprocess_labels(labels, config, spacing=(1, 1, 1))
    assert out[7, 7, 7] == 0 and (out[6:8, 0:2, 6:8] == 0).all()
    np.testing.assert_array_equal(out[:6, :6, :6], labels[:6, :6, :6])
    faces_only = PostprocessConfig(keep_largest_foreground=True, connectivity=1)
    assert postprocess_labels(labels, faces_only, spacing=(1, 1, 1))[5, 5, 5] == 0


def test_opening_removes_one_pixel_spurs_and_specks() -> None:
    labels = np.zeros((15, 15), np.uint8)
    labels[3:10, 3:10] = 1
    labels[6, 10:14] = 1  # a spur, 1 pixel wide
    labels[12, 2] = 1  # a speck
    out = postprocess_labels(labels, PostprocessConfig(opening_radius=1), spacing=(1, 1))
    assert (out[6, 11:14] == 0).all() and out[12, 2] == 0
    assert (out[4:9, 4:9] == 1).all()


def test_valid_mask_is_respected_and_input_untouched() -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[0:2, 0:2] = 1  # small, but outside the valid region: untouched
    labels[5:9, 5:9] = 1
    labels[5, 1] = 1  # small and valid: removed
    valid = np.ones_like(labels, dtype=bool)
    valid[0:3, 0:3] = False
    before = labels.copy()
    config = PostprocessConfig(min_object_size=5, fill_holes=True, keep_largest=(1,))
    out = postprocess_labels(labels, config, spacing=(1, 1), valid=valid)
    np.testing.assert_array_equal(labels, before)
    assert out is not labels
    np.testing.assert_array_equal(out[~valid], labels[~valid])
    assert out[5, 1] == 0 and (out[5:9, 5:9] == 1).all()


def test_identity_config_returns_a_copy() -> None:
    labels = np.arange(16, dtype=np.int32).reshape(4, 4)
    out = postprocess_labels(labels, PostprocessConfig(), spacing=(1, 1))
    np.testing.assert_array_equal(out, labels)
    assert out is not labels


@pytest.mark.parametrize(
    ("labels", "spacing", "valid"),
    [
        (np.zeros((4, 4), np.float32), (1, 1), None),
        (np.zeros((4,), np.uint8), (1,), None),
        (np.zeros((4, 4), np.uint8), (1, 1, 1), None),
        (np.zeros((4, 4), np.uint8), (1, -1), None),
        (np.zeros((4, 4), np.uint8), (1, 1), np.ones((3, 3), bool)),
    ],
)
def test_bad_inputs_raise_usage_error(
    labels: np.ndarray, spacing: tuple[float, ...], valid: np.ndarray | None
) -> None:
    with pytest.raises(UsageError):
        postprocess_labels(labels, PostprocessConfig(fill_holes=True), spacing=spacing, valid=valid)


# ---------------------------------------------------------------- polygons

UTM33 = CRS.from_epsg(32633)
UTM_TRANSFORM = Affine(10, 0, 500_000, 0, -10, 5_000_000)


def _square(value: int = 1) -> np.ndarray:
    labels = np.zeros((40, 40), np.uint8)
    labels[5:25, 10:30] = value  # 20 × 20 pixels of 10 m: 40 000 m²
    return labels


def _first_ring(geojson: Path) -> np.ndarray:
    document = json.loads(geojson.read_text())
    return np.array(document["features"][0]["geometry"]["coordinates"][0])


def test_square_in_utm_to_gpkg_and_geojson(tmp_path: Path) -> None:
    features = label_polygons(_square(), UTM_TRANSFORM, class_names=["background", "field"])
    assert len(features) == 1
    assert features[0]["properties"] == {"class_value": 1, "class_name": "field", "area": 40000}
    gpkg, geojson = tmp_path / "case.gpkg", tmp_path / "case.geojson"
    write_polygons(features, UTM33, gpkg=gpkg, geojson=geojson)

    info = pyogrio.read_info(gpkg)
    assert CRS.from_user_input(info["crs"]) == UTM33 and info["features"] == 1
    meta, _, geometries, fields = pyogrio.raw.read(gpkg)
    assert list(meta["fields"]) == ["class_value", "class_name", "area"]
    assert shapely.from_wkb(geometries[0]).area == pytest.approx(40000)
    assert fields[0][0] == 1 and fields[1][0] == "field"

    document = json.loads(geojson.read_text())
    assert "crs" not in document and len(document["features"]) == 1
    ring = _first_ring(geojson)
    assert shapely.LinearRing(ring).is_ccw  # RFC 7946: exterior rings counterclockwise
    x, y = 500_000 + 20 * 10, 5_000_000 - 15 * 10  # the square's centre
    (lon,), (lat,) = warp_points(UTM33, "EPSG:4326", [x], [y])
    assert ring[:, 0].mean() == pytest.approx(lon, abs=0.01)
    assert ring[:, 1].mean() == pytest.approx(lat, abs=0.01)
    assert 14.9 < lon < 15.1 and 45.0 < lat < 45.2
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["case.geojson", "case.gpkg"]


def test_wkt_only_crs_works(tmp_path: Path) -> None:
    wkt = custom_albers_wkt()
    transform = Affine(30, 0, -100_000, 0, -30, 1_500_000)
    features = label_polygons(_square(2), transform, class_names={2: "pivot"})
    write_polygons(
        features, CRS.from_wkt(wkt), gpkg=tmp_path / "a.gpkg", geojson=tmp_path / "a.geojson"
    )
    info = pyogrio.read_info(tmp_path / "a.gpkg")
    assert CRS.from_user_input(info["crs"]) == CRS.from_wkt(wkt)
    assert info["total_bounds"][0] == pytest.approx(-100_000 + 10 * 30)
    ring = _first_ring(tmp_path / "a.geojson")
    assert -98 < ring[:, 0].mean() < -96 and 35 < ring[:, 1].mean() < 38


def test_empty_features_write_valid_files(tmp_path: Path) -> None:
    write_polygons([], UTM33, gpkg=tmp_path / "e.gpkg", geojson=tmp_path / "e.geojson")
    info = pyogrio.read_info(tmp_path / "e.gpkg")
    assert info["features"] == 0 and list(info["fields"]) == ["class_value", "class_name", "area"]
    assert list(info["dtypes"]) == ["int64", "object", "float64"]
    assert json.loads((tmp_path / "e.geojson").read_text())["features"] == []
    with pytest.raises(UsageError):
        write_polygons([], UTM33, gpkg=None, geojson=None)


def test_valid_mask_and_instances_with_scores(tmp_path: Path) -> None:
    instances = np.zeros((20, 20), np.int32)
    instances[2:6, 2:6], instances[10:14, 10:16], instances[15:18, 0:3] = 1, 2, 3
    valid = np.ones_like(instances, dtype=bool)
    valid[15:, :] = False  # instance 3 lies on nodata
    features = label_polygons(
        instances, UTM_TRANSFORM, class_names=["bg", "nucleus"], valid=valid,
        scores={1: 0.9}, instance=True,
    )  # fmt: skip
    properties = sorted((f["properties"] for f in features), key=lambda p: p["instance_id"])
    assert [p["instance_id"] for p in properties] == [1, 2]
    assert properties[0]["score"] == 0.9 and "score" not in properties[1]
    assert {p["class_name"] for p in properties} == {"nucleus"}
    assert properties[1]["area"] == pytest.approx(24 * 100)
    write_polygons(features, UTM33, gpkg=tmp_path / "i.gpkg", geojson=None)
    meta, _, _, fields = pyogrio.raw.read(tmp_path / "i.gpkg")
    columns = dict(zip(meta["fields"], fields, strict=True))
    assert sorted(columns["instance_id"].tolist()) == [1, 2]
    assert np.isnan(columns["score"]).sum() == 1
