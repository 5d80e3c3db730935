"""What the ``segflow`` command and its warm process agree on: where to meet, what to send.

Standard library only: the command imports this before anything else, and its whole point is
to stay cheap. A warm process serves one installation, one ``SEGFLOW_HOME`` and one set of the
variables that libraries read once, at import (:data:`IMPORT_TIME_VARIABLES`): those make up
its :func:`warm_key`, and so its socket's name. A command whose key differs (an upgrade, an
edited source file, another ``PYTHONPATH``) meets another warm process, or starts one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DISABLE_VARIABLE",
    "IDLE_VARIABLE",
    "IMPORT_TIME_VARIABLES",
    "ask",
    "ensure_private_dir",
    "home_of",
    "home_sockets",
    "home_tag",
    "receive_message",
    "send_message",
    "socket_dir",
    "socket_path",
    "source_stamp",
    "warm_enabled",
    "warm_key",
]

#: ``SEGFLOW_WARM=0`` runs every command in its own process, as before the warm process.
DISABLE_VARIABLE = "SEGFLOW_WARM"
#: Minutes a warm process waits unused before it exits (default 15; 0: until stopped).
IDLE_VARIABLE = "SEGFLOW_WARM_IDLE_MINUTES"
#: Variables that Python, the native libraries or Prefect's logging read when imported: a warm
#: process that imported them under other values cannot serve the command.
IMPORT_TIME_VARIABLES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONHASHSEED",
    "PYTHONWARNINGS",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "MLFLOW_CONFIGURE_LOGGING",
)
_IMPORT_TIME_PREFIXES = ("PREFECT_LOGGING_", "GDAL_", "PROJ_")
_PACKAGES = ("data_contracts", "seg_models", "pipelines", "flows")
_HEADER = struct.Struct("!I")
_MAX_MESSAGE = 16 * 1024 * 1024


def warm_enabled(environ: Mapping[str, str]) -> bool:
    """Whether commands may run in a warm process (Linux only; ``SEGFLOW_WARM=0`` turns it off)."""
    value = environ.get(DISABLE_VARIABLE, "1").strip().lower()
    return sys.platform == "linux" and value not in ("0", "false", "no", "off")


def home_of(environ: Mapping[str, str]) -> Path:
    """``SEGFLOW_HOME`` as :class:`data_contracts.Settings` resolves it (default ``./.segflow``)."""
    return Path(os.path.expanduser(environ.get("SEGFLOW_HOME") or ".segflow")).resolve()


def source_stamp() -> str:
    """The newest modification time and the number of segflow's source files: an edited file
    (an editable install, a checkout) makes a new warm process, never a stale one."""
    root = Path(__file__).resolve().parent.parent
    newest, count = 0, 0
    for package in _PACKAGES:
        for directory, _, files in os.walk(root / package):
            for name in files:
                if name.endswith(".py"):
                    newest = max(newest, os.stat(os.path.join(directory, name)).st_mtime_ns)
                    count += 1
    return f"{newest}:{count}"


def warm_key(environ: Mapping[str, str]) -> str:
    """What a warm process must share with the command that would use it (see the module)."""
    imported = {
        name: value
        for name, value in sorted(environ.items())
        if name in IMPORT_TIME_VARIABLES or name.startswith(_IMPORT_TIME_PREFIXES)
    }
    identity = {
        "python": sys.executable,
        "source": str(Path(__file__).resolve().parent.parent),
        "stamp": source_stamp(),
        "home": str(home_of(environ)),
        "imported": imported,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def socket_dir() -> Path:
    """A folder only this user can enter (Unix socket paths are limited to ~100 bytes, which a
    ``SEGFLOW_HOME`` under a deep temporary folder exceeds)."""
    return Path(tempfile.gettempdir()) / f"segflow-warm-{os.getuid()}"


def home_tag(environ: Mapping[str, str]) -> str:
    """A short name of the ``SEGFLOW_HOME`` in force, shared by its warm processes' sockets."""
    return hashlib.sha256(str(home_of(environ)).encode()).hexdigest()[:12]


def socket_path(key: str, environ: Mapping[str, str]) -> Path:
    """The socket of the warm process for ``key`` (under ``environ``'s ``SEGFLOW_HOME``)."""
    return socket_dir() / f"{home_tag(environ)}-{key}.sock"


def home_sockets(environ: Mapping[str, str]) -> list[Path]:
    """The sockets of every warm process of ``environ``'s ``SEGFLOW_HOME`` (any key)."""
    return sorted(socket_dir().glob(f"{home_tag(environ)}-*.sock"))


def ask(path: Path, question: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """Ask the warm process at ``path`` for its ``status`` or to ``retire``; its answer, or
    ``None`` when none answers there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(str(path))
            send_message(connection, {question: True})
            answer, _ = receive_message(connection)
        except (OSError, ValueError):
            return None
    return answer


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or check that an existing one is this user's and private.

    Raises:
        PermissionError: the folder belongs to someone else or others may enter it.
    """
    path.mkdir(mode=0o700, exist_ok=True)
    status = path.lstat()
    if status.st_uid != os.getuid() or status.st_mode & 0o077 or path.is_symlink():
        raise PermissionError(f"{path} is not a private folder of this user")


def send_message(
    connection: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()
) -> None:
    """Send one JSON message (length-prefixed), with open file descriptors when given."""
    payload = json.dumps(message).encode()
    data = _HEADER.pack(len(payload)) + payload
    if fds:
        sent = socket.send_fds(connection, [data], list(fds))
        data = data[sent:]
    connection.sendall(data)


def receive_message(
    connection: socket.socket, max_fds: int = 0
) -> tuple[dict[str, Any] | None, list[int]]:
    """Receive one message and the descriptors sent with it; ``(None, [])`` at end of stream.

    Raises:
        ValueError: the peer sent something that is not a message of this protocol.
    """
    received: list[int] = []
    buffer = b""
    while len(buffer) < _HEADER.size:
        chunk, fds = _receive(
            connection, _HEADER.size - len(buffer), max_fds if not received else 0
        )
        received.extend(fds)
        if not chunk:
            _close_all(received)
            return None, []
        buffer += chunk
    (size,) = _HEADER.unpack(buffer[: _HEADER.size])
    if size > _MAX_MESSAGE:
        _close_all(received)
        raise ValueError(f"a message of {size} bytes")
    body = buffer[_HEADER.size :]
    while len(body) < size:
        chunk = connection.recv(size - len(body))
        if not chunk:
            _close_all(received)
            raise ValueError("the message ended early")
        body += chunk
    message = json.loads(body)
    if not isinstance(message, dict):
        _close_all(received)
        raise ValueError("a message that is not an object")
    return message, received


def _receive(connection: socket.socket, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    if max_fds:
        data, fds, _, _ = socket.recv_fds(connection, size, max_fds)
        return data, list(fds)
    return connection.recv(size), []


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
