"""Streamed sliding-window inference equals MONAI's whole-image result, a band of rows at a time."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pytest
import rasterio
import torch
from monai.inferers import sliding_window_inference
from numpy.typing import NDArray
from rasterio.transform import Affine
from rasterio.windows import Window

from data_contracts import (
    ChannelNormalization,
    CorruptFileError,
    InferenceOptions,
    ModelError,
    UsageError,
)
from pipelines.infer.stream import Predictor, StreamSummary, stream_raster
from pipelines.postprocess.decision import class_indices
from pipelines.preprocess.array import normalize_channels

torch.set_num_threads(1)
UTM_HALF_METRE = Affine.translation(500_000, 4_100_000) @ Affine.scale(0.5, -0.5)
N_CLASSES = 3
NORMALIZE = partial(
    normalize_channels, norms=[ChannelNormalization(scheme="percentile", lower=0, upper=255)] * 3
)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """A fixed random 5×5 convolution + softmax: deterministic and border-sensitive."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, N_CLASSES, 5, padding=2).eval()
    return lambda patches: torch.softmax(conv(patches), dim=1)


class Windows(NamedTuple):
    """A window size and the options a stream runs such windows with."""

    roi: tuple[int, int]
    options: InferenceOptions


def windows(
    roi: tuple[int, int],
    overlap: float = 0.25,
    batch_size: int = 8,
    mode: Literal["gaussian", "constant"] = "gaussian",
    **options: int,
) -> Windows:
    """``roi`` windows with this overlap, batch size (0.25 and 8 unless told) and blending."""
    return Windows(
        roi, InferenceOptions(overlap=overlap, batch_size=batch_size, mode=mode, **options)
    )


def _write_scene(path: Path, image: NDArray[np.uint8], nodata: int | None = None) -> Path:
    """A tiled (64 px), deflate GeoTIFF in UTM 33N with 0.5 m pixels."""
    count, height, width = image.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype="uint8",
        crs="EPSG:32633", transform=UTM_HALF_METRE, nodata=nodata,
        tiled=True, blockxsize=64, blockysize=64, compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(image)
    return path


def _scene(height: int, width: int, seed: int = 0) -> NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, (3, height, width), dtype=np.uint8)


class _Bands:
    """A sink that keeps copies of what it is given."""

    def __init__(self) -> None:
        self.windows: list[Window] = []
        self.probabilities: list[NDArray[np.float32]] = []
        self.valid: list[NDArray[np.bool_]] = []

    def __call__(
        self, window: Window, probs: NDArray[np.float32], valid: NDArray[np.bool_]
    ) -> None:
        self.windows.append(window)
        self.probabilities.append(probs.copy())
        self.valid.append(valid.copy())

    def stacked(self) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        return np.concatenate(self.probabilities, axis=1), np.concatenate(self.valid, axis=0)


def _stream(path: Path, predictor: Predictor, config: Windows) -> tuple[_Bands, StreamSummary]:
    bands = _Bands()
    with rasterio.open(path) as dataset:
        summary = stream_raster(
            dataset, predictor, N_CLASSES, config.roi, config.options,
            normalize=NORMALIZE, sink=bands,
        )  # fmt: skip
    return bands, summary


def _monai(image: NDArray[np.float32], predictor: Predictor, config: Windows) -> NDArray:
    normalised = NORMALIZE(torch.from_numpy(image))[None]
    overlap, batch_size = config.options.window_settings()
    with torch.inference_mode():
        result = sliding_window_inference(
            normalised, config.roi, batch_size, predictor, overlap, mode=config.options.mode
        )
    assert isinstance(result, torch.Tensor)
    return result[0].numpy()


@pytest.mark.parametrize(
    ("height", "width", "config"),
    [
        pytest.param(150, 203, windows((64, 48), 0.25, 4), id="not-a-multiple-of-stride"),
        pytest.param(40, 50, windows((64, 64), 0.25, 2), id="smaller-than-roi"),
        pytest.param(37, 130, windows((48, 32), 0.25, 3), id="shorter-than-roi"),
        pytest.param(330, 90, windows((32, 32), 0.5, 5), id="many-strips"),
        pytest.param(97, 70, windows((24, 40), 0.0, 8, "constant"), id="no-overlap"),
        pytest.param(120, 100, windows((32, 32), read_ahead=2), id="read-ahead"),
        pytest.param(260, 150, windows((32, 32), read_threads=1), id="one-read-thread"),
        pytest.param(150, 90, windows((48, 32), read_threads=2), id="two-read-threads"),
    ],
)
def test_stream_equals_monai_sliding_window(
    tmp_path: Path, predictor: Predictor, height: int, width: int, config: Windows
) -> None:
    image = _scene(height, width)
    bands, summary = _stream(_write_scene(tmp_path / "scene.tif", image), predictor, config)
    streamed, valid = bands.stacked()
    expected = _monai(image.astype(np.float32), predictor, config)
    assert streamed.shape == expected.shape == (N_CLASSES, height, width)
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-5)
    assert valid.all()
    assert summary.batches >= summary.windows / config.options.window_settings()[1]


