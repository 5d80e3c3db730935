"""The warm process: imports segflow's stack once, then forks one child per ``segflow`` command.

Importing torch, MONAI, Lightning, MLflow and Prefect costs a fresh process seconds, more than
most commands' own work. The first ``segflow`` command of an installation and ``SEGFLOW_HOME``
starts this process in the background (:mod:`flows.warm_client`); it imports everything,
starts the forkserver of the case workers (:mod:`pipelines.services.case_workers`) and
listens on a private Unix socket. Each later command sends its arguments, folder, environment
and its stdin, stdout and stderr; a forked child takes them over and runs the command as the
command would have run itself (:func:`run_command`); its exit status goes back to the command,
which relays signals (Ctrl-C) the other way.

This process stays single-threaded, so that forking it is safe. It exits once no command used
it for ``SEGFLOW_WARM_IDLE_MINUTES`` (default 15; 0 keeps it), on SIGTERM (``segflow server
stop``) after its running commands end, and it never serves another installation or edited
sources: those have another key, so another socket (:mod:`flows.warm_protocol`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import selectors
import signal
import socket
import sys
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.warm_protocol import ask, receive_message, send_message

__all__ = ["STARTED_AT_VARIABLE", "main", "run_command"]

#: Set in a command's environment, ``"<pid>:<Unix time>"``: when the user's ``segflow`` process
#: that the child with that pid serves started.
STARTED_AT_VARIABLE = "_SEGFLOW_COMMAND_STARTED_AT"
#: Third-party modules the commands import; each costs a fresh process up to seconds.
_LIBRARIES = (
    "numpy",
    "torch",
    "torchvision",
    "monai",
    "lightning.pytorch",
    "mlflow",
    "mlflow.pytorch",
    "prefect",
    "prefect.flows",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.task_runners",
    "prefect.artifacts",
    "prefect.client.orchestration",
    "rasterio",
    "nibabel",
    "skimage",
    "typer",
    "rich",
    "psutil",
    "pebble",
    # Imported lazily by a command's first flow run or its help:
    "anyio._backends._asyncio",
    "prefect.utilities.visualization",
    "pydantic.v1",
    "rich._emoji_codes",
    # Imported by the first MLflow call of a command (the sqlite store, its migrations, the
    # registry, tracing): about 550 modules, a second or more of each command otherwise.
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.store.db.utils",
    "mlflow.tracing.processor.otel",
    "mlflow.utils.name_utils",
    "alembic.runtime.migration",
    "alembic.script",
    "sqlalchemy.dialects.sqlite",
    "mlflow.tracing.processor.base_mlflow",
    "torch.utils.serialization",
    "IPython",
    "git",
)
_PACKAGES = ("data_contracts", "seg_models", "pipelines", "flows")
_REQUEST_TIMEOUT_S = 10.0


def warm_up(home: str) -> list[str]:
    """Import the stack as a command of ``home`` would find it, before any command's routing.

    The home's settings are in this process's environment only while the libraries import:
    the forkserver started next, and this process's environment as others see it, carry none
    of them (each command brings its own).

    Returns:
        The modules that failed to import (an optional extra not installed), for the log.
    """
    from data_contracts import apply_environment, get_settings
    from flows.log_routing import _LIBRARY_ENVIRONMENT

    before = dict(os.environ)
    os.environ["SEGFLOW_HOME"] = home
    apply_environment()
    for name, value in _LIBRARY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    # Prefect gives the root logger its console handler unless one is there (the command's
    # routing replaces this one).
    logging.getLogger().addHandler(logging.NullHandler())
    failed = []
    for name in (*_LIBRARIES, *_package_modules()):
        try:
            importlib.import_module(name)
        except Exception as error:  # an optional dependency: the command reports it, not us
            failed.append(f"{name}: {type(error).__name__}: {error}")
    _configure_orm_mappers()
    for name in ("SEGFLOW_HOME", "PREFECT_HOME", "MLFLOW_TRACKING_URI"):
        if name not in before:
            os.environ.pop(name, None)
    get_settings.cache_clear()
    from pipelines.services.case_workers import launch_forkserver

    launch_forkserver()
    return failed


def _configure_orm_mappers() -> None:
    """Build SQLAlchemy's mappers of MLflow's tables now: the first store of each command
    would otherwise spend most of a second on it."""
    orm = sys.modules.get("sqlalchemy.orm")
    if orm is not None:
        with contextlib.suppress(Exception):  # the command's own store reports a real error
            orm.configure_mappers()


def _package_modules() -> list[str]:
    names = []
    for package in _PACKAGES:
        module = importlib.import_module(package)
        prefix = f"{package}."
        names += [info.name for info in pkgutil.walk_packages(module.__path__, prefix)]
    return [name for name in names if ".synthetic" not in name and name != "flows.__main__"]


@dataclass
class _Children:
    """Running commands: each child's connection to its ``segflow`` process."""

    idle_seconds: float
    by_pid: dict[int, socket.socket | None] = field(default_factory=dict)
    last_activity: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    retiring: bool = False


