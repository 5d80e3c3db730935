"""One local Prefect API per ``SEGFLOW_HOME``, started by the first command and reused by the next.

Starting Prefect's API costs seconds (imports, database migrations) that a command's own work
often does not: ``segflow segment`` over a finished archive is a few milliseconds of ledger
lookups. So without ``PREFECT_API_URL`` the first ``segflow`` command starts the API in the
background (:mod:`flows.api_server`) and later commands find it in
``$SEGFLOW_HOME/server/state.json`` and use it at once. Flow runs, task runs, logs and artifacts
all land in the one database under ``$SEGFLOW_HOME/prefect``, where a Prefect UI can show them
later (``segflow server status`` says how).

The server cannot linger unused: every command holds a shared lock on its users file while it
runs, and the server exits by itself once nobody held it for ``SEGFLOW_API_IDLE_MINUTES``
(default 30; ``0`` keeps it until ``segflow server stop``). A start lock makes two commands
started together share one server. A server of another segflow or Prefect version (an upgrade)
is not reused: the command starts a new one and the old one is stopped at once when nobody uses
it, else it exits when idle. ``SEGFLOW_API=per-command`` gives each command its own server that
stops with it (:mod:`flows.local_api`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import IO

from data_contracts import ConfigError, OutputError, get_settings
from pipelines.files import write_text_atomic
from pipelines.services.process_guard import process_exists

__all__ = [
    "SharedAPI",
    "api_mode",
    "ensure_shared_api",
    "idle_seconds",
    "release_users_locks",
    "running_shared_api",
    "stop_shared_api",
]

#: Environment of the server, as Prefect gives its own temporary server (no UI, no services).
SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
DEFAULT_IDLE_MINUTES = 30.0
STOP_TIMEOUT_S = 10.0

_held: dict[str, IO[bytes]] = {}  # users locks this process holds, by path


@dataclass(frozen=True)
class SharedAPI:
    """A shared API server, as its state file records it.

    Attributes:
        pid: the server's process id (the leader of its own process group).
        url: its API URL, ``http://127.0.0.1:N/api``.
        version: the installation it was started from (:func:`installation_version`).
        started_at: ISO time of its start.
        log: its log file.
        idle_seconds: it exits after this long unused (0: never).
    """

    pid: int
    url: str
    version: str
    started_at: str
    log: str
    idle_seconds: float

    @property
    def users_lock(self) -> Path:
        return _server_dir() / f"users.{self.pid}.lock"


def api_mode() -> str:
    """``shared`` (default) or ``per-command``, from ``SEGFLOW_API``."""
    mode = os.environ.get("SEGFLOW_API", "shared").strip().lower() or "shared"
    if mode not in ("shared", "per-command"):
        raise ConfigError(
            f"SEGFLOW_API={mode!r} is not a mode",
            hint="use 'shared' (one background API per SEGFLOW_HOME) or 'per-command'",
        )
    return mode


def idle_seconds() -> float:
    """How long the shared server waits unused before it exits (``SEGFLOW_API_IDLE_MINUTES``)."""
    text = os.environ.get("SEGFLOW_API_IDLE_MINUTES", "")
    try:
        minutes = float(text) if text.strip() else DEFAULT_IDLE_MINUTES
    except ValueError:
        raise ConfigError(
            f"SEGFLOW_API_IDLE_MINUTES={text!r} is not a number of minutes",
            hint="e.g. 30, or 0 to keep the server until `segflow server stop`",
        ) from None
    if minutes < 0:
        raise ConfigError(f"SEGFLOW_API_IDLE_MINUTES={text!r} is negative")
    return minutes * 60.0


def installation_version() -> str:
    """What a reusable server must share with this command: segflow, Prefect, the interpreter."""
    return f"segflow {_version('segflow')}; prefect {_version('prefect')}; {sys.executable}"


#: What the server keeps of the environment of the command that starts it: the server outlives
#: that command and serves later ones, so it takes none of its credentials (AWS_*, MLflow,
#: database URLs) or segflow settings, only what Python and Prefect need.
_KEPT_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV")
_KEPT_PREFIXES = ("LC_", "PREFECT_")


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` the shared server runs with (see :data:`_KEPT_VARIABLES`)."""
    return {
        name: value
        for name, value in environ.items()
        if name in _KEPT_VARIABLES or name.startswith(_KEPT_PREFIXES)
    }


