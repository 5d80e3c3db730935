"""What the resume ledger records: case keys, decisions, rows, and how a row is stored in SQLite.

A :class:`LedgerEntry` is one case's row: its status, the :class:`CaseKey` its outputs depend on
(input files, model, settings) and the :class:`OutputRecord` of each output file. The ledger
(:class:`pipelines.services.ledger.Ledger`) reads and writes these through
:func:`entry_to_row` and :func:`entry_from_row`, which store output paths relative to the
output folder so that the folder can be moved.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from data_contracts import FileQuality
from pipelines.files import sha256_file

if TYPE_CHECKING:
    from pipelines.infer.inputs import InferenceInput

__all__ = [
    "CaseKey",
    "Decision",
    "LedgerEntry",
    "OutputRecord",
    "Reason",
    "Status",
    "describe_error",
    "entry_from_row",
    "entry_to_row",
    "inputs_sha256",
    "now_iso",
    "stored_outputs",
]

_STAT_FIELDS = ("input_paths", "input_sizes", "input_mtimes_ns")

Status = Literal["done", "failed", "running", "crashed"]
Reason = Literal[
    "crashed before",
    "quarantined",
    "new",
    "input changed",
    "model changed",
    "config changed",
    "failed before",
    "output missing or altered",
    "interrupted",
    "done",
]


def describe_error(error: BaseException | str) -> str:
    """``"ClassName: message"`` as the ledger stores it."""
    return error if isinstance(error, str) else f"{type(error).__name__}: {error}"


def now_iso() -> str:
    """The current UTC time, ISO 8601 with microseconds (the ledger's timestamps)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def inputs_sha256(paths: tuple[str, ...]) -> str:
    """SHA-256 of a case's files: the file's own for one channel, else over the channels'.

    Raises:
        MissingFileError: a file does not exist.
    """
    digests = [sha256_file(path) for path in paths]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class CaseKey:
    """What a case's outputs depend on: its input files, the model and the settings.

    Attributes:
        model: :func:`pipelines.services.ledger.model_identity` of the model.
        config: :func:`pipelines.services.ledger.config_hash` of the settings.
        input_paths: absolute paths of the channels, in order.
        input_sizes: their sizes in bytes (-1 for a file that could not be read).
        input_mtimes_ns: their modification times in ns (-1 likewise).
        input_sha256: :func:`inputs_sha256`, once known.
    """

    model: str
    config: str
    input_paths: tuple[str, ...]
    input_sizes: tuple[int, ...]
    input_mtimes_ns: tuple[int, ...]
    input_sha256: str | None = None

    @classmethod
    def of(cls, case: InferenceInput, model: str, config: str) -> CaseKey:
        """The key of ``case`` from its files' stat (nothing is read)."""
        paths, sizes, mtimes = [], [], []
        for channel in case.channels:
            paths.append(str(Path(channel).absolute()))
            try:
                stat = os.stat(channel)
                sizes.append(stat.st_size)
                mtimes.append(stat.st_mtime_ns)
            except OSError:
                sizes.append(-1)
                mtimes.append(-1)
        return cls(model, config, tuple(paths), tuple(sizes), tuple(mtimes))

    def hashed(self) -> CaseKey:
        """This key with :attr:`input_sha256` computed (the same key when already known).

        Raises:
            MissingFileError: an input file has gone.
        """
        if self.input_sha256 is not None:
            return self
        return dataclasses.replace(self, input_sha256=inputs_sha256(self.input_paths))

    def same_stat(self, other: CaseKey) -> bool:
        """Same paths, sizes and mtimes (and no unreadable file)."""
        return -1 not in self.input_sizes and (
            self.input_paths,
            self.input_sizes,
            self.input_mtimes_ns,
        ) == (other.input_paths, other.input_sizes, other.input_mtimes_ns)


@dataclass(frozen=True)
class Decision:
    """Whether a case runs, and why.

    Attributes:
        action: ``run``, ``skip`` or ``quarantine`` (crashed too often; reported, not run).
        reason: ``new``, ``input changed``, ``model changed``, ``config changed``,
            ``failed before``, ``crashed before``, ``output missing or altered`` or
            ``interrupted`` for a run; ``done`` for a skip; ``quarantined``.
        key: the case's key (with its input hash when the decision had to compute it).
    """

    action: Literal["run", "skip", "quarantine"]
    reason: Reason
    key: CaseKey


@dataclass(frozen=True)
class OutputRecord:
    """One output file as recorded: absolute path, SHA-256 and size in bytes."""

    path: Path
    sha256: str
    bytes: int


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the ledger (timestamps are UTC ISO 8601 with microseconds)."""

    case_id: str
    status: Status
    key: CaseKey
    outputs: dict[str, OutputRecord] = field(default_factory=dict)
    error: str | None = None
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    crashes: int = 0
    quality: FileQuality | None = None


def stored_outputs(outputs: Mapping[str, OutputRecord], out_dir: Path) -> dict[str, dict[str, Any]]:
    """Output records as stored: paths relative to ``out_dir`` when inside it."""
    stored = {}
    for role, record in outputs.items():
        path = record.path
        relative = path.relative_to(out_dir) if path.is_relative_to(out_dir) else path
        stored[role] = {"path": str(relative), "sha256": record.sha256, "bytes": record.bytes}
    return stored


def entry_to_row(entry: LedgerEntry, out_dir: Path) -> dict[str, Any]:
    """The parameters of :data:`pipelines.services.ledger_schema.UPSERT` for ``entry``."""
    return {
        "case_id": entry.case_id,
        **{name: getattr(entry.key, name) for name in ("input_sha256", "model", "config")},
        **{name: json.dumps(list(getattr(entry.key, name))) for name in _STAT_FIELDS},
        "status": entry.status,
        "outputs": json.dumps(stored_outputs(entry.outputs, out_dir), sort_keys=True),
        "error": entry.error,
        "started": entry.started,
        "finished": entry.finished,
        "seconds": entry.seconds,
        "quality": entry.quality.model_dump_json() if entry.quality is not None else None,
    }


def entry_from_row(row: sqlite3.Row, out_dir: Path) -> LedgerEntry:
    """The entry stored in ``row``, its output paths made absolute against ``out_dir``."""
    outputs = {
        role: OutputRecord(out_dir / item["path"], item["sha256"], item["bytes"])
        for role, item in json.loads(row["outputs"]).items()
    }
    return LedgerEntry(
        case_id=row["case_id"],
        status=row["status"],
        key=CaseKey(
            model=row["model"],
            config=row["config"],
            input_paths=tuple(json.loads(row["input_paths"])),
            input_sizes=tuple(json.loads(row["input_sizes"])),
            input_mtimes_ns=tuple(json.loads(row["input_mtimes_ns"])),
            input_sha256=row["input_sha256"],
        ),
        outputs=outputs,
        error=row["error"],
        started=row["started"],
        finished=row["finished"],
        seconds=row["seconds"],
        crashes=row["crashes"],
        quality=FileQuality.model_validate_json(row["quality"]) if row["quality"] else None,
    )
