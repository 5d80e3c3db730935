"""What the QA report derives from each mask, kept between runs of a batch.

The report re-reads every mask of a batch (areas or volumes, the footprint) and a few with their
images (the thumbnails). A scheduled rerun over a finished archive skips every file, yet its
report would read them all again. :class:`MaskFactsCache` keeps each derived fact in
``OUT/.segflow/report-cache/``, under a key made of the files' paths, sizes and modification
times (and what was asked: instance or class sizes, the thumbnail's side): a mask written again,
or its image replaced, gets a new key, so a stale fact is never shown. Facts of files that left
the batch are removed when the report is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data_contracts import OutputError
from pipelines.files import atomic_output
from pipelines.services.ledger import STATE_DIR

__all__ = ["MaskFactsCache"]

logger = logging.getLogger(__name__)

_FOLDER = "report-cache"


class MaskFactsCache:
    """Facts derived from files, on disk beside the batch's ledger.

    Args:
        out_dir: the batch's output folder.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.folder = Path(out_dir) / STATE_DIR / _FOLDER
        self._used: set[str] = set()

    def json_fact(self, kind: str, files: Sequence[Path], compute: Callable[[], Any]) -> Any:
        """``compute()`` (a JSON value) for these files, from the cache when they are unchanged."""
        data = self.bytes_fact(f"{kind}.json", files, lambda: json.dumps(compute()).encode())
        return json.loads(data)

    def bytes_fact(self, kind: str, files: Sequence[Path], compute: Callable[[], bytes]) -> bytes:
        """``compute()`` for these files, from the cache when they are unchanged.

        Raises:
            OSError: a file cannot be read (as ``compute`` would say).
        """
        name = f"{_key(files)}.{kind}"
        self._used.add(name)
        cached = self.folder / name
        try:
            return cached.read_bytes()
        except OSError:
            pass
        data = compute()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_output(cached) as partial:
                partial.write_bytes(data)
        except (OSError, OutputError) as error:  # read-only output: the report still gets it
            logger.debug("report cache not written (%s)", error)
        return data

    def prune(self) -> None:
        """Remove the facts this report did not use (files no longer in the batch)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name not in self._used and path.is_file():
                path.unlink(missing_ok=True)


def _key(files: Sequence[Path]) -> str:
    parts = []
    for path in files:
        status = path.stat()
        parts.append(f"{path.resolve()}:{status.st_size}:{status.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
