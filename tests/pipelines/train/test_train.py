"""Training loop: it learns, checkpoints, resumes exactly, and honours its budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from data_contracts import TrainConfig
from pipelines.train import (
    IGNORE_INDEX,
    SegmentationModule,
    dice_per_class,
    fit,
    make_loaders,
    seed_everything,
)
from pipelines.train.trainer import kept_weights
from pipelines.train.validate import load_kept

SPEC = {
    "name": "unet",
    "spatial_dims": 2,
    "in_channels": 1,
    "num_classes": 2,
    "options": {"base_features": 4, "depth": 2},
}


class Squares(Dataset[dict[str, torch.Tensor]]):
    """Seeded 32×32 images with one bright square each; label 1 inside the square."""

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(count):
            top, left = torch.randint(2, 18, (2,), generator=generator).tolist()
            label = torch.zeros(1, 32, 32, dtype=torch.long)
            label[:, top : top + 12, left : left + 12] = 1
            image = label.float() + 0.3 * torch.randn(1, 32, 32, generator=generator)
            self.items.append({"image": image, "label": label})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


class StepLosses(L.Callback):
    """Records the loss of every training step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.losses.append(float(outputs["loss"]))


def _run(
    tmp: Path,
    epochs: int,
    *,
    steps: int = 3,
    resume: bool = True,
    callback: StepLosses | None = None,
    horizon: int = 4,
    **config: Any,
) -> Any:
    seed_everything(0)
    module = SegmentationModule(
        SPEC,
        loss="dice+ce",
        roi_size=(32, 32),
        class_names=("background", "square"),
        max_epochs=horizon,
    )
    settings = TrainConfig(
        max_epochs=epochs, steps_per_epoch=steps, accelerator="cpu", seed=0, patience=50, **config
    )
    train, val = make_loaders(Squares(8, seed=1), Squares(2, seed=2), settings, batch_size=2)
    return fit(
        module,
        train,
        val,
        settings,
        tmp,
        resume=resume,
        extra_callbacks=[callback] if callback else None,
        progress_bar=False,
    )


def test_training_learns_and_checkpoints(tmp_path: Path) -> None:
    result = _run(tmp_path, epochs=8, steps=8, horizon=8, learning_rate=1e-2)
    assert result.epochs == 8 and result.stopped_by == "epochs"
    assert result.history["val_dice"][-1] > 0.5  # a square on noise is learnt in seconds
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert result.last_checkpoint is not None and result.last_checkpoint.name == "last.ckpt"
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    assert "state_dict" in state


def test_resume_gives_the_same_next_step_loss(tmp_path: Path) -> None:
    uninterrupted = StepLosses()
    _run(tmp_path / "a", epochs=2, callback=uninterrupted)
    _run(tmp_path / "b", epochs=1)
    resumed = StepLosses()
    _run(tmp_path / "b", epochs=2, callback=resumed)
    assert len(uninterrupted.losses) == 6 and len(resumed.losses) == 3
    assert resumed.losses == pytest.approx(uninterrupted.losses[3:], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_minutes": 10}, "final"),  # the budget sets the epochs: no early stopping
        ({"max_minutes": 10, "patience": 5}, "best"),  # early stopping on
        ({}, "best"),  # max_epochs with the default patience
        ({"weights": "final"}, "final"),
        ({"max_minutes": 10, "weights": "best"}, "best"),
    ],
)
def test_a_budget_keeps_the_final_weights_and_early_stopping_the_best(
    config: dict[str, Any], expected: str
) -> None:
    assert kept_weights(TrainConfig(**config)) == expected


def test_the_kept_weights_are_evaluated_and_registered(tmp_path: Path) -> None:
    final = _run(tmp_path / "final", epochs=3, weights="final")
    assert final.weights == "final" and final.kept_checkpoint is None
    best = _run(tmp_path / "best", epochs=3, weights="best")
    assert best.kept_checkpoint == best.best_checkpoint is not None
    module = SegmentationModule(
        SPEC, loss="dice+ce", roi_size=(32, 32), class_names=("background", "square")
    )
    before = {name: value.clone() for name, value in module.state_dict().items()}
    load_kept(module, final)  # the module already holds the final weights: nothing is loaded
    assert all(torch.equal(value, before[name]) for name, value in module.state_dict().items())
    load_kept(module, best)
    saved = torch.load(best.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(value, saved[name]) for name, value in module.state_dict().items())


def test_the_last_checkpoint_is_the_last_epoch_even_without_improvement(tmp_path: Path) -> None:
    # a learning rate of ~0 keeps the validation Dice flat: only epoch 0 is ever "best"
    result = _run(tmp_path, epochs=3, learning_rate=1e-30)
    best = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    last = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert best["epoch"] == 0 and last["epoch"] == 2
    assert result.last_checkpoint == tmp_path / "last.ckpt"


