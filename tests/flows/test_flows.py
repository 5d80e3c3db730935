"""Prefect flows on the temporary API: ingest, train, evaluate, artifacts, partial outcomes,
task runners, and the ``segflow serve`` config.

One temporary Prefect API per module (``prefect_api`` from ``tests/conftest.py``; it takes
~15 s to start), then about a second per flow run. MLflow state lives in ``mlflow_home``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from data_contracts import ConfigError, IngestOptions, TrainConfig, UsageError
from flows.artifacts import ProgressArtifact, artifact_key, markdown_summary, table_rows
from flows.cli import main
from flows.exit_codes import ExitCode
from pipelines.synthetic import make_raster_dataset

REPO = Path(__file__).resolve().parents[2]
CONFIG = TrainConfig(
    model="unet",
    model_options={"base_features": 4, "depth": 2},
    max_epochs=1,
    steps_per_epoch=2,
    accelerator="cpu",
    learning_rate=5e-3,
)
SMALL_PLAN = {"patch_size": [32, 32], "batch_size": 2}
# train_flow's `register` parameter shadows a method of Prefect's parameter model (harmless).
pytestmark = pytest.mark.filterwarnings('ignore:Field name "register":UserWarning')


@pytest.fixture(autouse=True)
def _module_home(in_mlflow_home: None) -> None:
    """Every test of this module uses the module's MLflow home."""


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three labelled GeoTIFF tiles."""
    return make_raster_dataset(
        tmp_path_factory.mktemp("rasters") / "data", n_tiles=3, size=(48, 48), seed=4
    )


@pytest.fixture
def broken_rasters(rasters: Path, tmp_path: Path) -> Path:
    """The three tiles plus an image that is not an image (one rejection)."""
    copy = Path(shutil.copytree(rasters, tmp_path / "data"))
    (copy / "images" / "tile_999.tif").write_text("not a GeoTIFF")
    return copy


def artifacts_of(state: Any) -> dict[str, Any]:
    """The artifacts of a flow run (and of its task runs), by key."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=run_filter)
    return {str(artifact.key): artifact for artifact in found}


def flow_run_of(state: Any) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


# ---- flows on the temporary API ---------------------------------------------------------------


@pytest.mark.usefixtures("prefect_api")
def test_ingest_flow_publishes_summary_table_and_progress(rasters: Path, tmp_path: Path) -> None:
    from flows.dataset_flows import exit_code_of, ingest_flow

    state = ingest_flow(rasters, tmp_path / "m.json", return_state=True)
    summary = state.result()
    assert state.is_completed() and state.message == "3 of 3 inputs done"
    assert exit_code_of(state) == ExitCode.OK and summary["exit_code"] == 0
    assert summary["valid"] == 3 and Path(summary["manifest"]).is_file()
    artifacts = artifacts_of(state)
    assert {"ingest-summary", "ingest-cases", "ingest-progress"} <= set(artifacts)
    assert "valid cases: 3" in artifacts["ingest-summary"].data
    rows = json.loads(artifacts["ingest-cases"].data)
    assert [row["case"] for row in rows] == ["tile_000", "tile_001", "tile_002"]
    assert artifacts["ingest-progress"].data == 100
    assert flow_run_of(state).name == "ingest-data"


@pytest.mark.usefixtures("prefect_api")
def test_partial_ingest_is_completed_with_a_partial_message(
    broken_rasters: Path, tmp_path: Path
) -> None:
    from flows.dataset_flows import exit_code_of, ingest_flow

    state = ingest_flow(broken_rasters, tmp_path / "m.json", return_state=True)
    assert state.is_completed() and state.message == "partial: 1 of 4 inputs rejected"
    assert exit_code_of(state) == ExitCode.PARTIAL
    assert flow_run_of(state).state.message == state.message  # the API holds the same
    table = artifacts_of(state)["ingest-cases"].data
    assert "NotAnImageError" in table and "rejected" in table


