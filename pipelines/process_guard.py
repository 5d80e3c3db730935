"""Children that die with their parent: ``prctl(PR_SET_PDEATHSIG)`` on Linux.

Light on purpose (no torch, no Prefect): used as a ``preexec_fn`` of subprocesses and in the
initializer of worker processes. The kernel sends the signal when the *thread* that created
the child exits, so start long-lived children from a thread that lives as long as the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

__all__ = ["set_parent_death_signal"]

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies.

    Returns:
        True when set (Linux); False where the platform has no such call. When the parent is
        already gone (re-parented to init), the process ends itself at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent died before the call: the signal will not come
        os.kill(os.getpid(), sig)
    return True
