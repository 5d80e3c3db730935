"""Archive members, one at a time: where each may go, and writing it within the bomb limits.

:class:`MemberWriter` is what :func:`pipelines.io.archives.extract_archive` hands every member
to, whatever the archive's format. It decides whether a member is written (a regular file with
a safe path), created (a folder), kept for later (a link inside the archive, written as a copy
once every other member is written) or rejected with the reason (unsafe path, link leaving the
archive, special file, name clash); it streams the member's bytes under its root, counting
them against the archive's size and ratio limits before each chunk is written.
"""

from __future__ import annotations

import logging
import lzma
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from data_contracts import (
    ArchiveError,
    ArchiveLinkError,
    ArchiveSpecialFileError,
    DecompressionBombError,
    SegflowError,
    UnsafeArchivePathError,
)

__all__ = ["RATIO_MIN_BYTES", "MemberKind", "MemberWriter", "decoding", "normalise_member"]

logger = logging.getLogger(__name__)

#: Members (zip) or archives (tar) that expand to no more than this are never ratio bombs.
RATIO_MIN_BYTES = 1 << 20

MemberKind = Literal["file", "dir", "symlink", "hardlink", "special"]

_CHUNK_BYTES = 1 << 16
_DRIVE = re.compile(r"^[A-Za-z]:")
# What a damaged archive raises while it is decoded (gzip.BadGzipFile is an OSError).
_READ_ERRORS: tuple[type[Exception], ...] = (
    *(zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError),
    *(NotImplementedError, RuntimeError, ValueError),
)
_CONFLICT_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError)


def normalise_member(base: PurePosixPath, name: str, *, allow_parent: bool) -> PurePosixPath | None:
    """``base / name`` normalised, or ``None`` if absolute or (not allowed to) climb with ``..``."""
    name = name.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        return None
    parts = list(base.parts)
    for part in name.split("/"):
        if part == "..":
            if not allow_parent or not parts:
                return None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return PurePosixPath(*parts)


@contextmanager
def decoding(archive: Path, member: str = "") -> Iterator[None]:
    """Turn the errors of a damaged archive into :class:`ArchiveError` (wrap reads only)."""
    try:
        yield
    except _READ_ERRORS as error:
        where = f" at member '{member}'" if member else ""
        reason = f"is corrupt, truncated, encrypted or not what its name says{where} ({error})"
        raise ArchiveError(reason, path=archive) from error


def _chunks(source: IO[bytes], archive: Path, member: str) -> Iterator[bytes]:
    with source:
        while True:
            with decoding(archive, member):
                chunk = source.read(_CHUNK_BYTES)
            if not chunk:
                return
            yield chunk