def test_bands_cover_every_row_once_in_order(tmp_path: Path, predictor: Predictor) -> None:
    path = _write_scene(tmp_path / "scene.tif", _scene(200, 75))
    seen: list[int] = []
    bands, _ = _stream(path, predictor, windows((32, 32), 0.25, 4))
    assert len(bands.windows) > 3
    next_row = 0
    for window, probs, valid in zip(bands.windows, bands.probabilities, bands.valid, strict=True):
        assert (window.row_off, window.col_off, window.width) == (next_row, 0, 75)
        assert probs.dtype == np.float32 and probs.shape == (N_CLASSES, window.height, 75)
        assert valid.dtype == np.bool_ and valid.shape == (window.height, 75)
        next_row += window.height
        seen.extend(range(window.row_off, window.row_off + window.height))
    assert seen == list(range(200))
    np.testing.assert_allclose(bands.stacked()[0].sum(axis=0), 1.0, atol=1e-5)


def test_nodata_pixels_are_invalid(tmp_path: Path, predictor: Predictor) -> None:
    image = _scene(90, 110, seed=3)
    image[1, 20:45, 30:70] = 0  # nodata in one band only is enough
    image[:, 80:, :5] = 0
    path = _write_scene(tmp_path / "scene.tif", image, nodata=0)
    config = windows((32, 32), 0.25, 4)
    bands, _ = _stream(path, predictor, config)
    streamed, valid = bands.stacked()
    np.testing.assert_array_equal(valid, (image != 0).all(axis=0))
    with_nan = np.where(image == 0, np.nan, image.astype(np.float32))
    np.testing.assert_allclose(streamed, _monai(with_nan, predictor, config), atol=1e-5)


def test_mask_band_pixels_are_invalid(tmp_path: Path, predictor: Predictor) -> None:
    image = _scene(70, 60, seed=5)
    path = _write_scene(tmp_path / "scene.tif", image)
    mask = np.full((70, 60), 255, np.uint8)
    mask[10:30, 5:50] = 0
    with rasterio.open(path, "r+") as dataset:
        dataset.write_mask(mask)
    bands, _ = _stream(path, predictor, windows((32, 32), 0.25, 4))
    np.testing.assert_array_equal(bands.stacked()[1], mask > 0)


def test_accumulator_grows_with_width_not_height(tmp_path: Path, predictor: Predictor) -> None:
    config = windows((32, 32), 0.25, 8)
    peaks = {}
    for height, width in ((104, 64), (208, 64), (104, 128)):
        path = _write_scene(tmp_path / f"{height}x{width}.tif", _scene(height, width))
        peaks[height, width] = _stream(path, predictor, config)[1].peak_band_bytes
    assert peaks[208, 64] == peaks[104, 64]
    assert peaks[104, 128] == 2 * peaks[104, 64]


def test_progress_reports_every_batch(tmp_path: Path, predictor: Predictor) -> None:
    path = _write_scene(tmp_path / "scene.tif", _scene(60, 60))
    calls: list[tuple[int, int]] = []
    with rasterio.open(path) as dataset:
        summary = stream_raster(
            dataset, predictor, N_CLASSES, *windows((32, 32), 0.25, 3),
            normalize=NORMALIZE, sink=lambda *_: None, progress=lambda *a: calls.append(a),
        )  # fmt: skip
    assert len(calls) == summary.batches
    assert calls[-1] == (summary.windows, summary.windows) == (9, 9)


def test_wrong_predictor_output_is_a_model_error(tmp_path: Path) -> None:
    path = _write_scene(tmp_path / "scene.tif", _scene(40, 40))
    with rasterio.open(path) as dataset, pytest.raises(ModelError, match=r"\(1, 2, 32, 32\)"):
        stream_raster(
            dataset, lambda x: x[:, :2], N_CLASSES, *windows((32, 32), batch_size=1),
            normalize=NORMALIZE, sink=lambda *_: None,
        )  # fmt: skip


