"""The data-kind registry (pipelines.kinds): lookups, registration, the full protocol per kind,
and the choices the adapters take over from the steps."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import pipelines.kinds
from data_contracts import (
    ConfigError,
    ImageGeometry,
    IngestOptions,
    InputError,
    LabelGeometryError,
    RasterGeometry,
    UnsupportedFormatError,
    VolumeGeometry,
)
from pipelines.ingest.candidates import CaseCandidate
from pipelines.ingest.run import _KindResolver
from pipelines.io.formats import IMAGE_SUFFIXES
from pipelines.kinds import (
    AnyGeometry,
    KindAdapter,
    adapter_for_geometry,
    kind_adapter,
    register_kind,
    registered_adapters,
    registered_kinds,
)
from pipelines.kinds.image2d import ImageKind

REPO = Path(__file__).resolve().parents[3]
_VOLUME = VolumeGeometry(
    shape=(4, 5, 6),
    affine=((2.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 3.0, 0), (0, 0, 0, 1)),
    spacing=(2.0, 1.0, 3.0),
    orientation=("R", "A", "S"),
    dtype="float32",
)
_RASTER = RasterGeometry(
    width=30,
    height=20,
    count=3,
    dtype="uint16",
    crs_wkt=None,
    transform=(10.0, 0.0, 500.0, 0.0, -5.0, 900.0),
    block_size=(20, 30),
    resolution=(10.0, 5.0),
)
_IMAGE = ImageGeometry(height=7, width=9, channels=4, dtype="uint8")
_PAIRS: tuple[tuple[str, AnyGeometry], ...] = (
    ("volume", _VOLUME),
    ("raster", _RASTER),
    ("image", _IMAGE),
)


def _protocol_members() -> tuple[set[str], set[str]]:
    """The attributes and the methods :class:`KindAdapter` declares."""
    attributes = set(KindAdapter.__annotations__)
    methods = {
        name
        for name, value in vars(KindAdapter).items()
        if inspect.isfunction(value) and not name.startswith("_")
    }
    return attributes, methods


def test_the_builtin_kinds_are_registered_in_order() -> None:
    assert registered_kinds()[:3] == ("volume", "raster", "image")
    assert [adapter.name for adapter in registered_adapters()] == list(registered_kinds())


def test_an_unknown_kind_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown data kind 'omezarr'.*volume, raster, image"):
        kind_adapter("omezarr")


@pytest.mark.parametrize("name", ["volume", "raster", "image"])
def test_every_registered_kind_has_the_full_protocol(name: str) -> None:
    adapter = kind_adapter(name)
    assert isinstance(adapter, KindAdapter)
    attributes, methods = _protocol_members()
    assert len(attributes) >= 10 and len(methods) >= 15
    for attribute in attributes:
        assert hasattr(adapter, attribute), f"{name} lacks {attribute}"
    for method in methods:
        declared = inspect.signature(getattr(KindAdapter, method))
        implemented = inspect.signature(getattr(type(adapter), method))
        assert list(implemented.parameters) == list(declared.parameters), f"{name}.{method}"
    assert adapter.name == name and adapter.suffixes
    assert all(suffix == suffix.lower() and suffix.startswith(".") for suffix in adapter.suffixes)


def test_a_registered_toy_kind_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    registered_kinds()  # the built-in kinds first, as any lookup does
    monkeypatch.setattr(pipelines.kinds, "_ADAPTERS", dict(pipelines.kinds._ADAPTERS))

    class ToyKind(ImageKind):
        name = "toy"
        suffixes: tuple[str, ...] = (".toy",)

    toy = register_kind(ToyKind())
    assert kind_adapter("toy") is toy
    assert registered_kinds()[-1] == "toy"
    assert isinstance(toy, KindAdapter)


def test_a_toy_kind_leaves_the_registry_with_its_test() -> None:
    with pytest.raises(ConfigError):
        kind_adapter("toy")


def test_geometries_find_their_adapter() -> None:
    assert adapter_for_geometry(_VOLUME).name == "volume"
    assert adapter_for_geometry(_RASTER).name == "raster"
    assert adapter_for_geometry(_IMAGE).name == "image"


def test_every_image_suffix_is_read_by_some_kind() -> None:
    read = {suffix for adapter in registered_adapters() for suffix in adapter.suffixes}
    assert read == set(IMAGE_SUFFIXES)


def test_window_defaults_by_kind() -> None:
    assert (
        kind_adapter("volume").default_overlap,
        kind_adapter("volume").default_window_batch,
    ) == (
        0.5,
        4,
    )
    for name in ("raster", "image"):
        assert (kind_adapter(name).default_overlap, kind_adapter(name).default_window_batch) == (
            0.25,
            8,
        )


def test_grid_axes_are_in_the_networks_order() -> None:
    assert kind_adapter("volume").grid_axes(_VOLUME) == ((4, 5, 6), (2.0, 1.0, 3.0))
    assert kind_adapter("raster").grid_axes(_RASTER) == ((20, 30), (5.0, 10.0))
    assert kind_adapter("image").grid_axes(_IMAGE) == ((7, 9), (1.0, 1.0))


def test_channels_and_georeferencing_by_kind() -> None:
    assert [kind_adapter(k).channels_of(g) for k, g in _PAIRS] == [1, 3, 4]
    assert [kind_adapter(k).is_ungeoreferenced(g) for k, g in _PAIRS] == [False, True, False]
    assert [kind_adapter(k).fixed_channels for k, _ in _PAIRS] == [True, True, False]


def test_an_adapter_refuses_another_kinds_geometry() -> None:
    with pytest.raises(InputError, match="geometry of kind 'image' where a RasterGeometry"):
        kind_adapter("raster").channels_of(_IMAGE)


@pytest.mark.parametrize("name", ["volume", "image"])
def test_kinds_without_a_crs_refuse_vector_labels(name: str, tmp_path: Path) -> None:
    grid = dict(_PAIRS)[name]
    with pytest.raises(LabelGeometryError, match="not a georeferenced raster"):
        kind_adapter(name).rasterize_vector_label(
            tmp_path / "a.geojson", grid, tmp_path / "a.tif", IngestOptions(), instance=False
        )


def _tiff(path: Path, *, crs: str | None) -> Path:
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint8"}
    if crs is not None:
        profile.update(crs=crs, transform=from_origin(500_000, 4_000_000, 10, 10))
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(np.zeros((1, 8, 8), np.uint8))
    return path


def _kind(path: Path, others: list[Path] | None = None, forced: str = "auto") -> str:
    candidates = [CaseCandidate(p.stem, (p,), None) for p in [path, *(others or [])]]
    resolver = _KindResolver(IngestOptions(kind=forced), candidates)  # type: ignore[arg-type]
    return resolver.kind_of(candidates[0])


def test_ingest_picks_the_kind_by_suffix_and_crs(tmp_path: Path) -> None:
    plain = _tiff(tmp_path / "plain.tif", crs=None)
    geo = _tiff(tmp_path / "geo.tif", crs="EPSG:32633")
    assert _kind(tmp_path / "a.nii.gz") == "volume"
    assert _kind(tmp_path / "a.png") == "image"
    assert _kind(plain) == "image"
    assert _kind(plain, [geo]) == "raster"  # one TIFF with a CRS makes the dataset geographic
    assert _kind(geo, forced="image") == "image"
    with pytest.raises(UnsupportedFormatError, match="cannot be read as a volume"):
        _kind(plain, forced="volume")
    with pytest.raises(UnsupportedFormatError, match=r"unsupported file type '\.jpg'"):
        _kind(tmp_path / "photo.jpg")


def test_looking_up_a_kind_imports_neither_torch_nor_monai() -> None:
    """Ingest and planning use the adapters; they must start without the deep-learning stack."""
    code = (
        "import sys; from pipelines.kinds import registered_adapters; registered_adapters(); "
        "sys.exit(int('torch' in sys.modules or 'monai' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0


@pytest.mark.parametrize("kind", ["raster", "image"])
def test_validation_reads_labels_and_spacing_through_the_adapter(kind: str, tmp_path: Path) -> None:
    import torch

    from pipelines.ingest import ingest
    from pipelines.io.image2d import read_image
    from pipelines.plan import compute_fingerprint, make_plan
    from pipelines.synthetic import make_image_dataset, make_raster_dataset
    from pipelines.train.evaluate import _spacing, read_instances

    if kind == "raster":
        make_raster_dataset(tmp_path / "data", n_tiles=1, size=(40, 30), seed=1)
    else:
        make_image_dataset(tmp_path / "data", n_images=1, size=(24, 20), seed=1)
    manifest = ingest(tmp_path / "data", workdir=tmp_path / "work")
    (case,) = manifest.labelled_cases
    assert case.kind == kind and case.label is not None
    if kind == "raster":
        with rasterio.open(case.label.path) as dataset:
            stored = dataset.read(1)
    else:
        stored = read_image(case.label.path)
    np.testing.assert_array_equal(read_instances(case), stored)
    plan = make_plan(compute_fingerprint(manifest), manifest)
    assert plan.target_spacing is None
    image = torch.zeros((plan.in_channels, *stored.shape[-2:]))  # the preprocessed (C, H, W)
    assert _spacing(case, plan, image) == kind_adapter(kind).grid_axes(case.geometry)[1]
