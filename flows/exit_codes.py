"""Exit codes shared by every ``segflow`` command."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a ``segflow`` command's exit status means.

    - ``OK`` (0): every input was processed.
    - ``NOTHING_DONE`` (1): no valid input, or nothing could be done.
    - ``USAGE`` (2): the command line was wrong.
    - ``PARTIAL`` (3): some inputs were rejected or failed, the rest were processed.
    - ``INTERNAL`` (70): a bug in segflow; the traceback was saved.
    """

    OK = 0
    NOTHING_DONE = 1
    USAGE = 2
    PARTIAL = 3
    INTERNAL = 70


def outcome(succeeded: int, failed: int) -> ExitCode:
    """Exit code for a batch with ``succeeded`` good and ``failed`` bad inputs."""
    if succeeded == 0:
        return ExitCode.NOTHING_DONE
    return ExitCode.PARTIAL if failed else ExitCode.OK
