"""The QA report of a ``segment-archive`` batch, written by the flow beside the outputs."""

from __future__ import annotations

import logging
from typing import Any

from data_contracts import InferenceOptions, SegflowError
from pipelines.infer.loaded_model import LoadedModel, ModelCard
from pipelines.redaction import redact
from pipelines.services.batch import BatchReport
from pipelines.services.batch_tracking import training_run_of
from pipelines.services.qa_report import model_facts, write_qa_report

__all__ = ["write_report"]

logger = logging.getLogger(__name__)


def write_report(
    report: BatchReport,
    model: LoadedModel | ModelCard,
    requested: str,
    options: InferenceOptions,
    local_out: str,
    settings: dict[str, Any],
) -> dict[str, str]:
    """Write the QA report beside the outputs (uploaded and logged with them), while the
    batch's inputs are still there (archives are extracted into the batch's scratch folder).

    Returns:
        The summary's entry: ``report`` (its path) or ``report_error`` (a report that cannot
        be written is said, not a failed batch).
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = type(getattr(context, "task_runner", None)).__name__ if context else "-"
    try:
        path = write_qa_report(
            report,
            local_out,
            model=model,
            model_info=model_facts(model, requested, training_run_of(model)),
            options=options,
            settings={**{k: redact(str(v)) for k, v in settings.items()}, "task runner": runner},
        )
    except (SegflowError, OSError) as error:
        problem = f"{type(error).__name__}: {redact(str(error))[:300]}"
        logger.warning("QA report not written: %s", problem)
        return {"report_error": problem}
    return {"report": str(path)}
