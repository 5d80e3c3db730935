"""A representative subset of the hardening corpus through the CLI and its Prefect flows: the
exit code says partial (3), the message names each bad file with its error class, the good
files are done and the bad ones leave no output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_contracts import TrainConfig, get_settings
from flows.cli import main
from flows.exit_codes import ExitCode
from pipelines.ingest import ingest, write_manifest
from pipelines.synthetic.models import oracle_model
from tests.corpus.entry_points import stale_manifest
from tests.corpus.make_corpus import Kind, make_corpus
from tests.data.make_malformed import BAD
from tests.oracle_registry import register_oracle

pytestmark = pytest.mark.usefixtures("prefect_api")

INGEST_KINDS = ["nifti_gzip_bomb", "raster_all_nodata", "duplicate_content"]
SEGMENT_KINDS = [
    "truncated_nifti",
    "text_as_nifti",
    "nifti_nan_affine",
    "nifti_huge_header",
    "image_4d",
    "unicode_space_names",
]


@pytest.fixture(autouse=True)
def _module_home(in_mlflow_home: None) -> None:
    """Every test of this module uses the module's MLflow home."""


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kind]:
    built = make_corpus(
        tmp_path_factory.mktemp("flow-corpus"), only={*INGEST_KINDS, *SEGMENT_KINDS}
    )
    return {kind.name: kind for kind in built}


@pytest.mark.parametrize("name", INGEST_KINDS)
def test_segflow_ingest_exits_partial_and_names_the_file(
    name: str,
    kinds: dict[str, Kind],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kind = kinds[name]
    for key, value in kind.env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    out = tmp_path / "manifest.json"
    code = main(["ingest", str(kind.item.source), "--out", str(out)])
    assert code == ExitCode.PARTIAL, capsys.readouterr()
    manifest = json.loads(out.read_text())
    (rejected,) = manifest["rejected"]
    assert rejected["error"] == kind.expected["ingest"]
    assert kind.item.bad_file in rejected["reason"]
    assert len(manifest["cases"]) == kind.item.good_cases


def test_segflow_segment_goes_on_past_every_bad_file(
    kinds: dict[str, Kind],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One folder holding a good case and the bad file of several kinds (renamed apart)."""
    source = tmp_path / "in"
    source.mkdir()
    good = kinds[SEGMENT_KINDS[0]].item.source / "images" / "case_000_0000.nii.gz"
    shutil.copy(good, source / "good_0000.nii.gz")
    expected: dict[str, str] = {}
    for name in SEGMENT_KINDS:
        kind = kinds[name]
        bad = kind.item.source / "images" / kind.item.bad_file
        stem = name if kind.expected["segment"] != "ok" else kind.item.bad_file[:-12]
        shutil.copy(bad, source / f"{stem}_0000.nii.gz")
        expected[f"{stem}_0000"] = kind.expected["segment"]  # a file is a case: its full stem
    manifest = ingest(kinds[SEGMENT_KINDS[0]].item.source, workdir=tmp_path / "w")
    champion = register_oracle(oracle_model(manifest), "hardening-volumes")
    out = tmp_path / "out"
    code = main(["segment", str(source), "--model", champion, "--out", str(out)])
    output = capsys.readouterr()
    text = (output.out + output.err).replace("\n", " ")
    assert code == ExitCode.PARTIAL, text[-3000:]
    ledger = json.loads((out / ".segflow" / "ledger.json").read_text())
    seen = {row["case_id"]: row for row in ledger["cases"]}
    for case_id, error in expected.items():
        if error == "ok":
            assert seen[case_id]["status"] == "done", seen[case_id]
            assert (out / f"{case_id}.nii.gz").is_file()
        else:
            assert seen[case_id]["status"] == "failed", seen[case_id]
            assert error in json.dumps(seen[case_id]), seen[case_id]
            assert not list(out.glob(f"{case_id}.*")), f"{case_id} left an output"
    assert seen["good_0000"]["status"] == "done" and (out / "good_0000.nii.gz").is_file()
    assert not [p for p in out.rglob("*") if ".part" in p.name]


@pytest.mark.slow
def test_segflow_train_leaves_out_a_case_that_went_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest whose case was truncated after ingest: training goes on without it, the
    flow says partial (exit 3) and the MLflow run records which case and why."""
    import mlflow

    from pipelines.synthetic import make_image_dataset

    data = make_image_dataset(tmp_path / "data", n_images=4, size=(32, 32))
    manifest = ingest(data, workdir=tmp_path / "w")
    stale = stale_manifest(manifest)
    broken = Path(stale.cases[-1].channels[0].path)
    good = Path(stale.cases[0].channels[0].path)
    broken.write_bytes(good.read_bytes()[:40])  # a PNG cut short
    shutil.copy(
        Path(stale.cases[0].label.path),  # type: ignore[union-attr]
        Path(stale.cases[-1].label.path),  # type: ignore[union-attr]
    )
    path = write_manifest(stale, tmp_path / "m.json")
    config = TrainConfig(max_epochs=1, steps_per_epoch=1)
    argv = ["train", str(path), "--model", "unet", "--max-epochs", "1", "--steps-per-epoch", "1"]
    code = main([*argv, "--accelerator", "cpu", "--workdir", str(tmp_path / "t")])
    text = capsys.readouterr()
    assert code == ExitCode.PARTIAL, (text.out + text.err)[-3000:]
    run = mlflow.search_runs(
        search_all_experiments=True, output_format="list", order_by=["attributes.start_time DESC"]
    )[0]
    assert run.data.tags["segflow.cases_left_out"] == "1"
    left_out = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/cases_left_out.json")
    assert list(left_out) == [BAD] and "CorruptFileError" in left_out[BAD]
    assert config.max_epochs == 1
