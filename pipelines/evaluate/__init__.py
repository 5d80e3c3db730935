"""Score written predictions against reference labels: what ``segflow evaluate`` does.

:func:`evaluate_outputs` pairs prediction and truth files by case id
(:mod:`pipelines.evaluate.pairing`), reads each pair with its spacing and nodata
(:mod:`pipelines.evaluate.label_maps`), scores it (:mod:`pipelines.evaluate.scoring`) and
averages the scores; a pair that fails is reported and the batch goes on. The JSON report
writes non-finite numbers (an ``inf`` HD95) as ``null``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from data_contracts import SegflowError
from pipelines.evaluate.label_maps import LabelMap, read_label_map
from pipelines.evaluate.pairing import Pairing, case_id, pair_files
from pipelines.evaluate.scoring import INSTANCE_AUTO_VALUES, evaluate_case, summarise
from pipelines.files import write_text_atomic

__all__ = [
    "INSTANCE_AUTO_VALUES",
    "LabelMap",
    "Pairing",
    "case_id",
    "evaluate_case",
    "evaluate_outputs",
    "pair_files",
    "read_label_map",
    "report_json",
    "summarise",
]

logger = logging.getLogger(__name__)


def evaluate_outputs(
    prediction: str | Path,
    truth: str | Path,
    *,
    instance: bool | None = None,
    out: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Pair predictions with truths, score every pair, and optionally write the JSON report.

    Args:
        prediction: predicted label file or folder.
        truth: reference label file or folder.
        instance: force instance (True) or semantic (False) scoring; None decides per pair.
        out: JSON file to write atomically (non-finite numbers as ``null``).
        progress: called with ``(pairs done, pairs in all, case id)`` after each pair.

    Returns:
        ``{"cases": {case: metrics}, "summary": {...}, "failed": {case: message},
        "unpaired": {"prediction": [...], "truth": [...]}}``.

    Raises:
        MissingFileError: ``prediction`` or ``truth`` does not exist.
        PairingError: nothing pairs.
        OutputError: ``out`` cannot be written.
    """
    pairing = pair_files(Path(prediction), Path(truth))
    cases: dict[str, dict[str, Any]] = {}
    failed = dict(pairing.duplicates)
    for done, (case, (pred_path, truth_path)) in enumerate(pairing.pairs.items(), start=1):
        try:
            cases[case] = evaluate_case(pred_path, truth_path, instance=instance)
        except SegflowError as error:
            logger.info("case %s failed: %s", case, error)  # reported in the result
            failed[case] = str(error)
        if progress is not None:
            progress(done, len(pairing.pairs), case)
    unpaired = {"prediction": pairing.unpaired_prediction, "truth": pairing.unpaired_truth}
    report = {"cases": cases, "summary": summarise(cases), "failed": failed, "unpaired": unpaired}
    if out is not None:
        write_text_atomic(out, report_json(report))
    return report


def report_json(report: Mapping[str, Any]) -> str:
    """The report as strict JSON (``inf``/``NaN`` become ``null``)."""
    return json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
