"""Security promises: archives stay in their folder, models come only from the registry or an
explicit folder and load weights only, servers listen on loopback, no credential is logged;
and property-based tests (hypothesis) of the contracts and of header parsing."""

from __future__ import annotations

import ast
import contextlib
import gzip
import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import data_contracts.errors as errors
from data_contracts import FileRecord, InputError, ModelError, SegflowError, VolumeGeometry
from pipelines.io.archives import extract_archive
from pipelines.io.image2d import read_image_geometry
from pipelines.io.nifti import read_volume_geometry
from pipelines.io.raster import read_raster_geometry

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("data_contracts", "pipelines", "flows", "seg_models")
EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))


# --- models: weights only, from the registry or an explicit folder ------------------------------


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def test_every_checkpoint_load_is_weights_only() -> None:
    """Every ``torch.load`` (and every Lightning ``fit`` resuming a checkpoint) in segflow's
    code passes ``weights_only=True``; nothing calls ``pickle.load``."""
    loads, fits, offenders = 0, 0, []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            owner = node.func.value
            if node.func.attr == "load" and isinstance(owner, ast.Name):
                if owner.id == "torch":
                    loads += 1
                    if _keyword(node, "weights_only") is not True:
                        offenders.append(f"{where} torch.load without weights_only=True")
                elif owner.id in ("pickle", "dill", "joblib", "cloudpickle"):
                    offenders.append(f"{where} {owner.id}.load")
            if node.func.attr == "fit" and any(k.arg == "ckpt_path" for k in node.keywords):
                fits += 1
                if _keyword(node, "weights_only") is not True:
                    offenders.append(f"{where} fit(ckpt_path=…) without weights_only=True")
    assert not offenders, offenders
    assert loads >= 2 and fits >= 1  # the scan does see the loads


