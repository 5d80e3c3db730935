"""The import rules of the floor plan, read from every module's syntax tree (not by regex).

Imports run one way: flows → pipelines → seg_models → data_contracts. Pipeline steps (all of
``pipelines`` but ``pipelines/services``) use no service and none of the libraries that reach
outside the process (MLflow, SQLite, S3, file locks, Prefect); only ``flows`` knows Prefect; the
product and the benchmarks never import the tests. Every import counts, including those inside
functions, under ``TYPE_CHECKING`` and through ``importlib.import_module("...")``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Rule:
    """Modules under ``folders`` (minus ``exempt``) must not import any of ``forbidden``."""

    name: str
    folders: tuple[str, ...]
    forbidden: tuple[str, ...]
    exempt: tuple[str, ...] = ()


RULES = (
    Rule(
        "the product and the benchmarks never import the tests",
        ("benchmarks", "data_contracts", "seg_models", "pipelines", "flows"),
        ("tests",),
    ),
    Rule(
        "pipeline steps use no service, tracking, database, object store, lock or Prefect",
        ("pipelines",),
        ("pipelines.services", "mlflow", "sqlite3", "boto3", "botocore", "fcntl", "prefect"),
        exempt=("pipelines/services",),
    ),
    Rule(
        "only flows know Prefect and the flows",
        ("pipelines", "seg_models", "data_contracts"),
        ("flows", "prefect"),
    ),
    Rule("seg_models does not import the pipelines", ("seg_models",), ("pipelines",)),
    Rule(
        "data_contracts imports no torch, networks or pipelines",
        ("data_contracts",),
        ("torch", "seg_models", "pipelines"),
    ),
)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(path: Path, root: Path, module: str | None, level: int) -> str:
    """The absolute module of ``from <level dots><module> import …`` written in ``path``."""
    if level == 0:
        return module or ""
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imported_modules(path: Path, root: Path = REPO) -> Iterator[tuple[int, str]]:
    """``(line, module)`` for every module ``path`` imports (a name imported from a package
    counts as the submodule it may be)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(path, root, node.module, node.level)
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}" if module else alias.name
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def _matches(module: str, forbidden: str) -> bool:
    return module == forbidden or module.startswith(forbidden + ".")


def violations(rule: Rule, root: Path = REPO) -> list[str]:
    """``file:line imports module`` for every import breaking ``rule``, sorted."""
    found = set()
    for folder in rule.folders:
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if any(relative.startswith(exempt + "/") for exempt in rule.exempt):
                continue
            for line, module in imported_modules(path, root):
                if any(_matches(module, forbidden) for forbidden in rule.forbidden):
                    found.add(f"{relative}:{line} imports {module}")
    return sorted(found)


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_import_rule(rule: Rule) -> None:
    broken = violations(rule)
    assert not broken, f"{rule.name}:\n" + "\n".join(broken)


def test_every_kind_of_import_is_seen(tmp_path: Path) -> None:
    """The checker itself: plain, from, relative, nested, TYPE_CHECKING and importlib imports."""
    package = tmp_path / "pipelines" / "io"
    package.mkdir(parents=True)
    (tmp_path / "pipelines" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from .. import services\n")
    (package / "reader.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "if TYPE_CHECKING:\n"
        "    from pipelines.services.ledger import Ledger\n"
        "def read():\n"
        "    import mlflow.pyfunc\n"
        "    from tests import helpers\n"
        "    return importlib.import_module('prefect')\n"
    )
    (tmp_path / "pipelines" / "services").mkdir()
    (tmp_path / "pipelines" / "services" / "ledger.py").write_text("import sqlite3\n")
    assert violations(RULES[1], tmp_path) == [
        "pipelines/io/__init__.py:1 imports pipelines.services",
        "pipelines/io/reader.py:4 imports pipelines.services.ledger",
        "pipelines/io/reader.py:4 imports pipelines.services.ledger.Ledger",
        "pipelines/io/reader.py:6 imports mlflow.pyfunc",
        "pipelines/io/reader.py:8 imports prefect",
    ]
    assert violations(RULES[0], tmp_path) == [
        "pipelines/io/reader.py:7 imports tests",
        "pipelines/io/reader.py:7 imports tests.helpers",
    ]


def test_tests_mirror_the_packages() -> None:
    """``tests/pipelines/infer/…`` tests ``pipelines/infer``: every test folder named after a
    package mirrors a folder of that package."""
    tests = REPO / "tests"
    unmatched = [
        str(folder.relative_to(REPO))
        for top in ("data_contracts", "seg_models", "pipelines", "flows")
        for folder in [tests / top, *(tests / top).rglob("*")]
        if folder.is_dir()
        and folder.name != "__pycache__"
        and not (REPO / folder.relative_to(tests)).is_dir()
    ]
    assert not unmatched, f"test folders without a package folder: {unmatched}"
    stray = sorted(p.name for p in tests.glob("test_*.py"))
    cross_cutting = {
        "test_architecture.py",
        "test_docker.py",
        "test_notebook.py",
        "test_packaging.py",
        "test_security.py",
    }
    assert set(stray) <= cross_cutting, (
        f"put these beside their package: {set(stray) - cross_cutting}"
    )
