"""The process of segflow's shared local Prefect API: Prefect's app under uvicorn, which exits
by itself once no segflow command has used it for a while.

Started by :func:`flows.shared_api.ensure_shared_api` as
``python -m flows.api_server --fd N --users-lock PATH --state PATH --idle-seconds S`` (``{pid}``
in PATH stands for this process's id), in its own
session, with its output in ``$SEGFLOW_HOME/logs/prefect-api.log``. Every segflow command that
uses it holds a shared ``flock`` on the users lock for as long as it runs (the kernel drops it
when the command exits or dies). A watchdog thread here tries an exclusive lock every few
seconds: when it gets one, no command is running; after ``idle_seconds`` of that with no HTTP
request either (a person browsing the API), the server keeps the exclusive lock (so a command
arriving now waits for the exit, then starts a new server), removes its state file and exits.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

__all__ = ["main"]

#: Seconds between two looks at the users lock.
CHECK_EVERY_S = 2.0

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Activity:
    """When the server last had a user: a running command or an HTTP request."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self.last


def _tracking(app: ASGIApp, activity: _Activity) -> ASGIApp:
    """``app`` that records the time of each HTTP request."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            activity.touch()
        await app(scope, receive, send)

    return wrapped


def _owns_state(state_path: Path) -> bool:
    try:
        return int(json.loads(state_path.read_text())["pid"]) == os.getpid()
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _watch(
    users_lock: Path, state_path: Path, idle_seconds: float, activity: _Activity, server: Any
) -> None:
    """Ask ``server`` to exit once unused for ``idle_seconds`` (see the module docstring)."""
    while not server.started and not server.should_exit:  # idle time counts once it serves
        time.sleep(0.1)
    activity.touch()
    with open(users_lock, "a+b") as handle:
        while not server.should_exit:
            time.sleep(CHECK_EVERY_S)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                activity.touch()  # a command is running
                continue
            if activity.idle_for() < idle_seconds:
                fcntl.flock(handle, fcntl.LOCK_UN)
                continue
            # Keep the exclusive lock until the process ends: a command arriving now waits,
            # then finds no server and starts a new one.
            if _owns_state(state_path):
                state_path.unlink(missing_ok=True)
            server.should_exit = True
            while True:  # hold the lock (and the open file) until the process exits
                time.sleep(60)


def main(argv: list[str] | None = None) -> None:
    """Serve Prefect's API on the listening socket ``--fd`` until idle (or SIGTERM)."""
    parser = argparse.ArgumentParser(prog="python -m flows.api_server")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--users-lock", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--idle-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    users_lock = Path(str(args.users_lock).replace("{pid}", str(os.getpid())))

    import uvicorn
    from prefect.server.api.server import create_app

    activity = _Activity()
    app = _tracking(create_app(ephemeral=True, final=True), activity)
    config = uvicorn.Config(app, fd=args.fd, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    if args.idle_seconds > 0:
        watchdog = threading.Thread(
            target=_watch,
            args=(users_lock, args.state, args.idle_seconds, activity, server),
            name="idle-watchdog",
            daemon=True,
        )
        watchdog.start()
    try:
        server.run()
    finally:
        if _owns_state(args.state):
            args.state.unlink(missing_ok=True)
        users_lock.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
