"""Run one corpus kind through one entry point and say what was seen (the error class, or ok).

Shared by ``tests/corpus/test_hardening_corpus.py`` (in process) and the unprivileged child of its
slow test (``python -m tests.corpus.entry_points``, run with ``setpriv`` as ``nobody`` so that
file permissions are real even when the tests run as root).

Every check also collects *problems*: a message that does not name the file, good cases lost,
a batch that stopped, a partial output left, a status that does not say partial.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import errno
import json
import os
import resource
import signal
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_contracts import DatasetManifest, IngestOptions, SegflowError, get_settings
from pipelines.infer.loaded_model import LoadedModel
from tests.corpus.make_corpus import FULL_DISK_BYTES, OK, Kind
from tests.data.make_malformed import BAD

__all__ = ["Outcome", "damage", "run_entry_point", "stale_manifest"]


@dataclass
class Outcome:
    """What one entry point did with one kind."""

    kind: str
    entry: str
    seen: str
    problems: list[str] = field(default_factory=list)


def _is_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def _environment(kind: Kind) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in kind.env}
    os.environ.update(kind.env)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


def _denied(path: str | os.PathLike[str]) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


@contextlib.contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    """Root reads a mode-000 file anyway: make every Python ``open`` of it raise EACCES, as
    the kernel does for anyone else. (Not root: the mode alone does it.)"""
    if not _is_root():
        yield
        return
    real_open = builtins.open
    target = os.path.realpath(path)

    def guarded(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | os.PathLike) and os.path.realpath(file) == target:
            raise _denied(file)
        return real_open(file, *args, **kwargs)

    builtins.open = guarded
    try:
        yield
    finally:
        builtins.open = real_open


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """A mode-555 folder; as root, creating anything inside it raises EACCES as it would for
    anyone else (``os.open`` with ``O_CREAT``, ``mkdir``)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    real_open, real_mkdir = os.open, os.mkdir
    inside = os.path.realpath(folder) + os.sep

    def guarded_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and os.path.realpath(path).startswith(inside):
            raise _denied(path)
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.realpath(path).startswith(inside):
            raise _denied(path)
        real_mkdir(path, *args, **kwargs)

    if _is_root():
        os.open, os.mkdir = guarded_open, guarded_mkdir  # type: ignore[assignment]
    try:
        yield
    finally:
        os.open, os.mkdir = real_open, real_mkdir  # type: ignore[assignment]
        folder.chmod(0o755)


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """RLIMIT_FSIZE: a write past ``limit`` bytes fails with EFBIG (SIGXFSZ ignored), as a
    write to a full disk fails with ENOSPC. Only the soft limit changes, so it is restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@contextlib.contextmanager
def damage(kind: Kind, out: Path) -> Iterator[None]:
    """Make the kind's damage real for the duration: its environment, and its ``setup``."""
    with _environment(kind), contextlib.ExitStack() as stack:
        if kind.setup == "unreadable":
            stack.enter_context(_unreadable(kind.item.source / "images" / kind.item.bad_file))
        elif kind.setup == "readonly_output":
            stack.enter_context(_read_only(out))
        elif kind.setup == "full_disk":
            stack.enter_context(_file_size_limit(FULL_DISK_BYTES))
        yield


def _class_in(text: str) -> str:
    return text.split(":", 1)[0]


def run_ingest(kind: Kind, workdir: Path) -> Outcome:
    """``pipelines.ingest.ingest``: the bad case rejected with its class, the good ones kept."""
    from pipelines.ingest import ingest

    item, outcome = kind.item, Outcome(kind.name, "ingest", "?")
    options = IngestOptions(labels=item.extra_args.get("labels"))
    try:
        with damage(kind, workdir):
            manifest = ingest(item.source, options=options, workdir=workdir)
    except SegflowError as error:
        outcome.seen = type(error).__name__
        if item.good_cases:
            outcome.problems.append(f"the whole source was refused: {error}")
        elif item.bad_file not in str(error):
            outcome.problems.append(f"message does not name {item.bad_file}: {error}")
        return outcome
    bad = [r for r in manifest.rejected if item.bad_file in r.reason]
    outcome.seen = bad[0].error if bad else (OK if not manifest.rejected else "?")
    if not bad and manifest.rejected:
        outcome.problems.append(f"rejected others: {[r.reason[:150] for r in manifest.rejected]}")
    if len(manifest.cases) != item.good_cases:
        outcome.problems.append(f"kept {len(manifest.cases)} cases, expected {item.good_cases}")
    if bad and not manifest.cases:
        outcome.problems.append("nothing kept: not a partial result")
    return outcome


def stale_manifest(manifest: DatasetManifest) -> DatasetManifest:
    """The manifest as it was before the ``broken`` files went bad: a copy of the first good
    case's records (paths, sizes, SHA-256) pointing at the ``broken`` files."""
    good = manifest.cases[0]

    def moved(path: str) -> str:
        where = Path(path)
        return str(where.with_name(where.name.replace(good.case_id, BAD, 1)))

    if good.label is None:
        raise ValueError("the corpus' good case has a label")
    broken = good.model_copy(
        update={
            "case_id": BAD,
            "channels": tuple(
                record.model_copy(update={"path": moved(record.path)}) for record in good.channels
            ),
            "label": good.label.model_copy(update={"path": moved(good.label.path)}),
        }
    )
    others = tuple(case for case in manifest.cases if case.case_id != BAD)
    return manifest.model_copy(update={"cases": (*others, broken), "rejected": ()})


