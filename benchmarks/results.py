"""The benchmark results file: one JSON object per benchmark, replaced on each run."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_FILE = Path(__file__).with_name("results.json")


def record(
    name: str, metrics: dict[str, Any], *, command: str, results_file: Path = RESULTS_FILE
) -> dict[str, Any]:
    """Store ``metrics`` under ``name`` in the results file (atomically) and return the entry."""
    results: dict[str, Any] = {}
    if results_file.is_file():
        results = json.loads(results_file.read_text(encoding="utf-8"))
    entry = {
        "metrics": metrics,
        "command": command,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    results[name] = entry
    temp = results_file.with_suffix(".json.part")
    temp.write_text(
        json.dumps(results, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    os.replace(temp, results_file)
    return entry
