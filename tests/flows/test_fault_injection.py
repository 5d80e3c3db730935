"""Faults from outside: a writer that dies mid-file, an MLflow server that goes away during a
batch, SIGTERM during training. Each must end in a clear state with no partial output, and a
rerun must pick up where the fault left off (README "Failure and recovery")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import pytest
import torch

import pipelines.infer.run
from data_contracts import ModelError, OutputError, get_settings
from pipelines.infer.loaded_model import LoadedModel
from pipelines.ingest import ingest, write_manifest
from pipelines.services.batch import BatchItemResult, BatchProgress, run_batch
from pipelines.services.ledger import Ledger
from pipelines.synthetic import make_image_dataset, make_volume_dataset
from pipelines.synthetic.models import oracle_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadedModel]:
    """Three small labelled volumes and their oracle model."""
    root = tmp_path_factory.mktemp("fault-volumes")
    data = make_volume_dataset(
        root / "data",
        n_cases=3,
        shape=(12, 10, 8),
        n_channels=1,
        n_classes=1,
        layout="images_labels",
        list_cases=False,
    )
    return data / "images", oracle_model(ingest(data, workdir=root / "work"))


def _partials(out: Path) -> list[str]:
    return [p.name for p in out.rglob("*") if ".part" in p.name]


def test_writer_crash_mid_file_leaves_nothing_and_the_rerun_redoes_only_that_case(
    volumes: tuple[Path, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, model = volumes
    out = tmp_path / "out"
    real_save = nib.save
    calls: list[str] = []

    def crashing_save(image: Any, filename: Any) -> None:
        calls.append(str(filename))
        if len(calls) == 2:  # the second mask: half written, then the writer dies
            real_save(image, filename)
            size = Path(filename).stat().st_size
            with open(filename, "r+b") as handle:
                handle.truncate(size // 2)
            raise RuntimeError("simulated crash inside the NIfTI writer")
        real_save(image, filename)

    monkeypatch.setattr(nib, "save", crashing_save)
    report = run_batch(images, model, out)
    assert report.counts == {"done": 2, "skipped": 0, "failed": 1, "interrupted": 0}
    assert report.exit_status == "partial"
    (failed,) = [item for item in report.items if item.status == "failed"]
    assert "simulated crash inside the NIfTI writer" in (failed.error or "")
    assert ".part" in calls[1]  # the writer wrote a temporary file, never the mask itself
    assert not _partials(out), "the half-written temporary file was left behind"
    assert not list(out.glob(f"{failed.case_id}.*")), "a failed case left an output"
    with Ledger.open(out) as ledger:
        entry = ledger.get(failed.case_id)
        assert entry is not None and entry.status == "failed"

    monkeypatch.setattr(nib, "save", real_save)
    again = run_batch(images, model, out)
    assert again.counts == {"done": 1, "skipped": 2, "failed": 0, "interrupted": 0}
    (redone,) = [item for item in again.items if item.status == "done"]
    assert redone.case_id == failed.case_id
    assert nib.load(out / f"{failed.case_id}.nii.gz").shape == (12, 10, 8)


def test_a_case_whose_last_output_fails_keeps_none_of_its_outputs(
    volumes: tuple[Path, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mask is written, then the lineage record cannot be: the mask goes too."""
    images, model = volumes
    out = tmp_path / "out"
    real = pipelines.infer.run.write_lineage

    def failing_lineage(path: Path, record: dict[str, Any]) -> Path:
        if path.name.startswith("case_001"):
            raise OutputError("writing failed (No space left on device)", path=path)
        return real(path, record)

    monkeypatch.setattr(pipelines.infer.run, "write_lineage", failing_lineage)
    report = run_batch(images, model, out)
    assert report.counts["failed"] == 1 and report.counts["done"] == 2
    assert sorted(p.name for p in out.glob("case_001*")) == []
    # images/case_000_0000.nii.gz of a one-channel model: a file is a case, named by its stem.
    assert (out / "case_000_0000.nii.gz").is_file()
    assert (out / "case_000_0000.lineage.json").is_file()


def test_outputs_get_the_usual_permissions(
    volumes: tuple[Path, LoadedModel], tmp_path: Path
) -> None:
    """Atomic writes go through a private temporary file; the output must not stay private."""
    images, model = volumes
    out = tmp_path / "out"
    run_batch(images, model, out)
    umask = os.umask(0o022)
    os.umask(umask)
    assert (out / "case_000_0000.nii.gz").stat().st_mode & 0o777 == 0o666 & ~umask


# --- SIGTERM during training ------------------------------------------------------------------

