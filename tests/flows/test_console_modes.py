"""What a person sees of ``segflow`` in an 80-column terminal, in each console mode: other
libraries' lines in the log file only, no line twice, a summary that fits; ``--quiet`` the
summary alone, ``--json`` one JSON object, ``--verbose`` everything."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from data_contracts import get_settings
from flows.cli import main
from flows.console import short_path
from flows.console_display import SegmentProgress, StageDisplay
from flows.exit_codes import ExitCode
from pipelines.ingest import ingest, write_manifest
from pipelines.services.batch_items import BatchItemResult
from pipelines.synthetic import make_raster_dataset
from pipelines.synthetic.models import oracle_model
from tests.oracle_registry import register_oracle

pytestmark = pytest.mark.usefixtures("prefect_api")

MODES = {"default": [], "quiet": ["--quiet"], "json": ["--json"], "verbose": ["--verbose"]}
TINY_TRAINING = [
    "--model",
    "unet",
    "--model-option",
    "base_features=4",
    "--model-option",
    "depth=2",
    "--max-epochs",
    "1",
    "--steps-per-epoch",
    "2",
    "--accelerator",
    "cpu",
]
#: Lines of Prefect, Lightning, MLflow and Python warnings, as they print them.
THIRD_PARTY = re.compile(
    r"prefect\.|lightning|mlflow\.|Flow run|Task run|Finished in state|Tip:|Downloading artifacts"
    r"|Successfully registered|Created version|Warning:|GPU available"
)
BORDERS = set(" ─━┃│┏┓┗┛┡┩└┘┌┐┣┫╇╈┳┻┼┬┴├┤")
#: What each command's log file holds of other libraries (beside Prefect's flow lines).
LIBRARY_LINES = {"ingest": (), "train": ("lightning.pytorch", "mlflow."), "segment": ()}


@pytest.fixture(autouse=True)
def _module_home(in_mlflow_home: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's MLflow home, an 80-column terminal, no console mode from the environment."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("SEGFLOW_CONSOLE", raising=False)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raster_dataset(
        tmp_path_factory.mktemp("console") / "data", n_tiles=3, size=(48, 48), seed=4
    )


@pytest.fixture(scope="module")
def manifest(tiles: Path, mlflow_home: Path) -> Path:
    return write_manifest(ingest(tiles, workdir=tiles.parent / "work"), tiles.parent / "m.json")


@pytest.fixture(scope="module")
def champion(manifest: Path, mlflow_home: Path) -> str:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGFLOW_HOME", str(mlflow_home))
        get_settings.cache_clear()
        from pipelines.ingest import read_manifest

        return register_oracle(oracle_model(read_manifest(manifest), patch=(32, 32)), "console")


def _argv(command: str, tiles: Path, manifest: Path, champion: str, out: Path) -> list[str]:
    if command == "ingest":
        return ["ingest", str(tiles), "--out", str(out / "m.json")]
    if command == "train":
        return ["train", str(manifest), *TINY_TRAINING, "--workdir", str(out / "train")]
    return ["segment", str(tiles / "images"), "--model", champion, "--out", str(out / "masks")]


def _run(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, list[str], list[str]]:
    code = main(argv)
    captured = capfd.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def _log_file(lines: list[str]) -> Path:
    assert lines and lines[-1].startswith("log: "), lines[-3:]
    return Path(lines[-1].removeprefix("log: ")).expanduser()


def _repeated(lines: list[str]) -> list[str]:
    """Lines printed more than once (table borders and blank lines aside)."""
    text = [
        line
        for line in lines
        if line.strip() and not set(line) <= set(" ─━┃│┏┓┗┛┡┩└┘┌┐┣┫╇╈┳┻┼┬┴├┤")
    ]
    return sorted({line for line in text if text.count(line) > 1})


@pytest.mark.parametrize("command", ["ingest", "train", "segment"])
@pytest.mark.parametrize("mode", list(MODES))
def test_console_modes(
    mode: str,
    command: str,
    tiles: Path,
    manifest: Path,
    champion: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    argv = [*MODES[mode], *_argv(command, tiles, manifest, champion, tmp_path)]
    code, out, err = _run(argv, capfd)
    assert code == ExitCode.OK, (out, err)
    if mode == "json":
        document = json.loads("\n".join(out))  # one object, nothing else
        assert document["command"] == command and document["exit_code"] == 0
        assert document["error"] is None and Path(document["log"]).is_file()
        assert not err, err
        return
    log = _log_file(out)
    logged = log.read_text()
    assert "prefect.flow_runs" in logged and "Finished in state" in logged
    assert all(line in logged for line in LIBRARY_LINES[command]), logged[-3000:]
    assert not _repeated(out + err)
    if mode == "verbose":
        assert "prefect.flow_runs" in "\n".join(err)
        assert all(line in "\n".join(err) for line in LIBRARY_LINES[command])
        return
    assert not [line for line in out + err if THIRD_PARTY.search(line)]
    assert not err, err  # nothing to warn about: the live display draws on terminals only
    too_wide = [line for line in out[:-1] if len(line) > 80]
    assert not too_wide, too_wide
    if mode == "quiet":
        assert "Training plan" not in "\n".join(out)


def test_default_train_shows_its_summary_in_80_columns(
    manifest: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", str(manifest), *TINY_TRAINING, "--workdir", str(tmp_path / "w")]
    code, out, _ = _run(argv, capfd)
    assert code == ExitCode.OK
    text = "\n".join(out)
    assert "Training plan" in text and "Training result" in text and "MLflow run" in text
    assert re.search(
        r"^score \d\.\d{3} · epochs 1 \(stopped by epochs\) · best weights kept$", text, re.M
    )


def test_json_reports_errors_in_its_one_object(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(["--json", "ingest", str(tmp_path / "nowhere")], capfd)
    assert code == ExitCode.NOTHING_DONE
    document = json.loads("\n".join(out))
    assert document["exit_code"] == 1 and "does not exist" in document["error"]
    assert "does not exist" in " ".join(err)


def test_mode_from_the_environment_and_conflicting_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEGFLOW_CONSOLE", "json")
    code, out, _ = _run(["ingest", str(tmp_path / "nowhere")], capfd)
    assert code == ExitCode.NOTHING_DONE and json.loads("\n".join(out))["command"] == "ingest"
    monkeypatch.setenv("SEGFLOW_CONSOLE", "chatty")
    assert main(["ingest", str(tmp_path)]) == ExitCode.USAGE
    assert "SEGFLOW_CONSOLE must be" in capfd.readouterr().err
    monkeypatch.delenv("SEGFLOW_CONSOLE")
    assert main(["--quiet", "--json", "ingest", str(tmp_path)]) == ExitCode.USAGE


def test_the_routing_gives_everything_back(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    handlers, stderr, stdout = list(root.handlers), sys.stderr, sys.stdout
    main(["--json", "ingest", str(tmp_path / "nowhere")])
    assert root.handlers == handlers and sys.stderr is stderr and sys.stdout is stdout


@pytest.mark.parametrize(
    ("path", "width", "shown"),
    [
        ("data/scenes/2023/tiles/scene_12_mask.tif", 30, "data/…/tiles/scene_12_mask.tif"),
        ("data/scenes/2023/tiles/scene_12_mask.tif", 24, "data/…/scene_12_mask.tif"),
        ("masks/a.tif", 36, "masks/a.tif"),
        ("a_very_long_file_name_of_a_scene_mask.tif", 20, "a_very_lon…_mask.tif"),
    ],
)
def test_short_path_keeps_the_ends(
    path: str, width: int, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert short_path(tmp_path / path, width) == shown


def _rendered(display: StageDisplay) -> list[str]:
    terminal = Console(width=80, record=True, force_terminal=True)
    terminal.print(display)
    return terminal.export_text().splitlines()


def test_stage_display_fits_80_columns() -> None:
    display = StageDisplay("train unet", deadline=time.time() + 83)
    display.update(
        "epoch 2/3 · step 1/4 · loss 1.691 · val_dice 0.512 (best 0.600)", completed=1, total=4
    )
    lines = _rendered(display)
    assert len(lines) == 2 and all(len(line) <= 80 for line in lines)
    assert lines[0].split()[1:3] == ["train", "unet"] and lines[0].endswith("left")
    assert "val_dice 0.512 (best 0.600)" in lines[1]


def test_segment_progress_counts_failed_and_skipped() -> None:
    display = StageDisplay("segment")
    progress = SegmentProgress(display)
    progress.planned(2, [BatchItemResult("old", "skipped", "done")])
    progress.case_done(BatchItemResult("a", "failed", "new", error="Boom: no"), 1, 2)
    progress.case_done(BatchItemResult("b", "done", "new"), 2, 2)
    assert display.detail.startswith("2/2 files · 1 failed · 1 skipped · ")
    assert display.completed == 2 and display.total == 2
