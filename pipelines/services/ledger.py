"""The resume ledger of an output folder, and the lock that lets one run write it at a time.

A batch run records every case in ``<out>/.segflow/ledger.sqlite``: SQLite in WAL mode, one row
per case id, every change a single statement (atomic), so a ``kill -9`` at any moment leaves
either the old row or the new one. The next run into the same folder asks
:meth:`Ledger.decide` whether a case must run again; it is skipped only when its inputs, the
model and the settings that shape outputs are unchanged and its outputs are still there.
Inputs are recognised by path, size and mtime without reading them; when those differ the input
is re-hashed, so a touched or moved file with the same bytes is still recognised.
``verify=True`` re-hashes inputs and outputs whatever their stat says.

:class:`pipelines.services.output_lock.OutputLock` keeps a second run out of a folder being written.
This module imports neither torch nor Prefect.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from data_contracts import OutputError, SegflowError
from pipelines.files import sha256_file, write_text_atomic
from pipelines.services.ledger_schema import SCHEMA_VERSION, UPSERT, prepare_connection

if TYPE_CHECKING:
    from pipelines.infer.inputs import InferenceInput
    from pipelines.infer.loaded_model import LoadedModel
    from pipelines.infer.run import SegmentOptions

__all__ = [
    "LEDGER_JSON",
    "QUARANTINE_AFTER_CRASHES",
    "STATE_DIR",
    "CaseKey",
    "Decision",
    "Ledger",
    "LedgerEntry",
    "OutputRecord",
    "config_hash",
    "describe_error",
    "inputs_sha256",
    "model_identity",
    "now_iso",
]

logger = logging.getLogger(__name__)

#: Folder inside the output folder that holds the ledger and the lock.
STATE_DIR = ".segflow"
#: The ledger's JSON export (the MLflow artifact), inside :data:`STATE_DIR`.
LEDGER_JSON = "ledger.json"
_LEDGER_DB = "ledger.sqlite"
# Options that change what is written; batch size and device only change how fast.
_OUTPUT_OPTIONS = ("polygons", "probabilities", "tta", "overlap")
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


def config_hash(options: SegmentOptions, model: LoadedModel) -> str:
    """16 hex characters of SHA-256 over the settings that change a case's outputs.

    The output options (polygons, probabilities, TTA, overlap — as given, so an explicit
    default differs from an unset one) and the model's plan, spec, class names and processing
    JSON; batch size and device are left out.
    """
    settings = {
        "options": {name: getattr(options, name) for name in _OUTPUT_OPTIONS},
        "plan": model.plan.model_dump(mode="json"),
        "spec": model.spec.model_dump(mode="json"),
        "classes": list(model.class_names),
        "processing": model.processing,
    }
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def model_identity(model: LoadedModel) -> str:
    """``"name/version"`` for a registered model, else the URI or folder it was loaded from."""
    if model.name and model.version:
        return f"{model.name}/{model.version}"
    return model.uri


def describe_error(error: BaseException | str) -> str:
    """``"ClassName: message"`` as the ledger stores it."""
    return error if isinstance(error, str) else f"{type(error).__name__}: {error}"


def now_iso() -> str:
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
        model: :func:`model_identity` of the model.
        config: :func:`config_hash` of the settings.
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


#: A case whose worker process died this many times in a row is quarantined: later runs
#: report it without trying it again, unless asked (``retry_crashed``).
QUARANTINE_AFTER_CRASHES = 2


class Ledger:
    """The record of every case written to one output folder; safe to share between threads.

    Open it with :meth:`open` (or as a context manager on the result); write to it only while
    holding the folder's :class:`OutputLock`.
    """

    def __init__(self, out_dir: Path, connection: sqlite3.Connection) -> None:
        """Use :meth:`open`."""
        self.out_dir = out_dir
        self._connection = connection
        self._lock = threading.Lock()  # one connection, used by one thread at a time

    @classmethod
    def open(cls, out_dir: str | Path) -> Ledger:
        """Open (creating if needed) the ledger of ``out_dir``.

        Raises:
            OutputError: the folder cannot be written, or the ledger file is damaged or from
                another schema version.
        """
        out = Path(out_dir).absolute()
        path = out / STATE_DIR / _LEDGER_DB
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot be created ({error.strerror})", path=path.parent) from error
        try:
            connection = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise OutputError(f"cannot be opened ({error})", path=path) from error
        try:
            prepare_connection(connection, path)
        except BaseException:
            connection.close()
            raise
        return cls(out, connection)

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self.out_dir / STATE_DIR / _LEDGER_DB

    def close(self) -> None:
        """Close the connection (the ledger stays on disk)."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _execute(self, sql: str, parameters: Mapping[str, Any] | tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._connection.execute(sql, parameters).fetchall()
            except sqlite3.Error as error:
                raise OutputError(f"cannot be updated ({error})", path=self.path) from error

    def get(self, case_id: str) -> LedgerEntry | None:
        """The row of ``case_id``, or ``None``."""
        rows = self._execute("SELECT * FROM cases WHERE case_id = ?", (case_id,))
        return self._entry(rows[0]) if rows else None

    def entries(self) -> list[LedgerEntry]:
        """Every row, by case id."""
        return [self._entry(row) for row in self._execute("SELECT * FROM cases ORDER BY case_id")]

    def summary(self) -> dict[str, int]:
        """Number of rows by status (every status present, zero when none)."""
        counts = {"done": 0, "failed": 0, "running": 0, "crashed": 0}
        for status, count in self._execute("SELECT status, COUNT(*) FROM cases GROUP BY status"):
            counts[status] = count
        return counts

    def decide(
        self,
        case: InferenceInput,
        model_id: str,
        config: str,
        *,
        verify: bool = False,
        retry_crashed: bool = False,
    ) -> Decision:
        """Whether ``case`` must run with this model and settings.

        Args:
            case: the case.
            model_id: :func:`model_identity` of the model.
            config: :func:`config_hash` of the settings.
            verify: re-hash the inputs and the recorded outputs instead of trusting their stat.
            retry_crashed: run a quarantined case again (one whose worker process died
                :data:`QUARANTINE_AFTER_CRASHES` times on these inputs, model and settings).

        Returns:
            ``run`` with the reason, ``skip`` (reason ``done``) or ``quarantine`` (reason
            ``quarantined``).
        """
        key = CaseKey.of(case, model_id, config)
        entry = self.get(case.case_id)
        if entry is None:
            return Decision("run", "new", key)
        key, same_input = _match_inputs(key, entry.key, verify=verify)
        if not same_input:
            return Decision("run", "input changed", key)
        reason: Reason | None = None
        if entry.key.model != model_id:
            reason = "model changed"
        elif entry.key.config != config:
            reason = "config changed"
        elif entry.status == "crashed":
            if entry.crashes >= QUARANTINE_AFTER_CRASHES and not retry_crashed:
                return Decision("quarantine", "quarantined", key)
            reason = "crashed before"
        elif entry.status == "running":
            reason = "interrupted"
        elif entry.status == "failed":
            reason = "failed before"
        elif not _outputs_intact(entry.outputs, verify=verify):
            reason = "output missing or altered"
        if reason is not None:
            return Decision("run", reason, key)
        if not key.same_stat(entry.key):  # same bytes, new stat: recognise it cheaply next time
            self._write(dataclasses.replace(entry, key=key))
        return Decision("skip", "done", key)

    def record_running(self, case: InferenceInput, key: CaseKey) -> None:
        """Mark ``case`` as being segmented (a row left ``running`` means it was interrupted)."""
        self._write(LedgerEntry(case.case_id, "running", key, started=now_iso()))

    def record_done(
        self, case: InferenceInput, key: CaseKey, outputs: Mapping[str, Path], seconds: float
    ) -> None:
        """Record ``case`` as done with its outputs (role → file), which are hashed here.

        Raises:
            OutputError: an output file is missing.
        """
        records = {}
        for role, output in outputs.items():
            path = Path(output).absolute()
            try:
                size = path.stat().st_size
            except OSError as error:
                raise OutputError("was reported written but cannot be read", path=path) from error
            records[role] = OutputRecord(path, sha256_file(path), size)
        self._write(
            LedgerEntry(case.case_id, "done", key, records, finished=now_iso(), seconds=seconds)
        )

    def record_failed(
        self,
        case: InferenceInput,
        key: CaseKey,
        error: BaseException | str,
        *,
        seconds: float | None = None,
    ) -> None:
        """Record ``case`` as failed with the error's class and message."""
        error_text, finished = describe_error(error), now_iso()
        self._write(
            LedgerEntry(
                case.case_id, "failed", key, error=error_text, finished=finished, seconds=seconds
            )
        )

    def record_crashed(
        self, case: InferenceInput, key: CaseKey, cause: str, *, seconds: float | None = None
    ) -> int:
        """Record that the worker process segmenting ``case`` died (``cause``: the signal or
        exit status); returns how many times in a row it has now crashed."""
        self._write(
            LedgerEntry(
                case.case_id, "crashed", key, error=cause, finished=now_iso(), seconds=seconds
            )
        )
        entry = self.get(case.case_id)
        return entry.crashes if entry is not None else 1

    def _write(self, entry: LedgerEntry) -> None:
        row = {
            "case_id": entry.case_id,
            **{name: getattr(entry.key, name) for name in ("input_sha256", "model", "config")},
            **{name: json.dumps(list(getattr(entry.key, name))) for name in _STAT_FIELDS},
            "status": entry.status,
            "outputs": json.dumps(self._stored_outputs(entry.outputs), sort_keys=True),
            "error": entry.error,
            "started": entry.started,
            "finished": entry.finished,
            "seconds": entry.seconds,
        }
        self._execute(UPSERT, row)

    def _stored_outputs(self, outputs: Mapping[str, OutputRecord]) -> dict[str, dict[str, Any]]:
        """Paths relative to the output folder when inside it, so the folder can be moved."""
        stored = {}
        for role, record in outputs.items():
            path = record.path
            relative = path.relative_to(self.out_dir) if path.is_relative_to(self.out_dir) else path
            stored[role] = {"path": str(relative), "sha256": record.sha256, "bytes": record.bytes}
        return stored

    def _entry(self, row: sqlite3.Row) -> LedgerEntry:
        outputs = {
            role: OutputRecord(self.out_dir / item["path"], item["sha256"], item["bytes"])
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
        )

    def export_json(self, path: str | Path | None = None) -> Path:
        """Write every row as JSON, atomically (default ``<out>/.segflow/ledger.json``).

        Output paths are written relative to the output folder.
        """
        destination = Path(path) if path is not None else self.out_dir / STATE_DIR / LEDGER_JSON
        cases = []
        for entry in self.entries():
            row = dataclasses.asdict(entry)
            row["key"] = dataclasses.asdict(entry.key)
            row["outputs"] = self._stored_outputs(entry.outputs)
            cases.append(row)
        payload = {"schema": SCHEMA_VERSION, "summary": self.summary(), "cases": cases}
        return write_text_atomic(destination, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _match_inputs(key: CaseKey, stored: CaseKey, *, verify: bool) -> tuple[CaseKey, bool]:
    """``key`` (hashed when that was needed) and whether its files hold the stored bytes."""
    if not verify and key.same_stat(stored):
        return dataclasses.replace(key, input_sha256=stored.input_sha256), True
    if stored.input_sha256 is None or -1 in key.input_sizes:
        return key, False
    try:
        key = key.hashed()
    except (SegflowError, OSError):
        return key, False
    return key, key.input_sha256 == stored.input_sha256


def _outputs_intact(outputs: Mapping[str, OutputRecord], *, verify: bool) -> bool:
    for record in outputs.values():
        try:
            if record.path.stat().st_size != record.bytes:
                return False
            if verify and sha256_file(record.path) != record.sha256:
                return False
        except (SegflowError, OSError):
            return False
    return True