@pytest.mark.usefixtures("prefect_api")
def test_nothing_valid_fails_the_flow_but_keeps_the_summary(tmp_path: Path) -> None:
    from flows.dataset_flows import exit_code_of, ingest_flow

    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "broken.nii.gz").write_text("not a volume")
    state = ingest_flow(tmp_path / "data", tmp_path / "m.json", return_state=True)
    assert state.is_failed() and str(state.message).startswith("nothing done: 1 of 1")
    summary: Any = state.result(raise_on_failure=False)
    assert summary["rejected"] == 1
    assert exit_code_of(state) == ExitCode.NOTHING_DONE


@pytest.mark.usefixtures("prefect_api")
def test_cli_ingest_runs_the_flow_and_exits_3_when_partial(
    broken_rasters: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    assert main(["ingest", str(broken_rasters), "--out", str(out)]) == ExitCode.PARTIAL
    printed = " ".join(capsys.readouterr().out.split())
    assert "3 valid, 1 rejected" in printed and "Rejected inputs" in printed
    assert out.is_file()


@pytest.mark.usefixtures("prefect_api")
def test_train_flow_ingests_trains_registers_and_publishes(rasters: Path, tmp_path: Path) -> None:
    from flows.dataset_flows import train_flow

    state = train_flow(
        source=rasters,
        config=CONFIG,
        register="flow-tiles",
        plan_overrides=SMALL_PLAN,
        workdir=tmp_path / "train",
        return_state=True,
    )
    summary = state.result()
    assert state.is_completed() and str(state.message).startswith("3 of 3 inputs done; val_dice")
    assert summary["registration"]["name"] == "flow-tiles"
    assert summary["registration"]["version"] == "1" and summary["registration"]["promoted"]
    assert summary["manifest"] == str(tmp_path / "train" / "manifest.json")
    assert (tmp_path / "train" / "plan.json").is_file()
    assert ["patch_size *", "32 × 32"] in summary["plan"]
    artifacts = artifacts_of(state)
    assert {"training", "training-plan", "training-validation-scores", "ingest-cases"} <= set(
        artifacts
    )
    assert summary["run_id"] in artifacts["training"].data
    assert flow_run_of(state).name == "train-unet-data"

    import mlflow

    assert mlflow.get_run(summary["run_id"]).info.status == "FINISHED"


@pytest.mark.usefixtures("prefect_api")
def test_train_flow_needs_exactly_one_of_manifest_and_source(tmp_path: Path) -> None:
    from flows.dataset_flows import train_flow

    state = train_flow(config=CONFIG, workdir=tmp_path, return_state=True)
    assert state.is_failed()
    with pytest.raises(UsageError, match="exactly one"):
        state.result()


@pytest.mark.usefixtures("prefect_api")
def test_evaluate_flow_is_partial_when_a_truth_lacks_its_prediction(
    rasters: Path, tmp_path: Path
) -> None:
    from flows.dataset_flows import evaluate_flow

    prediction = Path(shutil.copytree(rasters / "labels", tmp_path / "pred"))
    (prediction / "tile_002.tif").unlink()
    out = tmp_path / "metrics.json"
    state = evaluate_flow(prediction, rasters / "labels", out=out, return_state=True)
    report = state.result()
    assert state.is_completed() and state.message == "partial: 1 of 3 cases failed"
    assert report["summary"]["overall"]["dice"] == pytest.approx(1.0) and out.is_file()
    artifacts = artifacts_of(state)
    assert "Dice **1.0000**" in artifacts["evaluation-summary"].data
    rows = json.loads(artifacts["evaluation-cases"].data)
    assert {row["status"] for row in rows} == {"scored", "no prediction"}
    assert len({tuple(row) for row in rows}) == 1  # one set of columns


@pytest.mark.usefixtures("prefect_api")
def test_dask_runner_runs_a_mapped_flow() -> None:
    from prefect import flow, task

    from flows.runners import task_runner

    @task
    def square(value: int) -> int:
        return value * value

    @flow(task_runner=task_runner("dask", max_workers=2))
    def squares(values: list[int]) -> list[int]:
        return [future.result() for future in square.map(values)]

    assert squares([1, 2, 3, 4]) == [1, 4, 9, 16]


# ---- without Prefect ---------------------------------------------------------------------------


def test_tasks_and_artifact_helpers_work_without_a_run(rasters: Path, tmp_path: Path) -> None:
    from prefect.logging import disable_run_logger

    from flows.tasks import ingest_task

    with disable_run_logger():
        summary = ingest_task.fn(rasters, tmp_path / "m.json", IngestOptions())
    assert summary["valid"] == 3 and summary["rejected"] == 0
    progress = ProgressArtifact("Ingest Progress")
    progress.callback(1, 4)
    assert progress.fraction == 0.25 and progress.artifact_id is None


def test_table_rows_share_columns_and_drop_non_finite_numbers() -> None:
    rows, left_out = table_rows(
        [{"case": "a", "dice": 1.0}, {"case": "b", "hd95": float("inf")}, {"case": "c"}], 2
    )
    assert rows == [
        {"case": "a", "dice": 1.0, "hd95": None},
        {"case": "b", "dice": None, "hd95": None},
    ]
    assert left_out == 1
    assert artifact_key("Ingest summary: BraTS_2021") == "ingest-summary-brats-2021"
    assert markdown_summary("T", ["a"]) == "# T\n\n- a\n"


@pytest.mark.parametrize(
    ("succeeded", "failed", "state_type", "message", "code"),
    [
        (3, 0, "COMPLETED", "3 of 3 files done", ExitCode.OK),
        (2, 1, "COMPLETED", "partial: 1 of 3 files failed", ExitCode.PARTIAL),
        (0, 2, "FAILED", "nothing done: 2 of 2 files failed", ExitCode.NOTHING_DONE),
    ],
)
def test_outcome_state(
    succeeded: int, failed: int, state_type: str, message: str, code: ExitCode
) -> None:
    from flows.dataset_flows import exit_code_of, outcome_state

    state = outcome_state({}, succeeded, failed, what="files")
    assert (state.type.value, state.message, exit_code_of(state)) == (state_type, message, code)


def test_only_transient_io_errors_are_retried() -> None:
    from prefect.states import Failed

    from data_contracts import MissingFileError
    from flows.tasks import transient_io

    def retried(error: BaseException) -> bool:
        return transient_io(None, None, Failed(data=error))  # type: ignore[arg-type]

    assert retried(TimeoutError("share busy"))
    assert not retried(MissingFileError("does not exist", path="x"))
    assert not retried(RuntimeError("bug"))


def test_task_runner_choices() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.runners import task_runner

    assert isinstance(task_runner("threads", max_workers=2), ThreadPoolTaskRunner)
    remote = task_runner("dask", dask_address="tcp://127.0.0.1:8786")
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://127.0.0.1:8786"
    local = task_runner("dask", max_workers=3)
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 3
    with pytest.raises(UsageError, match="threads or dask"):
        task_runner("gpu")
    with pytest.raises(UsageError, match="needs --task-runner dask"):
        task_runner("threads", dask_address="tcp://127.0.0.1:8786")
    with pytest.raises(UsageError, match="at least 1"):
        task_runner("dask", max_workers=0)


# ---- segflow serve config and prefect.yaml -----------------------------------------------------


def _write(path: Path, schedules: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump(schedules))
    return path


def test_example_schedules_build_their_deployments() -> None:
    from flows.serve import build_deployments, load_serve_config

    path = REPO / "flows" / "schedules.example.yaml"
    config = load_serve_config(path)
    assert {spec.flow for spec in config.schedules} == {"segment_archive", "train", "ingest"}
    deployments = build_deployments(config, path)  # imports the flows, checks parameters
    assert [d.flow_name for d in deployments] == ["segment-archive", "train", "ingest"]
    assert all(d.schedules for d in deployments)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a", "flow": "ingest", "cron": "every day"}, "schedules[0].cron: Invalid cron"),
        ({"name": "a", "flow": "predict"}, "schedules[0].flow"),
        ({"name": "a", "flow": "train", "cron": "0 3 * * *", "interval": 60}, "not both"),
        ({"name": "a", "flow": "train", "when": "now"}, "schedules[0].when"),
        ({"name": "a", "flow": "train", "cron": "0 1 * * *", "timezone": "Mars/Base"}, "Mars"),
    ],
)
def test_bad_schedules_name_the_file_and_field(
    entry: dict[str, Any], message: str, tmp_path: Path
) -> None:
    from flows.serve import load_serve_config

    path = _write(tmp_path / "schedules.yaml", [entry])
    with pytest.raises(ConfigError) as raised:
        load_serve_config(path)
    assert str(path) in str(raised.value) and message in str(raised.value)


