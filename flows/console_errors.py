"""What a ``segflow`` command prints when it fails, and the exit code each failure maps to.

Errors go to stderr in every console mode (one line each, the traceback of a bug saved under
``SEGFLOW_HOME/crashes``); :func:`run_reporting_errors` also returns the error as text for the
JSON object of ``--json``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from typer.exceptions import Abort, TyperException

from data_contracts import ConfigError, SegflowError, UsageError, get_settings
from flows.console import error_console
from flows.exit_codes import ExitCode
from pipelines.interrupts import (
    SIGTERM_EXIT_CODE,
    BatchInterrupted,
    StopSignal,
    TrainingInterrupted,
    exit_code_for,
)

__all__ = ["run_reporting_errors", "save_crash"]


def _report(label: str, style: str, message: str) -> str:
    """Print ``label message`` on stderr (the label in ``style``); return it as plain text."""
    error_console.print(f"[{style}]{label}[/{style}] {message}".rstrip())
    return f"{label} {message}".rstrip()


def run_reporting_errors(run: Callable[[], object]) -> tuple[int, str | None]:
    """Run the app; print what went wrong (on stderr) and return the exit code and the error.

    Args:
        run: calls the Typer app (not standalone: its exceptions reach here).

    Returns:
        The exit code, and the error as one line of text (``None`` when there was none).
    """
    try:
        result = run()
        return (result if isinstance(result, int) else ExitCode.OK), None
    except (UsageError, ConfigError) as error:
        return ExitCode.USAGE, _report("usage error:", "red", str(error))
    except TrainingInterrupted as error:
        return SIGTERM_EXIT_CODE, _report("interrupted:", "yellow", str(error))
    except BatchInterrupted as error:
        return exit_code_for(error.signal_name), _report("interrupted:", "yellow", str(error))
    except StopSignal as stop:
        label = f"interrupted by {stop.signal_name}:"
        again = (
            "run the same command again to start over (its outputs are written atomically: "
            "nothing half-written is kept)"
        )
        return exit_code_for(stop.signal_name), _report(label, "yellow", again)
    except SegflowError as error:
        return ExitCode.NOTHING_DONE, _report("error:", "red", str(error))
    except TyperException as error:  # click's usage errors, re-exported by Typer
        show = getattr(error, "show", None)
        if callable(show):
            show()
        else:
            error_console.print(f"[red]error:[/red] {error}")
        return int(getattr(error, "exit_code", ExitCode.USAGE)), f"usage error: {error}"
    except (Abort, KeyboardInterrupt):
        return 130, _report("interrupted", "yellow", "")
    except Exception as error:  # a bug: keep the traceback, show a short message
        saved = save_crash(error)
        where = f" (traceback saved to {saved})" if saved else ""
        message = f"{type(error).__name__}: {error}{where}"
        return ExitCode.INTERNAL, _report("internal error:", "red", message)


def save_crash(error: BaseException) -> Path | None:
    """Write ``error``'s traceback under ``SEGFLOW_HOME/crashes``; its path, or ``None``."""
    try:
        crash_dir = get_settings().home_dir / "crashes"
        crash_dir.mkdir(parents=True, exist_ok=True)
        path = crash_dir / f"crash-{datetime.now(UTC):%Y%m%dT%H%M%S%f}.txt"
        path.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
        return path
    except OSError:
        return None
