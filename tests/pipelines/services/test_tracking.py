"""MLflow tracking: params, artifacts, dataset input, curves and overlays of one training run."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest

from data_contracts import (
    Case,
    ChannelNormalization,
    DatasetManifest,
    FileRecord,
    ImageGeometry,
    ModelSpec,
    TrainingPlan,
    UsageError,
    get_settings,
)
from pipelines.services import tracking
from pipelines.services.tracking import (
    MAX_PARAM_LENGTH,
    TRUNCATION_MARKER,
    configure_mlflow,
    drop_credentials,
    experiment_for,
    flatten_params,
    training_run,
)

DATASET = "toy nuclei/v1"  # a name with a space and a slash: the artifact folder is sanitised


def make_plan(patch: tuple[int, ...] = (32, 32)) -> TrainingPlan:
    return TrainingPlan(
        dataset_name=DATASET,
        kind="image",
        spatial_dims=2,
        patch_size=patch,
        batch_size=2,
        in_channels=1,
        class_values=(0, 1),
        class_names=("background", "nucleus"),
        normalization=(ChannelNormalization(scheme="zscore", mean=0.5, std=0.25),),
    )


def make_spec() -> ModelSpec:
    return ModelSpec(name="unet", in_channels=1, num_classes=2, options={"features": [4, 8]})


def make_manifest() -> DatasetManifest:
    def record(name: str, digit: str) -> FileRecord:
        return FileRecord(path=f"/data/{name}.png", sha256=digit * 64, size_bytes=10)

    cases = tuple(
        Case(
            case_id=f"case_{i}",
            kind="image",
            channels=(record(f"images/case_{i}", str(i)),),
            label=record(f"labels/case_{i}", "abcdef"[i]),
            geometry=ImageGeometry(height=8, width=8, channels=1, dtype="uint8"),
        )
        for i in range(3)
    )
    return DatasetManifest(name=DATASET, source="/data", segflow_version="0.1.0", cases=cases)


@pytest.fixture(autouse=True)
def _module_home(mlflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGFLOW_HOME", str(mlflow_home))
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def tracked(mlflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One training run that logs everything, started from an empty working directory."""
    workdir = tmp_path_factory.mktemp("cwd")
    rng = np.random.default_rng(0)
    image = rng.random((16, 16))
    truth = (image > 0.5).astype(np.int16)
    prediction = truth.copy()
    prediction[:4] = 1 - prediction[:4]
    prediction[0, 0] = -1  # an ignore value: drawn grey, not an error
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        with training_run(DATASET, run_name="unit", tags={"git_token": "s3cr3t", "fold": 0}) as run:
            params = tracking.log_plan_and_spec(
                make_plan(), make_spec(), extra={"train": {"max_epochs": 3, "db_password": "x"}}
            )
            dataset = tracking.log_manifest_input(make_manifest())
            history: dict[str, list[float]] = {"train_loss": [], "val_dice": []}
            for epoch in range(3):
                metrics = {"train_loss": 1.0 / (epoch + 1), "val_dice": 0.2 * epoch}
                tracking.log_epoch_metrics(metrics, epoch)
                for key, value in metrics.items():
                    history[key].append(value)
            tracking.log_training_curves(history)
            overlays = tracking.log_overlays([("case 0", image, truth, prediction)])
    return SimpleNamespace(
        run_id=run.info.run_id,
        params=params,
        dataset=dataset,
        overlays=overlays,
        workdir=workdir,
        run=mlflow.MlflowClient().get_run(run.info.run_id),
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"patch_size": (96, 96, 96)}, {"patch_size": "96,96,96"}),
        (
            {"plan": {"batch_size": 2, "spacing": None}},
            {"plan.batch_size": "2", "plan.spacing": "None"},
        ),
        ({"norm": [{"scheme": "ct", "mean": 1.5}]}, {"norm.0.scheme": "ct", "norm.0.mean": "1.5"}),
        ({"overrides": ()}, {"overrides": ""}),
        (
            {"flag": True, "nested": [[1, 2], [3]]},
            {"flag": "True", "nested.0": "1,2", "nested.1": "3"},
        ),
    ],
)
def test_flatten_params(values: dict[str, object], expected: dict[str, str]) -> None:
    assert flatten_params(values) == expected


def test_long_values_are_truncated_with_a_marker() -> None:
    value = flatten_params({"long": "x" * (MAX_PARAM_LENGTH + 10)})["long"]
    assert len(value) == MAX_PARAM_LENGTH
    assert value.endswith(TRUNCATION_MARKER)


