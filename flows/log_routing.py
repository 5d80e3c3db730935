"""Where other libraries' lines go: a log file per command, not the terminal.

The ``segflow`` app's callback calls :func:`start_routing` before a command imports Prefect,
Lightning or MLflow, and closes the routing when the command ends. While it is open:

- every log record of segflow's loggers and of Prefect, Lightning and MLflow from INFO, of any
  other library from WARNING, and every Python warning goes to
  ``$SEGFLOW_HOME/logs/<command>-<UTC time>-<pid>.log`` (created at its first line);
- the terminal (stderr) shows segflow's own warnings and errors (``quiet``: errors only;
  ``verbose``: every line above, other libraries' too), each line once;
- what libraries write straight to ``sys.stderr`` (MLflow's "Successfully registered model")
  goes to the log file too (``verbose``: to the terminal as well), and in ``json`` mode so does
  ``sys.stdout``; segflow's own consoles keep the real streams
  (:func:`flows.console.bind_streams`).

Each library is routed by its own configuration rather than by patches:

- **Prefect** attaches its console handler to the root logger when imported, unless the root
  logger already has one of the application's: ours are there first. ``prefect._internal``
  has a stderr handler of its own (``debug``); two ``PREFECT_LOGGING_*`` overrides make it
  propagate to ours instead. Flow and task state lines keep going to the Prefect API as well.
- **Lightning**: ``lightning.pytorch`` gets a stream handler of its own only when the root
  logger has none at import (here it has); the ``lightning`` package adds one whatever is
  configured, so :meth:`LogRouting.take_over_libraries` runs again once it is imported
  (:func:`flows.console_train.training_stage`).
- **MLflow**: ``MLFLOW_CONFIGURE_LOGGING=false`` keeps it from giving its loggers a stderr
  handler; ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false`` turns its tqdm bars off (they
  drew over the other lines, and carry nothing a log needs).

For callers that imported these libraries before (tests calling ``main`` in-process), the
routing also takes their loggers over while it is open, and gives everything back on close.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Literal, TextIO

from rich.console import Console
from rich.text import Text

from data_contracts import UsageError, get_settings

__all__ = [
    "CONSOLE_MODES",
    "SEGFLOW_PACKAGES",
    "ConsoleMode",
    "LogRouting",
    "console_mode",
    "start_routing",
]

ConsoleMode = Literal["normal", "quiet", "json", "verbose"]
CONSOLE_MODES: tuple[ConsoleMode, ...] = ("normal", "quiet", "json", "verbose")
#: Loggers whose warnings concern the user's data: they stay on the terminal.
SEGFLOW_PACKAGES = ("data_contracts", "seg_models", "pipelines", "flows")
#: Loggers of other libraries whose INFO lines belong in the log file.
_LIBRARY_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "mlflow",
)
_FILE_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"


def console_mode(verbose: bool, quiet: bool, json_output: bool) -> ConsoleMode:
    """The mode the global flags ask for, else ``SEGFLOW_CONSOLE``, else ``normal``.

    Raises:
        UsageError: two flags at once, or an unknown ``SEGFLOW_CONSOLE``.
    """
    asked: tuple[tuple[ConsoleMode, bool], ...] = (
        ("verbose", verbose),
        ("quiet", quiet),
        ("json", json_output),
    )
    flags = [mode for mode, given in asked if given]
    if len(flags) > 1:
        raise UsageError(f"--{flags[0]} and --{flags[1]} cannot be combined: choose one")
    if flags:
        return flags[0]
    variable = os.environ.get("SEGFLOW_CONSOLE", "").strip().lower() or "normal"
    for mode in CONSOLE_MODES:
        if mode == variable:
            return mode
    raise UsageError(
        f"SEGFLOW_CONSOLE must be {', '.join(CONSOLE_MODES[:-1])} or {CONSOLE_MODES[-1]}, "
        f"not {variable!r}"
    )


#: Variables the libraries read when imported (a user's own values win).
_LIBRARY_ENVIRONMENT = {
    "MLFLOW_CONFIGURE_LOGGING": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_LOGGING_LOGGERS_PREFECT_INTERNAL_PROPAGATE": "true",
    # The `debug` handler serves prefect._internal only, which now propagates to ours.
    "PREFECT_LOGGING_HANDLERS_DEBUG_LEVEL": "CRITICAL",
}


class LogFile:
    """The command's log file, created with its folder at the first line written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None
        self._lock = threading.RLock()

    def write(self, text: str) -> None:
        """Append ``text`` (flushed: the file is read while a long command runs)."""
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(text)
            self._file.flush()

    def close(self) -> None:
        """Close the file; a later line opens it again."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class RunFormatter(logging.Formatter):
    """Adds the flow or task run to the records of Prefect's run loggers (``prefect.flow_runs
    'ingest-data': Finished in state Completed()``)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record's line, its logger's name followed by its run's name when it has one."""
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        if run:
            record = logging.makeLogRecord({**record.__dict__, "name": f"{record.name} {run!r}"})
        return super().format(record).rstrip()  # a warning's line ends in its source line