def run_train(kind: Kind, workdir: Path) -> Outcome:
    """Training data loading on a manifest made before the file went bad: the case is left
    out with its class (:func:`check_training_cases`), the others load (:func:`build_datasets`)."""
    from pipelines.ingest import ingest
    from pipelines.plan import compute_fingerprint, make_plan
    from pipelines.preprocess.datasets import build_datasets, split_cases
    from pipelines.preprocess.verify import check_training_cases

    item, outcome = kind.item, Outcome(kind.name, "train", "?")
    options = IngestOptions(labels=item.extra_args.get("labels"))
    clean = Kind(item, kind.data, kind.expected)  # ingest sees the files before the damage
    with _environment(clean):
        manifest = ingest(item.source, options=options, workdir=workdir)
    if kind.expected["train"] != OK:
        manifest = stale_manifest(manifest)
    with damage(kind, workdir):
        checked = check_training_cases(manifest)
    errors = checked.errors
    outcome.seen = type(errors[BAD]).__name__ if BAD in errors else (OK if not errors else "?")
    if BAD in errors and item.bad_file not in str(errors[BAD]):
        outcome.problems.append(f"message does not name {item.bad_file}: {errors[BAD]}")
    if set(errors) - {BAD}:
        outcome.problems.append(f"good cases left out: {sorted(set(errors) - {BAD})}")
    cases = checked.manifest.labelled_cases
    plan = make_plan(compute_fingerprint(checked.manifest), checked.manifest)
    train, val = build_datasets(*split_cases(checked.manifest), plan)
    if len(train) + len(val) != len(cases) or len(cases) != item.good_cases:
        outcome.problems.append(
            f"loaded {len(train)}+{len(val)} of {len(cases)} cases, expected {item.good_cases}"
        )
    return outcome


def _leftovers(out: Path, failed: set[str]) -> list[str]:
    """Partial files anywhere, and any output of a failed case."""
    found = [p.name for p in out.rglob("*") if ".part" in p.name]
    for case_id in failed:
        found += [p.name for p in out.iterdir() if p.name.startswith(f"{case_id}.")]
        found += [p.name for p in out.iterdir() if p.name.startswith(f"{case_id}_prob.")]
    return found


def run_segment(kind: Kind, model: LoadedModel, out: Path) -> Outcome:
    """``pipelines.services.batch.run_batch``: the file fails with its class, the others are done, no
    output of the failed file is left, the batch says partial."""
    from pipelines.services.batch import run_batch

    item, outcome = kind.item, Outcome(kind.name, "segment", "?")
    source = item.source if item.source.is_file() else item.source / "images"
    bad_file = kind.named.get("segment", item.bad_file)
    # A kind valid for segment but not for ingest (a duplicate, an all-nodata tile): its bad
    # case is one more good one here.
    good = item.good_cases + (kind.expected["segment"] == OK and item.expected_error != OK)
    try:
        with damage(kind, out):
            report = run_batch(source, model, out)
    except SegflowError as error:
        outcome.seen = type(error).__name__
        if item.good_cases:
            outcome.problems.append(f"the batch stopped: {error}")
        elif bad_file not in str(error):
            outcome.problems.append(f"message does not name {bad_file}: {error}")
        written = [p.name for p in out.iterdir() if p.name != ".segflow"] if out.is_dir() else []
        if written:
            outcome.problems.append(f"outputs written before the batch failed: {written}")
        return outcome
    failed = [result for result in report.items if result.status == "failed"]
    named = [result for result in failed if bad_file in (result.error or "")]
    outcome.seen = _class_in(named[0].error or "") if named else (OK if not failed else "?")
    if failed and not named:
        outcome.problems.append(f"failed without naming {bad_file}: {failed[0].error}")
    if len(failed) > len(named):
        outcome.problems.append(f"other files failed: {[r.error for r in failed]}")
    if report.counts["done"] != good:
        outcome.problems.append(f"{report.counts['done']} done, expected {good}")
    expected_status = "partial" if failed else "ok"
    if report.exit_status != expected_status:
        outcome.problems.append(f"status {report.exit_status}, expected {expected_status}")
    leftovers = _leftovers(out, {r.case_id for r in failed})
    if leftovers:
        outcome.problems.append(f"partial outputs left: {leftovers}")
    return outcome


def run_entry_point(
    kind: Kind, entry: str, models: dict[str, LoadedModel], workdir: Path
) -> Outcome:
    """Run ``kind`` through ``entry`` (``ingest``, ``train`` or ``segment``) under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    if entry == "ingest":
        return run_ingest(kind, workdir / "ingest")
    if entry == "train":
        return run_train(kind, workdir / "train")
    return run_segment(kind, models[kind.data], workdir / "out")


def main(argv: list[str] | None = None) -> int:
    """Child of the slow test: run the named kinds (corpus in CORPUS, model data in MODELS)
    through their entry points and print the outcomes as JSON."""
    from pipelines.ingest import ingest
    from pipelines.synthetic.models import oracle_model
    from tests.corpus.make_corpus import make_corpus

    parser = argparse.ArgumentParser()
    parser.add_argument("corpus", type=Path)
    parser.add_argument("volumes", type=Path, help="a good volume dataset for the model")
    parser.add_argument("work", type=Path)
    parser.add_argument("kinds", nargs="+")
    args = parser.parse_args(argv)
    kinds = {kind.name: kind for kind in make_corpus(args.corpus, only=args.kinds)}
    model = oracle_model(ingest(args.volumes, workdir=args.work / "model"))
    outcomes = [
        asdict(run_entry_point(kinds[name], entry, {"volume": model}, args.work / name / entry))
        for name in args.kinds
        for entry in kinds[name].expected
    ]
    print(json.dumps({"uid": os.geteuid(), "outcomes": outcomes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
