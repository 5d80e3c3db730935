"""Data contracts: exact JSON round trips, frozen models, no unknown fields, the error tree."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import data_contracts
from data_contracts import (
    Case,
    DatasetManifest,
    FileRecord,
    ImageGeometry,
    LabelStats,
    ModelSpec,
    RasterGeometry,
    RejectedInput,
    VolumeGeometry,
)

SHA = "a" * 64
AFFINE = (
    (-0.9, 0.0, 0.0, 10.0),
    (0.0, -1.1, 0.0, 20.0),
    (0.0, 0.0, 3.0, -5.0),
    (0.0, 0.0, 0.0, 1.0),
)


def _volume() -> VolumeGeometry:
    return VolumeGeometry(
        shape=(32, 28, 16),
        affine=AFFINE,
        spacing=(0.9, 1.1, 3.0),
        orientation=("L", "P", "S"),
        dtype="float32",
    )


def _raster(nodata: float | None = float("nan")) -> RasterGeometry:
    return RasterGeometry(
        width=96,
        height=64,
        count=3,
        dtype="uint16",
        crs_wkt='PROJCS["x"]',
        epsg=None,
        transform=(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0),
        nodata=nodata,
        block_size=(64, 64),
        resolution=(0.5, 0.5),
    )


def _manifest() -> DatasetManifest:
    record = FileRecord(path="/data/a_0000.nii.gz", sha256=SHA, size_bytes=10)
    cases = (
        Case(
            case_id="a",
            kind="volume",
            channels=(record,),
            label=record,
            geometry=_volume(),
            label_stats=LabelStats(values=(0, 1), voxel_counts=(10, 2)),
            channel_counts=(1,),
        ),
        Case(
            case_id="b", kind="raster", channels=(record,), geometry=_raster(), channel_counts=(3,)
        ),
        Case(
            case_id="c",
            kind="image",
            channels=(record,),
            geometry=ImageGeometry(height=5, width=6, channels=3, dtype="uint8"),
        ),
    )
    rejected = (
        RejectedInput(
            path="/data/x.tif", case_id="x", error="GeoreferenceError", reason="x.tif: has no CRS"
        ),
    )
    return DatasetManifest(
        name="demo",
        source="/data",
        segflow_version="0.1.0",
        labels={"background": 0, "fg": 1},
        ignore_value=-1,
        channel_names=("T1",),
        cases=cases,
        rejected=rejected,
    )


@pytest.mark.parametrize(
    "model",
    [
        _volume(),
        _raster(),
        _raster(None),
        _manifest(),
        ModelSpec(name="unet", in_channels=2, num_classes=3, options={"features": [8, 16]}),
    ],
)
def test_json_round_trip_is_exact(model: data_contracts.Case) -> None:
    text = model.model_dump_json()
    again = type(model).model_validate_json(text)
    assert again.model_dump_json() == text


def test_nan_nodata_survives_json() -> None:
    again = RasterGeometry.model_validate_json(_raster().model_dump_json())
    assert again.nodata is not None and math.isnan(again.nodata)


def test_contracts_are_frozen_and_strict() -> None:
    geometry = _volume()
    with pytest.raises(ValidationError):
        geometry.dtype = "int16"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        VolumeGeometry.model_validate({**geometry.model_dump(), "colour": "blue"})


@pytest.mark.parametrize(
    ("field", "value"),
    [("spacing", (0.0, 1.0, 1.0)), ("spacing", (float("nan"), 1.0, 1.0)), ("shape", (0, 4, 4))],
)
def test_volume_geometry_rejects_impossible_values(field: str, value: tuple[float, ...]) -> None:
    with pytest.raises(ValidationError):
        VolumeGeometry.model_validate({**_volume().model_dump(), field: value})


def test_every_geometry_counts_its_pixels_per_channel() -> None:
    image = ImageGeometry(height=5, width=6, channels=3, dtype="uint8")
    assert (_volume().pixel_count, _raster().pixel_count, image.pixel_count) == (
        32 * 28 * 16,
        96 * 64,
        6 * 5,
    )


def test_manifest_rejects_duplicate_case_ids() -> None:
    manifest = _manifest()
    with pytest.raises(ValidationError, match="duplicate case id"):
        DatasetManifest.model_validate(
            {**manifest.model_dump(), "cases": [manifest.cases[0].model_dump()] * 2}
        )


def test_case_geometry_must_match_its_kind() -> None:
    record = FileRecord(path="/a.tif", sha256=SHA, size_bytes=1)
    with pytest.raises(ValidationError, match="geometry kind"):
        Case(case_id="a", kind="volume", channels=(record,), geometry=_raster())


def test_contracts_import_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, data_contracts; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("name", data_contracts.errors.__all__)
def test_every_error_is_a_segflow_error_and_a_builtin(name: str) -> None:
    cls = getattr(data_contracts, name)
    error = cls("is broken", path="/data/x.nii.gz", hint="replace it")
    assert isinstance(error, data_contracts.SegflowError)
    if cls is not data_contracts.SegflowError:
        assert isinstance(error, ValueError | OSError)
    assert str(error) == "/data/x.nii.gz: is broken. Fix: replace it"
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls and str(again) == str(error)


@given(
    shape=st.tuples(*(st.integers(1, 10_000),) * 3),
    spacing=st.tuples(*(st.floats(1e-3, 1e3, allow_nan=False),) * 3),
    channels=st.integers(1, 16),
)
def test_volume_geometry_round_trips_any_valid_values(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], channels: int
) -> None:
    geometry = VolumeGeometry(
        shape=shape,
        affine=AFFINE,
        spacing=spacing,
        orientation=("R", "A", "S"),
        dtype="int16",
        channels=channels,
    )
    assert VolumeGeometry.model_validate_json(geometry.model_dump_json()) == geometry
