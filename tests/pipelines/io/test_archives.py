"""Tests of pipelines.io.archives: hostile members are rejected, bombs refused, nothing escapes."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

from data_contracts import (
    ArchiveError,
    ArchiveLinkError,
    ArchiveSpecialFileError,
    DecompressionBombError,
    EmptyFileError,
    MissingFileError,
    OutputError,
    UnsafeArchivePathError,
)
from pipelines.files import sha256_file
from pipelines.io import archives
from pipelines.io.archive_members import RATIO_MIN_BYTES, MemberWriter
from pipelines.io.archives import extract_archive, is_archive

GOOD = {"images/a_0000.txt": b"image a", "labels/a.txt": b"label a", "readme.txt": b"hi"}
TAR_SUFFIXES = [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"]
_TAR_WRITE_MODES: dict[str, Literal["w", "w:gz", "w:bz2", "w:xz"]] = {
    "gz": "w:gz",
    "tgz": "w:gz",
    "bz2": "w:bz2",
    "xz": "w:xz",
}


def _snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _written_outside(root: Path, before: set[Path], destination: Path) -> set[Path]:
    """New paths that are neither inside ``destination`` nor the folders leading to it."""
    leading = {destination, *destination.parents}
    return {
        p for p in _snapshot(root) - before if p not in leading and destination not in p.parents
    }


def _zip(path: Path, members: dict[Any, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar_info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _tar(path: Path, files: dict[str, bytes], specials: Sequence[tarfile.TarInfo] = ()) -> Path:
    mode = _TAR_WRITE_MODES.get(path.name.split(".")[-1], "w")
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = _tar_info(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in specials:
            tar.addfile(info)
    return path


def _build(path: Path, files: dict[str, bytes]) -> Path:
    return _zip(path, dict(files)) if path.suffix == ".zip" else _tar(path, files)


def _member(error: object) -> str:
    """The member name of a per-member rejection (its path is ``<archive>!<member>``)."""
    assert isinstance(error, ArchiveError) and error.path is not None
    return error.path.split("!", 1)[1]


def _zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = 0o120777 << 16
    return info, target.encode()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.zip", True),
        ("A.ZIP", True),
        ("a.tar", True),
        ("a.tar.gz", True),
        ("a.tgz", True),
        ("a.tar.bz2", True),
        ("a.tar.xz", True),
        ("a.nii.gz", False),
        ("a.gz", False),
        ("a.zip.part", False),
        ("tif", False),
    ],
)
def test_is_archive_decides_by_name(name: str, expected: bool) -> None:
    assert is_archive(Path(name)) is expected
    assert (archives.archive_format(name) is not None) is expected
    assert all(suffix.startswith(".") for suffix in archives.ARCHIVE_SUFFIXES)


def test_zip_good_members_are_extracted_and_input_is_untouched(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "good.zip", dict(GOOD))
    digest = sha256_file(archive)
    result = extract_archive(archive, tmp_path / "out")
    assert result.root == (tmp_path / "out").resolve()
    assert sorted(p.relative_to(result.root).as_posix() for p in result.extracted) == sorted(GOOD)
    assert all((result.root / name).read_bytes() == data for name, data in GOOD.items())
    assert result.rejected == ()
    assert result.total_bytes == sum(len(data) for data in GOOD.values())
    assert sha256_file(archive) == digest


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../evil.txt", "'..'"),
        ("images/../../evil.txt", "'..'"),
        ("..\\evil.txt", "'..'"),
        ("/abs.txt", "absolute"),
        ("C:/evil.txt", "absolute"),
    ],
)
def test_zip_unsafe_paths_are_rejected_per_member(tmp_path: Path, member: str, reason: str) -> None:
    archive = _zip(tmp_path / "hostile.zip", {**GOOD, zipfile.ZipInfo(member): b"pwned"})
    destination = tmp_path / "deep" / "out"
    before = _snapshot(tmp_path)
    result = extract_archive(archive, destination)
    assert len(result.extracted) == len(GOOD)
    [error] = result.rejected
    assert isinstance(error, UnsafeArchivePathError)
    assert error.path == f"{archive}!{member}"
    assert reason in str(error) and str(error).startswith(f"{archive}!{member}: ")
    assert _written_outside(tmp_path, before, destination) == set()
    assert not any(b"pwned" in p.read_bytes() for p in destination.rglob("*") if p.is_file())


@pytest.mark.parametrize("suffix", TAR_SUFFIXES)
def test_tar_links_and_special_files(tmp_path: Path, suffix: str) -> None:
    specials = [
        _tar_info("images/out_abs", tarfile.SYMTYPE, "/etc/passwd"),
        _tar_info("images/out_rel", tarfile.SYMTYPE, "../../outside.txt"),
        _tar_info("hard_out", tarfile.LNKTYPE, "../outside.txt"),
        _tar_info("images/inside_link", tarfile.SYMTYPE, "a_0000.txt"),
        _tar_info("inside_hard", tarfile.LNKTYPE, "labels/a.txt"),
        _tar_info("dev/char", tarfile.CHRTYPE),
        _tar_info("dev/block", tarfile.BLKTYPE),
        _tar_info("dev/fifo", tarfile.FIFOTYPE),
    ]
    archive = _tar(tmp_path / f"hostile{suffix}", dict(GOOD), specials)
    destination = tmp_path / "out"
    before = _snapshot(tmp_path)
    result = extract_archive(archive, destination)

    kinds = {_member(error): type(error) for error in result.rejected}
    assert kinds == {
        "images/out_abs": ArchiveLinkError,
        "images/out_rel": ArchiveLinkError,
        "hard_out": ArchiveLinkError,
        "dev/char": ArchiveSpecialFileError,
        "dev/block": ArchiveSpecialFileError,
        "dev/fifo": ArchiveSpecialFileError,
    }
    # Links inside the archive become regular copies; no link or device exists on disk.
    assert (destination / "images/inside_link").read_bytes() == GOOD["images/a_0000.txt"]
    assert (destination / "inside_hard").read_bytes() == GOOD["labels/a.txt"]
    assert len(result.extracted) == len(GOOD) + 2
    on_disk = list(destination.rglob("*"))
    assert all(p.is_dir() or (p.is_file() and not p.is_symlink()) for p in on_disk)
    assert _written_outside(tmp_path, before, destination) == set()


def test_zip_symlinks_are_checked_like_tar_links(tmp_path: Path) -> None:
    out_info, out_target = _zip_symlink("images/escape", "../../../etc/passwd")
    in_info, in_target = _zip_symlink("images/copy", "a_0000.txt")
    archive = _zip(tmp_path / "links.zip", {**GOOD, out_info: out_target, in_info: in_target})
    result = extract_archive(archive, tmp_path / "out")
    [error] = result.rejected
    assert isinstance(error, ArchiveLinkError) and error.path == f"{archive}!images/escape"
    assert (tmp_path / "out/images/copy").read_bytes() == GOOD["images/a_0000.txt"]
    assert not (tmp_path / "out/images/escape").exists()


def test_links_to_folders_or_missing_files_are_rejected(tmp_path: Path) -> None:
    specials = [
        _tar_info("to_dir", tarfile.SYMTYPE, "images"),
        _tar_info("dangling", tarfile.SYMTYPE, "nowhere.txt"),
        _tar_info("chain", tarfile.SYMTYPE, "link_to_readme"),
        _tar_info("link_to_readme", tarfile.SYMTYPE, "readme.txt"),
    ]
    result = extract_archive(_tar(tmp_path / "l.tar", dict(GOOD), specials), tmp_path / "out")
    rejected = {_member(error) for error in result.rejected}
    assert rejected == {"to_dir", "dangling"}
    assert all(isinstance(error, ArchiveLinkError) for error in result.rejected)
    assert (tmp_path / "out/chain").read_bytes() == GOOD["readme.txt"]


def test_many_links_to_one_big_file_are_a_bomb(tmp_path: Path) -> None:
    links = [_tar_info(f"copy_{i}", tarfile.LNKTYPE, "big.bin") for i in range(6)]
    archive = _tar(tmp_path / "links.tar", {"big.bin": bytes(RATIO_MIN_BYTES)}, links)
    with pytest.raises(DecompressionBombError, match="links copied"):
        extract_archive(archive, tmp_path / "out", max_ratio=3)
    assert not (tmp_path / "out").exists()


def test_member_clashing_with_a_file_is_rejected(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "clash.tar", {"a": b"file", "a/b": b"under a file", "c": b"ok"})
    result = extract_archive(archive, tmp_path / "out")
    [error] = result.rejected
    assert type(error) is ArchiveError and error.path == f"{archive}!a/b"
    assert (tmp_path / "out/c").read_bytes() == b"ok"


@pytest.mark.parametrize("suffix", [".zip", ".tar.bz2"])
def test_declared_size_over_the_limit_is_a_bomb(tmp_path: Path, suffix: str) -> None:
    zeros = {**GOOD, "images/bomb_0000.txt": bytes(3 << 20)}
    archive = _build(tmp_path / f"bomb{suffix}", zeros)
    before = _snapshot(tmp_path)
    with pytest.raises(DecompressionBombError, match="limit of 1000000 bytes"):
        extract_archive(archive, tmp_path / "out", max_total_bytes=1_000_000)
    assert _snapshot(tmp_path) == before  # the destination it created is gone again


@pytest.mark.parametrize("suffix", [".zip", ".tar.xz"])
def test_ratio_over_the_limit_is_a_bomb(tmp_path: Path, suffix: str) -> None:
    zeros = {"readme.txt": b"hi", "images/bomb_0000.txt": bytes(2 << 20)}
    archive = _build(tmp_path / f"bomb{suffix}", zeros)
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(DecompressionBombError, match="-fold"):
        extract_archive(archive, destination, max_ratio=50)
    assert list(destination.iterdir()) == []  # emptied, but the folder it was given is kept


def test_small_members_are_never_ratio_bombs(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "zeros.zip", {"zeros.bin": bytes(RATIO_MIN_BYTES)})
    result = extract_archive(archive, tmp_path / "out", max_ratio=2)
    assert result.total_bytes == RATIO_MIN_BYTES


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_streaming_counter_catches_lying_headers(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the headers declared nothing: only the byte counter stands between us and the bomb.
    monkeypatch.setattr(MemberWriter, "check_declared", lambda self, declared: None)
    zeros = {**GOOD, "images/bomb_0000.txt": bytes(3 << 20)}
    archive = _build(tmp_path / f"bomb{suffix}", zeros)
    before = _snapshot(tmp_path)
    with pytest.raises(DecompressionBombError, match="expands past the limit"):
        extract_archive(archive, tmp_path / "out", max_total_bytes=1_000_000, max_ratio=1e9)
    assert _snapshot(tmp_path) == before


def test_empty_and_missing_archives(tmp_path: Path) -> None:
    (tmp_path / "empty.zip").write_bytes(b"")
    with pytest.raises(EmptyFileError):
        extract_archive(tmp_path / "empty.zip", tmp_path / "out")
    with pytest.raises(MissingFileError):
        extract_archive(tmp_path / "missing.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("text.zip", b"not an archive at all\n" * 10),
        ("text.tar", b"not an archive at all\n" * 10),
        ("text.tar.gz", b"not an archive at all\n" * 10),
        ("zip_named.tar.gz", None),
        ("truncated.zip", "half"),
        ("truncated.tar.gz", "half"),
        ("notes.txt", b"an archive by content, not by name"),
    ],
)
def test_corrupt_or_misnamed_archives_raise_archive_error(
    tmp_path: Path, name: str, content: bytes | str | None
) -> None:
    path = tmp_path / name
    if content is None:
        path.write_bytes(_zip(tmp_path / "real.zip", dict(GOOD)).read_bytes())
    elif content == "half":
        payload = {**GOOD, "noise.bin": os.urandom(200_000)}
        data = _build(tmp_path / f"full_{name}", payload).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    with pytest.raises(ArchiveError) as raised:
        extract_archive(path, tmp_path / "out")
    assert type(raised.value) is ArchiveError
    assert str(raised.value).startswith(f"{path}: ")
    assert not (tmp_path / "out").exists()


def test_destination_must_be_empty(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "good.zip", dict(GOOD))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="empty folder"):
        extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_limits_default_to_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_contracts.settings import get_settings

    monkeypatch.setenv("SEGFLOW_MAX_EXTRACT_BYTES", "1000")
    get_settings.cache_clear()
    try:
        archive = _zip(tmp_path / "big.zip", {"big.bin": bytes(5000)})
        with pytest.raises(DecompressionBombError, match="limit of 1000 bytes"):
            extract_archive(archive, tmp_path / "out")
    finally:
        get_settings.cache_clear()
