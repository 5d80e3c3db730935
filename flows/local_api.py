"""segflow's temporary Prefect API: the server Prefect would start, made unable to outlive segflow.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server the first time a flow needs
one (``prefect.server.api.server.SubprocessASGIServer``): a uvicorn child that inherits this
process's stdout and stderr and is stopped only by an ``atexit`` handler. When a command dies
without running it (a segfault, SIGKILL, a signal it does not handle), the server stays alive
with parent 1 and keeps a caller's pipes open: ``subprocess.run(..., capture_output=True)``
never returns, and a cron job leaks one ~230 MB server per crash.

The ``segflow`` command line calls :func:`enable`; :func:`ensure_local_api`, called by
:func:`flows.dataset_flows.run_flow` (and the demo) before a flow runs — so ``--help`` and failed
argument checks start nothing — then points Prefect at an API of segflow's own:

- by default the **shared** one of this ``SEGFLOW_HOME`` (:mod:`flows.shared_api`), started in
  the background by the first command and reused by the next ones, which then pay nothing for
  it; it exits by itself when unused for ``SEGFLOW_API_IDLE_MINUTES``;
- with ``SEGFLOW_API=per-command``, a temporary one for this command only, started with the same
  app and settings as Prefect's but:

- through :func:`pipelines.services.process_guard.popen_guarded`: SIGKILL reaches it when this process
  dies, however it dies; its own session; stdin from ``/dev/null``; its output appended to
  ``$SEGFLOW_HOME/logs/prefect-api.log``, never to this process's stdout/stderr;
- on a socket this process binds on 127.0.0.1 (port chosen by the OS) and hands over
  (``uvicorn --fd``): no free-port race, and requests made while the app starts wait in the
  socket's queue;
- stopped at exit, after Prefect's own exit handlers have flushed logs and events to it
  (``atexit``: its process group gets SIGTERM, then SIGKILL after 5 s).

This process then reaches it through ``PREFECT_API_URL``, set in the environment (children
inherit it) and in Prefect's settings (``PREFECT_UI_URL`` empty: the server has no UI). A
``PREFECT_API_URL`` configured by the user (the environment, a Prefect profile) is used as it
is: nothing is started.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from data_contracts import get_settings
from flows.server_process import ServerProcess
from flows.shared_api import api_mode, ensure_shared_api, release_users_locks

__all__ = [
    "SERVER_ENV",
    "LocalAPI",
    "enable",
    "ensure_local_api",
    "local_api_command",
    "start_local_api",
    "stop_local_api",
]

logger = logging.getLogger(__name__)

#: Environment of the server, as Prefect gives its own temporary server (no UI).
SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}
#: Seconds the server is given to stop after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LocalAPI:
    """A running temporary API: its server process and its URL (``http://127.0.0.1:N/api``)."""

    server: ServerProcess
    url: str


@dataclass
class _State:
    enabled: bool = False
    api: LocalAPI | None = None
    stop_registered: bool = False
    cleared_ui_url: bool = False
    shared_url: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_state = _State()


def enable() -> None:
    """Let :func:`ensure_local_api` start segflow's own temporary API (the CLI calls this).

    Also registers :func:`stop_local_api` with ``atexit`` now, before Prefect is imported:
    exit handlers run last-registered first, so Prefect's own (which flush logs and events to
    the API) run while the server still answers.
    """
    _state.enabled = True
    if not _state.stop_registered:
        atexit.register(stop_local_api)
        _state.stop_registered = True


def ensure_local_api() -> str | None:
    """Point Prefect at segflow's temporary API, starting it first when needed.

    A no-op (``None``) unless :func:`enable` was called, or when a Prefect API is configured
    (``PREFECT_API_URL`` in the environment or the active profile, or temporary settings).

    Returns:
        The API's URL, or ``None`` when Prefect is left as it is.

    Raises:
        OutputError: the server exited or did not answer in time (its log's tail is quoted).
    """
    if not _state.enabled:
        return None
    with _state.lock:  # one server, also when flows start from several threads
        return _ensure()


def _ensure() -> str | None:
    current = _state.api
    configured = _configured_url()
    ours = current.url if current is not None else _state.shared_url
    if configured and configured != ours:
        return None  # the user's API, or one that temporary settings put in force
    if current is not None and current.server.running:
        _point_prefect_at(current.url)
        return current.url
    if current is not None:  # ours died: forget it, start another
        stop_local_api()
    if api_mode() == "shared":
        url = ensure_shared_api()
        _state.shared_url = url
        _point_prefect_at(url)
        return url
    api = start_local_api()
    _state.api = api
    _point_prefect_at(api.url)
    return api.url


def local_api_command(fd: int) -> list[str]:
    """The server's command line: Prefect's API app under uvicorn, on listening socket ``fd``."""
    import prefect

    app_dir = Path(prefect.__file__).resolve().parent.parent  # as Prefect runs it: site-packages
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(app_dir),
        "--factory",
        "prefect.server.api.server:create_app",
        "--fd",
        str(fd),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def start_local_api(log_path: Path | None = None) -> LocalAPI:
    """Start Prefect's API app on 127.0.0.1 (see the module docstring) and wait until it answers.

    Prefect's settings are not changed (:func:`ensure_local_api` does that).

    Args:
        log_path: the server's output (default ``$SEGFLOW_HOME/logs/prefect-api.log``).

    Raises:
        OutputError: the server exited or did not answer in time (its log's tail is quoted).
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    env = {**os.environ, **SERVER_ENV, **settings.to_environment_variables(exclude_unset=True)}
    env.pop("PREFECT_API_URL", None)
    log_path = log_path or get_settings().home_dir / "logs" / "prefect-api.log"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = int(listener.getsockname()[1])
        server = ServerProcess(
            local_api_command(listener.fileno()),
            f"http://127.0.0.1:{port}/api/health",
            log_path,
            env=env,
            startup_timeout=float(settings.server.ephemeral.startup_timeout_seconds),
            pass_fds=(listener.fileno(),),
            health_timeout=10.0,
        )
        server.spawn()
    # The server holds the only copy of the socket now: if it dies, requests fail at once.
    try:
        server.wait_healthy()
    except BaseException:  # a failed start, or SIGINT/SIGTERM while waiting: stop it now
        server.stop(STOP_TIMEOUT_S)
        raise
    logger.info("temporary Prefect API on http://127.0.0.1:%d (log %s)", port, log_path)
    return LocalAPI(server, f"http://127.0.0.1:{port}/api")


def stop_local_api() -> None:
    """Stop segflow's temporary API (if running) and stop pointing Prefect at it."""
    api, _state.api = _state.api, None
    if api is None:
        if _state.shared_url is not None:  # the shared server stays; send it what is queued
            _drain_prefect_workers(STOP_TIMEOUT_S)
            release_users_locks()
            if os.environ.get("PREFECT_API_URL") == _state.shared_url:
                _point_prefect_at(None)
            _state.shared_url = None
        return
    _drain_prefect_workers(STOP_TIMEOUT_S)
    api.server.stop(STOP_TIMEOUT_S)
    if os.environ.get("PREFECT_API_URL") == api.url:
        _point_prefect_at(None)


def _drain_prefect_workers(timeout: float) -> None:
    """Send the logs and events Prefect still queues to the API, as Prefect's test harness
    does before it stops its server: Prefect drains them in its own interpreter-shutdown hook,
    which the console script skips, so a stop signal's last lines would meet a stopped server."""
    workers = (
        ("prefect.logging.handlers", "APILogWorker"),
        ("prefect.events.worker", "EventsWorker"),
    )
    for module_name, class_name in workers:
        worker = getattr(sys.modules.get(module_name), class_name, None)
        if worker is None:
            continue
        try:
            worker.drain_all(timeout=timeout)
        except Exception as error:  # best effort: the server stops either way
            logger.debug("could not drain %s: %s", class_name, error)


def _configured_url() -> str | None:
    """The Prefect API URL in force: the environment's, else Prefect's settings'."""
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None


def _point_prefect_at(url: str | None) -> None:
    """Set (or remove) ``PREFECT_API_URL`` in the environment and in Prefect's settings.

    ``PREFECT_UI_URL`` is set empty alongside (unless the user set it): the server serves no UI,
    so Prefect prints no "View at" links to it, as with its own temporary server.
    """
    if os.environ.get("PREFECT_API_URL") == url:
        return
    if url is None:
        os.environ.pop("PREFECT_API_URL", None)
        if _state.cleared_ui_url:
            os.environ.pop("PREFECT_UI_URL", None)
            _state.cleared_ui_url = False
    else:
        os.environ["PREFECT_API_URL"] = url
        if "PREFECT_UI_URL" not in os.environ:
            os.environ["PREFECT_UI_URL"] = ""
            _state.cleared_ui_url = True
    context = sys.modules.get("prefect.context")
    if context is not None:  # Prefect read the environment when it was imported: read it again
        refresh = getattr(context, "refresh_global_settings_context", None)
        if refresh is not None:
            refresh()
        else:  # older Prefect 3 releases
            context.GLOBAL_SETTINGS_CONTEXT = context.root_settings_context()  # type: ignore[attr-defined]
