"""``s3://`` inputs and outputs: staged through local folders, uploaded whole.

Inputs under an ``s3://bucket/prefix`` are downloaded once into
``$SEGFLOW_HOME/staging/inputs/<bucket>/<prefix>`` (a rerun downloads only objects whose size or
ETag changed), and the batch reads the local copy. Outputs for ``s3://bucket/prefix`` are written
into ``$SEGFLOW_HOME/staging/outputs/<bucket>/<prefix>`` (the batch's ledger and lock live there,
on local disk, where sqlite and flock are reliable), then each file is uploaded whole: an S3 PUT
or a completed multipart upload is atomic, so a reader never sees half a mask. A rerun uploads
only what is missing or changed remotely.

Endpoint, region and credentials come from :class:`data_contracts.Settings` (the environment).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from data_contracts import ObjectStoreError, Settings, get_settings
from pipelines.services.ledger import LEDGER_JSON, STATE_DIR

__all__ = [
    "S3Location",
    "download_prefix",
    "is_s3_uri",
    "local_source",
    "s3_client",
    "staged_output_dir",
    "upload_outputs",
]

logger = logging.getLogger(__name__)

_INDEX = ".segflow-s3-index.json"
_UPLOADS = "uploads.json"
# Errors that say the location itself is wrong: not worth a retry.
_PERMANENT_CODES = {"NoSuchBucket", "NoSuchKey", "AccessDenied", "InvalidAccessKeyId", "404", "403"}


def is_s3_uri(location: str | Path) -> bool:
    """True for ``s3://…`` strings (a ``Path`` never is: it collapses the double slash)."""
    return isinstance(location, str) and location.startswith("s3://")


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading slash; empty for the whole bucket)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        """Split ``s3://bucket/some/prefix``.

        Raises:
            ObjectStoreError: not an ``s3://`` URI, or no bucket.
        """
        if not is_s3_uri(uri):
            raise ObjectStoreError("is not an s3:// URI", path=uri)
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ObjectStoreError("names no bucket", path=uri)
        return cls(bucket, prefix)

    @property
    def uri(self) -> str:
        """The location as ``s3://bucket/prefix``."""
        return f"s3://{self.bucket}/{self.prefix}"

    def key_for(self, relative: str) -> str:
        """The object key of ``relative`` under this prefix."""
        return str(PurePosixPath(self.prefix) / relative) if self.prefix else relative


def s3_client(settings: Settings | None = None) -> Any:
    """A boto3 S3 client for the configured endpoint, region and credentials."""
    import boto3
    from botocore.config import Config

    settings = settings or get_settings()
    secret = settings.s3_secret_access_key
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
    )


@contextlib.contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn S3's definitive refusals into :class:`ObjectStoreError` (not retried); network
    errors pass through as they are, for the caller's retries."""
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code not in _PERMANENT_CODES:
            raise
        raise ObjectStoreError(f"S3 refused the request ({code})", path=uri) from error


def _objects(client: Any, location: S3Location) -> Iterator[dict[str, Any]]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=location.bucket, Prefix=location.prefix):
        yield from page.get("Contents", [])


def _local_path(root: Path, relative: str, uri: str) -> Path:
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ObjectStoreError(
            f"object key {relative!r} would land outside the staging folder", path=uri
        )
    return target


def _listing(client: Any, location: S3Location) -> tuple[list[dict[str, Any]], str]:
    """The objects ``location`` names and the key prefix to strip from them.

    ``s3://b/scans/`` (or a whole bucket) is a folder. ``s3://b/scans`` is the object ``scans``
    when there is one, else the folder ``scans/``.
    """
    listed = [obj for obj in _objects(client, location) if not obj["Key"].endswith("/")]
    prefix = location.prefix
    if not prefix or prefix.endswith("/"):
        return listed, prefix
    exact = [obj for obj in listed if obj["Key"] == prefix]
    if exact:
        return exact, prefix[: prefix.rfind("/") + 1]
    return [obj for obj in listed if obj["Key"].startswith(prefix + "/")], prefix + "/"


