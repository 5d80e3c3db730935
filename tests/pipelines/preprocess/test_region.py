"""Few labelled cases: the end of each is validated on and never trained on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_contracts import ConfigError, TrainConfig
from pipelines.ingest import ingest
from pipelines.preprocess.array import IGNORE_INDEX
from pipelines.preprocess.region import HeldOutRegion, HoldOutRegiond, Slab
from pipelines.preprocess.transforms import IMAGE_KEY, LABEL_KEY
from pipelines.services.model_registry import validation_key
from pipelines.services.training import train_from_manifest
from pipelines.synthetic import make_raster_dataset
from pipelines.train.prepare import prepare

CONFIG = TrainConfig(
    model="unet", model_options={"features": [4, 8]}, max_epochs=1, accelerator="cpu"
)


def _item(case_id: str = "scene") -> dict[str, object]:
    return {
        "case_id": case_id,
        IMAGE_KEY: torch.arange(2 * 10 * 4, dtype=torch.float32).reshape(2, 10, 4),
        LABEL_KEY: torch.ones(1, 10, 4, dtype=torch.int64),
    }


def test_training_ignores_the_held_out_rows_and_validation_reads_only_them() -> None:
    region = HeldOutRegion(("scene",), 0.2, spatial_dims=2)
    trained = HoldOutRegiond(region, "ignore")(_item())
    label = trained[LABEL_KEY]
    assert isinstance(label, torch.Tensor)
    assert (label[:, :8] == 1).all() and (label[:, 8:] == IGNORE_INDEX).all()
    validated = HoldOutRegiond(region, "crop")(_item())
    image = validated[IMAGE_KEY]
    assert isinstance(image, torch.Tensor) and image.shape == (2, 2, 4)
    assert torch.equal(image, _item()[IMAGE_KEY][:, 8:])  # type: ignore[index]
    assert HoldOutRegiond(region, "crop")(_item("other"))[IMAGE_KEY].shape == (2, 10, 4)  # type: ignore[union-attr]


class _FirstRows(HeldOutRegion):
    def slab(self, label: torch.Tensor) -> Slab:
        return Slab(1, 0, 2)


@pytest.mark.parametrize(("first", "context"), [(False, 3), (True, 3), (False, 50)])
def test_validation_keeps_context_beside_the_slab_with_its_labels_ignored(
    first: bool, context: int
) -> None:
    item = _item()
    label = item[LABEL_KEY]
    assert isinstance(label, torch.Tensor)
    label[:, :, 0] = 0  # every row alike: the last rows are held out
    region: HeldOutRegion = (
        _FirstRows(("scene",), 0.2, 2) if first else HeldOutRegion(("scene",), 0.2, spatial_dims=2)
    )
    slab = region.slab(label)
    assert (slab.start == 0) is first
    validated = HoldOutRegiond(region, "crop", context)(item)
    crop = slab.widened(context, 10)
    assert crop.stop - crop.start == min(10, 2 + context)
    image, kept = validated[IMAGE_KEY], validated[LABEL_KEY]
    assert isinstance(image, torch.Tensor) and isinstance(kept, torch.Tensor)
    assert torch.equal(image, crop.narrow(_item()[IMAGE_KEY]))  # type: ignore[arg-type]
    scored = kept != IGNORE_INDEX
    assert int(scored.sum()) == 2 * 4  # only the slab's two rows are scored…
    inside = slice(0, 2) if first else slice(kept.shape[1] - 2, kept.shape[1])
    assert torch.equal(kept[:, inside], slab.narrow(label))  # …with their own labels


def test_volumes_hold_out_the_end_of_the_s_axis_and_both_sides_keep_an_index() -> None:
    region = HeldOutRegion(("scan",), 0.5, spatial_dims=3)
    uniform = torch.zeros(1, 4, 4, 6, dtype=torch.int64)
    assert region.slab(uniform) == Slab(axis=3, start=3, stop=6)  # a tie: the end of S
    assert region.slab(uniform).describe(4) == "the last 3 slices along S"
    assert region.start(3) == 1 and HeldOutRegion(("scan",), 0.01, 3).start(3) == 2
    assert HeldOutRegion(("scan",), 0.99, 3).start(3) == 1


def test_the_slab_with_the_most_typical_classes_is_held_out_by_both_sides() -> None:
    """Objects only in the top rows: the last rows would validate on background alone."""
    label = torch.zeros(1, 10, 10, dtype=torch.int64)
    label[:, :5, 2:9] = 1  # 35 % foreground; the first two columns have none
    region = HeldOutRegion(("scene",), 0.2, spatial_dims=2)
    slab = region.slab(label)
    assert slab == Slab(axis=2, start=8, stop=10)  # last two columns: 50 % foreground
    assert slab.describe(label.ndim) == "the last 2 columns"
    item = {"case_id": "scene", IMAGE_KEY: label.float() * 3, LABEL_KEY: label}
    trained = HoldOutRegiond(region, "ignore")(item)[LABEL_KEY]
    validated = HoldOutRegiond(region, "crop")(item)
    assert (trained[:, :, 8:] == IGNORE_INDEX).all() and (trained[:, :, :8] >= 0).all()
    assert torch.equal(validated[LABEL_KEY], label[:, :, 8:])
    assert torch.equal(validated[IMAGE_KEY], label[:, :, 8:].float() * 3)
    assert region.slab(torch.full_like(label, IGNORE_INDEX)) == Slab(1, 8, 10)


def test_a_single_semantic_case_is_validated_on_its_held_out_rows(tmp_path: Path) -> None:
    make_raster_dataset(tmp_path / "data", n_tiles=1, size=(64, 48), seed=4)
    manifest = ingest(tmp_path / "data", workdir=tmp_path / "work")
    (case,) = manifest.labelled_cases
    prepared = prepare(manifest, CONFIG, tmp_path / "run", plan_overrides={"patch_size": [32, 32]})
    assert prepared.held_out == HeldOutRegion((case.case_id,), 0.2, 2)
    assert prepared.train_cases == prepared.val_cases == [case]
    validation = prepared.val_set[0]
    # the last 20 % of 64 rows, and half a 32² patch of context above them (labels ignored)
    assert validation[IMAGE_KEY].shape[-2:] == (13 + 16, 48)
    assert int((validation[LABEL_KEY] == IGNORE_INDEX).all(dim=-1).sum()) >= 16
    full = validation_key([case])
    assert validation_key([case], prepared.held_out.description) != full


def test_without_a_validation_share_there_is_no_region_and_no_registering(
    tmp_path: Path,
) -> None:
    make_raster_dataset(tmp_path / "data", n_tiles=1, size=(48, 48), seed=4)
    manifest = ingest(tmp_path / "data", workdir=tmp_path / "work")
    patch = {"patch_size": [32, 32]}
    prepared = prepare(manifest, CONFIG, tmp_path / "run", plan_overrides=patch, val_fraction=0)
    assert prepared.held_out is None and prepared.val_cases == []
    with pytest.raises(ConfigError, match="cannot be registered"):
        train_from_manifest(
            manifest, CONFIG, tmp_path / "again", plan_overrides=patch, register="x", val_fraction=0
        )
    assert not (tmp_path / "again" / "checkpoints").exists()  # refused before training


def test_fewer_than_five_cases_all_train_and_each_validates_on_an_end_slab(tmp_path: Path) -> None:
    make_raster_dataset(tmp_path / "data", n_tiles=3, size=(40, 32), seed=5)
    manifest = ingest(tmp_path / "data", workdir=tmp_path / "work")
    cases = sorted(manifest.labelled_cases, key=lambda case: case.case_id)
    prepared = prepare(manifest, CONFIG, tmp_path / "run", plan_overrides={"patch_size": [16, 16]})
    assert prepared.held_out == HeldOutRegion(tuple(c.case_id for c in cases), 0.2, 2)
    assert prepared.train_cases == prepared.val_cases == cases
    assert "of each of" in prepared.held_out.description
    # 20 % of the rows or of the columns, whichever is most typical, and 8 of context
    slabs = {(8 + 8, 32), (40, 6 + 8)}
    assert {tuple(item[IMAGE_KEY].shape[-2:]) for item in prepared.val_set} <= slabs


def test_five_cases_or_an_explicit_split_hold_out_whole_cases(tmp_path: Path) -> None:
    make_raster_dataset(tmp_path / "data", n_tiles=5, size=(32, 32), seed=6)
    manifest = ingest(tmp_path / "data", workdir=tmp_path / "work")
    patch = {"patch_size": [16, 16]}
    prepared = prepare(manifest, CONFIG, tmp_path / "run", plan_overrides=patch)
    assert prepared.held_out is None and len(prepared.val_cases) == 1
    assert len(prepared.train_cases) == 4
    first = sorted(case.case_id for case in manifest.labelled_cases)[0]
    few = manifest.model_copy(
        update={"cases": [c for c in manifest.cases if c.case_id != first][:3]}
    )
    chosen = prepare(
        few, CONFIG, tmp_path / "b", plan_overrides=patch, val_case_ids=[few.cases[0].case_id]
    )
    assert chosen.held_out is None and chosen.val_cases == [few.cases[0]]
