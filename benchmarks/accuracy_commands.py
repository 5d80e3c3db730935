"""The installed ``segflow`` command, run as a user runs it, for the accuracy benchmark.

Each command is a fresh process of the ``segflow`` script installed beside the running Python
(``.venv/bin/segflow``), with its own ``SEGFLOW_HOME`` (so its own MLflow sqlite store and
shared Prefect API) and otherwise the user's defaults: the variables that would point it at
other servers or state (``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``, ``PREFECT_HOME``,
``SEGFLOW_API``) are removed. Its output goes to one log file per phase; one line per phase is
printed, and a failed command prints its log's tail and raises :class:`CommandFailedError`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from data_contracts.errors import MissingFileError, SegflowError

__all__ = ["CommandFailedError", "CommandRun", "SegflowCommands", "segflow_executable"]

#: Variables that would send a command to other servers or state than its own SEGFLOW_HOME.
_FOREIGN_STATE = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME", "SEGFLOW_API")
#: Lines of a failed command's log printed before raising.
TAIL_LINES = 40


class CommandFailedError(SegflowError, RuntimeError):
    """A ``segflow`` command of the benchmark exited with a non-zero status."""

    default_hint = "read the command's log (its tail is printed above)"


@dataclass(frozen=True)
class CommandRun:
    """One finished command.

    Attributes:
        phase: what it did (``"train"``, ``"segment"``…), also its log's name.
        argv: the command line.
        seconds: wall-clock seconds from start to exit.
        log: the file holding its stdout and stderr.
    """

    phase: str
    argv: tuple[str, ...]
    seconds: float
    log: Path

    def summary(self) -> dict[str, object]:
        """JSON-ready record: the command line and its wall seconds."""
        return {"argv": list(self.argv), "seconds": round(self.seconds, 1)}


def segflow_executable() -> Path:
    """The ``segflow`` script installed beside the running Python.

    Raises:
        MissingFileError: segflow is not installed in this environment.
    """
    script = Path(sys.executable).with_name("segflow")
    if not script.is_file():
        raise MissingFileError(
            "is not installed", path=script, hint="install segflow into this environment"
        )
    return script


def command_environment(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``SEGFLOW_HOME=home`` and without
    the variables that would point the command at other servers or state."""
    environment = {k: v for k, v in (base or os.environ).items() if k not in _FOREIGN_STATE}
    environment["SEGFLOW_HOME"] = str(home)
    environment.setdefault("COLUMNS", "120")  # rich's tables fit a log line
    return environment


class SegflowCommands:
    """Runs ``segflow`` commands in one temporary home, each logged to ``logs/<phase>.log``.

    Args:
        home: the ``SEGFLOW_HOME`` of every command (created).
        logs: folder of the log files (created).
    """

    def __init__(self, home: Path, logs: Path) -> None:
        self.home = home
        self.logs = logs
        self.executable = segflow_executable()
        home.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        self.runs: list[CommandRun] = []

    def run(self, phase: str, *args: str | Path) -> CommandRun:
        """Run ``segflow ARGS`` to completion, logging to ``logs/<phase>.log``.

        Raises:
            CommandFailedError: the command exited with a non-zero status (its log's tail is
                printed first).
        """
        argv = (str(self.executable), *(str(arg) for arg in args))
        log = self.logs / f"{phase.replace(' ', '_')}.log"
        print(f"[{phase}] segflow {' '.join(argv[1:])}", flush=True)
        started = time.monotonic()
        with log.open("w", encoding="utf-8") as stream:
            code = subprocess.call(
                argv,
                stdout=stream,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=command_environment(self.home),
            )
        finished = CommandRun(phase, argv, time.monotonic() - started, log)
        if code != 0:
            print(f"[{phase}] exit code {code}; last lines of {log}:", flush=True)
            print(tail(log), flush=True)
            raise CommandFailedError(f"`segflow {args[0]}` exited with {code}", path=log)
        print(f"[{phase}] done in {finished.seconds:.1f} s (log {log})", flush=True)
        self.runs.append(finished)
        return finished

    def stop_server(self) -> None:
        """Stop the home's shared Prefect API, if a command started one (never raises)."""
        argv = [str(self.executable), "server", "stop"]
        with (self.logs / "server_stop.log").open("w", encoding="utf-8") as stream:
            subprocess.call(
                argv,
                stdout=stream,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=command_environment(self.home),
            )


def tail(log: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``log`` (undecodable bytes replaced)."""
    text = log.read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
