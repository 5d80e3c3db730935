"""Stops asked for from outside (SIGTERM, SIGINT): a light module, so the CLI imports it cheaply.

A stop is *cooperative*: the signal handler only calls :func:`request_stop`; long work calls
:func:`check_stop` at its boundaries (each batch of windows, each file) and unwinds through
:class:`StopRequested`, so that writers remove their temporary files and a batch records what
finished. Worker processes of a batch see the same request through a shared event
(:func:`watch_event`).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from data_contracts import SegflowError

__all__ = [
    "SIGINT_EXIT_CODE",
    "SIGTERM_EXIT_CODE",
    "BatchInterrupted",
    "StopRequested",
    "StopSignal",
    "TrainingInterrupted",
    "arm_stop_deadline",
    "check_stop",
    "cooperative_stop",
    "exit_code_for",
    "handle_stop_signal",
    "install_stop_handlers",
    "request_stop",
    "reset_stop",
    "signal_is_cooperative",
    "stop_reason",
    "stop_requested",
    "stop_signals_handled",
    "watch_event",
]

#: The exit status of a command stopped by SIGTERM (128 + 15, as a shell reports it).
SIGTERM_EXIT_CODE = 143
#: The exit status of a command stopped by SIGINT (Ctrl-C; 128 + 2).
SIGINT_EXIT_CODE = 130
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Event(Protocol):
    def is_set(self) -> bool: ...


_requested = threading.Event()
_reason: list[str] = []
_shared: list[_Event] = []


def request_stop(reason: str = "SIGTERM") -> None:
    """Ask every cooperative loop of this process to stop at its next boundary."""
    if not _requested.is_set():
        _reason[:] = [reason]
    _requested.set()


def watch_event(event: _Event) -> None:
    """Also stop when ``event`` is set (a ``multiprocessing`` event the parent of a worker
    process sets)."""
    _shared[:] = [event]


def stop_requested() -> bool:
    """True once a stop was asked for (here or through the watched event)."""
    if _requested.is_set():
        return True
    if _shared and _shared[0].is_set():
        request_stop("stop requested by the batch")
        return True
    return False


def stop_reason() -> str:
    """``"SIGTERM"``, ``"SIGINT"``… (empty when no stop was asked for)."""
    return _reason[0] if _reason and _requested.is_set() else ""


def reset_stop() -> None:
    """Forget a stop request (tests, and a long-lived process after it handled one)."""
    _requested.clear()
    _reason.clear()


def exit_code_for(reason: str) -> int:
    """130 for SIGINT, 143 for anything else (SIGTERM and requests from a parent)."""
    return SIGINT_EXIT_CODE if reason == signal.Signals.SIGINT.name else SIGTERM_EXIT_CODE


_cooperative: list[int] = [0]


@contextlib.contextmanager
def cooperative_stop() -> Iterator[None]:
    """Within this block, the process's stop-signal handler only requests a stop: the work
    inside checks for it and unwinds at a boundary (see :func:`signal_is_cooperative`)."""
    _cooperative[0] += 1
    try:
        yield
    finally:
        _cooperative[0] -= 1


def signal_is_cooperative() -> bool:
    """True while a :func:`cooperative_stop` block runs."""
    return _cooperative[0] > 0


class StopSignal(BaseException):
    """Raised by the stop-signal handler in the main thread when the running work does not
    check for stops itself: like ``KeyboardInterrupt``, no ``except Exception`` stops it, but
    it is not one, so that click does not turn it into a silent exit 130 and the command line
    can exit 143 for SIGTERM.

    Attributes:
        signal_name: ``SIGTERM`` or ``SIGINT``.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def handle_stop_signal(signum: int, _frame: object) -> None:
    """A handler for SIGTERM and SIGINT: request a cooperative stop, or (outside a
    :func:`cooperative_stop` block, or on a second signal) raise :class:`StopSignal`."""
    name = signal.Signals(signum).name
    repeated = stop_requested()
    request_stop(name)
    if repeated or not signal_is_cooperative():
        raise StopSignal(name)


