"""Stops asked for from outside (SIGTERM): a light module, so the CLI imports it cheaply."""

from __future__ import annotations

from pathlib import Path

from data_contracts import SegflowError

__all__ = ["SIGTERM_EXIT_CODE", "TrainingInterrupted"]

#: The exit status of a command stopped by SIGTERM (128 + 15, as a shell reports it).
SIGTERM_EXIT_CODE = 143


class TrainingInterrupted(SegflowError):
    """Training stopped on SIGTERM at a batch boundary; its last epoch-end checkpoint is kept.

    Attributes:
        checkpoint: the checkpoint to resume from (``None`` when no epoch had finished).
    """

    default_hint = "run the same command again (same --workdir) to resume from the checkpoint"

    def __init__(
        self,
        reason: str,
        *,
        path: str | Path | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(reason, path=path, hint=hint)
        self.checkpoint = Path(path) if path is not None else None
