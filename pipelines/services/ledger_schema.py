"""The SQLite schema of the resume ledger, its upsert, and the upgrade of older ledgers.

Version 2 added the ``crashed`` status and the ``crashes`` count (how many times in a row a
case's worker process died while segmenting it). A version-1 ledger is upgraded in place, in
one transaction, when it is opened: its rows keep their status with ``crashes = 0``.
Version 3 added ``quality``: each file's quality record (confidence, drift flags) as JSON; a
version-2 ledger gains the column (``NULL`` for its rows) when it is opened.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from data_contracts import OutputError

__all__ = ["SCHEMA_VERSION", "UPSERT", "prepare_connection"]

SCHEMA_VERSION = 3

_COLUMNS = """
    case_id TEXT PRIMARY KEY,
    input_paths TEXT NOT NULL,
    input_sizes TEXT NOT NULL,
    input_mtimes_ns TEXT NOT NULL,
    input_sha256 TEXT,
    model TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed', 'running', 'crashed')),
    outputs TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    started TEXT,
    finished TEXT,
    seconds REAL,
    crashes INTEGER NOT NULL DEFAULT 0,
    quality TEXT
"""
_CREATE = f"CREATE TABLE IF NOT EXISTS cases ({_COLUMNS})"
_V1_COLUMNS = (
    "case_id, input_paths, input_sizes, input_mtimes_ns, input_sha256, model, config, status, "
    "outputs, error, started, finished, seconds"
)

# A done or failed row keeps the start time of the running row it replaces. The crash count
# survives a new attempt at the same inputs, model and settings (running), grows with each
# crash and goes back to zero once the case ends any other way.
UPSERT = """
INSERT INTO cases VALUES (:case_id, :input_paths, :input_sizes, :input_mtimes_ns, :input_sha256,
    :model, :config, :status, :outputs, :error, :started, :finished, :seconds,
    CASE WHEN :status = 'crashed' THEN 1 ELSE 0 END, :quality)
ON CONFLICT (case_id) DO UPDATE SET
    input_paths = excluded.input_paths, input_sizes = excluded.input_sizes,
    input_mtimes_ns = excluded.input_mtimes_ns, input_sha256 = excluded.input_sha256,
    model = excluded.model, config = excluded.config, status = excluded.status,
    outputs = excluded.outputs, error = excluded.error,
    started = CASE WHEN excluded.started IS NOT NULL THEN excluded.started
                   WHEN cases.status = 'running' THEN cases.started END,
    finished = excluded.finished, seconds = excluded.seconds, quality = excluded.quality,
    crashes = CASE
        WHEN excluded.status = 'crashed' THEN cases.crashes + 1
        WHEN excluded.status = 'running' AND cases.model = excluded.model
             AND cases.config = excluded.config
             AND cases.input_sha256 IS excluded.input_sha256 THEN cases.crashes
        ELSE 0 END
"""


def _damaged(path: Path, error: sqlite3.DatabaseError) -> OutputError:
    return OutputError(
        f"is not a readable segflow ledger ({error})",
        path=path,
        hint="remove it (the next run redoes every case) or use another --out",
    )


def prepare_connection(connection: sqlite3.Connection, path: Path) -> None:
    """WAL mode, the table (upgraded from version 1 when needed) and a version check.

    Raises:
        OutputError: the file is not a ledger, or one from a newer segflow.
    """
    try:
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL survives process kills
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, 2, SCHEMA_VERSION):
            raise OutputError(
                f"was written by another segflow version (ledger schema {version}, "
                f"this one reads {SCHEMA_VERSION})",
                path=path,
                hint="remove it (the next run redoes every case) or use another --out",
            )
        if version == 1:
            _upgrade_from_v1(connection)
        elif version == 2:
            _upgrade_from_v2(connection)
        connection.execute(_CREATE)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.DatabaseError as error:
        raise _damaged(path, error) from error


def _upgrade_from_v1(connection: sqlite3.Connection) -> None:
    """Rebuild the version-1 table with the new status constraint, crash count and quality."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(f"CREATE TABLE cases_new ({_COLUMNS})")
        connection.execute(f"INSERT INTO cases_new ({_V1_COLUMNS}) SELECT {_V1_COLUMNS} FROM cases")
        connection.execute("DROP TABLE cases")
        connection.execute("ALTER TABLE cases_new RENAME TO cases")
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _upgrade_from_v2(connection: sqlite3.Connection) -> None:
    """Add the quality column, in the same transaction as the version (a kill between the
    two would leave a version-2 ledger that already has the column)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("ALTER TABLE cases ADD COLUMN quality TEXT")
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
