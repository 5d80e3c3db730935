"""The resume ledger (decisions, records, export), the output lock and partial-file cleanup."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import pipelines.services.ledger
import pipelines.services.ledger_records
from data_contracts import (
    ChannelNormalization,
    DatasetManifest,
    InferenceOptions,
    ModelSpec,
    OutputError,
    PostprocessConfig,
    TrainingPlan,
)
from pipelines.infer.inputs import InferenceInput
from pipelines.infer.loaded_model import LoadedModel
from pipelines.ingest import ingest
from pipelines.services.ledger import Ledger, config_hash, model_identity
from pipelines.services.ledger_records import CaseKey
from pipelines.services.output_lock import OutputLock, clean_partials
from pipelines.synthetic import make_image_dataset
from pipelines.synthetic.models import oracle_model

REPO = Path(__file__).resolve().parents[3]
MODEL, CONFIG = "seg/3", "c0ffee"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> DatasetManifest:
    root = tmp_path_factory.mktemp("cells")
    return ingest(make_image_dataset(root / "data", n_images=2, size=(32, 32)), workdir=root)


@pytest.fixture(scope="module")
def model(manifest: DatasetManifest) -> LoadedModel:
    return oracle_model(manifest)


def _case(tmp_path: Path, name: str = "a", content: bytes = b"pixels") -> InferenceInput:
    path = tmp_path / "in" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return InferenceInput(name, (path,))


def _finish(ledger: Ledger, case: InferenceInput, out: Path, model: str = MODEL) -> Path:
    """Record ``case`` as done with one mask output, as a batch would."""
    key = ledger.decide(case, model, CONFIG).key.hashed()
    ledger.record_running(case, key)
    mask = out / f"{case.case_id}.png"
    mask.write_bytes(b"mask of " + case.case_id.encode())
    ledger.record_done(case, key, {"mask": mask}, 0.5)
    return mask


def _reason(
    ledger: Ledger,
    case: InferenceInput,
    *,
    verify: bool = False,
    model: str = MODEL,
    config: str = CONFIG,
) -> str:
    decision = ledger.decide(case, model, config, verify=verify)
    return decision.reason if decision.action == "run" else "skip"


def test_new_then_done(tmp_path: Path) -> None:
    case = _case(tmp_path)
    with Ledger.open(tmp_path) as ledger:
        assert _reason(ledger, case) == "new"
        _finish(ledger, case, tmp_path)
        decision = ledger.decide(case, MODEL, CONFIG)
        assert (decision.action, decision.reason) == ("skip", "done")
        entry = ledger.get("a")
    assert entry is not None and entry.status == "done" and entry.started and entry.finished
    assert entry.outputs["mask"].path == tmp_path / "a.png"
    assert entry.key.input_sha256 == case.checksum()


def test_unchanged_inputs_are_recognised_without_reading_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = _case(tmp_path)
    with Ledger.open(tmp_path) as ledger:
        _finish(ledger, case, tmp_path)
        _forbid_hashing(monkeypatch)
        assert _reason(ledger, case) == "skip"


def _no_hashing(path: object) -> str:
    raise AssertionError(f"{path} was hashed")


def _forbid_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make hashing an input or an output file fail the test."""
    for module in (pipelines.services.ledger, pipelines.services.ledger_records):
        monkeypatch.setattr(module, "sha256_file", _no_hashing)


@pytest.mark.parametrize(
    ("model_id", "config", "reason"),
    [("seg/4", CONFIG, "model changed"), (MODEL, "beef", "config changed")],
)
def test_model_or_config_change_reruns(
    tmp_path: Path, model_id: str, config: str, reason: str
) -> None:
    case = _case(tmp_path)
    with Ledger.open(tmp_path) as ledger:
        _finish(ledger, case, tmp_path)
        assert _reason(ledger, case, model=model_id, config=config) == reason


def test_changed_content_reruns(tmp_path: Path) -> None:
    case = _case(tmp_path)
    with Ledger.open(tmp_path) as ledger:
        _finish(ledger, case, tmp_path)
        case.channels[0].write_bytes(b"other pixels")
        assert _reason(ledger, case) == "input changed"


