"""The lock that lets one segflow run write an output folder at a time, and the clean-up of the
temporary files a killed run leaves behind.

:class:`OutputLock` takes ``flock`` on ``<out>/.segflow/lock`` (released by the kernel when the
holder dies, so a killed run never blocks the next one); :func:`clean_partials` removes the
temporary files of segflow's atomic writers.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from data_contracts import OutputError
from pipelines.services.ledger import STATE_DIR
from pipelines.services.ledger_records import now_iso

__all__ = ["OutputLock", "clean_partials"]

logger = logging.getLogger(__name__)

_LOCK_FILE = "lock"
# segflow's temp files: atomic_output's ".<name>.<random>.part<suffix>", the GeoTIFF writer's
# ".<name>.<random>.work.tif".
_PARTIAL = re.compile(r"^\..+\.part(\..*)?$|^\..+\.work\.tif$")


class OutputLock:
    """Exclusive lock on an output folder (``<out>/.segflow/lock``) for the length of a run.

    ``flock`` is taken without waiting; the file records the holder's pid, host and start time
    for the message a second run gets. The kernel releases the lock when the holder exits or
    is killed, so a dead run never blocks the next one.
    """

    def __init__(self, out_dir: str | Path) -> None:
        """Prepare the lock of ``out_dir`` (nothing is taken until :meth:`acquire`)."""
        self.out_dir = Path(out_dir).absolute()
        self.path = self.out_dir / STATE_DIR / _LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock.

        Raises:
            OutputError: another run holds it (the message names its pid, host and start), or
                the folder cannot be written.
        """
        if self._fd is not None:
            raise OutputError("is already locked by this OutputLock", path=self.out_dir)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(f"cannot be locked ({error.strerror})", path=self.out_dir) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.pread(fd, 4096, 0))
            os.close(fd)
            raise OutputError(
                f"is being written by another segflow run ({holder})",
                path=self.out_dir,
                hint="wait for it to finish, or use another --out",
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock back (the file stays: removing it would race with a waiting run)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _describe_holder(raw: bytes) -> str:
    try:
        holder = json.loads(raw.decode("utf-8"))
        return f"pid {holder['pid']}, host {holder['host']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "pid unknown: it is just starting"


def _partials(folder: Path) -> Iterator[Path]:
    if folder.is_dir():
        for path in folder.iterdir():
            if _PARTIAL.match(path.name) and path.is_file() and not path.is_symlink():
                yield path


def clean_partials(out_dir: str | Path) -> list[Path]:
    """Remove the temporary files a killed run left in ``out_dir`` and its ``.segflow`` folder.

    Only names that segflow's atomic writers use are touched (``.<name>.<random>.part<suffix>``
    and the GeoTIFF writer's ``.<name>.<random>.work.tif``). Call it only while holding the
    folder's :class:`OutputLock`: a running writer's temporary files match too.

    Returns:
        The files removed.
    """
    out = Path(out_dir)
    removed = []
    for path in [*_partials(out), *_partials(out / STATE_DIR)]:
        path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        logger.info(
            "removed %d temporary file(s) left by an interrupted run in %s", len(removed), out
        )
    return sorted(removed)
