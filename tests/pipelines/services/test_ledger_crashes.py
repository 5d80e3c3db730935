"""The ledger's crash record: ``crashed`` with the signal, a count that quarantines a case
after two crashes in a row (until asked again), and the upgrade of version-1 ledgers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pipelines.infer.inputs import InferenceInput
from pipelines.services.ledger import QUARANTINE_AFTER_CRASHES, Ledger
from pipelines.services.ledger_schema import SCHEMA_VERSION

MODEL, CONFIG = "seg/3", "c0ffee"


def _case(tmp_path: Path, name: str = "a") -> InferenceInput:
    path = tmp_path / "in" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"pixels of " + name.encode())
    return InferenceInput(name, (path,))


def test_two_crashes_in_a_row_quarantine_a_case_until_asked(tmp_path: Path) -> None:
    case = _case(tmp_path)
    with Ledger.open(tmp_path / "out") as ledger:
        key = ledger.decide(case, MODEL, CONFIG).key.hashed()
        ledger.record_running(case, key)
        assert ledger.record_crashed(case, key, "SIGSEGV (signal 11)", seconds=0.5) == 1
        decision = ledger.decide(case, MODEL, CONFIG)
        assert (decision.action, decision.reason) == ("run", "crashed before")
        ledger.record_running(case, key)  # a new attempt keeps the count
        assert ledger.record_crashed(case, key, "SIGABRT (signal 6)") == QUARANTINE_AFTER_CRASHES
        decision = ledger.decide(case, MODEL, CONFIG)
        assert (decision.action, decision.reason) == ("quarantine", "quarantined")
        assert ledger.decide(case, MODEL, CONFIG, retry_crashed=True).action == "run"
        entry = ledger.get("a")
        assert (
            entry is not None and entry.status == "crashed" and entry.error == "SIGABRT (signal 6)"
        )
        assert ledger.summary()["crashed"] == 1


def test_a_case_that_ends_otherwise_or_changes_starts_counting_again(tmp_path: Path) -> None:
    case, out = _case(tmp_path), tmp_path / "out"
    with Ledger.open(out) as ledger:
        key = ledger.decide(case, MODEL, CONFIG).key.hashed()
        ledger.record_running(case, key)
        ledger.record_crashed(case, key, "SIGKILL (signal 9)")
        ledger.record_running(case, key)
        ledger.record_failed(case, key, ValueError("bad pixels"))
        ledger.record_running(case, key)
        assert ledger.record_crashed(case, key, "SIGKILL (signal 9)") == 1
        other_model = ledger.decide(case, "seg/4", CONFIG).key
        ledger.record_running(case, other_model)
        assert ledger.record_crashed(case, other_model, "SIGKILL (signal 9)") == 1


def test_a_version_1_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / ".segflow").mkdir(parents=True)
    with sqlite3.connect(out / ".segflow" / "ledger.sqlite") as connection:
        connection.execute(
            "CREATE TABLE cases (case_id TEXT PRIMARY KEY, input_paths TEXT NOT NULL, "
            "input_sizes TEXT NOT NULL, input_mtimes_ns TEXT NOT NULL, input_sha256 TEXT, "
            "model TEXT NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN "
            "('done', 'failed', 'running')), outputs TEXT NOT NULL DEFAULT '{}', error TEXT, "
            "started TEXT, finished TEXT, seconds REAL)"
        )
        connection.execute(
            "INSERT INTO cases VALUES ('old', '[\"/x.png\"]', '[1]', '[2]', 'ab', 'm/1', 'c', "
            "'failed', '{}', 'ValueError: x', NULL, NULL, 0.1)"
        )
        connection.execute("PRAGMA user_version = 1")
    connection.close()
    with Ledger.open(out) as ledger:
        entry = ledger.get("old")
        assert entry is not None and entry.status == "failed" and entry.crashes == 0
        case = _case(tmp_path, "new")
        key = ledger.decide(case, MODEL, CONFIG).key.hashed()
        assert ledger.record_crashed(case, key, "SIGSEGV (signal 11)") == 1
    with sqlite3.connect(out / ".segflow" / "ledger.sqlite") as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    connection.close()