def serve(listener: socket.socket, idle_seconds: float) -> None:
    """Accept commands until idle or told to stop (see the module docstring)."""
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_read, False)
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)

    children = _Children(idle_seconds)

    def stop(signum: int, frame: Any) -> None:
        children.retiring = True

    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wakeup_read, selectors.EVENT_READ, "signal")
    while True:
        if children.retiring and listener.fileno() >= 0:
            selector.unregister(listener)
            listener.close()
        if children.retiring and not children.by_pid:
            return
        idle = time.monotonic() - children.last_activity
        if idle_seconds > 0 and not children.by_pid and idle >= idle_seconds:
            return
        timeout = max(0.5, idle_seconds - idle) if idle_seconds > 0 else None
        for key, _ in selector.select(timeout):
            if key.data == "accept":
                _accept(listener, selector, children)
            elif key.data == "signal":
                with contextlib.suppress(BlockingIOError):
                    os.read(wakeup_read, 512)
                _reap(selector, children)
            else:
                _client_event(key.fileobj, key.data, selector, children)  # type: ignore[arg-type]


def _accept(listener: socket.socket, selector: selectors.BaseSelector, children: _Children) -> None:
    connection, _ = listener.accept()
    children.last_activity = time.monotonic()
    try:
        if not _same_user(connection):
            connection.close()
            return
        connection.settimeout(_REQUEST_TIMEOUT_S)
        request, fds = receive_message(connection, max_fds=3)
    except (OSError, ValueError):
        connection.close()
        return
    if request is not None and not fds and _answer(connection, request, children):
        return
    if request is None or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        connection.close()
        return
    pid = os.fork()
    if pid == 0:
        _become_command(connection, request, fds, selector)
    for fd in fds:
        os.close(fd)
    connection.settimeout(None)
    try:
        send_message(connection, {"pid": pid})
    except OSError:  # the command is gone already: so is the point of running it
        os.kill(pid, signal.SIGTERM)
    children.by_pid[pid] = connection
    selector.register(connection, selectors.EVENT_READ, pid)


def _answer(connection: socket.socket, request: dict[str, Any], children: _Children) -> bool:
    """Answer a ``status`` or ``retire`` question (:func:`flows.warm_protocol.ask`)."""
    if request.get("retire"):
        children.retiring = True
    elif not request.get("status"):
        return False
    with contextlib.suppress(OSError):
        send_message(
            connection,
            {
                "pid": os.getpid(),
                "started_at": children.started_at,
                "idle_seconds": children.idle_seconds,
                "running_commands": len(children.by_pid),
                "retiring": children.retiring,
            },
        )
    connection.close()
    return True


def _same_user(connection: socket.socket) -> bool:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    _, uid, _ = (int.from_bytes(credentials[i : i + 4], sys.byteorder) for i in (0, 4, 8))
    return uid == os.getuid()


def _client_event(
    connection: socket.socket, pid: int, selector: selectors.BaseSelector, children: _Children
) -> None:
    """The ``segflow`` process closed its end (killed): stop its command as Ctrl-C would."""
    with contextlib.suppress(OSError):
        if connection.recv(1):
            return  # the protocol has the client send nothing more; ignore it
    selector.unregister(connection)
    connection.close()
    children.by_pid[pid] = None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _reap(selector: selectors.BaseSelector, children: _Children) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.last_activity = time.monotonic()
        connection = children.by_pid.pop(pid, None)
        if connection is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            send_message(connection, {"exit": 128 - code if code < 0 else code})
        selector.unregister(connection)
        connection.close()


