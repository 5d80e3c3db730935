"""A batch run to kill: ``python batch_child.py SOURCE OUT MANIFEST [--pause SECONDS]``.

Builds the oracle model of ``MANIFEST`` (deterministic: same manifest, same weights), prints
``ready`` once imports and model are done, then runs :func:`pipelines.services.batch.run_batch`,
printing ``result <case id> <status>`` as each case ends and ``finished <counts>`` at the end. ``--pause`` holds every atomic write for that long after the
temporary file is complete and before it is renamed, so a kill often lands while ``.part``
files exist, as it would with large outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pipelines.files
import pipelines.write.image2d
from pipelines.ingest import read_manifest
from pipelines.services.batch import BatchItemResult, BatchProgress, run_batch
from pipelines.synthetic.models import oracle_model


def _slow_atomic_output(pause: float) -> Any:
    original = pipelines.files.atomic_output

    @contextlib.contextmanager
    def slow(destination: str | Path, **kwargs: Any) -> Iterator[Path]:
        with original(destination, **kwargs) as temp:
            yield temp
            time.sleep(pause)

    return slow


class _PrintResults(BatchProgress):
    """Prints ``result <case> <status>`` for every case that ran (the parent test reads it)."""

    def case_done(self, result: BatchItemResult, done: int, total: int) -> None:
        print("result", result.case_id, result.status, flush=True)


def main() -> int:
    """Run the batch; exit 0 when every case is done or skipped."""
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args()
    if args.pause > 0:
        slow = _slow_atomic_output(args.pause)
        pipelines.files.atomic_output = slow  # write_text_atomic looks it up here
        pipelines.write.image2d.atomic_output = slow  # imported by name
    model = oracle_model(read_manifest(args.manifest))
    print("ready", flush=True)
    report = run_batch(
        args.source,
        model,
        args.out,
        progress=_PrintResults(),
    )
    print("finished", report.counts, flush=True)
    return 0 if report.exit_status == "ok" else 3


if __name__ == "__main__":
    sys.exit(main())
