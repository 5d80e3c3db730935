"""``s3://`` inputs and outputs (pipelines/services/object_store.py) against moto's in-process S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from data_contracts import ObjectStoreError, Settings, get_settings
from pipelines.services.object_store import (
    S3Location,
    download_prefix,
    local_source,
    staged_output_dir,
    upload_outputs,
)

BUCKET = "scans"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A moto S3 with one bucket; credentials only from the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    get_settings.cache_clear()
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client
    get_settings.cache_clear()


def _keys(client: Any, prefix: str = "") -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(obj["Key"] for obj in listed)


def test_uri_parsing() -> None:
    assert S3Location.parse("s3://b/some/prefix/") == S3Location("b", "some/prefix/")
    assert S3Location.parse("s3://b") == S3Location("b", "")
    assert S3Location("b", "masks").key_for("case.tif") == "masks/case.tif"
    for bad in ("s3://", "/local/path", "s3:/b/x"):
        with pytest.raises(ObjectStoreError, match=r"s3://|bucket"):
            S3Location.parse(bad)


def test_settings_read_endpoint_and_hide_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-print-me")
    settings = Settings()
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.s3_secret_access_key is not None
    assert "do-not-print-me" not in repr(settings) and "do-not-print-me" not in str(settings)
    monkeypatch.setenv("SEGFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9100")
    assert Settings().s3_endpoint_url == "http://127.0.0.1:9100"  # segflow's own name wins


def test_download_mirrors_a_prefix_once(s3: Any, tmp_path: Path) -> None:
    for key in ("incoming/a.tif", "incoming/sub/b.tif", "elsewhere/c.tif"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    files = download_prefix(f"s3://{BUCKET}/incoming/", tmp_path)
    assert [path.relative_to(tmp_path).as_posix() for path in files] == ["a.tif", "sub/b.tif"]
    assert (tmp_path / "sub" / "b.tif").read_bytes() == b"incoming/sub/b.tif"
    # Without the trailing slash the prefix is still a folder, not "incoming*".
    s3.put_object(Bucket=BUCKET, Key="incoming-old/d.tif", Body=b"d")
    again = download_prefix(f"s3://{BUCKET}/incoming", tmp_path / "again")
    assert sorted(path.name for path in again) == ["a.tif", "b.tif"]

    before = (tmp_path / "a.tif").stat().st_mtime_ns
    s3.put_object(Bucket=BUCKET, Key="incoming/sub/b.tif", Body=b"changed")
    download_prefix(f"s3://{BUCKET}/incoming/", tmp_path)
    assert (tmp_path / "a.tif").stat().st_mtime_ns == before  # unchanged: not downloaded again
    assert (tmp_path / "sub" / "b.tif").read_bytes() == b"changed"


def test_single_object_and_missing_locations(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="one/scan.nii.gz", Body=b"x")
    staged = local_source(f"s3://{BUCKET}/one/scan.nii.gz")
    assert Path(staged).name == "scan.nii.gz" and Path(staged).read_bytes() == b"x"
    assert Path(staged).is_relative_to(get_settings().staging_dir)
    with pytest.raises(ObjectStoreError, match="holds no object"):
        download_prefix(f"s3://{BUCKET}/nothing-here/", tmp_path)
    with pytest.raises(ObjectStoreError, match="NoSuchBucket"):
        download_prefix("s3://no-such-bucket/x/", tmp_path)


def test_keys_cannot_escape_the_staging_folder(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="in/../../escape.tif", Body=b"x")
    with pytest.raises(ObjectStoreError, match="outside the staging folder"):
        download_prefix(f"s3://{BUCKET}/in/", tmp_path / "stage")
    assert not (tmp_path / "escape.tif").exists()


def test_upload_sends_outputs_and_lineage_once(s3: Any, tmp_path: Path) -> None:
    out = staged_output_dir(f"s3://{BUCKET}/masks/run1")
    assert out.is_relative_to(get_settings().staging_dir)
    state = out / ".segflow"
    state.mkdir(parents=True)
    (out / "case1.tif").write_bytes(b"mask1")
    (out / "case1.lineage.json").write_text("{}")
    (out / "case2.tif.part").write_bytes(b"half")  # a killed write: never uploaded
    for name in ("ledger.sqlite", "ledger.sqlite-wal", "lock", "ledger.json"):
        (state / name).write_text(name)

    uploaded = upload_outputs(out, f"s3://{BUCKET}/masks/run1/")
    assert sorted(uploaded) == [
        "masks/run1/.segflow/ledger.json",
        "masks/run1/case1.lineage.json",
        "masks/run1/case1.tif",
    ]
    assert _keys(s3, "masks/") == sorted(uploaded)
    assert upload_outputs(out, f"s3://{BUCKET}/masks/run1/") == []  # nothing new
    s3.delete_object(Bucket=BUCKET, Key="masks/run1/case1.tif")
    assert upload_outputs(out, f"s3://{BUCKET}/masks/run1/") == ["masks/run1/case1.tif"]
    body = s3.get_object(Bucket=BUCKET, Key="masks/run1/case1.tif")["Body"].read()
    assert body == b"mask1"


def test_upload_to_a_missing_bucket_is_a_clear_error(s3: Any, tmp_path: Path) -> None:
    (tmp_path / "case.tif").write_bytes(b"m")
    with pytest.raises(ObjectStoreError, match="no-such-bucket"):
        upload_outputs(tmp_path, "s3://no-such-bucket/masks/")
