"""The segflow CLI: exit codes, manifest output, help text, crash reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_contracts import DatasetManifest, get_settings
from flows.cli import main
from flows.exit_codes import ExitCode


def test_ingest_all_valid_exits_0_and_writes_manifest(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "spleen.json"
    code = main(["ingest", str(shared_data / "msd_spleen_ct_crop"), "--out", str(out)])
    assert code == ExitCode.OK
    manifest = DatasetManifest.model_validate_json(out.read_text())
    assert [case.case_id for case in manifest.cases] == ["spleen2"]


def test_ingest_with_rejections_exits_3(shared_data: Path, tmp_path: Path) -> None:
    # In its folder layout the flood label pairs with no image stem: one rejection, two valid.
    out = tmp_path / "floods.json"
    code = main(["ingest", str(shared_data / "sen1floods11_spain_sample"), "--out", str(out)])
    assert code == ExitCode.PARTIAL
    manifest = json.loads(out.read_text())
    assert len(manifest["cases"]) == 2
    assert manifest["rejected"][0]["error"] == "PairingError"


def test_ingest_nothing_valid_exits_1(tmp_path: Path) -> None:
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "broken.nii.gz").write_text("not a volume")
    code = main(["ingest", str(tmp_path / "data"), "--out", str(tmp_path / "m.json")])
    assert code == ExitCode.NOTHING_DONE
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["rejected"][0]["error"] == "NotAnImageError"
    assert "broken.nii.gz" in manifest["rejected"][0]["reason"]


def test_missing_source_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", str(tmp_path / "nowhere")]) == ExitCode.NOTHING_DONE
    message = "".join(capsys.readouterr().err.split())  # rich wraps lines anywhere
    assert "nowhere:doesnotexist" in message


@pytest.mark.parametrize(
    "argv",
    [
        ["ingest"],
        ["ingest", "x", "--labels"],
        ["ingest", "x", "--labels", "road"],
        ["ingest", "x", "--kind", "hologram"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], tmp_path: Path) -> None:
    assert main(argv) == ExitCode.USAGE


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--overlap", "1.5", "overlap must be in [0, 1), not 1.5"),
        ("--batch-size", "0", "batch_size must be at least 1, not 0"),
        ("--files-per-task", "0", "--files-per-task must be at least 1, not 0"),
    ],
)
def test_segment_options_are_checked_before_anything_runs(
    option: str,
    value: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_flow(*args: object, **kwargs: object) -> None:
        raise AssertionError("the flow was started")

    monkeypatch.setattr("flows.dataset_flows.run_flow", no_flow)
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path), "--model", str(tmp_path), "--out", str(out)]
    assert main([*argv, option, value]) == ExitCode.USAGE
    assert "".join(message.split()) in "".join(capsys.readouterr().err.split())  # rich wraps
    assert not out.exists()


def test_internal_error_exits_70_and_saves_traceback(
    monkeypatch: pytest.MonkeyPatch, shared_data: Path, tmp_path: Path
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr("pipelines.ingest.ingest", explode)
    code = main(
        ["ingest", str(shared_data / "msd_spleen_ct_crop"), "--out", str(tmp_path / "m.json")]
    )
    assert code == ExitCode.INTERNAL
    crashes = list((get_settings().home_dir / "crashes").glob("crash-*.txt"))
    assert len(crashes) == 1 and "simulated bug" in crashes[0].read_text()
    assert not (tmp_path / "m.json").exists()


def test_console_script_help_teaches() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flows", "ingest", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    for text in ("--label-suffix", "--ignore-value", "Examples", "archive"):
        assert text in result.stdout