def test_new_mtime_same_bytes_is_rehashed_once_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = _case(tmp_path)
    with Ledger.open(tmp_path) as ledger:
        _finish(ledger, case, tmp_path)
        stat = case.channels[0].stat()
        os.utime(case.channels[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert _reason(ledger, case) == "skip"
        _forbid_hashing(monkeypatch)
        assert _reason(ledger, case) == "skip"  # the new mtime was recorded


def test_verify_rehashes_inputs(tmp_path: Path) -> None:
    """Same size, same mtime, other bytes: only verify notices."""
    case = _case(tmp_path, content=b"pixels")
    with Ledger.open(tmp_path) as ledger:
        _finish(ledger, case, tmp_path)
        stat = case.channels[0].stat()
        case.channels[0].write_bytes(b"PIXELS")
        os.utime(case.channels[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert _reason(ledger, case) == "skip"
        assert _reason(ledger, case, verify=True) == "input changed"


def test_moved_input_with_same_bytes_is_skipped(tmp_path: Path) -> None:
    case = _case(tmp_path)
    with Ledger.open(tmp_path) as ledger:
        _finish(ledger, case, tmp_path)
        moved = tmp_path / "elsewhere.png"
        case.channels[0].rename(moved)
        assert _reason(ledger, InferenceInput("a", (moved,))) == "skip"
        assert _reason(ledger, case) == "input changed"  # the old path is gone


def test_failed_and_interrupted_rerun(tmp_path: Path) -> None:
    failed, interrupted = _case(tmp_path, "f"), _case(tmp_path, "i")
    with Ledger.open(tmp_path) as ledger:
        key = ledger.decide(failed, MODEL, CONFIG).key.hashed()
        ledger.record_running(failed, key)
        ledger.record_failed(failed, key, ValueError("bad pixels"), seconds=0.1)
        ledger.record_running(interrupted, ledger.decide(interrupted, MODEL, CONFIG).key.hashed())
        assert _reason(ledger, failed) == "failed before"
        assert _reason(ledger, interrupted) == "interrupted"
        entry = ledger.get("f")
        assert ledger.summary() == {"done": 0, "failed": 1, "running": 1, "crashed": 0}
    assert entry is not None and entry.error == "ValueError: bad pixels"
    assert entry.started and entry.finished and entry.started < entry.finished


def test_deleted_or_altered_output_reruns(tmp_path: Path) -> None:
    cases = [_case(tmp_path, name) for name in ("gone", "resized", "edited")]
    with Ledger.open(tmp_path) as ledger:
        masks = [_finish(ledger, case, tmp_path) for case in cases]
        masks[0].unlink()
        masks[1].write_bytes(b"longer than before")
        masks[2].write_bytes(masks[2].read_bytes().upper())  # same size: only verify sees it
        assert [_reason(ledger, case) for case in cases] == [
            "output missing or altered",
            "output missing or altered",
            "skip",
        ]
        assert _reason(ledger, cases[2], verify=True) == "output missing or altered"


def test_export_json_and_relative_outputs(tmp_path: Path) -> None:
    case = _case(tmp_path)
    with Ledger.open(tmp_path / "out") as ledger:
        _finish(ledger, case, tmp_path / "out")
        exported = ledger.export_json()
    payload = json.loads(exported.read_text())
    assert exported == tmp_path / "out" / ".segflow" / "ledger.json"
    assert payload["summary"] == {"done": 1, "failed": 0, "running": 0, "crashed": 0}
    (row,) = payload["cases"]
    assert row["outputs"]["mask"]["path"] == "a.png"
    assert row["key"]["input_sha256"] == case.checksum()
    with sqlite3.connect(tmp_path / "out" / ".segflow" / "ledger.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_records_lose_nothing(tmp_path: Path) -> None:
    cases = [_case(tmp_path, f"c{index:03d}") for index in range(8 * 20)]
    with Ledger.open(tmp_path) as ledger:

        def work(chunk: list[InferenceInput]) -> None:
            for case in chunk:
                _finish(ledger, case, tmp_path)

        threads = [threading.Thread(target=work, args=(cases[i::8],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        entries = ledger.entries()
    assert [entry.case_id for entry in entries] == [case.case_id for case in cases]
    assert all(entry.status == "done" and "mask" in entry.outputs for entry in entries)


def test_damaged_ledger_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / ".segflow").mkdir()
    (tmp_path / ".segflow" / "ledger.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(OutputError, match="not a readable segflow ledger"):
        Ledger.open(tmp_path)


def test_config_hash_tracks_what_changes_outputs(model: LoadedModel) -> None:
    base = config_hash(InferenceOptions(), model)
    assert len(base) == 16 and base == config_hash(InferenceOptions(), model)
    how_fast = {"batch_size": 2, "device": "cpu", "amp": False, "channels_last": False}
    assert config_hash(InferenceOptions(**how_fast, read_ahead=1, read_threads=2), model) == base
    for changed in (
        {"tta": True},
        {"probabilities": True},
        {"overlap": 0.1},
        {"mode": "constant"},
        {"sigma_scale": 0.25},
        {"postprocess": False},
    ):
        assert config_hash(InferenceOptions(**changed), model) != base  # type: ignore[arg-type]
    other_plan = model.plan.model_copy(update={"patch_size": (16, 16)})
    assert config_hash(InferenceOptions(), dataclasses.replace(model, plan=other_plan)) != base
    cleaned = PostprocessConfig(keep_largest_foreground=True)
    planned = model.plan.model_copy(update={"postprocess": cleaned})
    assert config_hash(InferenceOptions(), dataclasses.replace(model, plan=planned)) != base


def _pinned_model() -> LoadedModel:
    """A model built from literals only, so that its config hash can be pinned."""
    plan = TrainingPlan(
        dataset_name="pinned",
        kind="image",
        spatial_dims=2,
        patch_size=(32, 32),
        batch_size=2,
        in_channels=1,
        class_values=(0, 1),
        class_names=("background", "cell"),
        normalization=(ChannelNormalization(scheme="zscore"),),
    )
    spec = ModelSpec(name="pixel_linear", in_channels=1, num_classes=2, spatial_dims=2)
    return LoadedModel(
        network=torch.nn.Identity(),
        spec=spec,
        plan=plan,
        class_names=plan.class_names,
        channel_names=("grey",),
        processing={"postprocess": {"min_object_size": 4}},
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (InferenceOptions(), "15dd712ace3499de"),
        (InferenceOptions(overlap=0.25), "4f820739b2e299ae"),
        (
            InferenceOptions(
                polygons=True, probabilities=True, tta=True, overlap=0.5, batch_size=3, device="cpu"
            ),
            "d489b0968f1e3f6b",
        ),
    ],
)
def test_config_hash_is_the_one_existing_ledgers_hold(
    options: InferenceOptions, expected: str
) -> None:
    """The hashes ``SegmentOptions`` gave for the same settings before the options became a
    contract: ledgers written then must not redo their finished files (a change to the plan or
    spec contracts that changes these breaks that too)."""
    assert config_hash(options, _pinned_model()) == expected


def test_a_plan_that_predicts_missing_bands_hashes_apart() -> None:
    """Its masks differ where a band is missing, so its ledger entries must too."""
    pinned = _pinned_model()
    predicting = dataclasses.replace(
        pinned, plan=pinned.plan.model_copy(update={"missing_channels": "predict"})
    )
    assert config_hash(InferenceOptions(), predicting) != "15dd712ace3499de"


def test_model_identity(model: LoadedModel) -> None:
    assert model_identity(model) == "oracle"
    assert model_identity(dataclasses.replace(model, name="seg", version="3")) == "seg/3"


def test_case_key_marks_missing_files(tmp_path: Path) -> None:
    key = CaseKey.of(InferenceInput("x", (tmp_path / "x.png",)), MODEL, CONFIG)
    assert key.input_sizes == (-1,) and not key.same_stat(key)


# --- lock ------------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from pipelines.services.output_lock import OutputLock
with OutputLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_lock_in_the_same_process_is_refused(tmp_path: Path) -> None:
    pid = os.getpid()
    with OutputLock(tmp_path), pytest.raises(OutputError, match=f"run \\(pid {pid}, host"):
        OutputLock(tmp_path).acquire()
    with OutputLock(tmp_path):  # released on exit
        pass


def test_a_killed_holder_does_not_block_the_next_run(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"pid {child.pid}, host") as refused:
            OutputLock(tmp_path).acquire()
        assert refused.value.path == str(tmp_path) and "another --out" in str(refused.value)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with OutputLock(tmp_path) as lock:
        holder = json.loads(lock.path.read_text())
    assert holder["pid"] == os.getpid()


def test_clean_partials_removes_only_temporary_files(tmp_path: Path) -> None:
    state = tmp_path / ".segflow"
    state.mkdir()
    partials = [
        tmp_path / ".a.png.x1y2.part.png",
        tmp_path / ".b.nii.gz.k3.part.nii.gz",
        tmp_path / ".c.tif.q9.work.tif",
        state / ".ledger.json.z7.part.json",
    ]
    kept = [
        tmp_path / "a.png",
        tmp_path / "x.part",
        tmp_path / ".hidden",
        tmp_path / ".notes.partial.txt",
        tmp_path / "d.part.png",
        state / "ledger.sqlite",
    ]
    for path in partials + kept:
        path.write_bytes(b"x")
    (tmp_path / ".dir.part").mkdir()
    assert clean_partials(tmp_path) == sorted(partials)
    assert all(path.exists() for path in kept) and (tmp_path / ".dir.part").is_dir()
    assert not any(path.exists() for path in partials)
