"""Resumable batches: skip what is done, redo what changed, survive bad files and kill -9."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import pipelines.services.batch_items
from data_contracts import InferenceOptions, OutputError
from pipelines.files import sha256_file
from pipelines.infer.loaded_model import LoadedModel
from pipelines.ingest import ingest, read_manifest, write_manifest
from pipelines.io.image2d import read_image
from pipelines.services.batch import (
    BatchItemResult,
    BatchProgress,
    BatchReport,
    BatchRun,
    process_group,
    run_batch,
)
from pipelines.services.ledger import Ledger
from pipelines.services.output_lock import OutputLock
from pipelines.synthetic import make_image_dataset, pack_archive
from pipelines.synthetic.models import oracle_model

REPO = Path(__file__).resolve().parents[3]
CHILD = REPO / "tests" / "data" / "batch_child.py"
SIZE = (32, 32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """24 small PNGs, and the manifest their oracle model is built from."""
    root = tmp_path_factory.mktemp("cells")
    data = make_image_dataset(root / "data", n_images=24, size=SIZE, seed=3)
    return data / "images", write_manifest(ingest(data, workdir=root), root / "manifest.json")


@pytest.fixture(scope="module")
def model(dataset: tuple[Path, Path]) -> LoadedModel:
    return oracle_model(read_manifest(dataset[1]))


@pytest.fixture
def images(dataset: tuple[Path, Path], tmp_path: Path) -> Path:
    """A private copy of six of the images."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(dataset[0].iterdir())[:6]:
        shutil.copy2(path, folder / path.name)
    return folder


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The case ids :func:`segment_case` is called with."""
    seen: list[str] = []
    real = pipelines.services.batch_items.segment_case

    def counting(model: LoadedModel, case: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(case.case_id)
        return real(model, case, *args, **kwargs)

    monkeypatch.setattr(pipelines.services.batch_items, "segment_case", counting)
    return seen


def _statuses(report: BatchReport) -> dict[str, str]:
    return {item.case_id: item.status for item in report.items}


def test_second_run_skips_everything(
    images: Path, model: LoadedModel, tmp_path: Path, calls: list[str]
) -> None:
    first = run_batch(images, model, tmp_path / "out")
    assert (
        first.counts == {"done": 6, "skipped": 0, "failed": 0, "interrupted": 0}
        and first.exit_status == "ok"
    )
    assert {item.reason for item in first.items} == {"new"}
    assert len(calls) == 6 and first.files_per_second > 0
    second = run_batch(images, model, tmp_path / "out")
    assert (
        second.counts == {"done": 0, "skipped": 6, "failed": 0, "interrupted": 0}
        and second.exit_status == "ok"
    )
    assert len(calls) == 6  # nothing segmented
    assert all(item.outputs["mask"].is_file() for item in second.items)
    exported = tmp_path / "out" / ".segflow" / "ledger.json"
    assert exported.is_file() and '"done": 6' in exported.read_text()


def test_only_the_changed_input_reruns(
    images: Path, model: LoadedModel, tmp_path: Path, calls: list[str]
) -> None:
    run_batch(images, model, tmp_path / "out")
    changed = sorted(images.iterdir())[2]
    pixels = np.asarray(Image.open(changed))
    Image.fromarray(255 - pixels).save(changed)
    calls.clear()
    report = run_batch(images, model, tmp_path / "out")
    assert calls == [changed.stem]
    (rerun,) = [item for item in report.items if item.status == "done"]
    assert (rerun.case_id, rerun.reason) == (changed.stem, "input changed")


def test_other_settings_rerun_everything(images: Path, model: LoadedModel, tmp_path: Path) -> None:
    run_batch(images, model, tmp_path / "out")
    report = run_batch(images, model, tmp_path / "out", InferenceOptions(probabilities=True))
    assert report.counts["done"] == 6 and {item.reason for item in report.items} == {
        "config changed"
    }
    assert all("probabilities" in item.outputs for item in report.items)


def test_bad_files_fail_alone_and_are_retried(
    images: Path, model: LoadedModel, tmp_path: Path, calls: list[str]
) -> None:
    (images / "text.png").write_text("this is not a picture\n")
    good = sorted(images.iterdir())[0].read_bytes()
    (images / "cut.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    first = run_batch(images, model, out)
    assert first.exit_status == "partial" and first.counts["done"] == 6
    failed = {item.case_id: item for item in first.items if item.status == "failed"}
    assert set(failed) == {"text", "cut"}
    assert all(item.error and "Error: " in item.error for item in failed.values())
    with Ledger.open(out) as ledger:
        entry = ledger.get("cut")
    assert entry is not None and entry.status == "failed" and entry.error == failed["cut"].error
    calls.clear()
    second = run_batch(images, model, out)
    assert sorted(calls) == ["cut", "text"] and second.counts["failed"] == 2
    assert {i.reason for i in second.items if i.status == "failed"} == {"failed before"}
    (images / "cut.png").write_bytes(good)
    (images / "text.png").unlink()
    third = run_batch(images, model, out)
    assert _statuses(third)["cut"] == "done" and third.exit_status == "ok"


def test_rejected_inputs_are_failed_items(images: Path, model: LoadedModel, tmp_path: Path) -> None:
    first = sorted(images.iterdir())[0]
    shutil.copy(first, images / "pair.png")
    shutil.copy(first, images / "Pair.png")  # the same case id, ignoring letter case
    shutil.copy(first, images / "pair_0000.png")  # a case of its own: a file is a case
    report = run_batch(images, model, tmp_path / "out")
    rejected = [item for item in report.items if item.reason == "rejected"]
    assert len(rejected) == 2 and {item.status for item in rejected} == {"failed"}
    for item in rejected:
        assert "OutputNameCollisionError" in (item.error or "")
        assert "Pair.png" in (item.error or "") and "pair.png" in (item.error or "")
    assert _statuses(report)["pair_0000"] == "done"
    assert report.exit_status == "partial"


def test_an_archive_is_recognised_after_a_new_extraction(
    images: Path, model: LoadedModel, tmp_path: Path, calls: list[str]
) -> None:
    archive = pack_archive(images, tmp_path / "images.zip")
    run_batch(archive, model, tmp_path / "out")
    calls.clear()
    assert run_batch(archive, model, tmp_path / "out").counts["skipped"] == 6
    assert not calls


class Recorder(BatchProgress):
    """Keeps what a batch tells its progress."""

    def __init__(self) -> None:
        self.planned_calls: list[tuple[int, list[str]]] = []
        self.done: list[tuple[str, int, int]] = []

    def planned(self, to_run: int, settled: Sequence[BatchItemResult]) -> None:
        self.planned_calls.append((to_run, [result.case_id for result in settled]))

    def case_done(self, result: BatchItemResult, done: int, total: int) -> None:
        self.done.append((result.case_id, done, total))


def test_progress_hears_the_plan_and_every_case(
    images: Path, model: LoadedModel, tmp_path: Path
) -> None:
    first = Recorder()
    run_batch(images, model, tmp_path / "out", progress=first)
    assert first.planned_calls == [(6, [])]
    assert [(done, total) for _, done, total in first.done] == [(n, 6) for n in range(1, 7)]
    (images / "img_000.png").unlink()
    (images / "broken.png").write_bytes(b"not a png")
    again = Recorder()
    run_batch(images, model, tmp_path / "out", progress=again)
    assert again.planned_calls == [(1, [f"img_00{n}" for n in range(1, 6)])]  # skipped ones
    assert [(case, done, total) for case, done, total in again.done] == [("broken", 1, 1)]


def test_groups_run_in_threads_as_a_flow_runs_them(
    images: Path, model: LoadedModel, tmp_path: Path
) -> None:
    """The pieces a flow maps: plan, groups processed in other threads on the run's ledger,
    results handed back; the same report and ledger as a plain run."""
    progress = Recorder()
    batch = BatchRun(images, model, tmp_path / "out", progress=progress)
    with batch, ThreadPoolExecutor(3) as pool:
        items = batch.plan()
        groups = [items[i : i + 2] for i in range(0, len(items), 2)]
        futures = [
            pool.submit(process_group, model, group, batch.out_dir, batch.options, batch.ledger)
            for group in groups
        ]
        for future in futures:
            batch.add_results(future.result())
    report = batch.report()
    assert report.counts["done"] == 6 and batch.done_count == 6
    assert [done for _, done, _ in progress.done] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "out" / ".segflow" / "ledger.json").is_file()  # exported on leaving
    with Ledger.open(tmp_path / "out") as ledger:
        assert ledger.summary() == {"done": 6, "failed": 0, "running": 0, "crashed": 0}
    with pytest.raises(OutputError, match="no batch run open"):
        batch.ledger  # noqa: B018


def test_a_locked_folder_is_refused_and_partials_are_cleaned(
    images: Path, model: LoadedModel, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with OutputLock(out), pytest.raises(OutputError, match="another segflow run"):
        run_batch(images, model, out)
    stale = out / ".img_000.png.abc.part.png"
    stale.write_bytes(b"half a png")
    run_batch(images, model, out)
    assert not stale.exists()


# --- kill -9 and resume (acceptance 2) -------------------------------------------------------


class Child:
    """``tests/data/batch_child.py`` in a subprocess, started and waited on until ``ready``."""

    def __init__(self, source: Path, out: Path, manifest: Path, log: Path) -> None:
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), str(source), str(out), str(manifest), "--pause", "0.04"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        if self.readline() != "ready":
            self.process.kill()
            pytest.fail(f"the child did not start:\n{log.read_text()}")

    def readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def kill(self) -> int:
        self.process.send_signal(signal.SIGKILL)
        return self.finish()

    def finish(self) -> int:
        code = self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()
        self._log.close()
        return code


def _snapshot(out: Path) -> dict[str, tuple[str | None, dict[Path, tuple[int, int]]]]:
    """Done rows just after a kill: case → (finished, {output: (inode, mtime_ns)})."""
    if not (out / ".segflow" / "ledger.sqlite").is_file():
        return {}
    with Ledger.open(out) as ledger:
        done = [entry for entry in ledger.entries() if entry.status == "done"]
    return {
        entry.case_id: (
            entry.finished,
            {
                r.path: (r.path.stat().st_ino, r.path.stat().st_mtime_ns)
                for r in entry.outputs.values()
            },
        )
        for entry in done
    }


def _check_resumed(
    out: Path, report: BatchReport, before: dict[str, Any], expected: dict[str, str]
) -> None:
    """Complete, valid outputs; nothing finished before the kill redone; ledger = files."""
    assert report.exit_status == "ok" and report.counts["failed"] == 0
    assert {i.case_id for i in report.items if i.status == "skipped"} == set(before)
    assert len(report.items) == len(expected)
    assert not [path for path in out.rglob("*") if ".part" in path.name or "work" in path.name]
    with Ledger.open(out) as ledger:
        entries = {entry.case_id: entry for entry in ledger.entries()}
    assert set(entries) == set(expected) and {e.status for e in entries.values()} == {"done"}
    recorded: set[Path] = set()
    for case_id, entry in entries.items():
        for record in entry.outputs.values():
            assert sha256_file(record.path) == record.sha256
            recorded.add(record.path)
        mask = entry.outputs["mask"].path
        assert read_image(mask).shape == SIZE and sha256_file(mask) == expected[case_id]
        if case_id in before:
            finished, files = before[case_id]
            assert entry.finished == finished
            assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == files
    assert {path for path in out.iterdir() if path.is_file()} == recorded


@pytest.fixture
def expected_masks(
    dataset: tuple[Path, Path], model: LoadedModel, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """SHA-256 of each case's mask from an uninterrupted in-process run."""
    report = run_batch(dataset[0], model, tmp_path / "reference")
    yield {item.case_id: sha256_file(item.outputs["mask"]) for item in report.items}


