"""The QA report: measures of written masks, thumbnails chosen, footprints, the page itself."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_contracts import DriftFlag, FileQuality, InferenceOptions
from pipelines.infer.loaded_model import LoadedModel
from pipelines.ingest import ingest
from pipelines.report.html import ReportPage, ReportRow, render_report
from pipelines.report.measures import measure_mask
from pipelines.services.batch import run_batch
from pipelines.services.batch_items import BatchItemResult, BatchReport
from pipelines.services.qa_report import (
    FOOTPRINTS_NAME,
    THUMBNAILS_PER_GROUP,
    model_facts,
    quality_metrics,
    write_qa_report,
)
from pipelines.synthetic import make_raster_dataset, make_volume_dataset
from pipelines.synthetic.models import oracle_model


@pytest.fixture(scope="module")
def raster_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[BatchReport, Path, LoadedModel]:
    root = tmp_path_factory.mktemp("raster_batch")
    data = make_raster_dataset(root / "data", n_tiles=3, size=(72, 80), seed=5)
    model = oracle_model(ingest(data, workdir=root / "work"), patch=(32, 32))
    return run_batch(data / "images", model, root / "out"), root / "out", model


def test_raster_report_holds_every_file_its_areas_and_footprints(
    raster_batch: tuple[BatchReport, Path, LoadedModel],
) -> None:
    report, out, model = raster_batch
    path = write_qa_report(
        report, out, model=model, model_info=model_facts(model, "m@champion", "r1"),
        options=InferenceOptions(),
    )  # fmt: skip
    page = path.read_text()
    assert all(f'id="row-{item.case_id}"' in page for item in report.items)
    assert "m²" in page and page.count("data:image/png;base64,") == 3
    assert not re.search(r"""(src|href)=["']https?://""", page)  # nothing from the network
    features = json.loads((out / FOOTPRINTS_NAME).read_text())["features"]
    assert len(features) == 3 and "<polygon" in page
    lon, lat = features[0]["geometry"]["coordinates"][0][0]
    assert -180 <= lon <= 180 and -90 <= lat <= 90


def test_pixels_predicted_with_a_band_missing_are_reported(
    raster_batch: tuple[BatchReport, Path, LoadedModel], tmp_path: Path
) -> None:
    report, _, model = raster_batch
    shares = [0.261, None, 0.0]
    items = [
        dataclasses.replace(
            item, quality=FileQuality(confidence=0.9, missing_channel_fraction=share)
        )
        for item, share in zip(report.items, shares, strict=True)
    ]
    striped = BatchReport(items, report.wall_seconds)
    assert quality_metrics(striped)["max_missing_channel_fraction"] == 0.261
    assert "max_missing_channel_fraction" not in quality_metrics(BatchReport(items[1:2], 1.0))
    path = write_qa_report(
        striped, tmp_path, model=model, model_info=model_facts(model, "m@champion", "r1"),
        options=InferenceOptions(),
    )  # fmt: skip
    rows = re.findall(r'id="row-([^"]+)"(.*?)</tr>', path.read_text(), flags=re.S)
    noted = [case for case, row in rows if "predicted with a band missing" in row]
    assert noted == [items[0].case_id]
    assert "26.1% predicted with a band missing" in dict(rows)[items[0].case_id]


def test_volume_masks_are_measured_in_millilitres(tmp_path: Path) -> None:
    data = make_volume_dataset(tmp_path / "data", n_cases=1, n_channels=1, seed=2)
    model = oracle_model(ingest(data, workdir=tmp_path / "work"))
    report = run_batch(data / "imagesTr", model, tmp_path / "out")
    mask = report.items[0].outputs["mask"]
    measures = measure_mask(Path(mask))
    assert measures.unit == "ml" and measures.sizes
    assert measure_mask(Path(mask), instance=True).objects is not None


def _item(index: int, confidence: float | None, source: Path, mask: Path) -> BatchItemResult:
    quality = FileQuality(confidence=confidence)
    return BatchItemResult(
        f"case_{index:03d}", "done", "new", {"mask": mask}, 0.1, quality=quality, inputs=(source,)
    )


def test_thumbnails_show_the_least_confident_and_random_others(
    raster_batch: tuple[BatchReport, Path, LoadedModel], tmp_path: Path
) -> None:
    report, _, model = raster_batch
    done = report.items[0]
    items = [_item(i, i / 40, done.inputs[0], done.outputs["mask"]) for i in range(40)]
    path = write_qa_report(
        BatchReport(items, 1.0), tmp_path, model=model, model_info={}, options=InferenceOptions()
    )
    page = path.read_text()
    assert page.count("(least confident)") == THUMBNAILS_PER_GROUP
    assert page.count("(random)") == THUMBNAILS_PER_GROUP
    least = re.findall(r"<figcaption>(case_\d+)<br>[^<]*\(least confident\)", page)
    assert least == [f"case_{i:03d}" for i in range(THUMBNAILS_PER_GROUP)]


