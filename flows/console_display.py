"""A live display per stage on stderr while it runs, gone when it ends (normal and verbose
modes). A :class:`StageDisplay` draws two lines::

    ⠋ segment ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╺━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━  0:21
      12/40 files · 1 failed · 3 skipped · 2.1 files/s · 0:13 left

What moves it comes from the stage: :class:`SegmentProgress` (a
:class:`~pipelines.services.batch_progress.BatchProgress`) for ``segflow segment``, and
:class:`flows.console_train.TrainingDisplay` (a Lightning progress bar) for training. In the
quiet and JSON modes, and when stderr is no terminal, nothing is drawn.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from flows.console import error_console, shows_live_displays
from pipelines.services.batch_progress import BatchProgress

if TYPE_CHECKING:
    from pipelines.infer.loaded_model import LoadedModel, ModelCard
    from pipelines.services.batch_items import BatchItemResult

__all__ = ["SegmentProgress", "StageDisplay", "clock"]


def clock(seconds: float) -> str:
    """``seconds`` as ``m:ss`` (``h:mm:ss`` from an hour)."""
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StageDisplay:
    """The live line of a stage: a spinner, its title, an optional bar, what it is doing, and
    the time left before ``deadline`` (or the time since it started).

    Use it as a context manager; :meth:`update` changes what it shows, from any thread.
    """

    def __init__(self, title: str, detail: str = "", *, deadline: float | None = None) -> None:
        self.title = title
        self.detail = detail
        self.deadline = deadline
        self.completed: float | None = None
        self.total: float | None = None
        self._started = time.monotonic()
        self._spinner = Spinner("dots", style="cyan")
        self._live: Live | None = None

    def __enter__(self) -> StageDisplay:
        if shows_live_displays():
            self._live = Live(
                self,
                console=error_console,
                transient=True,
                refresh_per_second=4,
                # stderr is the log file's while the routing is open: never draw it here.
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(
        self,
        detail: str | None = None,
        *,
        completed: float | None = None,
        total: float | None = None,
    ) -> None:
        """Show ``detail``; a bar at ``completed`` of ``total`` when given."""
        if detail is not None:
            self.detail = detail
        if total is not None:
            self.completed, self.total = completed or 0.0, total

    def restart(self, title: str, detail: str) -> None:
        """Show a new stage: ``title`` and ``detail``, no bar, no deadline, the clock at zero."""
        self.title, self.detail, self.deadline = title, detail, None
        self.completed = self.total = None
        self._started = time.monotonic()

    def __rich__(self) -> RenderableType:
        line = Table.grid(padding=(0, 1), expand=True)
        line.add_column(no_wrap=True, width=1)
        line.add_column(style="bold", no_wrap=True)
        line.add_column(ratio=1, no_wrap=True)
        line.add_column(no_wrap=True, style="dim", justify="right")
        bar = ProgressBar(total=self.total, completed=self.completed or 0.0) if self.total else ""
        line.add_row(self._spinner, self.title, bar, self._clock())
        detail = Text(f"  {self.detail}", overflow="ellipsis", no_wrap=True)
        return Group(line, detail) if self.detail else line

    def _clock(self) -> str:
        if self.deadline is not None:
            return f"{clock(self.deadline - time.time())} left"
        return clock(time.monotonic() - self._started)


class SegmentProgress(BatchProgress):
    """Moves a :class:`StageDisplay` with a batch: files done of those to run, failed, skipped
    (done before), files per second and the time left; prints each failed file above it."""

    def __init__(self, display: StageDisplay) -> None:
        self.display = display
        self._failed = 0
        self._skipped = 0
        self._started = time.monotonic()

    def model_ready(self, model: LoadedModel | ModelCard) -> None:
        """The model is loaded: the ledger is read next."""
        self.display.update("reading the ledger, finding the files")

    def planned(self, to_run: int, settled: Sequence[BatchItemResult]) -> None:
        """Count what the ledger settled (skipped, rejected) and start the clock."""
        self._skipped = sum(result.status == "skipped" for result in settled)
        self._failed = sum(result.status == "failed" for result in settled)
        self._started = time.monotonic()
        self.display.update(self._detail(0, to_run), completed=0, total=max(to_run, 1))

    def case_done(self, result: BatchItemResult, done: int, total: int) -> None:
        """Move the bar; print a failed file with its error."""
        if result.status == "failed":
            self._failed += 1
            if shows_live_displays():
                error_console.print(f"[red]failed[/red] {result.case_id}: {result.error}")
        self.display.update(self._detail(done, total), completed=done, total=max(total, 1))

    def _detail(self, done: int, total: int) -> str:
        parts = [f"{done}/{total} files"]
        if self._failed:
            parts.append(f"{self._failed} failed")
        if self._skipped:
            parts.append(f"{self._skipped} skipped")
        elapsed = time.monotonic() - self._started
        if done and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.1f} files/s")
            if total > done:
                parts.append(f"{clock((total - done) / rate)} left")
        return " · ".join(parts)
