"""The QA report of a batch: ``report.html`` beside the outputs, and the batch's quality metrics.

:func:`write_qa_report` reads each file's written mask (class areas, volumes or object counts),
draws overlay thumbnails of the 12 least confident files and 12 others drawn at random, writes
the footprints of georeferenced masks as ``report_footprints.geojson`` beside the report, and
renders the page (:mod:`pipelines.report.html`), every file atomically. :func:`quality_metrics`
gives the numbers logged on the batch's MLflow run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from data_contracts import InferenceOptions, SegflowError
from pipelines.files import write_text_atomic
from pipelines.infer.loaded_model import LoadedModel, ModelCard
from pipelines.report.html import ReportPage, ReportRow, Thumbnail, render_report
from pipelines.report.measures import MaskMeasures, measure_mask
from pipelines.report.previews import footprint, overlay_thumbnail
from pipelines.services.batch_items import BatchItemResult, BatchReport
from pipelines.services.report_cache import MaskFactsCache

__all__ = [
    "FOOTPRINTS_NAME",
    "REPORT_NAME",
    "model_facts",
    "quality_metrics",
    "write_qa_report",
]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
FOOTPRINTS_NAME = "report_footprints.geojson"
#: Thumbnails of the least confident files, and of as many others drawn at random.
THUMBNAILS_PER_GROUP = 12


def quality_metrics(report: BatchReport) -> dict[str, float]:
    """Batch-level quality: mean (and lowest) confidence of the segmented files, the share of
    files whose input drifted, the failures, and (rasters whose plan predicts pixels with a
    band missing) the largest share of such pixels in a file."""
    qualities = [item.quality for item in report.items if item.quality is not None]
    scores = [q.confidence for q in qualities if q.confidence is not None]
    files = len(report.items)
    metrics = {
        "share_drifted": sum(q.drifted for q in qualities) / files if files else 0.0,
        "failures": float(report.counts["failed"]),
        "files_scored": float(len(scores)),
    }
    if scores:
        metrics["mean_confidence"] = sum(scores) / len(scores)
        metrics["min_confidence"] = min(scores)
    missing = [q.missing_channel_fraction for q in qualities]
    if measured := [share for share in missing if share is not None]:
        metrics["max_missing_channel_fraction"] = max(measured)
    return metrics


def model_facts(
    model: LoadedModel | ModelCard, requested: str, training_run: str | None
) -> dict[str, str]:
    """What the report says of the model: name, version, alias, training run, URI."""
    alias = requested.rsplit("@", 1)[1] if "@" in requested else "-"
    return {
        "name": model.name or "-",
        "version": model.version or "-",
        "alias": alias,
        "training run": training_run or "-",
        "uri": model.uri,
        "requested as": requested,
        "dataset": model.plan.dataset_name,
        "kind": model.plan.kind,
        "classes": ", ".join(model.class_names),
    }


def _measures_text(measures: MaskMeasures, names: Mapping[int, str]) -> str:
    if measures.objects is not None:
        return f"{measures.objects} objects"
    if not measures.sizes:
        return "no foreground"
    return "; ".join(
        f"{names.get(value, f'class {value}')}: {size:.4g} {measures.unit}"
        for value, size in sorted(measures.sizes.items())
    )


def _row(
    item: BatchItemResult,
    model: LoadedModel | ModelCard,
    names: Mapping[int, str],
    cache: MaskFactsCache,
) -> ReportRow:
    quality = item.quality
    measures = ""
    mask = item.outputs.get("mask")
    if mask is not None and item.status in ("done", "skipped"):
        instance = model.spec.task == "instance" or model.plan.label_kind == "instance"
        try:
            measures = _measures_text(_cached_measures(Path(mask), instance, cache), names)
        except (SegflowError, OSError) as error:
            measures = f"not measured: {error}"
    if quality is not None and quality.missing_channel_fraction:
        missing = f"{quality.missing_channel_fraction:.1%} predicted with a band missing"
        measures = f"{measures}; {missing}" if measures else missing
    return ReportRow(
        case_id=item.case_id,
        status=item.status,
        seconds=item.seconds,
        measures=measures,
        confidence=quality.confidence if quality else None,
        drift=quality.drift_text() if quality else "",
        error=item.error or "",
    )


def _cached_measures(mask: Path, instance: bool, cache: MaskFactsCache) -> MaskMeasures:
    def measure() -> dict[str, Any]:
        measured = measure_mask(mask, instance=instance)
        sizes = {str(value): size for value, size in measured.sizes.items()}
        return {"sizes": sizes, "unit": measured.unit, "objects": measured.objects}

    kind = "objects" if instance else "sizes"
    facts = cache.json_fact(kind, [mask], measure)
    sizes = {int(value): float(size) for value, size in facts["sizes"].items()}
    return MaskMeasures(sizes, str(facts["unit"]), facts["objects"])


def _chosen_for_thumbnails(items: Sequence[BatchItemResult]) -> list[tuple[BatchItemResult, str]]:
    """The 12 least confident files with a mask, then 12 others drawn at random (seeded)."""
    shown = [item for item in items if item.inputs and "mask" in item.outputs]
    scored = sorted(
        (item for item in shown if item.quality and item.quality.confidence is not None),
        key=lambda item: (item.quality.confidence if item.quality else 0.0, item.case_id),
    )
    least = scored[:THUMBNAILS_PER_GROUP]
    taken = {item.case_id for item in least}
    others = [item for item in shown if item.case_id not in taken]
    drawn = random.Random(0).sample(others, min(THUMBNAILS_PER_GROUP, len(others)))
    return [(item, "least confident") for item in least] + [(item, "random") for item in drawn]


def _thumbnails(items: Sequence[BatchItemResult], cache: MaskFactsCache) -> list[Thumbnail]:
    thumbnails = []
    for item, group in _chosen_for_thumbnails(items):
        source, mask = Path(item.inputs[0]), Path(item.outputs["mask"])
        try:
            png = cache.bytes_fact(
                "thumbnail.png", [source, mask], partial(overlay_thumbnail, source, mask)
            )
        except (SegflowError, OSError) as error:
            logger.warning("%s: no thumbnail for the report (%s)", item.case_id, error)
            continue
        confidence = item.quality.confidence if item.quality else None
        thumbnails.append(Thumbnail(item.case_id, confidence, png, group))
    return thumbnails


def _footprints(
    items: Sequence[BatchItemResult], cache: MaskFactsCache
) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for item in items:
        mask = item.outputs.get("mask")
        if mask is None:
            continue
        try:
            shape = cache.json_fact("footprint", [Path(mask)], partial(footprint, Path(mask)))
        except (SegflowError, OSError, ValueError) as error:
            logger.warning("%s: no footprint for the report (%s)", item.case_id, error)
            continue
        if shape is not None:
            found.append((item.case_id, shape))
    return found


def _summary(report: BatchReport, metrics: Mapping[str, float]) -> dict[str, str]:
    counts = report.counts
    summary: dict[str, str] = {status: str(count) for status, count in counts.items()}
    summary["wall seconds"] = f"{report.wall_seconds:.1f}"
    for name, value in metrics.items():
        summary[name.replace("_", " ")] = f"{value:g}" if value == int(value) else f"{value:.3f}"
    return summary


def write_qa_report(
    report: BatchReport,
    out_dir: str | Path,
    *,
    model: LoadedModel | ModelCard,
    model_info: Mapping[str, str],
    options: InferenceOptions,
    settings: Mapping[str, Any] | None = None,
    title: str = "segflow batch QA report",
) -> Path:
    """Write ``report.html`` (and, for georeferenced masks, ``report_footprints.geojson``)
    into ``out_dir``; returns the report's path.

    Args:
        report: the finished batch.
        out_dir: the output folder (the masks' folder).
        model: the batch's model (class names, kind of labels).
        model_info: what to say of the model (:func:`model_facts`).
        options: the batch's inference options (shown as settings).
        settings: other batch settings to show (source, output, runner…).
        title: the page title.

    Raises:
        OutputError: a file cannot be written.
    """
    out = Path(out_dir)
    names = dict(zip(model.plan.class_values, model.plan.class_names, strict=True))
    items = sorted(report.items, key=lambda item: item.case_id)
    cache = MaskFactsCache(out)  # a rerun re-reads no unchanged mask
    footprints = _footprints(items, cache)
    if footprints:
        collection = {
            "type": "FeatureCollection",
            "features": [
                {"type": "Feature", "properties": {"case": case_id}, "geometry": shape}
                for case_id, shape in footprints
            ],
        }
        write_text_atomic(out / FOOTPRINTS_NAME, json.dumps(collection, indent=1) + "\n")
    shown_settings = {**options.model_dump(mode="json"), **(settings or {})}
    page = ReportPage(
        title=title,
        created_utc=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        summary=_summary(report, quality_metrics(report)),
        model=model_info,
        settings={key: json.dumps(value) for key, value in shown_settings.items()},
        rows=[_row(item, model, names, cache) for item in items],
        thumbnails=_thumbnails(items, cache),
        footprints=footprints,
    )
    written = write_text_atomic(out / REPORT_NAME, render_report(page))
    cache.prune()
    return written