_TRAIN_CHILD = """
import sys
from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train_argv(manifest: Path, workdir: Path, epochs: int) -> list[str]:
    return [
        "train",
        str(manifest),
        "--model",
        "unet",
        "--loss",
        "dice+ce",
        "--max-epochs",
        str(epochs),
        "--steps-per-epoch",
        "2",
        "--accelerator",
        "cpu",
        "--workdir",
        str(workdir),
    ]


@pytest.mark.slow
def test_sigterm_during_training_keeps_the_checkpoint_and_resume_finishes(
    tmp_path: Path,
) -> None:
    data = make_image_dataset(tmp_path / "data", n_images=4, size=(32, 32))
    manifest = write_manifest(ingest(data, workdir=tmp_path / "w"), tmp_path / "m.json")
    workdir = tmp_path / "train"
    last = workdir / "checkpoints" / "last.ckpt"
    child = subprocess.Popen(
        [sys.executable, "-c", _TRAIN_CHILD, *_train_argv(manifest, workdir, 200)],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "1000"},  # the error on one line, whatever the path
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not last.is_file() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.2)
        assert last.is_file(), "no checkpoint was written"
        time.sleep(0.5)  # mid-epoch, or even while the checkpoint is being written
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    output = " ".join((stdout + stderr).split())
    assert child.returncode == 143, output[-3000:]
    assert "stopped by SIGTERM" in output and "last.ckpt" in output, output[-3000:]
    state = torch.load(last, map_location="cpu", weights_only=True)  # whole, and weights-only
    done_epochs = int(state["epoch"]) + 1
    assert done_epochs < 200

    # Resume: same command and workdir, two more epochs than the checkpoint holds.
    resumed = subprocess.run(
        [sys.executable, "-c", _TRAIN_CHILD, *_train_argv(manifest, workdir, done_epochs + 2)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert int(final["global_step"]) == int(state["global_step"]) + 2 * 2  # 2 steps per epoch
    # The resumed run validated only the two epochs after the checkpoint; the interrupted run
    # is marked failed in MLflow, not left running.
    import mlflow

    from pipelines.services.tracking import configure_mlflow

    configure_mlflow()
    runs = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        order_by=["attributes.start_time DESC"],
    )
    resumed_run, interrupted_run = runs[0], runs[1]
    history = mlflow.MlflowClient().get_metric_history(resumed_run.info.run_id, "val_dice")
    assert sorted(m.step for m in history) == [done_epochs, done_epochs + 1]
    assert interrupted_run.info.status in ("FAILED", "KILLED")


# --- the MLflow server goes away during a batch -----------------------------------------------


@pytest.mark.integration
def test_mlflow_server_gone_during_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch finishes (every file done, ledger complete) and says that its MLflow run was
    not logged; a batch started while the server is gone fails before writing anything."""
    import mlflow

    from flows.dataset_flows import run_flow
    from flows.segment_flow import segment_archive_flow
    from flows.server_process import ServerProcess, free_port
    from tests.integration.stack import mlflow_server_command
    from tests.oracle_registry import register_oracle

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = mlflow_server_command(backend, str(tmp_path / "artifacts"), port)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    get_settings.cache_clear()
    mlflow.set_tracking_uri(uri)
    data = make_image_dataset(tmp_path / "data", n_images=6, size=(32, 32))
    server = ServerProcess(command, f"{uri}/health", tmp_path / "mlflow.log").start()
    try:
        champion = register_oracle(oracle_model(ingest(data, workdir=tmp_path / "w")), "gone")

        class StopServer(BatchProgress):
            def case_done(self, result: BatchItemResult, done: int, total: int) -> None:
                if done == 1:
                    server.stop()

        out = tmp_path / "out"
        summary, code = run_flow(
            segment_archive_flow,
            source=str(data / "images"),
            model=champion,
            out=str(out),
            files_per_task=1,
            progress=StopServer(),
        )
    finally:
        server.stop()
        mlflow.set_tracking_uri(None)
    assert not server.healthy()
    assert int(code) == 0 and summary["done"] == 6 and summary["failed"] == 0
    assert summary["mlflow_run"] is None
    assert "was not logged" in summary["not_logged"] and "ledger" in summary["not_logged"]
    assert len(list(out.glob("*.png"))) == 6 and not _partials(out)
    assert (out / ".segflow" / "ledger.json").is_file()

    # Started while the server is gone: the model cannot be resolved; nothing is written.
    later = tmp_path / "later"
    with pytest.raises(ModelError, match="tracking server") as raised:
        run_flow(segment_archive_flow, source=str(data / "images"), model=champion, out=str(later))
    assert not later.exists()
    print(f"batch started without MLflow fails with {type(raised.value).__name__}: {raised.value}")
