"""The resume ledger of an output folder: which cases are done, and which must run again.

A batch run records every case in ``<out>/.segflow/ledger.sqlite``: SQLite in WAL mode, one row
per case id, every change a single statement (atomic), so a ``kill -9`` at any moment leaves
either the old row or the new one. The next run into the same folder asks
:meth:`Ledger.decide` whether a case must run again; it is skipped only when its inputs, the
model and the settings that shape outputs are unchanged and its outputs are still there.
Inputs are recognised by path, size and mtime without reading them; when those differ the input
is re-hashed, so a touched or moved file with the same bytes is still recognised.
``verify=True`` re-hashes inputs and outputs whatever their stat says.

The rows themselves (keys, decisions, entries) are in :mod:`pipelines.services.ledger_records`;
the lock that keeps a second run out of a folder being written is
:class:`pipelines.services.output_lock.OutputLock`. This module imports neither torch nor
Prefect.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from data_contracts import OutputError, SegflowError
from pipelines.files import sha256_file, write_text_atomic
from pipelines.services.ledger_records import (
    CaseKey,
    Decision,
    LedgerEntry,
    OutputRecord,
    Reason,
    describe_error,
    entry_from_row,
    entry_to_row,
    now_iso,
    stored_outputs,
)
from pipelines.services.ledger_schema import SCHEMA_VERSION, UPSERT, prepare_connection

if TYPE_CHECKING:
    from data_contracts import FileQuality, InferenceOptions
    from pipelines.infer.inputs import InferenceInput
    from pipelines.infer.loaded_model import LoadedModel, ModelCard

__all__ = [
    "LEDGER_JSON",
    "QUARANTINE_AFTER_CRASHES",
    "STATE_DIR",
    "Ledger",
    "config_hash",
    "model_identity",
]

logger = logging.getLogger(__name__)

#: Folder inside the output folder that holds the ledger and the lock.
STATE_DIR = ".segflow"
#: The ledger's JSON export (the MLflow artifact), inside :data:`STATE_DIR`.
LEDGER_JSON = "ledger.json"
_LEDGER_DB = "ledger.sqlite"
# Options that change what is written; batch size, device, precision and reads only change
# how fast.
_OUTPUT_OPTIONS = ("polygons", "probabilities", "tta", "overlap")
# Options that change what is written too (blending; the entropy map), hashed only when set
# off their defaults:
# the hash of every setting that existed before them stays the same (no finished file redone).
_BLENDING_OPTIONS = ("mode", "sigma_scale", "uncertainty", "postprocess")


def config_hash(options: InferenceOptions, model: LoadedModel | ModelCard) -> str:
    """16 hex characters of SHA-256 over the settings that change a case's outputs.

    The output options (polygons, probabilities, TTA, overlap — as given, so an explicit
    default differs from an unset one; blending mode and sigma when not the defaults) and the
    model's plan, spec, class names and processing JSON; batch size, device, precision and
    read settings are left out.
    """
    hashed = {name: getattr(options, name) for name in _OUTPUT_OPTIONS}
    defaults = type(options).model_fields
    hashed.update(
        (name, getattr(options, name))
        for name in _BLENDING_OPTIONS
        if getattr(options, name) != defaults[name].default
    )
    plan = model.plan.model_dump(mode="json")
    if plan.get("network") is None:  # plans before ``--model auto`` hashed without the field
        plan.pop("network", None)
    if not model.plan.postprocess.changes_output:  # nor before the planned post-processing
        plan.pop("postprocess", None)
    if model.plan.missing_channels == "nodata":  # nor before pixels with a band missing
        plan.pop("missing_channels", None)
    settings = {
        "options": hashed,
        "plan": plan,
        "spec": model.spec.model_dump(mode="json"),
        "classes": list(model.class_names),
        "processing": model.processing,
    }
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def model_identity(model: LoadedModel | ModelCard) -> str:
    """``"name/version"`` for a registered model, else the URI or folder it was loaded from."""
    if model.name and model.version:
        return f"{model.name}/{model.version}"
    return model.uri


#: A case whose worker process died this many times in a row is quarantined: later runs
#: report it without trying it again, unless asked (``retry_crashed``).
QUARANTINE_AFTER_CRASHES = 2


class Ledger:
    """The record of every case written to one output folder; safe to share between threads.

    Open it with :meth:`open` (or as a context manager on the result); write to it only while
    holding the folder's lock (:class:`pipelines.services.output_lock.OutputLock`).
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
        self,
        case: InferenceInput,
        key: CaseKey,
        outputs: Mapping[str, Path],
        seconds: float,
        quality: FileQuality | None = None,
    ) -> None:
        """Record ``case`` as done with its outputs (role → file), which are hashed here, and
        its quality record (confidence, drift flags).

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
            LedgerEntry(
                case.case_id,
                "done",
                key,
                records,
                finished=now_iso(),
                seconds=seconds,
                quality=quality,
            )
        )

    def record_failed(
        self,
        case: InferenceInput,
        key: CaseKey,
        error: BaseException | str,
        *,
        seconds: float | None = None,
        quality: FileQuality | None = None,
    ) -> None:
        """Record ``case`` as failed with the error's class and message (and its drift flags
        when it failed for them)."""
        error_text, finished = describe_error(error), now_iso()
        self._write(
            LedgerEntry(
                case.case_id,
                "failed",
                key,
                error=error_text,
                finished=finished,
                seconds=seconds,
                quality=quality,
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
        self._execute(UPSERT, entry_to_row(entry, self.out_dir))

    def _entry(self, row: sqlite3.Row) -> LedgerEntry:
        return entry_from_row(row, self.out_dir)

    def export_json(self, path: str | Path | None = None) -> Path:
        """Write every row as JSON, atomically (default ``<out>/.segflow/ledger.json``).

        Output paths are written relative to the output folder.
        """
        destination = Path(path) if path is not None else self.out_dir / STATE_DIR / LEDGER_JSON
        cases = []
        for entry in self.entries():
            row = dataclasses.asdict(entry)
            row["key"] = dataclasses.asdict(entry.key)
            row["outputs"] = stored_outputs(entry.outputs, self.out_dir)
            row["quality"] = entry.quality.model_dump(mode="json") if entry.quality else None
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