@pytest.mark.parametrize("read_ahead", [0, 1])
def test_damaged_tiles_are_a_corrupt_file_error(
    tmp_path: Path, predictor: Predictor, read_ahead: int
) -> None:
    path = _write_scene(tmp_path / "scene.tif", _scene(128, 128))
    content = bytearray(path.read_bytes())
    third = len(content) // 3  # a third of the tiles' bytes: at least one tile's zlib header
    content[third : 2 * third] = bytes(third)
    path.write_bytes(content)
    with rasterio.open(path) as dataset, pytest.raises(CorruptFileError, match="cannot be read"):
        stream_raster(
            dataset, predictor, N_CLASSES, *windows((32, 32), read_ahead=read_ahead),
            normalize=NORMALIZE, sink=lambda *_: None,
        )  # fmt: skip


def test_normalize_must_keep_the_shape(tmp_path: Path, predictor: Predictor) -> None:
    path = _write_scene(tmp_path / "scene.tif", _scene(40, 40))
    with rasterio.open(path) as dataset, pytest.raises(UsageError, match="normalize"):
        stream_raster(
            dataset, predictor, N_CLASSES, *windows((32, 32)),
            normalize=lambda x: x[:2], sink=lambda *_: None,
        )  # fmt: skip


def test_nodata_across_strip_and_tile_borders(tmp_path: Path, predictor: Predictor) -> None:
    image = _scene(200, 170, seed=7)
    image[0, 50:140, 60:75] = 0  # crosses strips (stride 24) and 64 px tiles in both directions
    image[:, 120:130, :] = 0
    config = windows((32, 32), 0.25, 3, read_ahead=1)
    bands, _ = _stream(_write_scene(tmp_path / "scene.tif", image, nodata=0), predictor, config)
    streamed, valid = bands.stacked()
    np.testing.assert_array_equal(valid, (image != 0).all(axis=0))
    with_nan = np.where(image == 0, np.nan, image.astype(np.float32))
    np.testing.assert_allclose(streamed, _monai(with_nan, predictor, config), atol=1e-5)


@pytest.mark.parametrize("n_classes", [1, 2, 3])
def test_class_indices_is_argmax_with_ties_to_the_first_class(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    probabilities = rng.integers(0, 4, (n_classes, 30, 40)).astype(np.float32)  # many ties
    labels = class_indices(probabilities)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=0))


def test_a_foreground_cut_decides_the_region_before_the_class() -> None:
    # per pixel: background, necrosis, edema; the middle pixel's tumour is split in two
    probabilities = np.array(
        [[0.7, 0.4, 0.55, 0.2], [0.2, 0.3, 0.2, 0.3], [0.1, 0.3, 0.25, 0.5]], dtype=np.float32
    )[:, None, :]
    assert class_indices(probabilities).tolist() == [[0, 0, 0, 2]]
    assert class_indices(probabilities, foreground_cut=0.5).tolist() == [[0, 1, 0, 2]]
    binary = probabilities[:2] / probabilities[:2].sum(axis=0)
    np.testing.assert_array_equal(class_indices(binary, foreground_cut=0.5), class_indices(binary))
    many = np.full((300, 1, 2), 0.001, dtype=np.float32)
    many[0, 0, 0], many[299, 0, 1] = 0.9, 0.4
    assert class_indices(many, foreground_cut=0.5).tolist() == [[0, 299]]
    assert class_indices(many, foreground_cut=0.5).dtype == np.uint16


@pytest.mark.parametrize(
    ("roi", "options", "message"),
    [
        ((0, 32), InferenceOptions(overlap=0.25, batch_size=2), "roi must be two positive"),
        ((32, 32, 32), InferenceOptions(overlap=0.25, batch_size=2), "roi must be two positive"),
        ((32, 32), InferenceOptions(batch_size=2), "overlap and batch size are unset"),
        ((32, 32), InferenceOptions(overlap=0.25), "overlap and batch size are unset"),
    ],
)
def test_bad_windows_are_a_usage_error(
    tmp_path: Path, predictor: Predictor, roi: tuple[int, int], options: InferenceOptions,
    message: str,
) -> None:  # fmt: skip
    path = _write_scene(tmp_path / "scene.tif", _scene(40, 40))
    with rasterio.open(path) as dataset, pytest.raises(UsageError, match=message):
        stream_raster(
            dataset, predictor, N_CLASSES, roi, options, normalize=NORMALIZE, sink=lambda *_: None
        )
