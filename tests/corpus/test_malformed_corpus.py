"""Every malformed input of the corpus (tests/data/make_malformed.py) is rejected with its own
error class and a message naming the file, through `segflow ingest`; good cases are kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_contracts import get_settings
from flows.cli import main
from flows.exit_codes import ExitCode
from tests.data.make_malformed import CorpusItem, make_corpus

CORPUS_ROOT: dict[str, list[CorpusItem]] = {}


def _corpus(tmp_path_factory: pytest.TempPathFactory) -> list[CorpusItem]:
    if "items" not in CORPUS_ROOT:
        CORPUS_ROOT["items"] = make_corpus(tmp_path_factory.mktemp("corpus"))
    return CORPUS_ROOT["items"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[CorpusItem]:
    return _corpus(tmp_path_factory)


def _argv(item: CorpusItem, out: Path) -> list[str]:
    argv = ["ingest", str(item.source), "--out", str(out)]
    labels = item.extra_args.get("labels")
    if labels:
        argv += ["--labels", ",".join(f"{name}={value}" for name, value in labels.items())]
    return argv


def test_corpus_is_large_enough(corpus: list[CorpusItem]) -> None:
    assert len(corpus) >= 15
    assert len({item.expected_error for item in corpus}) >= 12


def test_each_malformed_input_gets_its_error(
    corpus: list[CorpusItem],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: dict[str, str] = {}
    failures: list[str] = []
    for item in corpus:
        limit = item.extra_args.get("max_extract_bytes")
        if limit:
            monkeypatch.setenv("SEGFLOW_MAX_EXTRACT_BYTES", str(limit))
        get_settings.cache_clear()
        out = tmp_path / f"{item.name}.json"
        code = main(_argv(item, out))
        monkeypatch.delenv("SEGFLOW_MAX_EXTRACT_BYTES", raising=False)
        stderr = capsys.readouterr().err.replace("\n", "")
        if item.good_cases == 0:
            seen[item.name] = (
                item.expected_error
                if item.bad_file in stderr and code == ExitCode.NOTHING_DONE
                else f"exit {code}: {stderr[:200]}"
            )
            continue
        manifest = json.loads(out.read_text())
        errors = [
            r
            for r in manifest["rejected"]
            if r["error"] == item.expected_error and item.bad_file in r["reason"]
        ]
        seen[item.name] = (
            errors[0]["error"]
            if errors
            else str([(r["error"], r["reason"][:120]) for r in manifest["rejected"]])
        )
        if len(manifest["cases"]) != item.good_cases:
            failures.append(
                f"{item.name}: kept {len(manifest['cases'])} good cases, expected {item.good_cases}"
            )
        if code != ExitCode.PARTIAL:
            failures.append(f"{item.name}: exit code {code}, expected {ExitCode.PARTIAL}")
    report = "\n".join(f"{name:28} {error}" for name, error in seen.items())
    print("kind / error class seen\n" + report)
    mismatched = [item.name for item in corpus if seen[item.name] != item.expected_error]
    assert not mismatched and not failures, f"{mismatched} {failures}\n{report}"


def test_bad_input_is_never_modified(corpus: list[CorpusItem], tmp_path: Path) -> None:
    import hashlib

    def digest(root: Path) -> dict[str, str]:
        files = (
            [root]
            if root.is_file()
            else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        )
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    item = next(i for i in corpus if i.expected_error == "LabelGeometryError")
    before = digest(item.source)
    main(_argv(item, tmp_path / "m.json"))
    assert digest(item.source) == before