@pytest.mark.parametrize(
    ("key", "dropped"),
    [
        ("train.db_password", True),
        ("API_TOKEN", True),
        ("aws_Secret_access", True),
        ("s3.access_key", True),
        ("plan.patch_size", False),
        ("spec.options.features", False),
    ],
)
def test_credential_like_keys_are_dropped(key: str, dropped: bool) -> None:
    assert (key not in drop_credentials({key: "value"})) is dropped


def test_default_tracking_uri_is_an_absolute_sqlite_file(mlflow_home: Path) -> None:
    uri = configure_mlflow()
    assert uri == f"sqlite:////{str(mlflow_home.resolve()).lstrip('/')}/mlflow.db"
    assert mlflow.get_tracking_uri() == uri


def test_mlflow_tracking_uri_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    try:
        assert configure_mlflow() == uri
    finally:
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        get_settings.cache_clear()
        configure_mlflow()


def test_run_has_params_without_credentials(tracked: SimpleNamespace) -> None:
    params = tracked.run.data.params
    assert params["plan.patch_size"] == "32,32"
    assert params["plan.normalization.0.scheme"] == "zscore"
    assert params["spec.options.features"] == "4,8"
    assert params["train.max_epochs"] == "3"
    assert "train.db_password" not in params and "train.db_password" not in tracked.params
    assert tracked.run.data.tags["fold"] == "0"
    assert "git_token" not in tracked.run.data.tags


def test_run_has_plan_spec_curves_and_overlays(tracked: SimpleNamespace) -> None:
    client = mlflow.MlflowClient()
    top = {item.path for item in client.list_artifacts(tracked.run_id)}
    assert {"plan.json", "model_spec.json", "curves.png", "overlays"} <= top
    overlays = {item.path for item in client.list_artifacts(tracked.run_id, "overlays")}
    assert overlays == {"overlays/case_0.png"} == set(tracked.overlays)
    plan_file = mlflow.artifacts.download_artifacts(
        run_id=tracked.run_id, artifact_path="plan.json"
    )
    assert TrainingPlan.model_validate_json(Path(plan_file).read_text()) == make_plan()


def test_run_has_the_manifest_as_dataset_input(tracked: SimpleNamespace) -> None:
    (dataset_input,) = tracked.run.inputs.dataset_inputs
    assert dataset_input.dataset.name == DATASET
    assert dataset_input.dataset.digest == tracked.dataset.digest
    assert {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"] == "training"
    frame = tracked.dataset.df
    assert list(frame["case_id"]) == ["case_0", "case_1", "case_2"]
    assert frame.loc[1, "channel_sha256"] == "1" * 64


def test_run_has_metrics_per_epoch(tracked: SimpleNamespace) -> None:
    history = mlflow.MlflowClient().get_metric_history(tracked.run_id, "val_dice")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (1, 0.2), (2, 0.4)]


def test_artifacts_live_under_segflow_home(tracked: SimpleNamespace, mlflow_home: Path) -> None:
    artifact_dir = Path(urlparse(tracked.run.info.artifact_uri).path)
    assert artifact_dir.is_relative_to(get_settings().artifacts_dir)
    assert (artifact_dir / "curves.png").stat().st_size > 1000
    assert os.listdir(tracked.workdir) == []  # nothing landed in the working directory
    assert mlflow.get_experiment(tracked.run.info.experiment_id).name == DATASET


def test_experiment_for_is_idempotent_and_restores_a_deleted_experiment() -> None:
    first = experiment_for("restorable")
    mlflow.MlflowClient().delete_experiment(first)
    assert experiment_for("restorable") == first
    assert mlflow.get_experiment(first).lifecycle_stage == "active"


def test_failed_block_marks_the_run_failed_and_nested_runs_nest() -> None:
    with pytest.raises(RuntimeError), training_run("failing", system_metrics=False) as parent:
        with training_run("failing", system_metrics=False) as child:
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        raise RuntimeError("boom")
    assert mlflow.get_run(parent.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


@pytest.mark.parametrize("shapes", [((4, 4), (4, 4), (4, 5)), ((2, 4, 4), (2, 4, 4), (2, 4, 4))])
def test_overlays_need_equal_2d_arrays(shapes: tuple[tuple[int, ...], ...]) -> None:
    arrays = [np.zeros(shape) for shape in shapes]
    with pytest.raises(UsageError, match="2D"):
        tracking.log_overlays([("bad", arrays[0], arrays[1], arrays[2])])