class LogFileHandler(logging.Handler):
    """Writes every record it gets to the command's :class:`LogFile`."""

    def __init__(self, log_file: LogFile) -> None:
        super().__init__(logging.NOTSET)
        self.log_file = log_file
        self.setFormatter(RunFormatter(_FILE_FORMAT, datefmt="%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        """Append the formatted record."""
        try:
            self.log_file.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _is_segflows(record: logging.LogRecord) -> bool:
    """A record of segflow's own loggers, or a Python warning raised in segflow's code."""
    if record.name.partition(".")[0] in SEGFLOW_PACKAGES:
        return True
    if record.name != "py.warnings":
        return False
    # captureWarnings logs "<file>:<line>: <category>: <message>".
    origin = Path(record.getMessage().partition(":")[0]).resolve()
    root = Path(__file__).resolve().parents[1]
    return any(origin.is_relative_to(root / package) for package in SEGFLOW_PACKAGES)


class TerminalHandler(logging.Handler):
    """Shows on segflow's error console what the mode lets through, each line once."""

    def __init__(self, console: Console, mode: ConsoleMode) -> None:
        levels = {"verbose": logging.INFO, "quiet": logging.ERROR}
        super().__init__(levels.get(mode, logging.WARNING))
        self.console = console
        self.mode = mode
        self._shown: set[str] = set()
        self._lock_shown = threading.Lock()
        self.setFormatter(RunFormatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Print the record when the mode shows it and it was not printed before."""
        try:
            line = self._line(record)
            if line is None:
                return
            with self._lock_shown:
                if line.plain in self._shown:
                    return
                self._shown.add(line.plain)
            self.console.print(line, soft_wrap=True, highlight=False)
        except Exception:
            self.handleError(record)

    def _line(self, record: logging.LogRecord) -> Text | None:
        if not (self.mode == "verbose" or _is_segflows(record)):
            return None
        if _is_segflows(record) and record.name != "py.warnings":
            style = {logging.WARNING: "yellow", logging.ERROR: "red"}.get(record.levelno, "")
            message = record.getMessage().rstrip()
            return Text(f"{record.levelname.lower()}: {message}", style=style)
        return Text(self.format(record), style="dim")


class LogStream(io.TextIOBase):
    """A ``sys.stderr``/``sys.stdout`` stand-in that appends to the log file while the routing
    is open (``tee``: and writes to the stream it replaced too), and only to the replaced
    stream afterwards (a library may have kept it)."""

    def __init__(self, log_file: LogFile, replaced: TextIO, *, tee: bool = False) -> None:
        super().__init__()
        self.log_file = log_file
        self.replaced = replaced
        self.tee = tee
        self.routing = True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """The replaced stream's encoding."""
        return getattr(self.replaced, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        """Always."""
        return True

    def write(self, text: str) -> int:
        """Append ``text`` to the log, and to the replaced stream when teeing or done routing."""
        if self.routing:
            self.log_file.write(text)
        if self.tee or not self.routing:
            self.replaced.write(text)
        return len(text)

    def flush(self) -> None:
        """Flush the replaced stream."""
        if self.tee or not self.routing:
            self.replaced.flush()

    def isatty(self) -> bool:
        """Not a terminal: libraries draw no live bars into the log."""
        return False

    def fileno(self) -> int:
        """The replaced stream's descriptor (for C-level writers such as faulthandler)."""
        return self.replaced.fileno()


class LogRouting:
    """An open routing: the log file, the handlers, and how to give back what they replaced."""

    def __init__(self, mode: ConsoleMode, command: str, terminal: Console) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"{command}-{stamp}-{os.getpid()}.log"
        self.mode = mode
        self.log_file = LogFile(get_settings().home_dir / "logs" / name)
        self._handlers: list[logging.Handler] = [
            LogFileHandler(self.log_file),
            TerminalHandler(terminal, mode),
        ]
        self._undo: list[Callable[[], None]] = []
        self._streams: list[LogStream] = []
        self._closed = False

    @property
    def log_path(self) -> Path | None:
        """The log file, when anything was written to it."""
        return self.log_file.path if self.log_file.path.is_file() else None

    def open(self) -> None:
        """Set the variables, take over the loggers and streams (see the module's docstring)."""
        for name, value in _LIBRARY_ENVIRONMENT.items():
            if name not in os.environ:
                os.environ[name] = value
                self._undo.append(partial(_unset, name))
        root = logging.getLogger()
        self._undo.append(partial(setattr, root, "handlers", list(root.handlers)))
        root.handlers = list(self._handlers)
        for name in SEGFLOW_PACKAGES:
            self._take_over(logging.getLogger(name), drop_handlers=False)
        self.take_over_libraries()
        logging.captureWarnings(True)
        self._undo.append(partial(logging.captureWarnings, False))
        self._redirect("stderr", tee=self.mode == "verbose")
        if self.mode == "json":
            self._redirect("stdout", tee=False)

    def take_over_libraries(self) -> None:
        """Route the libraries' loggers to ours, again after a library was imported: importing
        ``lightning`` gives its logger a stream handler of its own, whatever is configured."""
        for name in _LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            if logger.handlers or not logger.propagate or logger.level != logging.INFO:
                self._take_over(logger, drop_handlers=True)

    def _take_over(self, logger: logging.Logger, *, drop_handlers: bool) -> None:
        """INFO and up, to the root's handlers (a library's own would print each line twice)."""
        level, handlers, propagate = logger.level, logger.handlers, logger.propagate

        def give_back() -> None:
            logger.setLevel(level)
            logger.handlers, logger.propagate = handlers, propagate

        self._undo.append(give_back)
        logger.setLevel(logging.INFO)
        if drop_handlers:
            logger.handlers, logger.propagate = [], True

    def _redirect(self, name: Literal["stdout", "stderr"], *, tee: bool) -> None:
        stream = LogStream(self.log_file, getattr(sys, name), tee=tee)
        self._streams.append(stream)
        self._undo.append(partial(setattr, sys, name, stream.replaced))
        setattr(sys, name, stream)

    def close(self) -> None:
        """Give back every logger, stream and variable; close the log file."""
        if self._closed:
            return
        self._closed = True
        for stream in self._streams:
            stream.routing = False
        for undo in reversed(self._undo):
            undo()
        self.log_file.close()


def _unset(variable: str) -> None:
    os.environ.pop(variable, None)


def start_routing(mode: ConsoleMode, command: str, terminal: Console) -> LogRouting:
    """Open the routing of ``command``'s lines for ``mode``; ``terminal`` shows what stays visible.

    Returns:
        The open routing; call :meth:`LogRouting.close` when the command ends.
    """
    routing = LogRouting(mode, command, terminal)
    routing.open()
    return routing
