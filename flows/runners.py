"""Task runners for segflow's flows: a thread pool, or Dask (local cluster or existing one).

``segflow segment --task-runner threads|dask --dask-address tcp://…`` maps onto
:func:`task_runner`; a flow takes the result through ``flow.with_options(task_runner=…)``.

Choosing:

- ``threads`` (default): one process, ``max_workers`` threads. Inference and I/O release the
  GIL (torch, GDAL, zlib), so threads scale to a few cores with no start-up cost.
- ``dask`` without an address: a local cluster of ``max_workers`` workers of one thread each.
  Worker *processes* are used only when ``PREFECT_API_URL`` names a real server in the
  environment: without one, every worker process would start its own temporary Prefect API
  (slow, ~15 s each), so the local cluster then runs its workers as threads.
- ``dask`` with ``dask_address``: connect to an existing cluster (``dask scheduler`` +
  ``dask worker`` on other machines); the workers need segflow installed and the same paths.

Dask's spill and scratch files go to ``DASK_TEMPORARY_DIRECTORY`` when set, else
``$SEGFLOW_HOME/dask``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from data_contracts import UsageError, get_settings

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

RunnerKind = Literal["threads", "dask"]
RUNNER_KINDS: tuple[str, ...] = ("threads", "dask")


def dask_local_directory() -> Path:
    """Scratch folder of local Dask workers: ``DASK_TEMPORARY_DIRECTORY`` or ``<home>/dask``."""
    configured = os.environ.get("DASK_TEMPORARY_DIRECTORY")
    folder = Path(configured) if configured else get_settings().home_dir / "dask"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def local_cluster_kwargs(max_workers: int, processes: bool | None = None) -> dict[str, Any]:
    """Keyword arguments of the ``distributed.LocalCluster`` that :func:`task_runner` starts.

    Args:
        max_workers: number of workers (one thread each).
        processes: worker processes (True) or threads (False); ``None`` chooses processes only
            when ``PREFECT_API_URL`` is set in the environment (see the module docstring).
    """
    if processes is None:
        processes = bool(os.environ.get("PREFECT_API_URL"))
    return {
        "n_workers": max_workers,
        "threads_per_worker": 1,
        "processes": processes,
        "dashboard_address": None,
        "local_directory": str(dask_local_directory()),
    }


def task_runner(
    kind: str = "threads",
    *,
    max_workers: int | None = None,
    dask_address: str | None = None,
    processes: bool | None = None,
) -> TaskRunner[Any]:
    """The Prefect task runner for ``--task-runner KIND``.

    Args:
        kind: ``"threads"`` or ``"dask"``.
        max_workers: threads, or local Dask workers; default the number of CPU cores.
        dask_address: scheduler address of an existing Dask cluster (``tcp://host:8786``);
            only with ``kind="dask"``.
        processes: local Dask workers as processes or threads (``None``: automatic).

    Returns:
        A ``ThreadPoolTaskRunner`` or a ``prefect_dask.DaskTaskRunner``.

    Raises:
        UsageError: unknown kind, ``max_workers`` below 1, an address without ``dask``, or
            ``prefect-dask`` is not installed.
    """
    if kind not in RUNNER_KINDS:
        raise UsageError(
            f"--task-runner must be threads or dask, not {kind!r}",
            hint="write --task-runner threads (default) or --task-runner dask",
        )
    if max_workers is not None and max_workers < 1:
        raise UsageError(f"--max-workers must be at least 1, not {max_workers}")
    workers = max_workers or os.cpu_count() or 1
    if kind == "threads":
        if dask_address:
            raise UsageError(
                "--dask-address needs --task-runner dask", hint="add --task-runner dask"
            )
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    return _dask_runner(workers, dask_address, processes)


def _dask_runner(workers: int, address: str | None, processes: bool | None) -> TaskRunner[Any]:
    try:
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError as error:
        raise UsageError(
            f"the Dask task runner needs prefect-dask and distributed ({error})",
            hint="pip install 'segflow[dask]', or use --task-runner threads",
        ) from error
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs=local_cluster_kwargs(workers, processes))