def install_stop_handlers() -> None:
    """Install :func:`handle_stop_signal` for SIGTERM and SIGINT (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, handle_stop_signal)


@contextlib.contextmanager
def stop_signals_handled() -> Iterator[None]:
    """A :func:`cooperative_stop` block that also owns SIGTERM and SIGINT while it runs.

    Prefect's flow engine installs its own SIGTERM handler for a flow run, which raises in the
    main thread and leaves the task threads running; a batch that checks for stops itself
    takes the signal back for its duration (main thread only; elsewhere it only marks the
    block cooperative).
    """
    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handle_stop_signal)
    try:
        with cooperative_stop():
            yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class StopRequested(SegflowError):
    """The work stopped at a boundary because a stop was asked for; nothing half-written is kept."""

    default_hint = "run the same command again to resume"


def arm_stop_deadline(seconds: float) -> None:
    """End this process ``seconds`` after its first SIGTERM or SIGINT, if it is still running.

    The interpreter writes the number of every signal it catches to the "wakeup" file
    descriptor, whichever Python handler is installed at the time (Prefect's flow engine
    replaces segflow's SIGTERM handler while a flow runs), so a thread reading it sees the
    signal arrive even when the main thread is stuck where no handler gets to run. After the
    deadline it says so on stderr with every thread's stack (where the stop hung) and exits
    with 128 + the signal, without exit handlers; the servers and workers segflow started
    die with it (``PR_SET_PDEATHSIG``). A clean stop takes a few seconds (a training step
    included); the deadline (``Settings.stop_deadline_seconds``, 9 s: a stop signal ends
    every command within 10 s) only bounds one that hangs.

    For a command's own process only (the CLI; a warm process's forked command): a library
    caller keeps its process. Call it once, from the main thread.

    Args:
        seconds: the grace after the first stop signal.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # the interpreter must never block writing to it
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    watcher = threading.Thread(
        target=_exit_after_a_stop_signal,
        args=(read_end, seconds),
        name="segflow-stop-deadline",
        daemon=True,
    )
    watcher.start()


def _exit_after_a_stop_signal(read_end: int, seconds: float) -> None:
    while True:
        received = os.read(read_end, 64)
        if not received:
            return
        stops = [number for number in received if number in _STOP_SIGNALS]
        if stops:
            break
    time.sleep(seconds)
    name = signal.Signals(stops[0]).name
    with contextlib.suppress(OSError, ValueError):
        message = f"segflow: interrupted by {name}, not stopped {seconds:g} s later: exiting now"
        os.write(2, f"{message} (every thread's stack follows)\n".encode())
        faulthandler.dump_traceback(file=2, all_threads=True)
    os._exit(exit_code_for(name))


def check_stop() -> None:
    """Raise :class:`StopRequested` when a stop was asked for.

    Raises:
        StopRequested: with the signal's name as the reason.
    """
    if stop_requested():
        raise StopRequested(f"stopped by {stop_reason() or 'a stop request'}")


class BatchInterrupted(SegflowError):
    """A batch stopped on a signal: finished files are in the ledger, partial outputs removed.

    Attributes:
        signal_name: ``SIGTERM`` or ``SIGINT``.
    """

    default_hint = "run the same command again (same --out) to resume: finished files are skipped"

    def __init__(
        self,
        reason: str,
        *,
        path: str | Path | None = None,
        hint: str | None = None,
        signal_name: str = "SIGTERM",
    ) -> None:
        super().__init__(reason, path=path, hint=hint)
        self.signal_name = signal_name

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_batch, (self.reason, self.path, self.hint, self.signal_name))


def _rebuild_batch(
    reason: str, path: str | None, hint: str | None, signal_name: str
) -> BatchInterrupted:
    return BatchInterrupted(reason, path=path, hint=hint, signal_name=signal_name)


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
