"""Safe extraction of zip and tar archives.

:func:`extract_archive` never writes outside its destination folder and never creates a link on
disk. Hostile members are rejected one by one (the rest of the archive is extracted); a
decompression bomb refuses the whole archive.

Decisions:
    * Members with an absolute path (``/x``, ``C:x``) or a ``..`` component are skipped and
      reported as :class:`UnsafeArchivePathError`; backslashes count as separators.
    * Symbolic and hard links are resolved lexically against the archive root. A link that leaves
      the root is reported as :class:`ArchiveLinkError`; a link that stays inside is extracted as a
      regular *copy* of its target file once every other member is written (a link to a folder,
      or to a file the archive does not hold, is reported as :class:`ArchiveLinkError` too).
    * Devices, FIFOs, sockets and unknown member types are reported as
      :class:`ArchiveSpecialFileError`.
    * Bombs: the declared sizes are checked before anything is written (zip: the central
      directory; tar: each header as the stream reaches it), then every chunk is counted while
      streaming, before it is written. Past ``max_total_bytes`` of output, or past ``max_ratio``
      expansion once more than :data:`RATIO_MIN_BYTES` came out (zip: per member, over its
      compressed size; tar: over the compressed bytes read so far), the whole archive is refused
      with :class:`DecompressionBombError`.
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
from contextlib import ExitStack
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
    "ExtractionResult",
    "archive_format",
    "extract_archive",
    "is_archive",
]

logger = logging.getLogger(__name__)

ArchiveFormat = Literal["zip", "tar", "tar.gz", "tar.bz2", "tar.xz"]

#: Name endings recognised as archives, longest first, with the format each one implies.
ARCHIVE_SUFFIXES: dict[str, ArchiveFormat] = {
    ".tar.gz": "tar.gz",
    ".tar.bz2": "tar.bz2",
    ".tar.xz": "tar.xz",
    ".tgz": "tar.gz",
    ".zip": "zip",
    ".tar": "tar",
}
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
_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)
_CONFLICT_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError)

MemberKind = Literal["file", "dir", "symlink", "hardlink", "special"]


@dataclass(frozen=True)
class ExtractionResult:
    """What :func:`extract_archive` did.

    Attributes:
        root: the destination folder, absolute.
        extracted: absolute paths of the regular files written, in archive order (folders are not
            listed; link copies come last).
        rejected: one error per member that was not extracted (unsafe path, link, special file,
            name conflict); ``str(error)`` names ``"<archive>!<member>"``.
        total_bytes: bytes written.
    """

    root: Path
    extracted: tuple[Path, ...]
    rejected: tuple[SegflowError, ...]
    total_bytes: int


@dataclass(frozen=True)
class _Member:
    name: str
    kind: MemberKind
    link: str = ""


@dataclass
class _Budget:
    """Counts the bytes written and raises as soon as the archive behaves like a bomb."""

    archive: Path
    max_total_bytes: int
    max_ratio: float
    written: int = 0

    def check_declared_total(self, declared: int) -> None:
        if declared > self.max_total_bytes:
            raise DecompressionBombError(
                f"declares {declared} bytes of content, more than the limit of "
                f"{self.max_total_bytes} bytes",
                path=self.archive,
            )

    def check_ratio(self, expanded: int, compressed: int, what: str) -> None:
        if expanded > RATIO_MIN_BYTES and expanded > self.max_ratio * max(compressed, 1):
            raise DecompressionBombError(
                f"{what} expands {expanded / max(compressed, 1):.0f}-fold ({compressed} bytes to "
                f"{expanded} or more), more than the limit of {self.max_ratio:g}-fold",
                path=self.archive,
            )

    def add(self, size: int, member: str) -> None:
        self.written += size
        if self.written > self.max_total_bytes:
            raise DecompressionBombError(
                f"expands past the limit of {self.max_total_bytes} bytes (reached while "
                f"extracting '{member}')",
                path=self.archive,
            )


def archive_format(path: str | Path) -> ArchiveFormat | None:
    """The archive format implied by a file name, or ``None`` when it is not an archive name."""
    name = Path(path).name.lower()
    return next((fmt for suffix, fmt in ARCHIVE_SUFFIXES.items() if name.endswith(suffix)), None)


def is_archive(path: str | Path) -> bool:
    """Whether ``path``'s name ends in an archive suffix (the content is not looked at)."""
    return archive_format(path) is not None


def safe_member_path(name: str) -> PurePosixPath | None:
    """The member's path relative to the archive root, or ``None`` if it would leave the root.

    Args:
        name: the member name as stored in the archive.

    Returns:
        The normalised relative path (empty for the root itself), or ``None`` for an absolute
        path, a drive letter or a ``..`` component.
    """
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or _DRIVE.match(normalized):
        return None
    parts = [part for part in normalized.split("/") if part not in ("", ".")]
    return None if ".." in parts else PurePosixPath(*parts)