class _Payload:
    """Unpickling this runs code: what a hostile checkpoint carries."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/segflow-pwned",))


def test_a_checkpoint_carrying_code_is_refused(tmp_path: Path) -> None:
    from pipelines.train.trainer import TrainResult
    from pipelines.train.validate import load_kept

    hostile = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload()}, hostile)

    class Module:
        device = "cpu"

        def load_state_dict(self, state: Any) -> None:
            raise AssertionError("the hostile checkpoint was loaded")

    result = TrainResult(best_score=0.0, best_checkpoint=hostile, last_checkpoint=None, epochs=1)
    with pytest.raises(pickle.UnpicklingError):
        load_kept(Module(), result)  # type: ignore[arg-type]
    assert not Path("/tmp/segflow-pwned").exists()


@pytest.mark.parametrize(
    "uri",
    [
        "http://evil.example/model",
        "https://evil.example/models/m.tar",
        "s3://bucket/model",
        "gs://bucket/model",
        "ftp://host/model",
        "mlflow-artifacts:/1/abc/artifacts/model",
    ],
)
def test_models_load_only_from_the_registry_or_a_folder(
    uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from pipelines.services.model_loading import load_model

    def no_download(*args: Any, **kwargs: Any) -> str:
        raise AssertionError(f"tried to download {args}")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    with pytest.raises(ModelError, match="registry"):
        load_model(uri)


# --- servers: loopback by default -------------------------------------------------------------


def test_servers_started_by_segflow_listen_on_loopback(tmp_path: Path) -> None:
    from flows.server_process import prefect_server

    server = prefect_server(4999, home=tmp_path / "home", log_path=tmp_path / "log")
    command = server.command
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert server.health_url.startswith("http://127.0.0.1:")
    wildcard = [
        f"{path.relative_to(REPO)}:{number}"
        for path in _sources()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "0.0.0.0" in line or "'::'" in line or '"::"' in line
    ]
    assert not wildcard, f"a wildcard bind address in segflow's code: {wildcard}"


# --- no credentials logged ------------------------------------------------------------------


SECRET = "hunter2-very-secret"


def test_no_credentials_in_mlflow_params_or_tags(in_mlflow_home: None, tmp_path: Path) -> None:
    import mlflow

    from pipelines.services.batch import BatchReport
    from pipelines.services.batch_tracking import log_batch_run
    from pipelines.services.tracking import log_plan_and_spec, training_run
    from tests.pipelines.services.test_tracking import make_plan, make_spec

    plan, spec = make_plan(), make_spec()
    extra = {
        "train": {"api_token": SECRET, "db": f"postgresql://segflow:{SECRET}@db:5432/x"},
        "aws_secret_access_key": SECRET,
    }
    tags = {"source": f"s3://AKIAEXAMPLE:{SECRET}@bucket/data", "password": SECRET}
    with training_run("secrets", tags=tags) as run:
        logged = log_plan_and_spec(plan, spec, extra=extra)
    batch = log_batch_run(
        BatchReport([], 0.1),
        tmp_path,
        model_uri=f"https://user:{SECRET}@registry.example/models:/m/1",
        source=f"s3://AKIAEXAMPLE:{SECRET}@bucket/in",
    )
    client = mlflow.MlflowClient()
    for run_id in (run.info.run_id, batch):
        data = client.get_run(run_id).data
        text = repr(data.params) + repr(data.tags)
        assert SECRET not in text, text
    assert SECRET not in repr(logged)
    assert client.get_run(batch).data.params["source"] == "s3://AKIAEXAMPLE:***@bucket/in"


# --- property-based: archives never escape --------------------------------------------------

_SEGMENT = st.sampled_from(["..", ".", "a", "b c", "é", "", "C:", "\\..", "..\\x", "~"])
_NAME = st.lists(_SEGMENT, min_size=1, max_size=5).map("/".join) | st.lists(
    _SEGMENT, min_size=1, max_size=4
).map(lambda parts: "/" + "/".join(parts))


def _outside(root: Path, inside: Path) -> list[str]:
    """Files under ``root`` but not under ``inside`` (besides the archive)."""
    found = []
    for path in root.rglob("*"):
        if path.is_dir() or path.suffix in (".zip", ".tar"):
            continue
        if inside not in path.parents:
            found.append(str(path))
    return found


@EXAMPLES
@given(names=st.lists(_NAME, min_size=1, max_size=6))
def test_zip_members_never_land_outside_the_folder(
    names: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("zip")
    archive = root / "in" / "a.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/ok_0000.nii.gz", b"x")
        for name in names:
            if name and not name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"payload")
    destination = root / "in" / "deep" / "out"
    with contextlib.suppress(SegflowError):
        extract_archive(archive, destination)
    assert not _outside(root, destination)


_LINK_TARGET = st.lists(_SEGMENT, min_size=1, max_size=5).map("/".join) | st.sampled_from(
    ["/etc/passwd", "../../etc/passwd", "images/../../x", "/"]
)


@EXAMPLES
@given(
    links=st.lists(
        st.tuples(st.sampled_from([tarfile.SYMTYPE, tarfile.LNKTYPE]), _NAME, _LINK_TARGET),
        min_size=1,
        max_size=5,
    )
)
def test_tar_links_never_reach_outside_the_folder(
    links: list[tuple[bytes, str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("tar")
    (root / "secret.txt").write_text("outside")
    archive = root / "in" / "a.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        data = tarfile.TarInfo("images/ok_0000.nii.gz")
        data.size = 1
        tar.addfile(data, io.BytesIO(b"x"))
        for kind, name, target in links:
            info = tarfile.TarInfo(name or "x")
            info.type, info.linkname = kind, target
            tar.addfile(info)
    destination = root / "in" / "out"
    before = _outside(root, destination)
    with contextlib.suppress(SegflowError):
        extract_archive(archive, destination)
    assert _outside(root, destination) == before == [str(root / "secret.txt")]
    assert (root / "secret.txt").read_text() == "outside"
    resolved_root = destination.resolve()
    for path in destination.rglob("*") if destination.exists() else []:
        if path.is_symlink():
            target = path.resolve()
            assert target == resolved_root or resolved_root in target.parents, (path, target)
        elif path.is_file():
            assert path.read_bytes() != b"outside"


# --- property-based: the contracts ----------------------------------------------------------

_ERROR_CLASSES = sorted(
    (
        getattr(errors, name)
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), SegflowError)
    ),
    key=lambda cls: cls.__name__,
)


@EXAMPLES
@given(
    cls=st.sampled_from(_ERROR_CLASSES),
    reason=st.text(min_size=1, max_size=80),
    path=st.none() | st.text(min_size=1, max_size=60),
    hint=st.none() | st.text(max_size=60),
)
def test_every_error_names_its_file_and_survives_pickling(
    cls: type[SegflowError], reason: str, path: str | None, hint: str | None
) -> None:
    error = cls(reason, path=path, hint=hint)
    text = str(error)
    assert reason in text and (path is None or text.startswith(f"{path}: "))
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls and str(copy) == text and copy.path == error.path


@EXAMPLES
@given(
    sha=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    size=st.integers(min_value=0, max_value=2**62),
    path=st.text(min_size=1, max_size=80),
)
def test_file_records_round_trip(sha: str, size: int, path: str) -> None:
    record = FileRecord(path=path, sha256=sha, size_bytes=size)
    assert FileRecord.model_validate_json(record.model_dump_json()) == record


@EXAMPLES
@given(
    sha=st.text(max_size=70).filter(
        lambda s: len(s) != 64 or not set(s) <= set("0123456789abcdef")
    ),
    size=st.integers(max_value=-1),
)
def test_file_records_refuse_bad_hashes_and_sizes(sha: str, size: int) -> None:
    with pytest.raises(ValidationError):
        FileRecord(path="a", sha256=sha, size_bytes=0)
    with pytest.raises(ValidationError):
        FileRecord(path="a", sha256="0" * 64, size_bytes=size)


# --- property-based: header parsing -----------------------------------------------------------

_READERS = {
    ".nii.gz": read_volume_geometry,
    ".nii": read_volume_geometry,
    ".tif": read_raster_geometry,
    ".png": read_image_geometry,
}
_MAGIC = {
    ".nii.gz": b"\x1f\x8b",
    ".nii": b"",
    ".tif": b"II*\x00",
    ".png": b"\x89PNG\r\n\x1a\n",
}


@EXAMPLES
@given(suffix=st.sampled_from(sorted(_READERS)), body=st.binary(max_size=600), magic=st.booleans())
def test_random_bytes_fail_with_an_input_error(
    suffix: str, body: bytes, magic: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("bytes") / f"f{suffix}"
    path.write_bytes((_MAGIC[suffix] if magic else b"") + body)
    try:
        _READERS[suffix](path)
    except InputError as error:
        assert path.name in str(error)


_DIM = st.integers(min_value=-3, max_value=32_767)
_FLOAT = st.sampled_from([0.0, -1.0, 1e-30, 1.0, 2.5, 1e30, float("nan"), float("inf")])


@EXAMPLES
@given(
    ndim=st.integers(min_value=0, max_value=8),
    dims=st.lists(_DIM, min_size=7, max_size=7),
    pixdim=st.lists(_FLOAT, min_size=3, max_size=3),
    srow=st.lists(_FLOAT, min_size=12, max_size=12),
    sform_code=st.integers(min_value=0, max_value=4),
    qform_code=st.integers(min_value=0, max_value=4),
)
def test_any_nifti_header_gives_a_valid_geometry_or_an_input_error(
    ndim: int,
    dims: list[int],
    pixdim: list[float],
    srow: list[float],
    sform_code: int,
    qform_code: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    header = nib.Nifti1Header()
    header["dim"][0] = ndim
    header["dim"][1:8] = dims
    header["pixdim"][1:4] = pixdim
    header["srow_x"], header["srow_y"], header["srow_z"] = srow[:4], srow[4:8], srow[8:]
    header["sform_code"], header["qform_code"] = sform_code, qform_code
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    path = tmp_path_factory.mktemp("nifti") / "h.nii.gz"
    with gzip.GzipFile(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4 + bytes(64))
    try:
        geometry = read_volume_geometry(path)
    except InputError as error:
        assert path.name in str(error)
        return
    assert isinstance(geometry, VolumeGeometry)
    assert all(np.isfinite(geometry.spacing)) and min(geometry.spacing) > 0
    assert np.all(np.isfinite(np.asarray(geometry.affine)))
    assert min(geometry.shape) >= 1
