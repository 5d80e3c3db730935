"""``segflow serve``: serve segflow's flows as Prefect deployments, on schedules from YAML.

The config (``--config schedules.yaml``, see ``flows/schedules.example.yaml``) is a list of
schedules, either at the top level or under ``schedules:``::

    - name: nightly-archive          # deployment name (unique per flow)
      flow: segment_archive          # segment_archive | train | ingest | evaluate
      cron: "0 2 * * *"              # or interval: 3600 (seconds) / "PT6H"; neither = on demand
      timezone: Europe/Paris         # optional (IANA), default UTC
      parameters: {source: /data/archive, model: "models:/brats@champion", out: /data/masks}

It is validated before anything starts (:func:`load_serve_config`): a bad field or parameter
raises :class:`ConfigError` naming the file and the field (``schedules[1].cron``). Without a
config every flow is served without a schedule, to be run from the UI or with
``prefect deployment run``.

Schedules fire only on a real Prefect server. With ``PREFECT_API_URL`` set, serve uses it;
otherwise it starts ``prefect server start`` on 127.0.0.1 (own process group, log under
``$SEGFLOW_HOME/logs``, database in ``PREFECT_HOME``), says where the UI is, and stops it on
exit. Stopping serve pauses its schedules unless ``--no-pause-on-shutdown`` (containers).
For work pools instead of a serve process, see ``prefect.yaml`` at the repository root.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.table import Table

from data_contracts import ConfigError, get_settings
from flows.console import console
from flows.server_process import ServerProcess, free_port, prefect_server

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

FlowName = Literal["segment_archive", "train", "ingest", "evaluate"]
FLOW_NAMES: tuple[str, ...] = ("segment_archive", "train", "ingest", "evaluate")
DEFAULT_UI_PORT = 4200


class ScheduleSpec(BaseModel):
    """One deployment to serve, and when it runs.

    Attributes:
        name: deployment name, unique per flow (letters, digits, ``-``, ``_``, ``.``).
        flow: which segflow flow it runs.
        cron: cron expression (``"0 2 * * *"``), or…
        interval: …a period (seconds, or ISO 8601 such as ``"PT6H"``); with neither the
            deployment runs only when triggered.
        timezone: IANA time zone of the cron expression (default UTC).
        parameters: the flow's parameters (checked against its signature).
        description: shown in the UI.
        tags: deployment tags.
        paused: create the schedule paused.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    flow: FlowName
    cron: str | None = None
    interval: timedelta | None = None
    timezone: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    paused: bool = False

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=value)
        except ValidationError as error:
            raise ValueError(error.errors()[0]["msg"].removeprefix("Value error, ")) from None
        return value

    @field_validator("interval")
    @classmethod
    def _positive_interval(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value.total_seconds() <= 0:
            raise ValueError(f"must be positive, not {value.total_seconds():g} s")
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (IANA, e.g. Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> ScheduleSpec:
        if self.cron is not None and self.interval is not None:
            raise ValueError("give cron or interval, not both")
        if self.timezone is not None and self.cron is None and self.interval is None:
            raise ValueError("timezone needs a cron or interval schedule")
        return self

    @property
    def schedule_text(self) -> str:
        """The schedule in words, for tables."""
        zone = f" ({self.timezone})" if self.timezone else ""
        if self.cron:
            return f"cron {self.cron}{zone}"
        if self.interval:
            return f"every {self.interval}{zone}"
        return "on demand"


class ServeConfig(BaseModel):
    """The deployments ``segflow serve`` serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schedules: list[ScheduleSpec]

    @model_validator(mode="after")
    def _unique_names(self) -> ServeConfig:
        seen: set[tuple[str, str]] = set()
        for spec in self.schedules:
            if (spec.flow, spec.name) in seen:
                raise ValueError(f"two schedules of flow {spec.flow!r} are named {spec.name!r}")
            seen.add((spec.flow, spec.name))
        return self


def _field_path(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "schedules"


def load_serve_config(path: Path) -> ServeConfig:
    """Read and validate a schedules YAML file.

    Raises:
        ConfigError: unreadable YAML, or an invalid field (named as ``schedules[i].field``).
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot be read as YAML ({error})", path=path) from error
    if isinstance(document, list):
        document = {"schedules": document}
    if not isinstance(document, dict) or "schedules" not in document:
        raise ConfigError(
            "must hold a list of schedules (at the top level or under `schedules:`)",
            path=path,
            hint="see flows/schedules.example.yaml",
        )
    try:
        return ServeConfig.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = _field_path(tuple(first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: {message}", path=path) from error


def default_config() -> ServeConfig:
    """Every available flow as a deployment ``<flow>/on-demand``, without a schedule."""
    names = [name for name in FLOW_NAMES if name != "segment_archive" or _has_segment_flow()]
    return ServeConfig.model_validate(
        {"schedules": [{"name": "on-demand", "flow": name} for name in names]}
    )


def _has_segment_flow() -> bool:
    try:
        importlib.import_module("flows.segment_flow")
    except ImportError:
        return False
    return True


def resolve_flow(name: str, config_path: Path | None = None) -> Flow[Any, Any]:
    """The Prefect flow behind a schedule's ``flow:`` name (``segment_archive`` lazily).

    Raises:
        ConfigError: the flow cannot be imported.
    """
    from prefect import Flow

    module_name, attribute = {
        "segment_archive": ("flows.segment_flow", "segment_archive_flow"),
        "train": ("flows.dataset_flows", "train_flow"),
        "ingest": ("flows.dataset_flows", "ingest_flow"),
        "evaluate": ("flows.dataset_flows", "evaluate_flow"),
    }[name]
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"flow {name!r} is not available: {module_name}.{attribute} cannot be imported "
            f"({error})",
            path=config_path,
            hint=f"install a segflow that provides {module_name}, or remove the {name} schedules",
        ) from error
    if not isinstance(found, Flow):
        raise ConfigError(f"{module_name}.{attribute} is not a Prefect flow", path=config_path)
    return found


def _check_parameters(
    flow: Flow[Any, Any], spec: ScheduleSpec, index: int, config_path: Path | None
) -> None:
    from prefect.exceptions import ParameterTypeError

    where = f"schedules[{index}].parameters ({spec.name})"
    unknown = sorted(set(spec.parameters) - set(flow.parameters.properties))
    if unknown:
        known = ", ".join(flow.parameters.properties)
        raise ConfigError(
            f"{where}: flow {spec.flow!r} has no parameter {', '.join(unknown)} (it has {known})",
            path=config_path,
        )
    scheduled = spec.cron is not None or spec.interval is not None
    try:
        if scheduled:  # a scheduled run gets no other parameters: they must all validate
            flow.validate_parameters(dict(spec.parameters))
    except ParameterTypeError as error:
        raise ConfigError(f"{where}: {error}", path=config_path) from error


def build_deployments(
    config: ServeConfig, config_path: Path | None = None
) -> list[RunnerDeployment]:
    """One Prefect deployment per schedule (flows imported, parameters checked).

    Raises:
        ConfigError: a flow is unavailable or a schedule's parameters do not fit its flow.
    """
    from prefect.schedules import Cron, Interval, Schedule
    from prefect.types.entrypoint import EntrypointType

    deployments = []
    for index, spec in enumerate(config.schedules):
        flow = resolve_flow(spec.flow, config_path)
        _check_parameters(flow, spec, index, config_path)
        schedules: list[Schedule] = []
        if spec.cron:
            schedules.append(Cron(spec.cron, timezone=spec.timezone))
        elif spec.interval:
            schedules.append(Interval(spec.interval, timezone=spec.timezone))
        deployment = flow.to_deployment(  # type: ignore[call-arg]
            name=spec.name,
            schedules=schedules or None,
            paused=spec.paused,
            parameters=dict(spec.parameters),
            description=spec.description,
            tags=["segflow", *spec.tags],
            entrypoint_type=EntrypointType.MODULE_PATH,
            _sync=True,
        )
        deployments.append(cast("RunnerDeployment", deployment))
    return deployments


def deployments_table(config: ServeConfig, deployments: list[RunnerDeployment]) -> Table:
    """One row per deployment: ``<Prefect flow name>/<name>``, schedule, parameters."""
    table = Table(title=f"Deployments ({len(config.schedules)})")
    for column in ("deployment", "schedule", "parameters"):
        table.add_column(column, overflow="fold")
    for spec, deployment in zip(config.schedules, deployments, strict=True):
        parameters = ", ".join(f"{key}={value}" for key, value in spec.parameters.items())
        paused = " [yellow](paused)[/yellow]" if spec.paused else ""
        name = f"{deployment.flow_name}/{deployment.name}"
        table.add_row(name, spec.schedule_text + paused, parameters or "-")
    return table


@contextmanager
def prefect_api(port: int | None = None) -> Iterator[str]:
    """The Prefect API to serve against: ``PREFECT_API_URL`` if set, else a local server.

    The local server listens on 127.0.0.1 (port 4200 when free), keeps its database in
    ``PREFECT_HOME`` and is stopped, with its whole process group, when the block exits.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if configured:
        yield str(configured)
        return
    chosen = port or free_port(DEFAULT_UI_PORT)
    home = get_settings().prefect_home_dir
    log = get_settings().home_dir / "logs" / "prefect-server.log"
    console.print(f"No PREFECT_API_URL: starting a local Prefect server on port {chosen}…")
    server: ServerProcess = prefect_server(chosen, home=home, log_path=log)
    with server:
        url = f"http://127.0.0.1:{chosen}/api"
        console.print(
            f"Prefect server started: UI [bold]http://127.0.0.1:{chosen}[/bold], API {url} "
            f"(database in {home}, log {log}); it stops when serve stops."
        )
        os.environ["PREFECT_API_URL"] = url
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML list of schedules (see flows/schedules.example.yaml). "
            "Default: every flow, on demand.",
        ),
    ] = None,
    pause_on_shutdown: Annotated[
        bool,
        typer.Option(
            "--pause-on-shutdown/--no-pause-on-shutdown",
            help="Pause the schedules when serve stops (--no-pause-on-shutdown in containers).",
        ),
    ] = True,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Flow runs at most at the same time.")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port of the local Prefect server when serve starts one (default 4200)."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Validate the config and exit without serving.")
    ] = False,
) -> None:
    """Serve segflow's flows as Prefect deployments, on the schedules of a YAML config.

    Schedules fire only on a real Prefect server: PREFECT_API_URL when set, else serve starts
    one on 127.0.0.1 and stops it on exit. Ctrl-C stops serving.

    Examples:

        segflow serve --config schedules.yaml

        PREFECT_API_URL=http://prefect:4200/api segflow serve -c schedules.yaml --no-pause-on-shutdown

        segflow serve --config schedules.yaml --check
    """
    import prefect

    spec = load_serve_config(config) if config else default_config()
    deployments = build_deployments(spec, config)
    console.print(deployments_table(spec, deployments))
    if check:
        console.print(f"{len(deployments)} deployments are valid; not serving (--check).")
        return
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (docker stop) while the local server starts: unwind, so that it is stopped.
        # Prefect's runner installs its own graceful SIGTERM handler once serving.
        signal.signal(signal.SIGTERM, _interrupt)
        # Ctrl-C (and Prefect's runner, which turns SIGTERM into SIGINT) stops serving
        # gracefully through Python's own KeyboardInterrupt, not segflow's batch stop.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with prefect_api(port) as url:
        console.print(f"Serving {len(deployments)} deployments against {url} (Ctrl-C stops).")
        try:
            prefect.serve(*deployments, pause_on_shutdown=pause_on_shutdown, limit=limit)
        except KeyboardInterrupt:  # a stop that came before Prefect's runner took the signals
            console.print("Stopped serving.")
