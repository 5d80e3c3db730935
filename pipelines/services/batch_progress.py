"""What a batch says about itself while it runs, to whoever shows it (the CLI's progress bar).

A :class:`BatchProgress` is passed down explicitly, from ``segflow segment`` through the
``segment_archive`` flow to :class:`pipelines.services.batch.BatchRun`; nothing is registered
globally. Imports nothing heavy, so that the command line can subclass it at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.infer.loaded_model import LoadedModel, ModelCard
    from pipelines.services.batch_items import BatchItemResult

__all__ = ["BatchProgress"]


class BatchProgress:
    """Receives a batch's progress; every method does nothing here: override what you show.

    The methods are called one at a time, in the process that runs the batch (the flow's),
    never in a worker process.
    """

    def model_ready(self, model: LoadedModel | ModelCard) -> None:
        """The batch knows its model: its card (what the ledger needs to decide) or the model
        itself, loaded in this process (worker processes load their own)."""

    def planned(self, to_run: int, settled: Sequence[BatchItemResult]) -> None:
        """The ledger has decided: ``to_run`` cases will run; ``settled`` are the others
        (skipped as done before, inputs rejected, cases quarantined)."""

    def case_done(self, result: BatchItemResult, done: int, total: int) -> None:
        """A case that had to run has finished (done, failed or interrupted); ``done`` of the
        ``total`` cases to run have."""