def download_prefix(uri: str, destination: Path, *, client: Any = None) -> list[Path]:
    """Mirror every object under ``uri`` into ``destination``; unchanged objects are kept.

    A single object (``s3://bucket/scan.nii.gz``) is downloaded as one file. Downloads land in a
    temporary name and are renamed when complete (boto3's own behaviour).

    Returns:
        The local files, in key order.

    Raises:
        ObjectStoreError: no such bucket, access denied, or nothing under ``uri``.
    """
    location, client = S3Location.parse(uri), client or s3_client()
    destination.mkdir(parents=True, exist_ok=True)
    index_path = destination / _INDEX
    index: dict[str, str] = json.loads(index_path.read_text()) if index_path.exists() else {}
    files: list[Path] = []
    try:
        with _s3_errors(uri):
            listed, base = _listing(client, location)
            if not listed:
                raise ObjectStoreError("holds no object", path=uri)
            for obj in sorted(listed, key=lambda item: item["Key"]):
                relative = obj["Key"][len(base) :]
                target = _local_path(destination, relative, uri)
                stamp = f"{obj['Size']}:{obj.get('ETag', '')}"
                if index.get(relative) != stamp or not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(location.bucket, obj["Key"], str(target))
                    index[relative] = stamp
                files.append(target)
    finally:
        if index:
            index_path.write_text(json.dumps(index, indent=1, sort_keys=True))
    logger.info("staged %d object(s) from %s into %s", len(files), uri, destination)
    return files


def _staging_path(kind: str, location: S3Location, settings: Settings) -> Path:
    parts = [part for part in PurePosixPath(location.prefix).parts if part not in ("", ".", "..")]
    return settings.staging_dir / kind / location.bucket / Path(*parts)


def local_source(source: str | Path, *, settings: Settings | None = None) -> str | Path:
    """``source`` itself when local; for ``s3://`` the staged local copy (downloaded now)."""
    if not is_s3_uri(source):
        return source
    location = S3Location.parse(str(source))
    destination = _staging_path("inputs", location, settings or get_settings())
    files = download_prefix(location.uri, destination)
    if location.prefix.endswith("/"):
        return destination
    single_object = destination / PurePosixPath(location.prefix).name
    return single_object if files == [single_object] else destination


def staged_output_dir(out: str | Path, *, settings: Settings | None = None) -> Path:
    """The local folder a batch writes into: ``out`` itself, or the staging folder of an URI."""
    if not is_s3_uri(out):
        return Path(out)
    return _staging_path("outputs", S3Location.parse(str(out)), settings or get_settings())


def _uploadable(local_dir: Path) -> Iterator[Path]:
    for path in sorted(local_dir.rglob("*")):
        relative = path.relative_to(local_dir)
        if not path.is_file() or path.name.endswith(".part"):
            continue
        if relative.parts[0] == STATE_DIR and relative.name != LEDGER_JSON:
            continue  # the ledger database and lock stay local; its JSON export is lineage
        yield path


def upload_outputs(local_dir: Path, uri: str, *, client: Any = None) -> list[str]:
    """Upload every finished output under ``local_dir`` to ``uri``, each as one whole object.

    A file is uploaded again only when it changed locally since its last upload (size and
    modification time, recorded in ``.segflow/uploads.json``) or is missing remotely, so a rerun
    uploads only what a past run did not. The ledger's JSON export is uploaded (lineage); the
    ledger database, its lock and temporary ``.part`` files are not.

    Returns:
        The keys uploaded by this call.

    Raises:
        ObjectStoreError: no such bucket or access denied.
    """
    location, client = S3Location.parse(uri), client or s3_client()
    index_path = local_dir / STATE_DIR / _UPLOADS
    index: dict[str, str] = json.loads(index_path.read_text()) if index_path.exists() else {}
    uploaded: list[str] = []
    try:
        with _s3_errors(uri):
            remote = {obj["Key"]: obj["Size"] for obj in _objects(client, location)}
            for path in _uploadable(local_dir):
                key = location.key_for(path.relative_to(local_dir).as_posix())
                stat = path.stat()
                stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
                if remote.get(key) == stat.st_size and index.get(key) == stamp:
                    continue
                client.upload_file(str(path), location.bucket, key)
                index[key] = stamp
                uploaded.append(key)
    finally:
        if uploaded:
            index_path.parent.mkdir(parents=True, exist_ok=True)
            index_path.write_text(json.dumps(index, indent=1, sort_keys=True))
    logger.info("uploaded %d file(s) from %s to %s", len(uploaded), local_dir, uri)
    return uploaded
