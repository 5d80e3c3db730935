"""`segflow train` from the command line: flags, YAML config, plan overrides, registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from flows.exit_codes import ExitCode
from pipelines.ingest import ingest, write_manifest
from pipelines.synthetic import make_raster_dataset


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-cli")
    make_raster_dataset(root / "data", n_tiles=3, size=(48, 48), seed=2)
    return write_manifest(ingest(root / "data", workdir=root / "work"), root / "tiles.json")


def test_train_with_yaml_and_flags_registers(
    manifest_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(
        "model: unet\nmodel_options: {base_features: 4, depth: 2}\nloss: dice+ce\nmax_epochs: 1\n"
        "steps_per_epoch: 2\naccelerator: cpu\nplan:\n  batch_size: 2\n"
    )
    argv = [
        "train",
        str(manifest_path),
        "--config",
        str(config),
        "--plan",
        "patch_size=32,32",
        "--register",
        "cli-tiles",
        "--workdir",
        str(tmp_path / "work"),
    ]
    assert main(argv) == ExitCode.OK
    out = " ".join(capsys.readouterr().out.split())
    assert "Training plan" in out and "patch_size" in out and "registered cli-tiles v1" in out
    assert (tmp_path / "work" / "plan.json").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--plan", "no_such_field=1"], "no_such_field"), (["--max-epochs", "0"], "max_epochs")],
)
def test_bad_training_options_are_usage_errors(
    manifest_path: Path,
    tmp_path: Path,
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "train",
        str(manifest_path),
        "--workdir",
        str(tmp_path / "w"),
        "--model-option",
        "base_features=4",
        *extra,
    ]
    assert main(argv) == ExitCode.USAGE
    assert message in capsys.readouterr().err.replace("\n", "")


def test_missing_manifest_exits_1(tmp_path: Path) -> None:
    assert main(["train", str(tmp_path / "none.json")]) == ExitCode.NOTHING_DONE


def _loss_yaml(tmp_path: Path, loss_options: str = "{}") -> Path:
    config = tmp_path / "train.yaml"
    config.write_text(
        "model: unet\nmodel_options: {base_features: 4, depth: 2}\nmax_epochs: 1\n"
        f"steps_per_epoch: 1\naccelerator: cpu\nloss_options: {loss_options}\n"
        "plan:\n  batch_size: 2\n  patch_size: [32, 32]\n"
    )
    return config


def test_weighted_ce_without_weights_trains_on_the_class_frequencies(
    manifest_path: Path, tmp_path: Path
) -> None:
    import mlflow

    from data_contracts import TrainingPlan

    argv = ["train", str(manifest_path), "--config", str(_loss_yaml(tmp_path))]
    argv += ["--loss", "weighted_ce", "--workdir", str(tmp_path / "work")]
    assert main(argv) == ExitCode.OK
    plan = TrainingPlan.model_validate_json((tmp_path / "work" / "plan.json").read_text())
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    weights = [float(w) for w in run.data.params["train.loss_options.weight"].split(",")]
    assert len(weights) == plan.num_classes
    assert sum(weights) / len(weights) == pytest.approx(1.0, rel=1e-3)
    assert weights[0] < weights[-1]  # the background is the most frequent class


@pytest.mark.parametrize(
    ("loss", "options", "reason", "hint"),
    [
        (
            "weighted_ce",
            "{weight: [1, 2], gamma: 2}",
            "loss 'weighted_ce' accepts no option gamma",
            "weighted_ce takes weight: set options under `loss_options:`",
        ),
        ("dice+tversky", "{}", "unknown loss 'tversky'", "choose from balanced_ce, ce"),
    ],
)
def test_a_bad_loss_exits_2_with_the_loss_hint(
    manifest_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    loss: str,
    options: str,
    reason: str,
    hint: str,
) -> None:
    argv = ["train", str(manifest_path), "--config", str(_loss_yaml(tmp_path, options))]
    argv += ["--loss", loss, "--workdir", str(tmp_path / "work")]
    assert main(argv) == ExitCode.USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert reason in err and hint in err and "docs/models.md" in err
    assert "model name/URI" not in err
