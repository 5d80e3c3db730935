"""Model registry: models-from-code logging, champion/challenger promotion, loading back."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from mlflow.pyfunc import PythonModel
from torch import nn

import seg_models
from data_contracts import (
    Case,
    ChannelNormalization,
    FileRecord,
    ImageGeometry,
    ModelError,
    ModelSpec,
    OutputError,
    TrainingPlan,
    UsageError,
    get_settings,
)
from pipelines.precision import channels_last_helps
from pipelines.services.mlflow_model import paint_instances
from pipelines.services.model_registry import (
    CHALLENGER,
    CHAMPION,
    export_model,
    load_model,
    log_segmentation_model,
    promote_if_better,
    register_model,
    validation_key,
)
from pipelines.services.tracking import configure_mlflow, training_run

SPEC = ModelSpec(name="unet", in_channels=1, num_classes=2, options={"features": [4, 8]})
PLAN = TrainingPlan(
    dataset_name="toy",
    kind="image",
    spatial_dims=2,
    patch_size=(24, 24),
    batch_size=2,
    in_channels=1,
    class_values=(0, 1),
    class_names=("background", "nucleus"),
    normalization=(ChannelNormalization(scheme="zscore", mean=0.5, std=0.25),),
)
KEY_A, KEY_B = "a" * 64, "b" * 64


@pytest.fixture(autouse=True)
def _module_home(mlflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SEGFLOW_HOME", str(mlflow_home))
    get_settings.cache_clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    configure_mlflow()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def logged(mlflow_home: Path) -> SimpleNamespace:
    """A stub U-Net with non-trivial batch-norm statistics, logged once and registered as v1."""
    torch.manual_seed(0)
    network = seg_models.build_model(SPEC)
    network.train()
    with torch.no_grad():
        network(torch.randn(2, 1, 16, 16) * 3 + 1)  # moves the running mean/var off their init
    with training_run("toy", system_metrics=False) as run:
        uri = log_segmentation_model(
            network,
            SPEC,
            PLAN,
            class_names=PLAN.class_names,
            channel_names=("dapi",),
            processing={"min_size": 5},
        )
        registered = register_model(uri, "toy", score=0.5, validation_key=KEY_A)
    return SimpleNamespace(network=network.eval(), uri=uri, run_id=run.info.run_id, v1=registered)


def _aliases(name: str) -> dict[str, str]:
    aliases = mlflow.MlflowClient().get_registered_model(name).aliases
    return {alias: str(number) for alias, number in aliases.items()}


def seeded_input() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(7).standard_normal((2, 1, 20, 28), np.float32))


def test_model_folder_holds_code_and_json_but_no_pickle(
    logged: SimpleNamespace, tmp_path: Path
) -> None:
    folder = Path(mlflow.artifacts.download_artifacts(logged.uri, dst_path=str(tmp_path)))
    assert not list(folder.rglob("*.pkl"))
    assert {p.name for p in (folder / "artifacts").iterdir()} == {
        "weights.pt",
        "model_spec.json",
        "plan.json",
        "classes.json",
    }
    flavor = mlflow.models.Model.load(str(folder)).flavors["python_function"]
    assert Path(flavor["model_code_path"]).name == "mlflow_model.py"
    assert (folder / "mlflow_model.py").is_file()
    assert (folder / "input_example.json").is_file()
    requirements = (folder / "requirements.txt").read_text()
    assert "segflow==" in requirements and "torch==" in requirements


def test_first_version_becomes_champion_and_challenger(logged: SimpleNamespace) -> None:
    decision = logged.v1.decision
    assert decision.promoted and decision.champion_version_before is None
    assert "no champion" in decision.reason
    client = mlflow.MlflowClient()
    aliases = _aliases("toy")
    assert aliases == {CHAMPION: logged.v1.version, CHALLENGER: logged.v1.version}
    run = client.get_run(logged.run_id)
    assert run.data.params["promotion.decision"] == "promoted"
    assert run.data.metrics["promotion.challenger_score"] == 0.5


def test_champion_moves_only_to_a_better_score_on_the_same_cases(logged: SimpleNamespace) -> None:
    client = mlflow.MlflowClient()
    steps = [(0.5, True, "1"), (0.4, False, "1"), (0.6, True, "3"), (0.6, False, "3")]
    for number, (score, promoted, champion) in enumerate(steps, start=1):
        result = register_model(logged.uri, "toy-seq", score=score, validation_key=KEY_A)
        assert result.version == str(number)
        assert result.decision.promoted is promoted, result.decision.reason
        aliases = _aliases("toy-seq")
        assert aliases == {CHAMPION: champion, CHALLENGER: str(number)}
    tags = client.get_model_version("toy-seq", "2").tags
    assert tags["promotion.decision"] == "kept"
    assert tags["promotion.champion_score"] == "0.5"
    assert tags["promotion.challenger_score"] == "0.4"
    assert tags["promotion.champion_version_before"] == "1"
    assert "does not beat" in tags["promotion.reason"]
    assert tags["validation_key"] == KEY_A


def test_other_validation_cases_rescore_the_champion(logged: SimpleNamespace) -> None:
    calls: list[str] = []

    def rescore(uri: str) -> float:
        calls.append(uri)
        return 0.7

    register_model(logged.uri, "toy-key", score=0.9, validation_key=KEY_A)
    worse = register_model(
        logged.uri, "toy-key", score=0.6, validation_key=KEY_B, evaluate_champion=rescore
    )
    assert not worse.decision.promoted and worse.decision.champion_score == 0.7
    better = register_model(
        logged.uri, "toy-key", score=0.8, validation_key=KEY_B, evaluate_champion=rescore
    )
    assert better.decision.promoted and "re-scored" in better.decision.reason
    assert calls == ["models:/toy-key/1", "models:/toy-key/1"]
    unknown = promote_if_better("toy-key", "1", score=0.99, validation_key=KEY_A)
    assert not unknown.promoted and "evaluate_champion" in unknown.reason


def test_lower_is_better_metrics_and_nan_scores(logged: SimpleNamespace) -> None:
    def register(score: float) -> bool:
        result = register_model(
            logged.uri,
            "toy-hd",
            score=score,
            validation_key=KEY_A,
            metric="hd95",
            greater_is_better=False,
        )
        return result.decision.promoted

    assert [register(5.0), register(3.0), register(4.0), register(float("nan"))] == [
        True,
        True,
        False,
        False,
    ]


def _as_loaded(network: nn.Module) -> nn.Module:
    """The in-process network laid out as ``load_model`` prepares it for inference on the CPU
    (channels-last memory where it is faster: the same weights, another summation order)."""
    layout = torch.channels_last if channels_last_helps(torch.device("cpu")) else None
    copied = copy.deepcopy(network).eval()
    return copied.to(memory_format=layout) if layout is not None else copied


@pytest.mark.parametrize("uri", ["models:/toy@champion", "models:/toy/1", "logged", "run"])
def test_loaded_model_predicts_like_the_in_process_model(logged: SimpleNamespace, uri: str) -> None:
    uri = {"logged": logged.uri, "run": f"runs:/{logged.run_id}/model"}.get(uri, uri)
    loaded = load_model(uri)
    registered = uri.startswith("models:/toy")
    assert (loaded.name, loaded.version) == (("toy", "1") if registered else (None, None))
    assert loaded.channel_names == ("dapi",) and loaded.processing == {"min_size": 5}
    assert loaded.plan == PLAN and loaded.spec == SPEC and not loaded.network.training
    x = seeded_input()
    assert torch.equal(loaded.predict(x), seg_models.predict(_as_loaded(logged.network), x, SPEC))


def test_pyfunc_predicts_like_the_in_process_model(logged: SimpleNamespace) -> None:
    pyfunc = mlflow.pyfunc.load_model("models:/toy@champion")
    x = seeded_input()
    probabilities = pyfunc.predict(x.numpy())
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 2, 20, 28)
    expected = seg_models.predict(logged.network, x, SPEC).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    python_model = pyfunc.unwrap_python_model()
    assert python_model.spec == SPEC and python_model.plan == PLAN
    from_dict = python_model.predict(None, {"image": x.numpy()})
    np.testing.assert_array_equal(from_dict, python_model.predict(None, x.numpy()))


@pytest.mark.parametrize(
    ("uri", "hint"),
    [
        ("models:/toy@nope", "@champion → v1"),
        ("models:/toy/99", "versions 1"),
        ("models:/no-such-model@champion", "registered models:"),
    ],
)
def test_unknown_names_raise_model_error_with_a_hint(
    logged: SimpleNamespace, uri: str, hint: str
) -> None:
    with pytest.raises(ModelError, match=hint):
        load_model(uri)


def test_export_gives_an_offline_folder(logged: SimpleNamespace, tmp_path: Path) -> None:
    folder = export_model("models:/toy@champion", tmp_path / "exported")
    loaded = load_model(folder)
    assert (loaded.name, loaded.version) == ("toy", "1")
    x = seeded_input()
    assert torch.equal(loaded.predict(x), seg_models.predict(_as_loaded(logged.network), x, SPEC))
    with pytest.raises(OutputError, match="not an empty folder"):
        export_model("models:/toy@champion", folder)


def test_pickled_models_are_refused(tmp_path: Path) -> None:
    class Pickled(PythonModel):
        def predict(self, context, model_input: np.ndarray, params=None):  # type: ignore[no-untyped-def]
            return model_input

    mlflow.pyfunc.save_model(tmp_path / "m", python_model=Pickled(), pip_requirements=["mlflow"])
    with pytest.raises(ModelError, match="does not unpickle"):
        load_model(tmp_path / "m")
    with pytest.raises(ModelError, match="no MLmodel"):
        load_model(tmp_path)


def test_logging_needs_a_run_and_matching_names() -> None:
    network = seg_models.build_model(SPEC)
    with pytest.raises(UsageError, match="active MLflow run"):
        log_segmentation_model(network, SPEC, PLAN, class_names=("a", "b"), channel_names=("c",))
    with (
        training_run("toy", system_metrics=False),
        pytest.raises(ModelError, match="2 channel names"),
    ):
        log_segmentation_model(network, SPEC, PLAN, class_names=("a",), channel_names=("c", "d"))


def _case(case_id: str, digit: str) -> Case:
    record = FileRecord(path=f"/d/{case_id}.png", sha256=digit * 64, size_bytes=1)
    geometry = ImageGeometry(height=4, width=4, channels=1, dtype="uint8")
    return Case(case_id=case_id, kind="image", channels=(record,), label=record, geometry=geometry)


def test_validation_key_depends_on_ids_and_hashes_not_order() -> None:
    a, b = _case("a", "1"), _case("b", "2")
    assert validation_key([a, b]) == validation_key([b, a])
    assert validation_key([a, b]) != validation_key([a, _case("b", "3")])
    assert validation_key([a]) != validation_key([a, b])
    with pytest.raises(UsageError):
        validation_key([])


def test_paint_instances_keeps_the_most_confident_mask_on_overlaps() -> None:
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, :2, :2] = 0.9  # score 0.6
    masks[1, 0, 1:3, 1:3] = 0.9  # score 0.9: wins the overlap at (1, 1)
    masks[2, 0, 3, 3] = 0.9  # score 0.2: dropped
    detections = {"scores": torch.tensor([0.6, 0.9, 0.2]), "masks": masks}
    labels = paint_instances(detections, (4, 4))
    expected = np.array([[2, 2, 0, 0], [2, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], np.int32)
    np.testing.assert_array_equal(labels, expected)


def test_a_deep_instance_norm_network_logs_with_an_example_it_can_take() -> None:
    """The plan's 5-pooling DynUNet on 256² patches: a 32² example would reach its bottleneck at
    1×1, where instance norm has a single value and fails."""
    spec = ModelSpec(
        name="dynunet",
        in_channels=1,
        num_classes=2,
        options={"depth": 5, "filters": [2, 2, 2, 2, 2, 2], "norm": "instance"},
    )
    plan = PLAN.model_copy(update={"patch_size": (256, 256)})
    with training_run("toy", system_metrics=False):
        uri = log_segmentation_model(
            seg_models.build_model(spec).eval(),
            spec,
            plan,
            class_names=plan.class_names,
            channel_names=("dapi",),
        )
    assert load_model(uri).spec.options["depth"] == 5
