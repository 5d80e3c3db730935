"""Prefect artifacts for segflow's flows: a markdown summary, a per-file table, a progress bar.

Every flow publishes the same three kinds of artifact, so the UI reads alike for ingest,
training, evaluation and archive segmentation:

- :func:`publish_summary`: a markdown artifact, a title and a few lines (counts, paths, scores);
- :func:`publish_table`: a table artifact, one row per file or case (capped at ``max_rows``);
- :class:`ProgressArtifact`: a progress artifact moved by ``update(fraction)`` from a pipeline's
  progress callback (throttled, thread-safe).

Outside a Prefect flow or task run every helper does nothing and returns ``None``: the
functions that call them (task bodies, ``task.fn(...)`` in unit tests) stay usable without an
API. Keys are made lowercase-with-dashes (:func:`artifact_key`), as Prefect requires; a key
groups the artifact's versions across runs in the UI's Artifacts page.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast
from uuid import UUID

logger = logging.getLogger(__name__)

MAX_TABLE_ROWS = 1000
_KEY_JUNK = re.compile(r"[^a-z0-9]+")


def artifact_key(text: str) -> str:
    """A valid artifact key from any text: lowercase letters, digits and single dashes.

    >>> artifact_key("Ingest summary: BraTS_2021")
    'ingest-summary-brats-2021'
    """
    key = _KEY_JUNK.sub("-", text.lower()).strip("-")
    return key or "segflow"


def in_prefect_run() -> bool:
    """True inside a Prefect flow run or task run (where artifacts can be attached)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def markdown_summary(title: str, lines: Iterable[str]) -> str:
    """The markdown of a summary: a heading and one bullet per line (lines may hold markdown)."""
    bullets = "\n".join(f"- {line}" for line in lines)
    return f"# {title}\n\n{bullets}\n" if bullets else f"# {title}\n"


def publish_summary(
    title: str, lines: Iterable[str], *, key: str | None = None, description: str | None = None
) -> UUID | None:
    """Attach a markdown summary to the current run.

    Args:
        title: heading of the summary, e.g. ``"Ingest of tiles.zip"``.
        lines: one bullet each, e.g. ``"valid cases: 8"``.
        key: artifact key; default from ``title`` (made lowercase-with-dashes either way).
        description: shown beside the artifact in the UI.

    Returns:
        The artifact id, or ``None`` outside a Prefect run.
    """
    if not in_prefect_run():
        return None
    from prefect.artifacts import create_markdown_artifact

    created = create_markdown_artifact(  # type: ignore[call-arg]
        markdown=markdown_summary(title, lines),
        key=artifact_key(key or title),
        description=description or title,
        _sync=True,  # also from an async flow: these helpers are synchronous
    )
    return cast(UUID, created)


def table_rows(
    rows: Iterable[Mapping[str, Any]], max_rows: int
) -> tuple[list[dict[str, Any]], int]:
    """Rows as JSON-safe dicts with the same columns, at most ``max_rows`` of them.

    Columns are the union of the rows' keys in first-seen order; a row lacking one gets
    ``None`` there, as do non-finite floats.

    Returns:
        The kept rows and how many were left out.
    """
    kept: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    left_out = 0
    for row in rows:
        if len(kept) >= max_rows:
            left_out += 1
            continue
        kept.append({str(name): _cell(value) for name, value in row.items()})
        columns.update(dict.fromkeys(kept[-1]))
    return [{column: row.get(column) for column in columns} for row in kept], left_out


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def publish_table(
    key: str,
    rows: Sequence[Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    *,
    description: str | None = None,
    max_rows: int = MAX_TABLE_ROWS,
) -> UUID | None:
    """Attach a table (one row per file or case) to the current run.

    Args:
        key: artifact key, e.g. ``"ingest-cases"`` (made lowercase-with-dashes).
        rows: one mapping per row; all rows should share their keys (the columns).
        description: shown beside the artifact; a note on left-out rows is appended.
        max_rows: rows beyond this are left out of the artifact (counted in the description).

    Returns:
        The artifact id, or ``None`` outside a Prefect run or when there are no rows.
    """
    if not in_prefect_run():
        return None
    kept, left_out = table_rows(rows, max_rows)
    if not kept:
        return None
    from prefect.artifacts import create_table_artifact

    note = f" (first {len(kept)} rows; {left_out} more left out)" if left_out else ""
    created = create_table_artifact(  # type: ignore[call-arg]
        table=kept, key=artifact_key(key), description=(description or key) + note, _sync=True
    )
    return cast(UUID, created)


class ProgressArtifact:
    """A progress artifact of the current run, moved by :meth:`update` with a fraction.

    Updates are throttled (at most one API call per ``min_interval`` seconds, except the last
    one, at 100 %) and safe to call from several threads, so it can be handed to a pipeline as
    its per-file progress callback. Outside a Prefect run it does nothing.

    Args:
        key: artifact key, e.g. ``"segment-progress"`` (made lowercase-with-dashes).
        description: shown beside the artifact in the UI.
        min_interval: seconds between two updates sent to the API.

    Example:
        >>> progress = ProgressArtifact("ingest-progress")  # outside a run: a no-op
        >>> progress.update(0.5)
        >>> progress.fraction
        0.5
    """

    def __init__(self, key: str, description: str | None = None, min_interval: float = 1.0):
        self.key = artifact_key(key)
        self.description = description or key
        self.min_interval = min_interval
        self.fraction = 0.0
        self.artifact_id: UUID | None = None
        self._sent_at = 0.0
        self._lock = threading.Lock()
        self._active = in_prefect_run()
        if self._active:
            self._send(0.0, create=True)

    def update(self, fraction: float) -> None:
        """Move the bar to ``fraction`` (0 to 1; values outside are clipped)."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        with self._lock:
            self.fraction = fraction
            due = time.monotonic() - self._sent_at >= self.min_interval
            if self._active and (due or fraction >= 1.0):
                self._send(fraction, create=self.artifact_id is None)

    def callback(self, done: int, total: int, _current: str = "") -> None:
        """A pipelines-style ``progress(done, total, current)`` callback."""
        self.update(done / total if total else 1.0)

    def _send(self, fraction: float, *, create: bool) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        self._sent_at = time.monotonic()
        try:
            if create:
                created = create_progress_artifact(  # type: ignore[call-arg]
                    progress=100.0 * fraction,
                    key=self.key,
                    description=self.description,
                    _sync=True,
                )
                self.artifact_id = cast(UUID, created)
            elif self.artifact_id is not None:
                update_progress_artifact(  # type: ignore[call-arg]
                    self.artifact_id, progress=100.0 * fraction, _sync=True
                )
        except Exception as error:  # progress is cosmetic: never fail the work for it
            logger.warning("progress artifact %s not updated: %s", self.key, error)
