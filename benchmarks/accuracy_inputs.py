"""The accuracy benchmark's inputs: a dataset's chosen cases, linked in the dataset's own layout.

The user's path trains on a folder and segments another, so the benchmark builds both from the
real dataset without copying a byte of it: every file of every chosen case is symlinked at the
same relative path under a new root, and a ``dataset.json`` beside them (what names the
channels, the labels, and for some sets lists the cases) is rewritten to list only the chosen
cases. ``segflow ingest`` of the new root then finds exactly those cases, paired and grouped as
in the original dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from data_contracts import Case
from data_contracts.errors import DatasetLayoutError, UsageError

__all__ = ["case_files", "link_cases"]

#: ``dataset.json`` keys that list cases (ours and MSD's) and the counts that go with them.
_CASE_LISTS = ("cases", "training")
_CASE_COUNTS = ("numCases", "numTraining")


def case_files(case: Case) -> list[Path]:
    """Every file of ``case``: its channel files in order, then its label (if any)."""
    files = [Path(record.path) for record in case.channels]
    if case.label is not None:
        files.append(Path(case.label.path))
    return files


def link_cases(dataset: Path, cases: Sequence[Case], target: Path) -> Path:
    """Symlink every file of ``cases`` under ``target`` at its path relative to ``dataset``.

    Args:
        dataset: the dataset folder the cases were ingested from.
        cases: the cases to keep (at least one).
        target: the new dataset folder; must not exist yet. Name it as the dataset, since
            segflow names a manifest (and its MLflow experiment) after its folder when there is
            no ``dataset.json``.

    Returns:
        ``target``.

    Raises:
        UsageError: no case given, or ``target`` exists.
        DatasetLayoutError: a case file lies outside ``dataset`` (an extracted archive member
            or a rasterised vector label), so the layout cannot be reproduced by links.
    """
    if not cases:
        raise UsageError("no case to link", hint="pass at least one case")
    if target.exists():
        raise UsageError("already exists", path=target, hint="link into a new folder")
    root = dataset.resolve()
    kept: set[str] = set()
    for case in cases:
        for source in case_files(case):
            relative = _relative_to(source.resolve(), root, case.case_id)
            link = target / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source.resolve())
            kept.add(relative.as_posix())
    description = root / "dataset.json"
    if description.is_file():
        meta = json.loads(description.read_text(encoding="utf-8"))
        filtered = _keep_listed(meta, kept, len(cases))
        (target / "dataset.json").write_text(json.dumps(filtered, indent=1) + "\n", "utf-8")
    return target


def _relative_to(path: Path, root: Path, case_id: str) -> Path:
    if not path.is_relative_to(root):
        raise DatasetLayoutError(
            f"file of case {case_id} lies outside the dataset folder {root}",
            path=path,
            hint="benchmark a dataset folder whose files are all inside it",
        )
    return path.relative_to(root)


def _keep_listed(meta: dict[str, Any], kept: set[str], n_cases: int) -> dict[str, Any]:
    """``meta`` with its case lists cut to the entries whose files are all in ``kept``."""
    filtered = dict(meta)
    for key in _CASE_LISTS:
        entries = meta.get(key)
        if isinstance(entries, list):
            filtered[key] = [entry for entry in entries if _entry_files(entry) <= kept]
    for key in _CASE_COUNTS:
        if key in meta:
            filtered[key] = n_cases
    return filtered


def _entry_files(entry: Any) -> set[str]:
    """The relative paths one case entry of a ``dataset.json`` names (``./`` stripped)."""
    if not isinstance(entry, dict):
        return {"<not a case entry>"}
    names: list[str] = []
    for key in ("image", "label"):
        value = entry.get(key)
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, Iterable):
            names.extend(str(item) for item in value)
    return {Path(name).as_posix().removeprefix("./") for name in names}
