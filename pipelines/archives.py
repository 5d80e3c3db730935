"""Safe extraction of zip and tar archives.

:func:`extract_archive` never writes outside its destination folder and never creates a link on
disk. Hostile members are rejected one by one (the rest of the archive is extracted); a
decompression bomb, a corrupt archive or a write failure refuses the whole archive and removes
what was extracted so far.

Decisions:
    * Members with an absolute path (``/x``, ``C:x``) or a ``..`` component are skipped and
      reported as :class:`UnsafeArchivePathError`; backslashes count as separators.
    * Symbolic and hard links are resolved lexically against the archive root. A link that leaves
      the root is reported as :class:`ArchiveLinkError`; a link that stays inside is written as a
      regular *copy* of its target once every other member is written (a link to a folder, or to
      a file the archive does not hold, is reported as :class:`ArchiveLinkError` too).
    * Devices, FIFOs, sockets and unknown member types: :class:`ArchiveSpecialFileError`.
    * Bombs: the declared sizes are checked before anything is written (zip: the central
      directory; tar: each header as the stream reaches it), then every chunk is counted while
      streaming, before it is written. Past ``max_total_bytes`` of output, or past ``max_ratio``
      expansion once more than :data:`RATIO_MIN_BYTES` came out (zip: per member, over its
      compressed size; tar: over the compressed bytes read so far), the whole archive is refused
      with :class:`DecompressionBombError`. Copies of links count too (their ratio is over the
      archive's size).
    * Member permissions, owners and times are not restored: files get the process's defaults.
"""

from __future__ import annotations

import logging
import lzma
import re
import shutil
import stat
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
    OutputError,
    SegflowError,
    UnsafeArchivePathError,
    get_settings,
)
from pipelines.files import require_nonempty_file

__all__ = [
    "ARCHIVE_SUFFIXES",
    "RATIO_MIN_BYTES",
    "ArchiveFormat",
    "ExtractionResult",
    "archive_format",
    "extract_archive",
    "is_archive",
]

logger = logging.getLogger(__name__)

ArchiveFormat = Literal["zip", "tar", "tar.gz", "tar.bz2", "tar.xz"]
_FORMATS: dict[str, ArchiveFormat] = {
    ".tar.gz": "tar.gz",
    ".tar.bz2": "tar.bz2",
    ".tar.xz": "tar.xz",
    ".tgz": "tar.gz",
    ".zip": "zip",
    ".tar": "tar",
}
#: Name endings recognised as archives (matched case-insensitively, longest first).
ARCHIVE_SUFFIXES: tuple[str, ...] = tuple(_FORMATS)
#: Members (zip) or archives (tar) that expand to no more than this are never ratio bombs.
RATIO_MIN_BYTES = 1 << 20

_TAR_MODES: dict[ArchiveFormat, Literal["r|", "r|gz", "r|bz2", "r|xz"]] = {
    "tar": "r|",
    "tar.gz": "r|gz",
    "tar.bz2": "r|bz2",
    "tar.xz": "r|xz",
}
_CHUNK_BYTES = 1 << 16
_MAX_ZIP_LINK_BYTES = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")
# What a damaged archive raises while it is decoded (gzip.BadGzipFile is an OSError).
_READ_ERRORS: tuple[type[Exception], ...] = (
    *(zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError),
    *(NotImplementedError, RuntimeError, ValueError),
)
_CONFLICT_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError)


@dataclass(frozen=True)
class ExtractionResult:
    """What :func:`extract_archive` did.

    Attributes:
        root: the destination folder, absolute.
        extracted: absolute paths of the regular files written, in archive order (folders are not
            listed; copies of in-archive links come last).
        rejected: one error per member that was not extracted (unsafe path, link, special file,
            name clash); each names ``"<archive>!<member>"`` as its path.
        total_bytes: bytes written.
    """

    root: Path
    extracted: tuple[Path, ...]
    rejected: tuple[SegflowError, ...]
    total_bytes: int


def archive_format(path: str | Path) -> ArchiveFormat | None:
    """The archive format implied by a file name, or ``None`` when it is not an archive name."""
    name = Path(path).name.lower()
    return next((fmt for suffix, fmt in _FORMATS.items() if name.endswith(suffix)), None)


def is_archive(path: str | Path) -> bool:
    """Whether ``path``'s name ends in one of :data:`ARCHIVE_SUFFIXES` (content not looked at)."""
    return archive_format(path) is not None


