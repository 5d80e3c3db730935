"""Prefect tasks that move ``s3://`` inputs and outputs through local staging folders.

Both retry on transient failures (a dropped connection, a throttled request, a busy disk) and
fail at once on definitive ones (:class:`data_contracts.ObjectStoreError`: no such bucket,
access denied). The work is in :mod:`pipelines.services.object_store`; ``task.fn`` runs it without Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from data_contracts import SegflowError
from flows.tasks import IO_RETRIES, IO_RETRY_DELAYS
from pipelines.services.object_store import is_s3_uri, local_source, upload_outputs

__all__ = ["stage_source", "upload_staged_outputs"]


def transient_storage_error(_task: Any, _run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: network and throttling errors (botocore's or the OS's), never segflow's."""
    from botocore.exceptions import BotoCoreError, ClientError

    error = state.data if isinstance(state.data, BaseException) else None
    if isinstance(error, SegflowError):
        return False
    return isinstance(error, OSError | BotoCoreError | ClientError)


@task(
    name="stage-source",
    cache_policy=NO_CACHE,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=transient_storage_error,
)
def stage_source(source: str) -> str:
    """The local path to read ``source`` from: itself, or a staged copy of an ``s3://`` URI."""
    return str(local_source(source))


@task(
    name="upload-outputs",
    cache_policy=NO_CACHE,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=transient_storage_error,
)
def upload_staged_outputs(local_dir: str, out: str) -> list[str]:
    """Upload the finished outputs of ``local_dir`` to ``out`` (an ``s3://`` URI); the keys."""
    return upload_outputs(Path(local_dir), out) if is_s3_uri(out) else []
