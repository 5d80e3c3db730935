"""The ``segflow`` console script: hands the command to the warm process, or runs it here.

This module imports nothing but the standard library, so that a command that a warm process
serves (:mod:`flows.warm_client`) pays milliseconds of start-up, not the seconds of importing
torch, MLflow and Prefect. The command line itself lives in :mod:`flows.cli_app`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["main"]  # and ``app``, imported on first use (module ``__getattr__``)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segflow`` console script; returns (and exits with) the exit code.

    Args:
        argv: the arguments, for a caller running a command in its own process (tests); the
            console script passes none, and its command may run in the warm process.
    """
    if argv is None:
        from flows.warm_client import run_in_warm_process

        code = run_in_warm_process(sys.argv, os.environ)
        if code is not None:
            sys.exit(code)
    from flows.cli_app import main as run_here

    return run_here(argv)


def __getattr__(name: str) -> Any:
    if name == "app":  # the typer application, for callers that drive it (tests, docs)
        from flows.cli_app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