def test_deployments_check_parameters_and_carry_schedules(tmp_path: Path) -> None:
    from flows.serve import build_deployments, load_serve_config

    source = str(tmp_path)
    good: list[dict[str, Any]] = [
        {"name": "hourly", "flow": "ingest", "interval": 3600, "parameters": {"source": source}},
        {"name": "weekly", "flow": "train", "cron": "0 3 * * sun", "timezone": "UTC",
         "parameters": {"source": source, "register": "x", "config": {"max_epochs": 1}}},
    ]  # fmt: skip
    path = _write(tmp_path / "ok.yaml", good)
    deployments = build_deployments(load_serve_config(path), path)
    assert [d.name for d in deployments] == ["hourly", "weekly"]
    weekly: Any = deployments[1]
    assert weekly.schedules[0].schedule.cron == "0 3 * * sun"
    assert deployments[0].entrypoint == "flows.dataset_flows.ingest_flow"

    for parameters, message in [({"sauce": source}, "no parameter sauce"), ({}, "source")]:
        bad = _write(
            tmp_path / "bad.yaml",
            [{"name": "b", "flow": "ingest", "cron": "0 1 * * *", "parameters": parameters}],
        )
        with pytest.raises(ConfigError, match=r"schedules\[0\]\.parameters \(b\)") as raised:
            build_deployments(load_serve_config(bad), bad)
        assert message in str(raised.value)