def test_kill_after_eight_cases_then_resume(
    dataset: tuple[Path, Path], model: LoadedModel, expected_masks: dict[str, str], tmp_path: Path
) -> None:
    """The fast variant: killed right after the child reports its 8th finished case."""
    source, manifest = dataset
    out = tmp_path / "out"
    child = Child(source, out, manifest, tmp_path / "child.log")
    done = 0
    while done < 8:
        line = child.readline()
        assert line, "the child ended before its 8th case"
        done += line.endswith(" done")
    assert child.kill() == -signal.SIGKILL
    before = _snapshot(out)
    assert 8 <= len(before) < len(expected_masks)
    _check_resumed(out, run_batch(source, model, out), before, expected_masks)


def _phase(done: int, total: int) -> str:
    return "before any output" if done == 0 else "mid-batch" if done < total else "at the end"


@pytest.mark.slow
def test_ten_random_kills_resume_to_complete_outputs(
    dataset: tuple[Path, Path], model: LoadedModel, expected_masks: dict[str, str], tmp_path: Path
) -> None:
    """Trial k is killed ``T·((k + u)/10)²`` after the child's ``ready`` (u seeded by k).

    T is one uninterrupted child's time from ``ready`` to ``finished``: the first trials die
    before any output, the others across the batch, the last near its end.
    """
    source, manifest = dataset
    child = Child(source, tmp_path / "timed", manifest, tmp_path / "timed.log")
    started = time.monotonic()
    while not child.readline().startswith("finished"):
        pass
    batch_seconds = time.monotonic() - started
    assert child.finish() == 0
    phases: Counter[str] = Counter()
    for trial in range(10):
        out = tmp_path / f"trial{trial}"
        delay = batch_seconds * ((trial + random.Random(trial).random()) / 10) ** 2
        child = Child(source, out, manifest, tmp_path / f"trial{trial}.log")
        time.sleep(delay)
        child.kill()
        before = _snapshot(out)
        partials = len(list(out.glob(".*.part*"))) if out.is_dir() else 0
        _check_resumed(out, run_batch(source, model, out), before, expected_masks)
        phases[_phase(len(before), len(expected_masks))] += 1
        print(f"trial {trial}: kill at {delay:.2f}s of {batch_seconds:.2f}s, {len(before)} done, "
              f"{partials} .part file(s) left")  # fmt: skip
    print(dict(phases))
    assert phases["mid-batch"] >= 3