def _resolve_lexically(base: PurePosixPath, link: str) -> PurePosixPath | None:
    """``base / link`` with ``..`` applied, or ``None`` if it is absolute or climbs above root."""
    link = link.replace("\\", "/")
    if link.startswith("/") or _DRIVE.match(link):
        return None
    parts = list(base.parts)
    for part in link.split("/"):
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return PurePosixPath(*parts)


def extract_archive(
    archive: str | Path,
    destination: str | Path,
    *,
    max_total_bytes: int | None = None,
    max_ratio: float | None = None,
) -> ExtractionResult:
    """Extract a zip or tar archive into ``destination``, refusing anything unsafe.

    Args:
        archive: the archive; its format is decided by its name (see :data:`ARCHIVE_SUFFIXES`).
            It is only read.
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
        raise ArchiveError(
            f"is not named like an archive (expected one of {', '.join(ARCHIVE_SUFFIXES)})",
            path=archive,
        )
    require_nonempty_file(archive)
    settings = get_settings()
    budget = _Budget(
        archive,
        max_total_bytes if max_total_bytes is not None else settings.max_extract_bytes,
        max_ratio if max_ratio is not None else settings.max_compression_ratio,
    )
    created = _prepare_destination(destination)
    extractor = _Extractor(archive, destination.resolve(), budget)
    try:
        if fmt == "zip":
            _extract_zip(archive, extractor)
        else:
            _extract_tar(archive, fmt, extractor)
        extractor.copy_links()
    except BaseException:
        _clean(destination, remove_folder=created)
        raise
    return extractor.result()


def _prepare_destination(destination: Path) -> bool:
    """Create ``destination`` if needed; return whether it was created here."""
    if destination.exists():
        if not destination.is_dir() or any(destination.iterdir()):
            raise OutputError(
                "must be an empty folder to extract an archive into", path=destination
            )
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


@dataclass
class _Extractor:
    """Writes members under ``root`` and keeps the books (written, rejected, pending links)."""

    archive: Path
    root: Path
    budget: _Budget
    written: dict[PurePosixPath, None] = field(default_factory=dict)
    rejected: list[SegflowError] = field(default_factory=list)
    links: list[tuple[str, PurePosixPath, PurePosixPath]] = field(default_factory=list)

    def reject(self, error: SegflowError) -> None:
        logger.warning("%s", error)
        self.rejected.append(error)

    def admit(self, member: _Member) -> PurePosixPath | None:
        """Where a member goes, or ``None`` (after recording why) if it must not be written."""
        where = f"{self.archive}!{member.name}"
        relative = safe_member_path(member.name)
        if relative is None:
            self.reject(UnsafeArchivePathError(_unsafe_reason(member.name), path=where))
            return None
        if member.kind == "special":
            self.reject(
                ArchiveSpecialFileError(
                    "is a device, FIFO or other special file and was not extracted", path=where
                )
            )
            return None
        if member.kind in ("symlink", "hardlink"):
            # A symlink is relative to its folder, a tar hard link to the archive root.
            base = relative.parent if member.kind == "symlink" else PurePosixPath()
            target = _resolve_lexically(base, member.link)
            if target is None:
                reason = f"is a link to '{member.link}', outside the archive; it was not extracted"
                self.reject(ArchiveLinkError(reason, path=where))
            else:
                self.links.append((member.name, relative, target))
            return None
        return relative

    def make_dir(self, member: _Member) -> None:
        relative = self.admit(member)
        if relative is not None:
            self._guard(
                member.name, lambda: (self.root / relative).mkdir(parents=True, exist_ok=True)
            )

    def write_file(
        self, member: _Member, open_data: Callable[[], IO[bytes]], ratio: Callable[[int], None]
    ) -> None:
        """Stream one regular member to disk; ``ratio(member_bytes)`` raises on a bomb."""
        relative = self.admit(member)
        if relative is None:
            return
        target = self.root / relative
        if not self._guard(member.name, lambda: target.parent.mkdir(parents=True, exist_ok=True)):
            return
        with ExitStack() as stack:
            try:
                out = stack.enter_context(open(target, "wb"))
            except _CONFLICT_ERRORS as error:
                self._conflict(member.name, error)
                return
            except OSError as error:
                raise OutputError(f"cannot be written ({error.strerror})", path=target) from error
            source = _read_guard(self.archive, member.name, open_data)
            member_bytes = 0
            for chunk in _chunks(self.archive, member.name, source):
                member_bytes += len(chunk)
                self.budget.add(len(chunk), member.name)
                ratio(member_bytes)
                _write(out, chunk, target)
        self.written[relative] = None

    def copy_links(self) -> None:
        """Copy the targets of in-archive links, repeating while a link to a link resolves."""
        pending = self.links
        while pending:
            unresolved = []
            for name, relative, target in pending:
                source = self.root / target
                if source.is_file() and target in self.written:
                    self.write_file(
                        _Member(name, "file"), lambda s=source: open(s, "rb"), lambda _n: None
                    )
                else:
                    unresolved.append((name, relative, target))
            if len(unresolved) == len(pending):
                break
            pending = unresolved
        for name, _relative, target in pending:
            self.reject(
                ArchiveLinkError(
                    f"is a link to '{target}', which is not a file in the archive; it was not "
                    "extracted",
                    path=f"{self.archive}!{name}",
                )
            )
        self.links = []

    def result(self) -> ExtractionResult:
        return ExtractionResult(
            root=self.root,
            extracted=tuple(self.root / relative for relative in self.written),
            rejected=tuple(self.rejected),
            total_bytes=self.budget.written,
        )

    def _guard(self, name: str, action: Callable[[], object]) -> bool:
        try:
            action()
        except _CONFLICT_ERRORS as error:
            self._conflict(name, error)
            return False
        except OSError as error:
            raise OutputError(f"cannot be written ({error.strerror})", path=self.root) from error
        return True

    def _conflict(self, name: str, error: OSError) -> None:
        reason = f"clashes with another member of the same name ({error.strerror}); not extracted"
        self.reject(ArchiveError(reason, path=f"{self.archive}!{name}"))


def _unsafe_reason(name: str) -> str:
    if name.replace("\\", "/").startswith("/") or _DRIVE.match(name):
        return "has an absolute path and was not extracted"
    return "climbs out of the extraction folder with '..' and was not extracted"


def _corrupt(archive: Path, member: str, error: BaseException) -> ArchiveError:
    detail = f" at member '{member}'" if member else ""
    return ArchiveError(f"is corrupt, truncated or encrypted{detail} ({error})", path=archive)


def _read_guard(archive: Path, member: str, open_data: Callable[[], IO[bytes]]) -> IO[bytes]:
    try:
        return open_data()
    except _READ_ERRORS as error:
        raise _corrupt(archive, member, error) from error


def _chunks(archive: Path, member: str, source: IO[bytes]) -> Iterator[bytes]:
    with source:
        while True:
            try:
                chunk = source.read(_CHUNK_BYTES)
            except _READ_ERRORS as error:
                raise _corrupt(archive, member, error) from error
            if not chunk:
                return
            yield chunk


def _write(out: IO[bytes], chunk: bytes, target: Path) -> None:
    try:
        out.write(chunk)
    except OSError as error:
        raise OutputError(f"writing failed ({error.strerror})", path=target) from error


def _extract_zip(archive: Path, extractor: _Extractor) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ArchiveError(f"is not a readable zip archive ({error})", path=archive) from error
    budget = extractor.budget
    with zf:
        infos = zf.infolist()
        budget.check_declared_total(sum(info.file_size for info in infos))
        for info in infos:
            budget.check_ratio(info.file_size, info.compress_size, f"member '{info.filename}'")
        for info in infos:
            member = _zip_member(zf, info, archive)

            def ratio(done: int, info: zipfile.ZipInfo = info) -> None:
                budget.check_ratio(done, info.compress_size, f"member '{info.filename}'")

            if member.kind == "dir":
                extractor.make_dir(member)
            elif member.kind == "file":
                extractor.write_file(member, lambda info=info: zf.open(info), ratio)
            else:
                extractor.admit(member)


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path) -> _Member:
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    if info.is_dir():
        return _Member(info.filename, "dir")
    if stat.S_ISLNK(mode):
        # Zip stores a symlink's target as the member's content.
        try:
            with zf.open(info) as handle:
                target = handle.read(_MAX_ZIP_LINK_BYTES).decode("utf-8", "replace")
        except _READ_ERRORS as error:
            raise _corrupt(archive, info.filename, error) from error
        return _Member(info.filename, "symlink", target)
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        return _Member(info.filename, "special")
    return _Member(info.filename, "file")


def _extract_tar(archive: Path, fmt: ArchiveFormat, ex: _Extractor) -> None:
    budget = ex.budget
    declared = 0
    with open(archive, "rb") as raw:
        # The whole stream's ratio: bytes written over compressed bytes read so far.
        def ratio(_member_bytes: int) -> None:
            budget.check_ratio(budget.written, raw.tell(), "the archive")

        try:
            tar = tarfile.open(fileobj=raw, mode=_TAR_MODES[fmt])
        except _READ_ERRORS as error:
            raise ArchiveError(
                f"is not a readable {fmt} archive ({error})", path=archive
            ) from error
        with tar:
            while (info := _next_tar_member(tar, archive)) is not None:
                member = _tar_member(info)
                if member.kind == "file":
                    declared += info.size
                    budget.check_declared_total(declared)
                    ex.write_file(member, lambda info=info: _tar_data(tar, info), ratio)
                elif member.kind == "dir":
                    ex.make_dir(member)
                else:
                    ex.admit(member)


def _next_tar_member(tar: tarfile.TarFile, archive: Path) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except _READ_ERRORS as error:
        raise _corrupt(archive, "", error) from error


def _tar_data(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    handle = tar.extractfile(info)
    if handle is None:
        raise tarfile.ReadError(f"no data for {info.name}")
    return handle


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.isreg():
        return _Member(info.name, "file")
    if info.isdir():
        return _Member(info.name, "dir")
    if info.issym():
        return _Member(info.name, "symlink", info.linkname)
    if info.islnk():
        return _Member(info.name, "hardlink", info.linkname)
    return _Member(info.name, "special")