def test_segment_archive_schedule_needs_the_segment_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.serve import build_deployments, load_serve_config

    monkeypatch.setitem(sys.modules, "flows.segment_flow", None)  # import fails
    path = _write(tmp_path / "s.yaml", [{"name": "n", "flow": "segment_archive"}])
    with pytest.raises(ConfigError, match=r"flows\.segment_flow"):
        build_deployments(load_serve_config(path), path)


def test_serve_check_exits_0_and_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write(tmp_path / "ok.yaml", [{"name": "adhoc", "flow": "evaluate"}])
    assert main(["serve", "--config", str(good), "--check"]) == ExitCode.OK
    assert "evaluate/adhoc" in capsys.readouterr().out
    bad = _write(tmp_path / "bad.yaml", [{"name": "x", "flow": "ingest", "cron": "nope"}])
    assert main(["serve", "--config", str(bad), "--check"]) == ExitCode.USAGE


def test_prefect_yaml_deploys_every_flow_to_the_process_pool() -> None:
    document = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = document["deployments"]
    assert {d["work_pool"]["name"] for d in deployments} == {"segflow-pool"}
    entrypoints = sorted(d["entrypoint"] for d in deployments)
    assert entrypoints == [
        "flows.dataset_flows:evaluate_flow",
        "flows.dataset_flows:ingest_flow",
        "flows.dataset_flows:train_flow",
        "flows.segment_flow:segment_archive_flow",
    ]
    # Module entrypoints: a script path (flows/segment_flow.py) would put flows/ first on
    # sys.path, where `import flows` finds flows/dataset_flows.py instead of the package. Prove every
    # entrypoint loads in a fresh interpreter in the repository root, as a process worker runs.
    script = (
        "import json, sys\nfrom prefect.flows import load_flow_from_entrypoint\n"
        "print(json.dumps([load_flow_from_entrypoint(e).name for e in sys.argv[1:]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *entrypoints],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert loaded == ["evaluate", "ingest", "train", "segment-archive"]
