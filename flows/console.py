"""What a ``segflow`` command shows a person: the console mode, the closing summary, paths.

One command is one console *session* (:func:`begin_session`, :func:`end_session`), in one of
four modes (:mod:`flows.log_routing`): ``normal`` (a live display per stage on stderr, then the
summary tables), ``verbose`` (the same, and every library's lines), ``quiet`` (the summary and
errors: for cron) and ``json`` (one JSON object on stdout: for scripts). Commands print through
:func:`show_detail` (normal and verbose only) and :func:`show_summary` (its tables, or its data
in the JSON object); the session's last line names the log file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any, cast

from pydantic import BaseModel
from rich.console import Console, RenderableType
from rich.table import Table

from data_contracts import DatasetManifest
from flows.log_routing import ConsoleMode, LogRouting, start_routing
from pipelines.kinds import adapter_for_geometry

console = Console(stderr=False)
error_console = Console(stderr=True)

#: Columns a path gets in a summary table, shortened in the middle beyond that.
PATH_WIDTH = 36


@dataclass
class _Session:
    mode: ConsoleMode = "normal"
    command: str | None = None
    routing: LogRouting | None = None
    summary: dict[str, Any] = field(default_factory=dict)


_session = _Session()


def _reset() -> None:
    global _session
    _session = _Session()


def shows_live_displays() -> bool:
    """Whether live displays run: in the normal and verbose modes."""
    return _session.mode in ("normal", "verbose")


def begin_session(mode: ConsoleMode, command: str) -> None:
    """Start ``command``'s console: bind segflow's consoles to the real streams, then route the
    other libraries' lines to the log file (:func:`flows.log_routing.start_routing`). Call
    :func:`close_routing` when the command ends, then :func:`end_session`."""
    _reset()
    bind_streams(True)
    routing = start_routing(mode, command, error_console)
    _session.mode, _session.command, _session.routing = mode, command, routing


def close_routing() -> None:
    """Give the streams and loggers back (the session's summary stays for :func:`end_session`)."""
    if _session.routing is not None:
        _session.routing.close()
        bind_streams(False)


def settle_logging() -> None:
    """Route to the log file the loggers of libraries imported since the command started."""
    if _session.routing is not None:
        _session.routing.take_over_libraries()


def bind_streams(bound: bool) -> None:
    """Point segflow's consoles at the present ``sys.stdout``/``sys.stderr`` (``bound``), so
    that they keep them while the routing replaces those; or at the stream of the moment."""
    import sys

    # None makes a rich Console look the stream up at each write again.
    console.file = sys.stdout if bound else cast(IO[str], None)
    error_console.file = sys.stderr if bound else cast(IO[str], None)


def show_detail(*renderables: RenderableType) -> None:
    """Print what a person reads beside the summary (a plan): not in the quiet and JSON modes."""
    if _session.mode in ("normal", "verbose"):
        for renderable in renderables:
            console.print(renderable)


def show_summary(*renderables: RenderableType, data: Mapping[str, Any]) -> None:
    """Print the closing summary; in the JSON mode keep ``data`` for the JSON object instead."""
    _session.summary.update(data)
    if _session.mode != "json":
        for renderable in renderables:
            console.print(renderable)


def end_session(code: int, error: str | None = None) -> None:
    """Close the routing if still open, print the last line (``log: …``) or, in the JSON mode,
    the one JSON object (the summary, ``command``, ``exit_code``, ``error``, ``log``)."""
    routing, mode = _session.routing, _session.mode
    if routing is None:
        return
    close_routing()
    log = routing.log_path
    if mode == "json":
        document = {**_session.summary, "command": _session.command, "exit_code": int(code)}
        document.update(error=error, log=str(log) if log else None)
        console.file.write(json.dumps(jsonable(document)) + "\n")
        console.file.flush()
    elif log is not None:  # never wrapped: the path stays whole to copy
        console.print(f"log: {home_relative(log)}", soft_wrap=True, highlight=False, markup=False)
    _reset()


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: paths and enums as strings, models dumped, infinite and
    missing numbers as ``null`` (strict JSON has neither)."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, BaseModel):
        return jsonable(value.model_dump(mode="json"))
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return jsonable(value.value)
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def home_relative(path: Path) -> str:
    """``path`` with the home folder written ``~``."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def short_path(path: str | Path, width: int = PATH_WIDTH) -> str:
    """``path`` relative to the current folder when inside it, shortened in the middle to
    ``width`` characters: ``data/…/scene_12_mask.tif``."""
    text = str(path)
    if "://" not in text:
        absolute = Path(text).expanduser().absolute()
        inside = absolute.is_relative_to(Path.cwd())
        text = os.path.relpath(absolute) if inside else str(absolute)
    if len(text) <= width:
        return text
    parts = text.split("/")
    head, tail = parts[0] or "/", parts[-1]
    kept: list[str] = []
    for part in reversed(parts[1:-1]):  # as many parents as fit, nearest first
        if len(head) + len("/…/") + len("/".join([part, *kept, tail])) > width:
            break
        kept.insert(0, part)
    shortened = "/".join([head.rstrip("/"), "…", *kept, tail])
    return shortened if len(shortened) <= width else shorten(text, width)


def manifest_table(manifest: DatasetManifest, *, max_rows: int = 30) -> Table:
    """One row per valid case: kind, channels, size, spacing/resolution, CRS, label values."""
    table = Table(
        title=f"{manifest.name}: {len(manifest.cases)} valid, {len(manifest.rejected)} rejected"
    )
    table.add_column("case", no_wrap=True, max_width=24)
    for column in ("kind", "channels", "size", "spacing / res.", "orient. / CRS", "label values"):
        table.add_column(column)
    for case in manifest.cases[:max_rows]:
        size, spacing, frame = adapter_for_geometry(case.geometry).geometry_cells(case.geometry)
        values = case.label_stats.values if case.label_stats else ()
        shown = ", ".join(map(str, values[:8])) + (" …" if len(values) > 8 else "")
        table.add_row(
            shorten(case.case_id, 24),
            case.kind,
            str(sum(case.channel_counts)),
            size,
            spacing,
            frame,
            shown if case.label else "[dim]unlabelled[/dim]",
        )
    if len(manifest.cases) > max_rows:
        table.caption = f"… and {len(manifest.cases) - max_rows} more cases"
    return table


def rejected_table(manifest: DatasetManifest) -> Table:
    """One row per rejected input: the file (shortened), the error class and the reason."""
    table = Table(title="Rejected inputs", title_style="bold red")
    table.add_column("file", no_wrap=True)
    table.add_column("error", style="red")
    table.add_column("reason", overflow="fold")
    for item in manifest.rejected:
        reason = item.reason.removeprefix(f"{item.path}: ") if item.path else item.reason
        table.add_row(short_path(item.path, 28) if item.path else "", item.error, reason)
    return table


def shorten(text: str, width: int) -> str:
    """``text`` shortened in the middle to ``width`` characters."""
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return f"{text[: width - 1 - half]}…{text[-half:]}"
