"""Every kind of bad input (tests/corpus) through every entry point it can reach.

Per kind and entry point the outcome must be the expected error class (or ``ok`` for inputs
that are valid there), with a message naming the file, the good cases done, nothing partial
left, and the result saying partial. ``pytest -s`` prints the whole table.

The unreadable file and the read-only output folder are made real for root (whom permissions
do not stop) by raising the ``PermissionError`` the kernel raises for anyone else; the slow test
runs them as ``nobody`` with ``setpriv``, where the kernel itself refuses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import data_contracts.errors
from pipelines.infer.loaded_model import LoadedModel
from pipelines.ingest import ingest
from pipelines.synthetic import make_image_dataset, make_raster_dataset, make_volume_dataset
from pipelines.synthetic.models import oracle_model
from tests.corpus.entry_points import Outcome, run_entry_point
from tests.corpus.make_corpus import ENTRY_POINTS, OK, Kind, make_corpus, table
from tests.data import make_malformed as mm

REPO = Path(__file__).resolve().parents[2]

#: The issue's list of bad inputs → the corpus kinds that cover each.
REQUIRED = {
    "0-byte file": ["empty_image"],
    "truncated .nii.gz / GeoTIFF": ["truncated_nifti", "truncated_geotiff"],
    "gzip bomb": ["nifti_gzip_bomb", "zip_bomb"],
    "header declaring 100000³ voxels": ["nifti_huge_header"],
    "NaN or singular affine": ["nifti_nan_affine", "nifti_singular_affine"],
    "zero spacing": ["nifti_zero_spacing"],
    "4D where 3D is expected": ["image_4d", "label_4d"],
    "non-integer or out-of-set labels": ["label_non_integer", "label_value_undeclared"],
    "label and image on other grids or CRS": ["volume_label_affine", "raster_label_other_crs"],
    "raster without CRS": ["raster_without_crs"],
    "rotated transform": ["raster_rotated"],
    "all-nodata raster": ["raster_all_nodata"],
    "wrong band/channel count": ["raster_band_count", "image_4d", "missing_channel"],
    "text named .tif": ["text_as_tif"],
    "image size disagrees with label": ["raster_label_size", "image_label_size"],
    "unicode and spaces in names": ["unicode_space_names", "zip_unicode_spaces_dotdot"],
    "same content under two names": ["duplicate_content"],
    "zip-slip and absolute paths": ["zip_dotdot", "zip_absolute"],
    "tar link out of the archive": ["tar_symlink_out", "tar_hardlink_out"],
    "tar device file": ["tar_device"],
    "unreadable file": ["unreadable_file"],
    "read-only output folder": ["readonly_output"],
    "full disk (file-size limit)": ["full_disk"],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Kind]:
    return make_corpus(tmp_path_factory.mktemp("hardening-corpus"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    """Oracle models for the corpus' data: volumes (1 and 2 channels), 2-band rasters, PNGs."""
    root = tmp_path_factory.mktemp("hardening-models")
    found: dict[str, LoadedModel] = {}
    for data, channels in (("volume", 1), ("volume2", 2)):
        dataset = make_volume_dataset(
            root / data,
            n_cases=2,
            shape=mm.VOLUME_SHAPE,
            n_channels=channels,
            n_classes=1,
            layout="images_labels",
            list_cases=False,
        )
        found[data] = oracle_model(ingest(dataset, workdir=root / f"{data}-work"))
    rasters = make_raster_dataset(root / "raster", n_tiles=2, size=(32, 32), bands=2)
    found["raster"] = oracle_model(ingest(rasters, workdir=root / "raster-work"), patch=(32, 32))
    images = make_image_dataset(root / "image", n_images=2, size=(32, 32))
    found["image"] = oracle_model(ingest(images, workdir=root / "image-work"))
    return found


def _report(outcomes: list[Outcome], kinds: dict[str, Kind]) -> str:
    lines = [f"{'kind':28} {'entry point':8} {'expected':24} {'seen':24} problems"]
    for outcome in outcomes:
        expected = kinds[outcome.kind].expected[outcome.entry]
        mark = "" if outcome.seen == expected and not outcome.problems else "  <-- FAIL"
        problems = "; ".join(outcome.problems)[:300]
        lines.append(
            f"{outcome.kind:28} {outcome.entry:8} {expected:24} {outcome.seen:24} {problems}{mark}"
        )
    return "\n".join(lines)


def test_corpus_covers_the_issue(corpus: list[Kind]) -> None:
    names = {kind.name for kind in corpus}
    assert len(corpus) >= 30
    missing = {need: k for need, k in REQUIRED.items() if not set(k) <= names}
    assert not missing, missing
    for kind in corpus:
        assert kind.expected, f"{kind.name} reaches no entry point"
        assert set(kind.expected) <= set(ENTRY_POINTS)
        for error in kind.expected.values():
            assert error == OK or issubclass(
                getattr(data_contracts.errors, error), data_contracts.errors.SegflowError
            ), f"{kind.name}: {error} is not a segflow error class"
    assert len({e for kind in corpus for e in kind.expected.values()} - {OK}) >= 18
    print("\n" + table(corpus))


def test_every_kind_fails_cleanly_at_every_entry_point(
    corpus: list[Kind], models: dict[str, LoadedModel], tmp_path: Path
) -> None:
    outcomes = [
        run_entry_point(kind, entry, models, tmp_path / kind.name / entry)
        for kind in corpus
        for entry in ENTRY_POINTS
        if entry in kind.expected
    ]
    kinds = {kind.name: kind for kind in corpus}
    report = _report(outcomes, kinds)
    print(f"\n{len(kinds)} kinds, {len(outcomes)} (kind, entry point) pairs\n{report}")
    failed = [o for o in outcomes if o.seen != kinds[o.kind].expected[o.entry] or o.problems]
    assert not failed, "\n" + report
    assert len(outcomes) >= 80


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A folder ``nobody`` can enter (pytest's temporary folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="segflow-nobody-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_permissions_are_real_as_an_unprivileged_user(world_readable_dir: Path) -> None:
    """The unreadable file and the read-only output folder, with the kernel refusing (run as
    ``nobody`` through ``setpriv`` when the tests run as root; no injection in the child)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("running as root, and setpriv (util-linux) is missing: cannot drop root")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    volumes = make_volume_dataset(
        world_readable_dir / "volumes",
        n_cases=2,
        shape=mm.VOLUME_SHAPE,
        n_channels=1,
        n_classes=1,
        layout="images_labels",
        list_cases=False,
    )
    for path in volumes.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    work = world_readable_dir / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    env = {
        **os.environ,
        "HOME": str(work),
        "MPLCONFIGDIR": str(work / "mpl"),
        "SEGFLOW_HOME": str(work / "home"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    kinds = ["unreadable_file", "readonly_output"]
    command = [sys.executable, "-m", "tests.corpus.entry_points"]
    args = [str(work / "corpus"), str(volumes), str(work / "runs"), *kinds]
    done = subprocess.run(
        [*prefix, *command, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["uid"] != 0
    outcomes = [Outcome(**o) for o in result["outcomes"]]
    built = {k.name: k for k in make_corpus(world_readable_dir / "expected", only=kinds)}
    report = _report(outcomes, built)
    print("\n" + report)
    assert {(o.kind, o.entry) for o in outcomes} == {
        (name, entry) for name in kinds for entry in built[name].expected
    }
    assert all(o.seen == built[o.kind].expected[o.entry] and not o.problems for o in outcomes), (
        report
    )
