"""A native crash fails one file, not the batch (issue: a batch must never crash).

``segflow segment`` runs each file in a worker process. The plugin model of
:mod:`tests.crash_models` aborts (SIGABRT) or dereferences NULL (SIGSEGV) on the one flat
input among good ones: every good file must be done, the marked one named with its signal,
the exit code 3; a rerun must not crash again (the file is quarantined) unless asked.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from typer.testing import CliRunner

from data_contracts import get_settings
from flows.cli import app
from pipelines.ingest import ingest
from pipelines.synthetic import make_raster_dataset
from pipelines.synthetic.models import oracle_model
from seg_models.network_catalog import PLUGINS_ENV, unregister_model
from tests.oracle_registry import register_oracle

pytestmark = pytest.mark.usefixtures("prefect_api")

_CRS = "EPSG:32633"
_GOOD = 5


@pytest.fixture(scope="module", autouse=True)
def _crash_plugin() -> Iterator[None]:
    """``crash_on_flat`` registered in this process for the module only (other modules check
    that every registered model is documented and exercised)."""
    importlib.import_module("tests.crash_models")
    yield
    unregister_model("crash_on_flat")
    sys.modules.pop("tests.crash_models", None)


@pytest.fixture(autouse=True)
def _module_home(in_mlflow_home: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's MLflow home, and the crash plugin for the batch's worker processes."""
    monkeypatch.setenv(PLUGINS_ENV, "tests.crash_models")


def _register_crashing(how: str, root: Path) -> str:
    data = make_raster_dataset(root / "data", n_tiles=2, size=(40, 40), bands=3, crs=_CRS, seed=5)
    model = oracle_model(ingest(data, workdir=root / "work"), patch=(16, 16))
    spec = model.spec.model_copy(update={"name": "crash_on_flat", "options": {"how": how}})
    return register_oracle(dataclasses.replace(model, spec=spec), f"crashy-{how}")


@pytest.fixture(scope="module", params=["abort", "segv"])
def crashing(
    request: pytest.FixtureRequest, mlflow_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """(``models:/crashy-HOW@champion``, the signal its crash raises)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGFLOW_HOME", str(mlflow_home))
        get_settings.cache_clear()
        uri = _register_crashing(request.param, tmp_path_factory.mktemp(request.param))
    return uri, {"abort": "SIGABRT", "segv": "SIGSEGV"}[request.param]


def _write_raster(path: Path, data: np.ndarray) -> None:
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": "uint16",
        "crs": _CRS,
        "transform": from_origin(500_000, 4_600_000, 0.5, 0.5),
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)


def _inputs(folder: Path) -> Path:
    """Five noisy scenes (never a flat window) and one flat scene, the crash's mark."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(_GOOD):
        _write_raster(folder / f"good_{index}.tif", rng.integers(1, 4000, (3, 48, 48), "uint16"))
    _write_raster(folder / "flat.tif", np.full((3, 48, 48), 500, "uint16"))
    return folder


def _segment(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["segment", *args])
    return result.exit_code, result.output


def _row(out: Path, case_id: str) -> sqlite3.Row:
    with sqlite3.connect(out / ".segflow" / "ledger.sqlite") as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()


def test_a_native_crash_fails_one_file_and_is_quarantined(
    crashing: tuple[str, str], tmp_path: Path
) -> None:
    uri, signal_name = crashing
    source, out = _inputs(tmp_path / "in"), tmp_path / "out"

    code, output = _segment(str(source), "--model", uri, "--out", str(out))
    assert code == 3, output
    assert "flat" in output and signal_name in output
    assert sorted(p.name for p in out.glob("*.tif")) == [f"good_{i}.tif" for i in range(_GOOD)]
    assert not [p.name for p in out.rglob("*") if ".part" in p.name or ".work" in p.name]
    row = _row(out, "flat")
    assert row["status"] == "crashed" and row["crashes"] == 2  # retried once in a new worker
    assert signal_name in row["error"]
    ledger = json.loads((out / ".segflow" / "ledger.json").read_text())
    assert ledger["summary"] == {"done": _GOOD, "failed": 0, "running": 0, "crashed": 1}

    code, output = _segment(str(source), "--model", uri, "--out", str(out))
    assert code == 3, output
    assert "quarantined" in output and "--retry-crashed" in output
    assert _row(out, "flat")["crashes"] == 2  # not tried again: no new crash

    code, output = _segment(str(source), "--model", uri, "--out", str(out), "--retry-crashed")
    assert code == 3, output
    assert _row(out, "flat")["crashes"] == 3
    assert all(_row(out, f"good_{i}")["status"] == "done" for i in range(_GOOD))
