"""The ``segflow`` command's side of the warm process: hand the command over, relay signals.

Standard library only. :func:`run_in_warm_process` finds the warm process of this
installation and ``SEGFLOW_HOME`` (:mod:`flows.warm_protocol`), starts it when there is none
(one at a time: a lock file beside its socket), sends the command, and waits for its exit
status while passing Ctrl-C, SIGTERM and SIGHUP on to the child that runs it. When no warm
process can serve (not Linux, ``SEGFLOW_WARM=0``, it failed to start), it returns ``None`` and
the command runs in this process, as it always could.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from flows.warm_protocol import (
    IDLE_VARIABLE,
    ensure_private_dir,
    home_of,
    receive_message,
    send_message,
    socket_dir,
    socket_path,
    warm_enabled,
    warm_key,
)

__all__ = ["DEFAULT_IDLE_MINUTES", "run_in_warm_process", "start_time"]

DEFAULT_IDLE_MINUTES = 15.0
#: How long the first command waits for the warm process's imports (a busy machine is slow).
START_TIMEOUT_S = 300.0
#: What the warm process keeps of the environment of the command that starts it: what Python,
#: the native libraries, Prefect and MLflow read at import; never credentials nor segflow's
#: settings (each command sends its own; the home comes as an argument), as the shared API.
_KEPT_VARIABLES = (
    *("PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV"),
    "MLFLOW_CONFIGURE_LOGGING",
)
_KEPT_PREFIXES = (
    "LC_",
    "PYTHON",
    "LD_",
    "OMP_",
    "MKL_",
    "CUDA_",
    "GDAL_",
    "PROJ_",
    "PREFECT_",
)
_RELAYED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_LOST_EXIT_CODE = 70


def start_time() -> float:
    """When this process started (Unix time), from ``/proc``; now when that cannot be read."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rpartition(")")[2].split()[19])
        with open("/proc/stat") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def run_in_warm_process(argv: Sequence[str], environ: Mapping[str, str]) -> int | None:
    """Run the command ``argv`` in the warm process; its exit code, or ``None`` to run it here.

    Help and ``segflow server`` use a warm process that runs but never start one (a second in
    this process is as fast as starting one, and ``server stop`` stops them).
    """
    if not warm_enabled(environ):
        return None
    arguments = list(argv[1:])
    if arguments[:1] == ["server"]:
        return None
    may_start = bool(arguments) and not {"-h", "--help", "--version"} & set(arguments)
    started_at = start_time()
    try:
        ensure_private_dir(socket_dir())
        key = warm_key(environ)
    except OSError:
        return None
    path = socket_path(key, environ)
    for _ in range(2):  # a second time when the process that accepted was ending
        try:
            connection = _connect(path)
            if connection is None and may_start:
                connection = _start_and_connect(key, environ)
        except OSError:
            return None
        if connection is None:
            return None
        with connection:
            code = _delegate(connection, argv, environ, started_at)
        if code is not None:
            return code
        _wait_until_refused(path)
    return None


def _wait_until_refused(path: Path, timeout: float = 3.0) -> None:
    """Wait while a warm process that accepted without answering ends: a killed process's
    socket takes a moment to close after the process is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = _connect(path)
        if connection is None:
            return
        connection.close()
        time.sleep(0.05)


def _connect(path: Path) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
    except OSError:
        connection.close()
        return None
    return connection


@contextlib.contextmanager
def _start_lock(key: str) -> Iterator[None]:
    with open(socket_dir() / f"{key}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _start_and_connect(key: str, environ: Mapping[str, str]) -> socket.socket | None:
    """Start the warm process (unless another command just did) and connect to it."""
    path = socket_path(key, environ)
    with _start_lock(key):
        connection = _connect(path)
        if connection is not None:
            return connection
        process = _spawn(path, environ)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            connection = _connect(path)
            if connection is not None:
                return connection
            if process.poll() is not None:
                break
            time.sleep(0.05)
    print(
        "segflow: the warm process did not start (log: "
        f"{_log_path(environ)}); this command runs on its own",
        file=sys.stderr,
    )
    return None


def _spawn(path: Path, environ: Mapping[str, str]) -> subprocess.Popen[bytes]:
    log_path = _log_path(environ)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    idle_minutes = _idle_minutes(environ)
    kept = {
        name: value
        for name, value in environ.items()
        if name in _KEPT_VARIABLES or name.startswith(_KEPT_PREFIXES)
    }
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "flows.warm_server", "--socket", str(path)),
                *("--home", str(home_of(environ))),
                *("--idle-seconds", str(idle_minutes * 60.0)),
                "--retire-others",
            ],
            stdin=devnull,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=kept,
            start_new_session=True,  # outlives this command by design; not its signals
            # Where ``flows`` was found: the warm process imports the same source tree.
            cwd=Path(__file__).resolve().parent.parent,
        )


def _log_path(environ: Mapping[str, str]) -> Path:
    return home_of(environ) / "logs" / "warm-process.log"


def _idle_minutes(environ: Mapping[str, str]) -> float:
    try:
        minutes = float(environ.get(IDLE_VARIABLE, "") or DEFAULT_IDLE_MINUTES)
    except ValueError:
        minutes = DEFAULT_IDLE_MINUTES
    return max(0.0, minutes)


def _delegate(
    connection: socket.socket, argv: Sequence[str], environ: Mapping[str, str], started_at: float
) -> int | None:
    """Send the command with this process's streams; relay signals until its exit status.

    Returns:
        The exit status; ``None`` when the warm process did not take the command (it never
        started there, so it may run elsewhere).
    """
    request = {
        "argv": list(argv),
        "cwd": os.getcwd(),
        "env": dict(environ),
        "started_at": started_at,
    }
    with _standard_streams() as fds:
        try:
            send_message(connection, request, fds)
            reply, _ = receive_message(connection)
        except (OSError, ValueError):
            return None
    if reply is None or "pid" not in reply:
        return None
    pid = int(reply["pid"])
    previous = {signum: signal.getsignal(signum) for signum in _RELAYED_SIGNALS}
    for signum in _RELAYED_SIGNALS:
        signal.signal(signum, lambda number, frame: _relay(pid, number))
    try:
        reply, _ = receive_message(connection)
    except (OSError, ValueError):
        reply = None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if reply is None or "exit" not in reply:
        print("segflow: the warm process ended before the command did", file=sys.stderr)
        return _LOST_EXIT_CODE
    return int(reply["exit"])


def _relay(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


@contextlib.contextmanager
def _standard_streams() -> Iterator[list[int]]:
    """File descriptors 0, 1 and 2; ``/dev/null`` in place of a closed one (cron may close
    stdin)."""
    opened: list[int] = []
    fds = []
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            opened.append(os.open(os.devnull, mode))
            fds.append(opened[-1])
    try:
        yield fds
    finally:
        for fd in opened:
            os.close(fd)