def _become_command(
    connection: socket.socket,
    request: dict[str, Any],
    fds: list[int],
    selector: selectors.BaseSelector,
) -> None:
    """In the forked child: drop the server's state, then run the command; never returns."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        for key in list(selector.get_map().values()):
            with contextlib.suppress(OSError, ValueError):
                os.close(key.fd)
        selector.close()
        connection.close()
        code = run_command(request, fds)
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        os._exit(code)


def run_command(request: dict[str, Any], fds: list[int]) -> int:
    """Take over the command's streams, folder and environment, and run it to its end.

    The exit handlers run here (Prefect flushes its logs, the command's servers stop); the
    interpreter's teardown of native libraries does not (the caller ``_exit``\\s).

    Returns:
        The command's exit code.
    """
    import atexit

    _take_streams(fds)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    # "pid:time": a process this command starts inherits the variable, not its start time.
    os.environ[STARTED_AT_VARIABLE] = f"{os.getpid()}:{float(request['started_at'])!r}"
    os.chdir(request["cwd"])
    sys.argv = [str(argument) for argument in request["argv"]]
    _become_main_script(sys.argv[0])
    _reset_settings()
    from data_contracts import get_settings
    from flows.cli_app import main as cli_main
    from pipelines.interrupts import arm_stop_deadline

    arm_stop_deadline(get_settings().stop_deadline_seconds)  # this process runs one command only
    try:
        code = cli_main(sys.argv[1:])
    finally:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    return code


def _take_streams(fds: list[int]) -> None:
    for target, fd in enumerate(fds):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)
    stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - the process's stream
    stdout = open(  # noqa: SIM115
        1, "w", buffering=1 if os.isatty(1) else -1, encoding="utf-8", closefd=False
    )
    stderr = open(  # noqa: SIM115
        2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False
    )
    sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = stdin, stdout, stderr  # type: ignore[misc]


def _become_main_script(path: str) -> None:
    """Make ``__main__`` the ``segflow`` script, as in the command's own process (click names
    the program after it; multiprocessing's workers prepare from it)."""
    script = types.ModuleType("__main__")
    script.__file__ = path
    sys.modules["__main__"] = script


def _reset_settings() -> None:
    """Read the command's environment again where the warm process read its own."""
    from data_contracts import apply_environment, get_settings
    from pipelines.services.case_workers import adopt_inherited_forkserver

    get_settings.cache_clear()
    apply_environment()
    context = sys.modules.get("prefect.context")
    refresh = getattr(context, "refresh_global_settings_context", None)
    if refresh is not None:
        refresh()
    adopt_inherited_forkserver()


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.warm_server --socket PATH --home DIR --idle-seconds S``: warm up, then
    serve."""
    parser = argparse.ArgumentParser(prog="python -m flows.warm_server")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--home", required=True, help="the SEGFLOW_HOME it serves")
    parser.add_argument("--idle-seconds", type=float, required=True)
    parser.add_argument(
        "--retire-others", action="store_true", help="retire the home's other warm processes"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    failed = warm_up(args.home)
    for line in failed:
        print(f"segflow warm process: not imported: {line}", file=sys.stderr, flush=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = args.socket.with_name(f"{args.socket.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    listener.bind(str(temporary))
    listener.listen(64)
    os.replace(temporary, args.socket)  # appears ready, never half set up
    inode = os.stat(args.socket).st_ino
    if args.retire_others:
        _retire_others(args.socket)
    print(
        f"segflow warm process {os.getpid()}: ready in {time.monotonic() - started:.1f} s "
        f"on {args.socket}",
        file=sys.stderr,
        flush=True,
    )
    try:
        serve(listener, args.idle_seconds)
    finally:
        with contextlib.suppress(OSError):
            if os.stat(args.socket).st_ino == inode:  # not a newer process's socket
                args.socket.unlink()
        print(f"segflow warm process {os.getpid()}: exits", file=sys.stderr, flush=True)


def _retire_others(own: Path) -> None:
    """Ask the other warm processes of this ``SEGFLOW_HOME`` (an older version or source) to
    exit once their running commands end: only this one gets new commands now."""
    tag = own.name.partition("-")[0]
    for path in own.parent.glob(f"{tag}-*.sock"):
        if path != own and ask(path, "retire", timeout=2.0) is None:
            path.unlink(missing_ok=True)  # nobody listens there any more


if __name__ == "__main__":
    main()
