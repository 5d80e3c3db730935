"""Packing datasets into archives, and the demo's sample archive."""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import IO, cast

from pipelines.files import atomic_output
from pipelines.io.archives import archive_format
from pipelines.synthetic.rasters import make_raster_dataset
from pipelines.synthetic.volumes import make_volume_dataset


def _compressor(raw: IO[bytes], fmt: str) -> IO[bytes]:
    """A deterministic compressing writer (gzip with mtime 0, no file name)."""
    if fmt == "tar.gz":
        return cast(IO[bytes], gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0))
    if fmt == "tar.bz2":
        return cast(IO[bytes], bz2.BZ2File(raw, "wb"))
    if fmt == "tar.xz":
        return cast(IO[bytes], lzma.LZMAFile(raw, "wb"))
    return raw


def pack_archive(folder: str | Path, archive: str | Path) -> Path:
    """Pack every file under ``folder`` into a zip or tar archive chosen by ``archive``'s suffix.

    Members are named relative to ``folder`` (``images/a.tif``), sorted, with fixed times and
    permissions, so the same files give the same bytes.

    Args:
        folder: the folder to pack (it is not itself a member).
        archive: the archive to write (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``,
            ``.tar.xz``); written atomically.

    Returns:
        ``archive``.

    Raises:
        ValueError: the suffix is not an archive suffix.
    """
    folder, archive = Path(folder), Path(archive)
    fmt = archive_format(archive)
    if fmt is None:
        raise ValueError(f"{archive}: not an archive suffix (.zip, .tar, .tar.gz, …)")
    files = sorted(
        path for path in folder.rglob("*") if path.is_file() and path.resolve() != archive.resolve()
    )
    with atomic_output(archive) as temp:
        if fmt == "zip":
            with zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in files:
                    info = zipfile.ZipInfo(
                        path.relative_to(folder).as_posix(), (1980, 1, 1, 0, 0, 0)
                    )
                    info.external_attr = 0o100644 << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(info, path.read_bytes())
        else:
            with (
                temp.open("wb") as raw,
                _compressor(raw, fmt) as stream,
                tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                for path in files:
                    member = tarfile.TarInfo(path.relative_to(folder).as_posix())
                    member.size, member.mode = path.stat().st_size, 0o644
                    with path.open("rb") as handle:
                        tar.addfile(member, handle)
    return archive


def make_sample_archive(destination: str | Path, *, seed: int = 0) -> Path:
    """Write the demo's sample: one zip with ``volumes/`` (nnU-Net layout) and ``rasters/``.

    Sizes suit a few minutes of CPU training: 8 two-channel volumes of 40×40×24 voxels
    (LPS, 0.9×1.1×3 mm, 2 classes) and 4 three-band 128×128 tiles in EPSG:32633 (2 classes).

    Args:
        destination: the archive path (ending in ``.zip``), or a folder to write
            ``segflow_sample.zip`` into. The datasets are staged in a temporary folder beside
            the archive, removed afterwards.
        seed: random seed.

    Returns:
        The archive's path.
    """
    destination = Path(destination)
    archive = destination if destination.suffix == ".zip" else destination / "segflow_sample.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".segflow-sample-", dir=archive.parent) as staging:
        make_volume_dataset(
            Path(staging) / "volumes", n_cases=8, shape=(40, 40, 24), n_channels=2, seed=seed
        )
        make_raster_dataset(Path(staging) / "rasters", n_tiles=4, size=(128, 128), seed=seed + 1)
        return pack_archive(staging, archive)
