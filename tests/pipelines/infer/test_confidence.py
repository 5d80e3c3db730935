"""Per-file confidence: entropy, low-probability foreground, low-score detections, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from data_contracts import (
    DatasetManifest,
    FileQuality,
    InferenceOptions,
    UsageError,
    confidence_score,
)
from pipelines.infer.confidence import ConfidenceAccumulator, low_score_share, normalized_entropy
from pipelines.infer.inputs import discover_inputs
from pipelines.infer.run import segment_case
from pipelines.ingest import ingest
from pipelines.io.nifti import open_volume
from pipelines.synthetic import make_raster_dataset, make_volume_dataset
from pipelines.synthetic.models import oracle_model


def test_entropy_is_zero_when_certain_and_one_when_uniform() -> None:
    certain = np.zeros((3, 4, 4), np.float32)
    certain[1] = 1.0
    uniform = np.full((3, 4, 4), 1 / 3, np.float32)
    assert normalized_entropy(certain).max() < 1e-5
    np.testing.assert_allclose(normalized_entropy(uniform), 1.0, atol=1e-5)
    sigmoid = np.full((1, 2, 2), 0.5, np.float32)  # one channel: p and 1 - p
    np.testing.assert_allclose(normalized_entropy(sigmoid), 1.0, atol=1e-5)


def test_low_probability_foreground_counts_only_valid_foreground() -> None:
    probabilities = np.zeros((2, 2, 4), np.float32)
    probabilities[1] = [[0.9, 0.55, 0.1, 0.55], [0.9, 0.9, 0.0, 0.0]]
    probabilities[0] = 1 - probabilities[1]
    valid = np.ones((2, 4), bool)
    valid[0, 3] = False  # an uncertain foreground pixel outside the data does not count
    confidence = ConfidenceAccumulator()
    entropy = confidence.add(probabilities, valid)
    quality = confidence.quality()
    assert entropy.shape == (2, 4)
    assert confidence.pixels == 7 and confidence.foreground == 4
    assert quality.low_confidence_fraction == pytest.approx(1 / 4)
    assert quality.foreground_fraction == pytest.approx(4 / 7)
    assert quality.confidence is not None and 0 < quality.confidence < 1


def test_blocks_add_up_to_the_whole() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([1, 1, 1], size=(8, 6)).transpose(2, 0, 1).astype(np.float32)
    whole, blocks = ConfidenceAccumulator(), ConfidenceAccumulator()
    whole.add(probabilities)
    blocks.add(probabilities[:, :3])
    blocks.add(probabilities[:, 3:])
    assert whole.quality() == blocks.quality()


def test_confidence_falls_with_every_measure_and_stays_in_range() -> None:
    assert confidence_score(0.0, 0.0) == 1.0
    assert confidence_score(0.2, 0.0) > confidence_score(0.2, 0.3) > confidence_score(0.5, 0.3)
    assert confidence_score(1.0, 1.0, 1.0) == 0.0
    assert confidence_score(None, None, 0.5) == 0.5
    assert low_score_share([0.95, 0.7, 0.55, 0.51]) == 0.5
    assert low_score_share([]) is None
    detections = ConfidenceAccumulator().quality(scores=[0.9, 0.5])
    assert detections.mean_entropy is None and detections.confidence == 0.5


def test_bad_shapes_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        normalized_entropy(np.zeros(3, np.float32))
    with pytest.raises(UsageError):
        ConfidenceAccumulator().add(np.zeros((2, 3, 3), np.float32), np.ones((2, 2), bool))


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> DatasetManifest:
    root = tmp_path_factory.mktemp("volumes")
    dataset = make_volume_dataset(root / "data", n_cases=2, n_classes=2, seed=4)
    return ingest(dataset, workdir=root / "work")


def test_volume_quality_reaches_lineage_and_entropy_map(
    volumes: DatasetManifest, tmp_path: Path
) -> None:
    model = oracle_model(volumes)
    folder = Path(volumes.cases[0].channels[0].path).parent
    case = discover_inputs(folder, workdir=tmp_path / "w", channel_suffix=True).cases[0]
    options = InferenceOptions(uncertainty=True)
    result = segment_case(model, case, tmp_path, options)
    assert isinstance(result.quality, FileQuality)
    assert result.quality.confidence is not None and result.quality.confidence > 0.5
    lineage = json.loads(result.outputs["lineage"].read_text())
    assert lineage["quality"]["confidence"] == result.quality.confidence
    entropy = open_volume(result.outputs["uncertainty"])
    mask = open_volume(result.outputs["mask"])
    assert entropy.shape == mask.shape
    np.testing.assert_allclose(entropy.affine, mask.affine)


def test_raster_quality_in_tags_and_entropy_cog(tmp_path: Path) -> None:
    dataset = make_raster_dataset(tmp_path / "data", n_tiles=1, size=(150, 130), seed=3)
    manifest = ingest(dataset, workdir=tmp_path / "work")
    model = oracle_model(manifest, patch=(64, 64))
    source = Path(manifest.cases[0].channels[0].path)
    case = discover_inputs(source, workdir=tmp_path / "w").cases[0]
    result = segment_case(model, case, tmp_path / "out", InferenceOptions(uncertainty=True))
    assert result.quality is not None and result.quality.confidence is not None
    with rasterio.open(result.outputs["mask"]) as mask:
        tags, grid = mask.tags(), (mask.crs, mask.transform, mask.shape)
    lineage = json.loads(tags["segflow_lineage"])
    assert lineage["quality"]["confidence"] == result.quality.confidence
    assert json.loads(tags["segflow_quality"])["confidence"] == result.quality.confidence
    with rasterio.open(result.outputs["uncertainty"]) as entropy:
        assert (entropy.crs, entropy.transform, entropy.shape) == grid
        assert entropy.dtypes[0] == "uint8"
