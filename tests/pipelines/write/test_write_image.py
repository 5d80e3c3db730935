"""Label and probability images for plain 2D inputs: exact round trips, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from data_contracts import OutputError, UsageError
from pipelines.io.image2d import read_image
from pipelines.write import image2d
from pipelines.write.image2d import write_label_image, write_probability_image


def _labels(max_value: int, shape: tuple[int, int] = (23, 31)) -> np.ndarray:
    values = np.random.default_rng(max_value).integers(0, max_value + 1, shape)
    values.flat[0] = max_value
    return values.astype(np.int64)


@pytest.mark.parametrize(
    ("suffix", "max_value", "dtype"),
    [
        (".png", 4, np.uint8),
        (".png", 255, np.uint8),
        (".png", 300, np.uint16),
        (".png", 65535, np.uint16),
        (".tif", 7, np.uint8),
        (".tiff", 4000, np.uint16),
    ],
)
def test_labels_round_trip_exactly(
    tmp_path: Path, suffix: str, max_value: int, dtype: type
) -> None:
    labels = _labels(max_value)
    written = write_label_image(labels, tmp_path / f"case{suffix}")
    back = read_image(written)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, labels)
    assert [p.name for p in tmp_path.iterdir()] == [f"case{suffix}"]


def test_instance_maps_are_uint16(tmp_path: Path) -> None:
    instances = _labels(12)
    back = read_image(write_label_image(instances, tmp_path / "nuclei.png", instance=True))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, instances)


@pytest.mark.parametrize(
    ("labels", "name"),
    [
        (np.zeros((4, 4), np.float32), "a.png"),
        (np.zeros((2, 4, 4), np.uint8), "a.png"),
        (np.full((4, 4), -1), "a.png"),
        (np.full((4, 4), 70000), "a.png"),
        (np.zeros((4, 4), np.uint8), "a.jpg"),
    ],
)
def test_bad_labels_are_refused(tmp_path: Path, labels: np.ndarray, name: str) -> None:
    with pytest.raises(UsageError):
        write_label_image(labels, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("encoder exploded")

    monkeypatch.setattr(image2d.tifffile, "imwrite", broken)
    with pytest.raises(OutputError, match="encoder exploded"):
        write_label_image(np.ones((5, 5), np.uint8), tmp_path / "out.tif")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_survives_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = write_label_image(np.ones((5, 5), np.uint8), tmp_path / "out.png")
    before = destination.read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(image2d.Image.Image, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        write_label_image(np.zeros((5, 5), np.uint8), destination)
    assert destination.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_probabilities_as_uint8_tiff(tmp_path: Path) -> None:
    probabilities = np.moveaxis(np.random.default_rng(2).dirichlet([1.0] * 3, (17, 19)), -1, 0)
    written = write_probability_image(probabilities, tmp_path / "probs.tif")
    stored = tifffile.imread(written)
    assert stored.dtype == np.uint8 and stored.shape == (3, 17, 19)
    assert np.abs(stored / 255.0 - probabilities).max() <= 0.5 / 255 + 1e-12
    with tifffile.TiffFile(written) as tif:
        assert len(tif.pages) == 1 and tif.series[0].axes == "SYX"
    with pytest.raises(UsageError):
        write_probability_image(probabilities, tmp_path / "probs.png")
    with pytest.raises(UsageError):
        write_probability_image(np.full((2, 3, 3), np.nan), tmp_path / "nan.tif")
