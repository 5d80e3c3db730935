"""Children that die with their parent: ``prctl(PR_SET_PDEATHSIG)`` on Linux.

Light on purpose (no torch, no Prefect): used in the initializer of worker processes, as a
``preexec_fn``, and (through :func:`popen_guarded`) for the servers segflow starts.

- :func:`set_parent_death_signal` — call it *in the child* (a worker initializer, or a
  ``preexec_fn``): the kernel sends the signal when the parent dies, however it dies
  (exit, exception, SIGKILL, segfault), so the child never outlives it.
- :func:`popen_guarded` — start a command that way from the parent: its own session (signals
  sent to the caller's terminal or process group do not reach it; :func:`stop_process_group`
  stops it and everything it forked), stdin from ``/dev/null``, and the death signal set by a
  tiny exec wrapper (:func:`guarded_command`) instead of a ``preexec_fn``, so no Python code
  runs between ``fork`` and ``exec`` in a process that has threads (which the ``subprocess``
  documentation warns can deadlock, and which also runs every ``os.register_at_fork`` hook in
  the child).

The kernel sends the signal when the *thread* that forked the child exits, not the process:
:func:`popen_guarded` therefore forks from the main thread, or from a daemon thread that lives
as long as the process when it is called from any other thread. Elsewhere than Linux the death
signal is a no-op (the rest still applies).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = [
    "guarded_command",
    "popen_guarded",
    "process_exists",
    "set_parent_death_signal",
    "stop_process_group",
]

_PR_SET_PDEATHSIG = 1
_LINUX = sys.platform.startswith("linux")
_T = TypeVar("_T")

# Run by ``python -I -S -c`` before the real command: set the death signal, make sure the
# parent did not die before that (the signal would then never come), then become the command.
_EXEC_WRAPPER = (
    "import ctypes, os, sys\n"
    "parent, sig = int(sys.argv[1]), int(sys.argv[2])\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, sig, 0, 0, 0)\n"
    "if os.getppid() != parent:\n"
    "    os.kill(os.getpid(), sig)\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (resolved in the parent, so a ``preexec_fn`` only calls it)."""
    if not _LINUX:
        return None
    function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return function


_PRCTL = _prctl()


def set_parent_death_signal(sig: int = signal.SIGKILL, *, parent_pid: int | None = None) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies.

    Call it in the child: first thing in a worker's initializer, or as a ``preexec_fn``
    (``functools.partial(set_parent_death_signal, parent_pid=os.getpid())`` in the parent).

    Args:
        sig: the signal (SIGKILL: the child cannot delay its end).
        parent_pid: the parent this process must still have; when it has another one (the
            parent died before this call), ``sig`` is sent at once. Default: the parent at the
            time of the call (only a death during the call is caught).

    Returns:
        True when set (Linux); False where the platform has no such call. When the parent is
        already gone, the process ends itself at once.
    """
    if _PRCTL is None:
        return False
    parent = os.getppid() if parent_pid is None else parent_pid
    if _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent died before the call: the signal will not come
        os.kill(os.getpid(), sig)
    return True


def process_exists(pid: int) -> bool:
    """Whether a process with ``pid`` exists (another user's included), without waiting for
    or reaping it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def guarded_command(command: Sequence[str], sig: int = signal.SIGKILL) -> list[str]:
    """``command`` behind an exec wrapper that gives it ``sig`` as parent-death signal.

    The wrapper (``python -I -S -c …``, a few milliseconds) sets the signal, ends at once if
    this process already died, then ``exec``s the command in its place (same pid; the death
    signal survives ``exec``). Elsewhere than Linux the command is returned unchanged.

    Args:
        command: program and arguments (the program is looked up on ``PATH``).
        sig: the signal sent when this process (the forking thread) ends.
    """
    if not _LINUX:
        return list(command)
    wrapper = [sys.executable, "-I", "-S", "-c", _EXEC_WRAPPER]
    return [*wrapper, str(os.getpid()), str(int(sig)), *command]


def popen_guarded(
    command: Sequence[str], *, sig: int = signal.SIGKILL, **popen_kwargs: Any
) -> subprocess.Popen[bytes]:
    """Start ``command`` so that it cannot outlive this process.

    The child gets its own session (``start_new_session``), stdin from ``/dev/null`` and the
    parent-death signal ``sig`` (:func:`guarded_command`); it is forked from a thread that
    lives as long as the process. Give it ``stdout``/``stderr`` (a log file): inheriting the
    caller's would keep the caller's pipes open for as long as the child runs.

    Args:
        command: program and arguments.
        sig: the parent-death signal.
        **popen_kwargs: more ``subprocess.Popen`` arguments (``env``, ``stdout``, ``pass_fds``…);
            ``stdin`` and ``start_new_session`` may be overridden.

    Returns:
        The child; its pid is also its process group's id (see :func:`stop_process_group`).
    """
    kwargs: dict[str, Any] = {"stdin": subprocess.DEVNULL, "start_new_session": True}
    kwargs.update(popen_kwargs)
    args = guarded_command(command, sig)
    return _from_lasting_thread(lambda: subprocess.Popen(args, **kwargs))


def stop_process_group(process: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """Stop ``process`` and everything in its process group: SIGTERM, then SIGKILL.

    The group gets SIGKILL once the leader has exited or ``timeout`` seconds have passed, so
    that members which ignored SIGTERM do not stay behind. The leader is reaped only after
    that: until then its pid, which is the group's id, cannot be given to another process.
    For children started with :func:`popen_guarded` (or ``start_new_session=True``). A leader
    that was already reaped (``returncode`` set) is left alone, for the same reason.

    Args:
        process: the group's leader.
        timeout: seconds the group is given to end after SIGTERM.
    """
    if process.returncode is not None:
        return
    _signal_group(process.pid, signal.SIGTERM)
    _wait_without_reaping(process, timeout)
    if process.returncode is None:  # not reaped: its pid still names the group
        _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _wait_without_reaping(process: subprocess.Popen[Any], timeout: float) -> None:
    """Wait until ``process`` exits (or ``timeout``), leaving it a zombie where possible."""
    if not hasattr(os, "waitid"):  # not Linux: reap it (the final group signal is skipped)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        return
    deadline = time.monotonic() + timeout
    flags = os.WEXITED | os.WNOWAIT | os.WNOHANG
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, process.pid, flags) is not None:
                return
        except ChildProcessError:  # reaped elsewhere
            return
        time.sleep(0.02)


class _LastingThread:
    """A daemon thread that runs calls for threads that may end before their children."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="segflow-spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            call, future = self._calls.get()
            try:
                future.set_result(call())
            except BaseException as error:  # handed to the caller
                future.set_exception(error)

    def call(self, call: Callable[[], _T]) -> _T:
        future: Future[_T] = Future()
        self._calls.put((call, future))
        return future.result()


_lasting: list[_LastingThread] = []
_lasting_lock = threading.Lock()


def _from_lasting_thread(call: Callable[[], _T]) -> _T:
    """``call()`` in the main thread, or in the process-long spawner thread from any other."""
    if threading.current_thread() is threading.main_thread():
        return call()
    with _lasting_lock:
        if not _lasting:
            _lasting.append(_LastingThread())
    return _lasting[0].call(call)