def test_page_escapes_names_and_metrics_summarise_the_batch() -> None:
    flagged = FileQuality(
        confidence=0.2, drift_status="flagged", drift=(DriftFlag(check="spacing", message="3×"),)
    )
    items = [
        BatchItemResult("a", "done", "new", quality=FileQuality(confidence=0.8)),
        BatchItemResult("b", "done", "new", quality=flagged),
        BatchItemResult("c", "failed", "new", error="InputError: x"),
    ]
    metrics = quality_metrics(BatchReport(items, 1.0))
    assert metrics["mean_confidence"] == pytest.approx(0.5)
    assert metrics["share_drifted"] == pytest.approx(1 / 3) and metrics["failures"] == 1
    page = render_report(
        ReportPage(
            title="t", created_utc="now", summary={}, model={"name": "<b>"}, settings={},
            rows=[ReportRow("<script>", "done", 1.0, "", 0.5, "")],
        )
    )  # fmt: skip
    assert '<script>"' not in page and "&lt;script&gt;" in page and "&lt;b&gt;" in page


def test_a_200_file_report_holds_every_file(
    raster_batch: tuple[BatchReport, Path, LoadedModel], tmp_path: Path
) -> None:
    report, _, model = raster_batch
    done = report.items[0]
    masks = tmp_path / "masks"
    masks.mkdir()
    items = []
    for index in range(200):
        mask = shutil.copy(done.outputs["mask"], masks / f"case_{index:03d}.tif")
        items.append(
            _item(index, float(np.random.default_rng(index).random()), done.inputs[0], Path(mask))
        )
    # How long it takes is benchmarks/report_overhead.py's to say (Q2), not a timed test's.
    path = write_qa_report(
        BatchReport(items, 1.0), masks, model=model, model_info={}, options=InferenceOptions()
    )
    page = Path(path).read_text()
    assert all(f"case_{index:03d}" in page for index in range(200))


def test_a_huge_source_without_overviews_gets_its_outlines_on_grey(tmp_path: Path) -> None:
    import io

    from PIL import Image

    from pipelines.report.previews import overlay_thumbnail

    data = make_raster_dataset(tmp_path / "wide", n_tiles=1, size=(200, 4500), seed=3)
    source = next((data / "images").iterdir())
    png = overlay_thumbnail(source, data / "labels" / source.name)
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    assert pixels.shape[1] == 160 and (pixels == 96).all(axis=-1).mean() > 0.5


def test_a_rerun_report_reads_no_unchanged_mask_and_forgets_files_that_left(
    raster_batch: tuple[BatchReport, Path, LoadedModel],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Measures, footprints and thumbnails come from the batch's report cache while the masks
    and images are unchanged; a rewritten mask is read again; facts of removed files go."""
    import pipelines.services.qa_report as qa_report

    report, out, model = raster_batch
    copy = Path(shutil.copytree(out, tmp_path / "out"))
    items = [
        BatchItemResult(
            item.case_id, item.status, item.reason,
            {role: copy / Path(path).name for role, path in item.outputs.items()},
            item.seconds, item.error, item.quality, item.inputs,
        )
        for item in report.items
    ]  # fmt: skip
    first = write_qa_report(
        BatchReport(items, 1.0), copy, model=model, model_info={}, options=InferenceOptions()
    ).read_text()
    cached = sorted((copy / ".segflow" / "report-cache").iterdir())
    assert len(cached) == 3 * 3  # sizes, footprint and thumbnail of each of the 3 masks

    def unread(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unchanged mask was read again")

    for name in ("measure_mask", "footprint", "overlay_thumbnail"):
        monkeypatch.setattr(qa_report, name, unread)
    again = write_qa_report(
        BatchReport(items[:2], 1.0), copy, model=model, model_info={}, options=InferenceOptions()
    ).read_text()
    assert again.count("data:image/png;base64,") == 2 and "m²" in again
    assert first.count("data:image/png;base64,") == 3
    assert len(list((copy / ".segflow" / "report-cache").iterdir())) == 2 * 3  # one file left

    monkeypatch.undo()
    rewritten = Path(items[0].outputs["mask"])
    rewritten.write_bytes(rewritten.read_bytes())  # a new modification time: read again
    calls: list[Path] = []
    real = qa_report.measure_mask
    monkeypatch.setattr(
        qa_report, "measure_mask", lambda mask, **kw: calls.append(mask) or real(mask, **kw)
    )
    write_qa_report(
        BatchReport(items, 1.0), copy, model=model, model_info={}, options=InferenceOptions()
    )
    pruned = Path(items[2].outputs["mask"])  # its facts went with the two-file report
    assert sorted(calls) == sorted([rewritten, pruned])