def test_time_budget_stops_training(tmp_path: Path) -> None:
    result = _run(tmp_path, epochs=10_000, steps=2, max_minutes=0.02)
    assert result.stopped_by == "time_budget" and result.epochs < 10_000


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ([[1, 1, 0, 0]], [[1, 1, 0, 0]], [1.0]),
        ([[1, 0, 0, 0]], [[1, 1, 0, 0]], [2 / 3]),
        ([[0, 0, 0, 0]], [[0, 0, 0, 0]], [1.0]),
        ([[1, 1, 1, 0]], [[1, 1, IGNORE_INDEX, 0]], [1.0]),
    ],
)
def test_dice_per_class(
    prediction: list[list[int]], target: list[list[int]], expected: list[float]
) -> None:
    scores = dice_per_class(torch.tensor(prediction), torch.tensor(target), classes=[1])
    assert scores.tolist() == pytest.approx(expected)


def test_maskrcnn_trains_from_instance_maps(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from pipelines.train.maskrcnn import InstanceChips, MaskRCNNModule, collate_instances

    rng = torch.Generator().manual_seed(0)
    images, maps = [], []
    for _ in range(2):
        label = torch.zeros(48, 48, dtype=torch.int64)
        label[5:15, 5:15], label[25:40, 20:35] = 1, 2
        images.append(
            ((label > 0).float() + 0.1 * torch.randn(48, 48, generator=rng))
            .expand(3, -1, -1)
            .numpy()
        )
        maps.append(label.numpy())
    spec = {
        "name": "maskrcnn",
        "spatial_dims": 2,
        "in_channels": 3,
        "num_classes": 2,
        "task": "instance",
        "options": {"backbone": "resnet18", "min_size": 48, "max_size": 48},
    }
    seed_everything(0)
    module = MaskRCNNModule(spec, learning_rate=0.005, max_epochs=1)
    config = TrainConfig(max_epochs=1, steps_per_epoch=1, accelerator="cpu", patience=5)
    train = DataLoader(
        InstanceChips(images, maps, chip_size=48), batch_size=2, collate_fn=collate_instances
    )
    val = DataLoader(
        InstanceChips(images, maps, train=False), batch_size=1, collate_fn=collate_instances
    )
    result = fit(module, train, val, config, tmp_path, progress_bar=False, monitor="val_dsb2018")
    assert result.epochs == 1 and "val_dsb2018" in result.history
    assert 0.0 <= result.history["val_dsb2018"][0] <= 1.0
    assert result.last_checkpoint is not None and result.last_checkpoint.is_file()


def test_resume_is_exact_with_random_patch_augmentation(tmp_path: Path) -> None:
    """Real preprocessing (random patches, flips, rotations) re-seeded per epoch from the run seed."""
    from pipelines.ingest import ingest
    from pipelines.preprocess.datasets import build_datasets, split_cases
    from pipelines.synthetic import make_raster_dataset
    from pipelines.train.prepare import plan_for
    from pipelines.train.route import spec_for

    make_raster_dataset(tmp_path / "data", n_tiles=3, size=(48, 48), seed=4)
    manifest = ingest(tmp_path / "data", workdir=tmp_path / "work")
    config = TrainConfig(
        model="unet",
        model_options={"base_features": 4, "depth": 2},
        max_epochs=2,
        steps_per_epoch=2,
        accelerator="cpu",
        seed=3,
        patience=50,
    )
    plan = plan_for(manifest, config, {"patch_size": [32, 32], "batch_size": 2})

    def run(folder: Path, epochs: int, recorder: StepLosses | None = None) -> None:
        seed_everything(config.seed)
        train_set, val_set = build_datasets(
            *split_cases(manifest, seed=config.seed), plan, seed=config.seed
        )
        module = SegmentationModule(
            spec_for(plan, config).model_dump(), roi_size=(32, 32), max_epochs=2, seed=config.seed
        )
        settings = config.model_copy(update={"max_epochs": epochs})
        train, val = make_loaders(train_set, val_set, settings, plan.batch_size)
        fit(
            module,
            train,
            val,
            settings,
            folder,
            extra_callbacks=[recorder] if recorder else None,
            progress_bar=False,
        )

    uninterrupted, resumed = StepLosses(), StepLosses()
    run(tmp_path / "a", 2, uninterrupted)
    run(tmp_path / "b", 1)
    run(tmp_path / "b", 2, resumed)
    assert resumed.losses == pytest.approx(uninterrupted.losses[2:], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    ("class_values", "expected"),
    [((0, 1, 2), [1, 2]), ((1, 2, 3), [0, 1, 2]), ((0, 255), [1])],
)
def test_foreground_indices_skip_only_value_zero(
    class_values: tuple[int, ...], expected: list[int]
) -> None:
    from pipelines.preprocess.array import foreground_indices

    assert foreground_indices(class_values) == expected