def _version(package: str) -> str:
    try:
        return version(package)
    except Exception:  # a source tree that is not installed
        return "unknown"


def _server_dir() -> Path:
    return get_settings().home_dir / "server"


def _state_path() -> Path:
    return _server_dir() / "state.json"


def _read_state() -> SharedAPI | None:
    try:
        return SharedAPI(**json.loads(_state_path().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _healthy(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def running_shared_api() -> SharedAPI | None:
    """The shared server of this ``SEGFLOW_HOME`` when it runs and answers, else ``None``."""
    state = _read_state()
    if state is None or not process_exists(state.pid) or not _healthy(state.url):
        return None
    return state


def _hold_users_lock(state: SharedAPI) -> None:
    """Hold a shared lock on the server's users file until this process exits (waits while the
    server is deciding to exit, which it does holding the exclusive lock)."""
    key = str(state.users_lock)
    if key in _held:
        return
    handle = open(state.users_lock, "a+b")  # noqa: SIM115 - held for the process's lifetime
    fcntl.flock(handle, fcntl.LOCK_SH)
    _held[key] = handle


def release_users_locks() -> None:
    """Stop counting this process as a user of a shared server (a command ends)."""
    while _held:
        _, handle = _held.popitem()
        handle.close()


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    _server_dir().mkdir(parents=True, exist_ok=True)
    with open(_server_dir() / "start.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_shared_api() -> str:
    """The URL of this ``SEGFLOW_HOME``'s shared API, started now when none runs.

    Raises:
        OutputError: the server exited or did not answer in time (its log's tail is quoted).
    """
    current = installation_version()
    with _start_lock():
        state = running_shared_api()
        if state is not None and state.version == current:
            _hold_users_lock(state)
            if running_shared_api() == state:  # it did not exit while we waited for the lock
                return state.url
        if state is not None and state.version != current:
            _retire(state)
        state = _start(current)
        _hold_users_lock(state)
        return state.url


def _retire(state: SharedAPI) -> None:
    """Stop a server of another version now if nobody uses it; else it exits when idle."""
    with open(state.users_lock, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        _terminate(state.pid)


def _start(installation: str) -> SharedAPI:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    env = {
        **server_environment(os.environ),
        **SERVER_ENV,
        **settings.to_environment_variables(exclude_unset=True),
    }
    env.pop("PREFECT_API_URL", None)
    log_path = get_settings().home_dir / "logs" / "prefect-api.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    idle = idle_seconds()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = int(listener.getsockname()[1])
        with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "flows.api_server", "--fd", str(listener.fileno())),
                    *("--users-lock", str(_server_dir() / "users.{pid}.lock")),
                    *("--state", str(_state_path()), "--idle-seconds", str(idle)),
                ],
                stdin=devnull,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(listener.fileno(),),
                start_new_session=True,  # outlives this command by design; not its signals
                cwd=get_settings().home_dir,
            )
    state = SharedAPI(
        pid=process.pid,
        url=f"http://127.0.0.1:{port}/api",
        version=installation,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        log=str(log_path),
        idle_seconds=idle,
    )
    _wait_healthy(process, state, float(settings.server.ephemeral.startup_timeout_seconds))
    write_text_atomic(_state_path(), json.dumps(asdict(state), indent=2))
    return state


def _wait_healthy(process: subprocess.Popen[bytes], state: SharedAPI, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OutputError(
                f"segflow's Prefect API exited at start (code {process.returncode}): "
                f"{_log_tail(Path(state.log))}",
                path=Path(state.log),
                hint="read the log; SEGFLOW_API=per-command or PREFECT_API_URL avoid this server",
            )
        if _healthy(state.url, timeout=10.0):
            return
        time.sleep(0.1)
    _terminate(process.pid)
    raise OutputError(
        f"segflow's Prefect API did not answer within {timeout:.0f} s: {_log_tail(Path(state.log))}",
        path=Path(state.log),
        hint="raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS on a slow machine",
    )


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
    except OSError:
        return "(no log)"


def _terminate(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group, SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_exists(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if process_exists(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def stop_shared_api() -> SharedAPI | None:
    """Stop this ``SEGFLOW_HOME``'s shared server (if any); returns what was stopped."""
    with _start_lock():
        state = _read_state()
        if state is None:
            return None
        if process_exists(state.pid):
            _terminate(state.pid)
        _state_path().unlink(missing_ok=True)
        state.users_lock.unlink(missing_ok=True)
        return state