@dataclass
class MemberWriter:
    """Writes members under ``root``, counts bytes, and keeps written / rejected / links.

    Attributes:
        archive: the archive being extracted (named in every error).
        root: the destination folder, absolute.
        max_total_bytes: most bytes the extraction may write.
        max_ratio: most expansion ratio allowed.
        total: bytes written so far.
        written: the members written, relative to ``root``, in order (a dict used as a set).
        rejected: one error per member not extracted.
        links: in-archive links ``(member name, target)`` still to be copied.
    """

    archive: Path
    root: Path
    max_total_bytes: int
    max_ratio: float
    total: int = 0
    written: dict[PurePosixPath, None] = field(default_factory=dict)
    rejected: list[SegflowError] = field(default_factory=list)
    links: list[tuple[str, PurePosixPath]] = field(default_factory=list)

    def check_declared(self, declared: int) -> None:
        """Refuse the archive if its headers already declare too many bytes."""
        if declared > self.max_total_bytes:
            raise DecompressionBombError(
                f"declares {declared} bytes of content, more than the limit of "
                f"{self.max_total_bytes} bytes",
                path=self.archive,
            )

    def check_ratio(self, expanded: int, compressed: int, what: str) -> None:
        """Refuse the archive if ``what`` expands more than ``max_ratio``-fold."""
        if expanded > RATIO_MIN_BYTES and expanded > self.max_ratio * max(compressed, 1):
            raise DecompressionBombError(
                f"{what} expands {expanded / max(compressed, 1):.0f}-fold ({compressed} bytes "
                f"to {expanded} or more), more than the limit of {self.max_ratio:g}-fold",
                path=self.archive,
            )

    def admit(self, name: str, kind: MemberKind, link: str = "") -> PurePosixPath | None:
        """Where a member goes, or ``None`` (after recording why) if it is not written now."""
        where = f"{self.archive}!{name}"
        relative = normalise_member(PurePosixPath(), name, allow_parent=False)
        if relative is None:
            absolute = name.replace("\\", "/").startswith("/") or _DRIVE.match(name)
            reason = "has an absolute path" if absolute else "climbs out of the folder with '..'"
            self._reject(UnsafeArchivePathError(f"{reason}; it was not extracted", path=where))
        elif kind == "special":
            reason = "is a device, FIFO or other special file; it was not extracted"
            self._reject(ArchiveSpecialFileError(reason, path=where))
        elif kind in ("symlink", "hardlink"):
            # A symlink is relative to its own folder, a tar hard link to the archive root.
            base = relative.parent if kind == "symlink" else PurePosixPath()
            target = normalise_member(base, link, allow_parent=True)
            if target is None:
                reason = f"is a link to '{link}', outside the archive; it was not extracted"
                self._reject(ArchiveLinkError(reason, path=where))
            elif target != relative:  # a link to itself adds nothing
                self.links.append((name, target))
        elif kind == "dir":
            try:
                (self.root / relative).mkdir(parents=True, exist_ok=True)
            except _CONFLICT_ERRORS as error:
                self._clash(name, error)
        else:
            return relative
        return None

    def write(
        self,
        name: str,
        relative: PurePosixPath,
        open_source: Callable[[], IO[bytes]],
        ratio: Callable[[int], None],
    ) -> None:
        """Stream one member to ``root / relative``; ``ratio(member_bytes)`` raises on a bomb."""
        target = self.root / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            out = target.open("wb")
        except _CONFLICT_ERRORS as error:
            self._clash(name, error)
            return
        with out:
            with decoding(self.archive, name):
                source = open_source()
            member_bytes = 0
            for chunk in _chunks(source, self.archive, name):
                member_bytes += len(chunk)
                self._count(len(chunk), name)
                ratio(member_bytes)
                out.write(chunk)
        self.written[relative] = None

    def copy_links(self) -> None:
        """Write in-archive links as copies of their targets (repeated for links to links).

        Copies count toward both limits; their ratio is over the archive's size, so that many
        links to one big file are a bomb too.
        """
        archive_bytes = self.archive.stat().st_size

        def ratio(_member_bytes: int) -> None:
            self.check_ratio(self.total, archive_bytes, "the archive, with its links copied,")

        pending = self.links
        while pending:
            unresolved = []
            for name, target in pending:
                relative = normalise_member(PurePosixPath(), name, allow_parent=False)
                if target in self.written and relative is not None:
                    self.write(name, relative, _opener(self.root / target), ratio)
                else:
                    unresolved.append((name, target))
            if len(unresolved) == len(pending):
                break
            pending = unresolved
        for name, target in pending:
            reason = f"is a link to '{target}', which is not a file in the archive; not extracted"
            self._reject(ArchiveLinkError(reason, path=f"{self.archive}!{name}"))
        self.links = []

    def _count(self, size: int, name: str) -> None:
        self.total += size
        if self.total > self.max_total_bytes:
            raise DecompressionBombError(
                f"expands past the limit of {self.max_total_bytes} bytes (reached while "
                f"extracting '{name}')",
                path=self.archive,
            )

    def _reject(self, error: SegflowError) -> None:
        logger.info("%s", error)
        self.rejected.append(error)

    def _clash(self, name: str, error: OSError) -> None:
        reason = f"clashes with another member's path ({error.strerror}); it was not extracted"
        self._reject(ArchiveError(reason, path=f"{self.archive}!{name}"))


def _opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: path.open("rb")
