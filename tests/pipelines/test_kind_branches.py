"""No step branches on a data kind's name: what differs by kind is its adapter's (pipelines.kinds).

Scans the source of ``data_contracts``, ``seg_models``, ``pipelines`` and ``flows`` for tests of
a kind's name (``plan.kind == "volume"``, ``kind in ("raster", …)``), for ``isinstance`` on a
kind's geometry and for tables keyed by kind, and fails naming each ``file:line``. Exempt:
``pipelines/kinds/`` (the adapters themselves) and ``pipelines/synthetic/`` (it generates test
data per kind on purpose).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("data_contracts", "seg_models", "pipelines", "flows")
EXEMPT = ("pipelines/kinds/", "pipelines/synthetic/")

_NAME = r"""["'](?:volume|raster|image)["']"""
BRANCH_PATTERNS = {
    "compares a kind with a kind's name": re.compile(
        rf"\bkind\s*(?:==|!=)\s*{_NAME}|{_NAME}\s*(?:==|!=)\s*\w*\.?kind\b"
    ),
    "tests a kind's membership in kind names": re.compile(
        rf"\bkind\s+(?:not\s+)?in\s+[(\[{{][^)\]}}]*{_NAME}"
    ),
    "matches a kind's name": re.compile(rf"^\s*case\s+{_NAME}"),
    "tests a geometry's type": re.compile(r"isinstance\([^)]*\b(?:Volume|Raster|Image)Geometry\b"),
    "keys a table by kind": re.compile(r"""["'](?:volume|raster)["']\s*:|_KIND_SUFFIXES"""),
}


def _source_files() -> list[Path]:
    files = [path for folder in SCANNED for path in sorted((REPO / folder).rglob("*.py"))]
    return [path for path in files if not path.relative_to(REPO).as_posix().startswith(EXEMPT)]


def _branches(text: str) -> list[tuple[int, str]]:
    """``(line number, what it does)`` for each kind branch in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.split("#", 1)[0]
        for reason, pattern in BRANCH_PATTERNS.items():
            if pattern.search(code):
                found.append((number, reason))
    return found


@pytest.mark.parametrize(
    "line",
    [
        'if plan.kind == "volume":',
        'elif model.plan.kind != "raster":',
        'if kind == "image":',
        'volume = "volume" == case.kind',
        'if case.kind in ("raster", "image"):',
        'if kind not in ["volume"]:',
        '    case "raster":',
        "if isinstance(case.geometry, VolumeGeometry):",
        "elif isinstance(reference, RasterGeometry) and isinstance(other, ImageGeometry):",
        'builders = {"volume": volume_transforms, "raster": raster_transforms}',
        "allowed = _KIND_SUFFIXES[plan.kind]",
    ],
)
def test_the_patterns_catch_kind_branches(line: str) -> None:
    assert _branches(line), f"not caught: {line}"


@pytest.mark.parametrize(
    "line",
    [
        'if plan.label_kind == "instance":',
        'elif array.dtype.kind == "f":',
        "if self.geometry.kind != self.kind:",
        'item = {"image": paths, "label": label}',
        'for kind in ("volumes", "rasters"):',
        "adapter = kind_adapter(plan.kind)",
        'kind: Literal["volume"] = "volume"',
        '# a comment about plan.kind == "volume"',
    ],
)
def test_the_patterns_leave_other_code_alone(line: str) -> None:
    assert not _branches(line), f"flagged: {line}"


def test_the_scan_covers_the_packages() -> None:
    files = {path.relative_to(REPO).as_posix() for path in _source_files()}
    assert "pipelines/infer/run.py" in files and "flows/console.py" in files
    assert not any(name.startswith(EXEMPT) for name in files)


def test_no_step_branches_on_a_data_kind() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {reason}"
        for path in _source_files()
        for number, reason in _branches(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, (
        "data-kind branches outside pipelines/kinds (ask the kind's adapter instead, "
        "see docs/architecture.md):\n" + "\n".join(offenders)
    )
