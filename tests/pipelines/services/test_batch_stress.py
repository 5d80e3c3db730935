"""No shared mutable state between task threads: 200 small rasters and 40 small volumes
through the threads runner with 4 workers, 20 times, give the masks of a 1-worker run.

The threads share one loaded model (``isolated=False``: the in-process path, where the race
was: two threads converted the cached model's parameters in place and the process died with
SIGSEGV); one more run goes through the default worker processes. Masks are compared pixel
for pixel with their geometry (their lineage records a timestamp, so files differ in that tag).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio

from data_contracts import get_settings
from flows.runners import task_runner
from flows.segment_flow import segment_archive_flow
from pipelines.ingest import ingest
from pipelines.synthetic import make_raster_dataset, make_volume_dataset
from pipelines.synthetic.models import oracle_model
from tests.oracle_registry import register_oracle

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

_REPEATS = 20


@pytest.fixture(autouse=True)
def _module_home(in_mlflow_home: None) -> None:
    """Every test of this module uses the module's MLflow home."""


@pytest.fixture(scope="module")
def archives(mlflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """(input folder, champion URI) for 200 rasters of 24² and for 40 volumes of 12×10×8."""
    root = tmp_path_factory.mktemp("stress")
    rasters = make_raster_dataset(root / "rasters", n_tiles=200, size=(24, 24), bands=2, seed=3)
    volumes = make_volume_dataset(
        root / "volumes",
        n_cases=40,
        shape=(12, 10, 8),
        n_channels=1,
        n_classes=1,
        layout="images_labels",
        list_cases=False,
    )
    found = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGFLOW_HOME", str(mlflow_home))
        get_settings.cache_clear()
        for name, data, patch_size in (("r", rasters, (16, 16)), ("v", volumes, None)):
            model = oracle_model(ingest(data, workdir=root / f"work-{name}"), patch=patch_size)
            found.append((data / "images", register_oracle(model, f"stress-{name}")))
    return found


def _masks(out: Path) -> dict[str, bytes]:
    """Every mask's pixels and geometry, by file name."""
    masks = {}
    for path in sorted(out.glob("*.tif")):
        with rasterio.open(path) as mask:
            masks[path.name] = mask.read().tobytes() + repr((mask.crs, mask.transform)).encode()
    for path in sorted(out.glob("*.nii.gz")):
        image = nib.load(path)
        masks[path.name] = np.asanyarray(image.dataobj).tobytes() + image.affine.tobytes()
    return masks


def _segment(source: Path, model: str, out: Path, workers: int, isolated: bool) -> dict[str, bytes]:
    flow = segment_archive_flow.with_options(
        task_runner=task_runner("threads", max_workers=workers)
    )
    summary = flow(source=str(source), model=model, out=str(out), track=False, isolated=isolated)
    assert summary["exit_code"] == 0, summary["failed_files"]
    return _masks(out)


def test_threads_sharing_a_model_give_the_masks_of_one_worker(
    archives: list[tuple[Path, str]], tmp_path: Path
) -> None:
    for index, (source, model) in enumerate(archives):
        reference = _segment(source, model, tmp_path / f"ref-{index}", 1, isolated=False)
        assert len(reference) == len(list(source.iterdir()))
        for repeat in range(_REPEATS):
            out = tmp_path / f"run-{index}-{repeat}"
            assert _segment(source, model, out, 4, isolated=False) == reference, repeat
        isolated = _segment(source, model, tmp_path / f"iso-{index}", 4, isolated=True)
        assert isolated == reference