def extract_archive(
    archive: str | Path,
    destination: str | Path,
    *,
    max_total_bytes: int | None = None,
    max_ratio: float | None = None,
) -> ExtractionResult:
    """Extract a zip or tar archive into ``destination``, refusing anything unsafe.

    Args:
        archive: the archive, only read; its format is decided by its name.
        destination: folder to extract into; created if missing, and it must be empty.
        max_total_bytes: most bytes the extraction may write (default:
            ``get_settings().max_extract_bytes``).
        max_ratio: most expansion ratio allowed (default:
            ``get_settings().max_compression_ratio``).

    Returns:
        The files written and the members rejected.

    Raises:
        MissingFileError: the archive does not exist.
        EmptyFileError: the archive has 0 bytes.
        ArchiveError: its name is not an archive name, or it is corrupt, truncated, encrypted or
            not of the format its name says.
        DecompressionBombError: it expands beyond the size or ratio limits.
        OutputError: the destination is not an empty folder, or cannot be written.
    """
    archive, destination = Path(archive), Path(destination)
    fmt = archive_format(archive)
    if fmt is None:
        expected = ", ".join(ARCHIVE_SUFFIXES)
        raise ArchiveError(f"is not named like an archive ({expected})", path=archive)
    require_nonempty_file(archive)
    settings = get_settings()
    created = _prepare_destination(destination)
    extractor = _Extractor(
        archive,
        destination.resolve(),
        max_total_bytes if max_total_bytes is not None else settings.max_extract_bytes,
        max_ratio if max_ratio is not None else settings.max_compression_ratio,
    )
    try:
        if fmt == "zip":
            _extract_zip(extractor)
        else:
            _extract_tar(extractor, fmt)
        extractor.copy_links()
    except BaseException as error:
        _clean(destination, remove_folder=created)
        if isinstance(error, OSError) and not isinstance(error, SegflowError):
            # Reads are wrapped where they happen, so a bare OSError comes from writing.
            reason = f"extraction failed while writing ({error})"
            raise OutputError(reason, path=destination) from error
        raise
    return extractor.result()


def _prepare_destination(destination: Path) -> bool:
    """Create ``destination`` if needed; return whether it was created here."""
    if destination.exists():
        if not destination.is_dir() or any(destination.iterdir()):
            raise OutputError("must be an empty folder to extract into", path=destination)
        return False
    try:
        destination.mkdir(parents=True)
    except OSError as error:
        raise OutputError(f"cannot be created ({error.strerror})", path=destination) from error
    return True


def _clean(destination: Path, *, remove_folder: bool) -> None:
    if remove_folder:
        shutil.rmtree(destination, ignore_errors=True)
        return
    for child in destination.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _normalise(base: PurePosixPath, name: str, *, allow_parent: bool) -> PurePosixPath | None:
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
def _decoding(archive: Path, member: str = "") -> Iterator[None]:
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
            with _decoding(archive, member):
                chunk = source.read(_CHUNK_BYTES)
            if not chunk:
                return
            yield chunk


@dataclass
class _Extractor:
    """Writes members under ``root``, counts bytes, and keeps written / rejected / links."""

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

    def admit(self, name: str, kind: str, link: str = "") -> PurePosixPath | None:
        """Where a member goes, or ``None`` (after recording why) if it is not written now."""
        where = f"{self.archive}!{name}"
        relative = _normalise(PurePosixPath(), name, allow_parent=False)
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
            target = _normalise(base, link, allow_parent=True)
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
            with _decoding(self.archive, name):
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
                relative = _normalise(PurePosixPath(), name, allow_parent=False)
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

    def result(self) -> ExtractionResult:
        """The summary of a finished extraction."""
        return ExtractionResult(
            root=self.root,
            extracted=tuple(self.root / relative for relative in self.written),
            rejected=tuple(self.rejected),
            total_bytes=self.total,
        )

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


def _extract_zip(ex: _Extractor) -> None:
    with _decoding(ex.archive):
        zf = zipfile.ZipFile(ex.archive)
    with zf:
        infos = zf.infolist()
        ex.check_declared(sum(info.file_size for info in infos))
        for info in infos:
            ex.check_ratio(info.file_size, info.compress_size, f"member '{info.filename}'")
        for info in infos:
            kind, link = _zip_kind(zf, info, ex.archive)
            relative = ex.admit(info.filename, kind, link)
            if relative is None:
                continue

            def ratio(done: int, info: zipfile.ZipInfo = info) -> None:
                ex.check_ratio(done, info.compress_size, f"member '{info.filename}'")

            def open_member(info: zipfile.ZipInfo = info) -> IO[bytes]:
                return zf.open(info)

            ex.write(info.filename, relative, open_member, ratio)


def _zip_kind(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path) -> tuple[str, str]:
    """The member's kind (and link target) from its Unix mode bits, when it has them."""
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    if info.is_dir() or stat.S_ISDIR(mode):
        return "dir", ""
    if stat.S_ISLNK(mode):
        # Zip stores a symlink's target as the member's content.
        with _decoding(archive, info.filename), zf.open(info) as handle:
            return "symlink", handle.read(_MAX_ZIP_LINK_BYTES).decode("utf-8", "replace")
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        return "special", ""
    return "file", ""


def _extract_tar(ex: _Extractor, fmt: ArchiveFormat) -> None:
    declared = 0
    with ex.archive.open("rb") as raw:
        # Streamed, so headers are checked before their data is read. The ratio is the whole
        # stream's: bytes written over compressed bytes read so far.
        def ratio(_member_bytes: int) -> None:
            ex.check_ratio(ex.total, raw.tell(), "the archive")

        with _decoding(ex.archive):
            tar = tarfile.open(fileobj=raw, mode=_TAR_MODES[fmt])  # noqa: SIM115
        with tar:
            while True:
                with _decoding(ex.archive):
                    info = tar.next()
                if info is None:
                    return
                if info.isreg():
                    declared += info.size
                    ex.check_declared(declared)
                relative = ex.admit(info.name, _tar_kind(info), info.linkname)
                if relative is not None:

                    def open_member(info: tarfile.TarInfo = info) -> IO[bytes]:
                        handle = tar.extractfile(info)
                        if handle is None:
                            raise tarfile.ReadError(f"no data for {info.name}")
                        return handle

                    ex.write(info.name, relative, open_member, ratio)


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "special"
