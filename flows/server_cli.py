"""``segflow server status|start|stop``: the background processes of this ``SEGFLOW_HOME``: the
shared local Prefect API and the warm process that runs commands (:mod:`flows.warm_server`)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console

from data_contracts import get_settings
from flows.shared_api import (
    SharedAPI,
    ensure_shared_api,
    idle_seconds,
    running_shared_api,
    stop_shared_api,
)
from flows.warm_protocol import ask, home_sockets

__all__ = ["server_app"]

console = Console()

server_app = typer.Typer(
    name="server",
    help=(
        "The background processes that segflow commands share (one set per SEGFLOW_HOME).\n\n"
        "The warm process has torch, MLflow and Prefect imported: the first command starts it "
        "(seconds) and the next ones run in a fork of it, so they start at once. It exits after "
        "SEGFLOW_WARM_IDLE_MINUTES (default 15) without a command; SEGFLOW_WARM=0 runs each "
        "command in its own process. Without PREFECT_API_URL, the first command also starts a "
        "local Prefect API that the next ones reuse; it exits after SEGFLOW_API_IDLE_MINUTES "
        "(default 30) without a command; SEGFLOW_API=per-command gives each command its own."
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _describe(state: SharedAPI) -> dict[str, object]:
    started = datetime.fromisoformat(state.started_at)
    return {
        "running": True,
        "url": state.url,
        "pid": state.pid,
        "started_at": state.started_at,
        "uptime_s": round((datetime.now(UTC) - started).total_seconds()),
        "idle_exit_s": state.idle_seconds,
        "version": state.version,
        "log": state.log,
        "database": str(get_settings().prefect_home_dir),
    }


def _warm_processes() -> list[dict[str, object]]:
    """What each warm process of this ``SEGFLOW_HOME`` says of itself."""
    found = []
    for path in home_sockets(os.environ):
        answer = ask(path, "status")
        if answer is not None:
            found.append({**answer, "socket": str(path)})
    return found


def _print(info: dict[str, object]) -> None:
    for key, value in info.items():
        console.print(f"{key.replace('_', ' '):<12} {value}")


@server_app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (for scripts)."),
) -> None:
    """Say whether the shared API runs, where, since when, and where its runs are stored.

    Exit code 0 when it runs, 1 when it does not.
    """
    state = running_shared_api()
    info: dict[str, object] = (
        _describe(state)
        if state is not None
        else {"running": False, "database": str(get_settings().prefect_home_dir)}
    )
    warm = _warm_processes()
    info["warm_processes"] = (
        [process["pid"] for process in warm]
        if as_json
        else ", ".join(
            f"{process['pid']} ({process['running_commands']} running)" for process in warm
        )
        or "none"
    )
    if as_json:
        typer.echo(json.dumps(info))
    else:
        _print(info)
        console.print(
            "[dim]See the runs in Prefect's UI: PREFECT_HOME="
            f"{get_settings().prefect_home_dir} prefect server start[/dim]"
        )
    raise typer.Exit(0 if state is not None else 1)


@server_app.command()
def start() -> None:
    """Start the shared API now (commands start it themselves when needed) and print its URL."""
    began = time.monotonic()
    url = ensure_shared_api()
    minutes = idle_seconds() / 60
    until = f"after {minutes:g} min without a command" if minutes else "at `segflow server stop`"
    console.print(f"Prefect API at {url} ({time.monotonic() - began:.1f} s); it exits {until}.")


@server_app.command()
def stop() -> None:
    """Stop the shared API (a running command loses its API: stop it between commands) and the
    warm processes (each once its running commands end)."""
    for process in _warm_processes():
        ask(Path(str(process["socket"])), "retire")
        console.print(f"The warm process {process['pid']} exits once its commands end.")
    stopped = stop_shared_api()
    if stopped is None:
        console.print("No shared Prefect API was running.")
    else:
        console.print(f"Stopped the Prefect API at {stopped.url} (pid {stopped.pid}).")
