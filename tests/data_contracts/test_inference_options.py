"""``InferenceOptions``: checked once, in the project's errors; unset windows take the kind's."""

from __future__ import annotations

import pickle

import pytest

from data_contracts import InferenceOptions, UsageError
from pipelines.infer.sliding import window_options
from pipelines.kinds import kind_adapter


def test_defaults_leave_the_windows_to_the_kind() -> None:
    options = InferenceOptions()
    assert (options.overlap, options.batch_size, options.device) == (None, None, None)
    assert not (options.polygons or options.probabilities or options.tta)
    with pytest.raises(UsageError, match="unset"):
        options.window_settings()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"overlap": 1.0}, r"overlap must be in \[0, 1\), not 1\.0"),
        ({"overlap": -0.1}, r"overlap must be in \[0, 1\), not -0\.1"),
        ({"batch_size": 0}, "batch_size must be at least 1, not 0"),
        ({"mode": "median"}, "mode must be 'gaussian' or 'constant', not 'median'"),
        ({"sigma_scale": 0}, "sigma_scale must be positive"),
        ({"read_ahead": -1}, "read_ahead must be 0 or more"),
        ({"read_threads": 0}, "read_threads must be at least 1"),
        ({"overlapp": 0.5}, "overlapp is not an inference option"),
    ],
)
def test_bad_values_are_usage_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        InferenceOptions(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "overlap", "batch_size"), [("volume", 0.5, 4), ("raster", 0.25, 8), ("image", 0.25, 8)]
)
def test_unset_windows_take_the_kinds_defaults(kind: str, overlap: float, batch_size: int) -> None:
    adapter = kind_adapter(kind)
    assert (adapter.default_overlap, adapter.default_window_batch) == (overlap, batch_size)
    resolved = window_options(InferenceOptions(tta=True, device="cpu"), kind)
    assert resolved.window_settings() == (overlap, batch_size)
    assert resolved.tta and resolved.device == "cpu"  # the rest passes unchanged
    assert window_options(None, kind).window_settings() == (overlap, batch_size)


def test_set_windows_are_kept() -> None:
    options = InferenceOptions(overlap=0.0, batch_size=1)
    assert window_options(options, "volume") == options
    half = window_options(InferenceOptions(overlap=0.1), "image")
    assert half.window_settings() == (0.1, 8)


def test_options_survive_pickling_and_json() -> None:
    options = InferenceOptions(polygons=True, overlap=0.3, read_ahead=2, mode="constant")
    assert pickle.loads(pickle.dumps(options)) == options  # sent to worker processes
    assert InferenceOptions.model_validate_json(options.model_dump_json()) == options
