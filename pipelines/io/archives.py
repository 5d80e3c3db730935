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
      expansion once more than :data:`pipelines.io.archive_members.RATIO_MIN_BYTES` came out
      (zip: per member, over its compressed size; tar: over the compressed bytes read so far),
      the whole archive is refused with :class:`DecompressionBombError`. Copies of links count
      too (their ratio is over the archive's size).
    * Member permissions, owners and times are not restored: files get the process's defaults.

Each member is checked and written by :class:`pipelines.io.archive_members.MemberWriter`; this
module reads the zip or tar format and hands it the members.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from data_contracts import ArchiveError, OutputError, SegflowError, get_settings
from pipelines.files import require_nonempty_file
from pipelines.io.archive_members import MemberKind, MemberWriter, decoding

__all__ = [
    "ARCHIVE_SUFFIXES",
    "ArchiveFormat",
    "ExtractionResult",
    "archive_format",
    "extract_archive",
    "is_archive",
]

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
_TAR_MODES: dict[ArchiveFormat, Literal["r|", "r|gz", "r|bz2", "r|xz"]] = {
    "tar": "r|",
    "tar.gz": "r|gz",
    "tar.bz2": "r|bz2",
    "tar.xz": "r|xz",
}
_MAX_ZIP_LINK_BYTES = 4096


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
    writer = MemberWriter(
        archive,
        destination.resolve(),
        max_total_bytes if max_total_bytes is not None else settings.max_extract_bytes,
        max_ratio if max_ratio is not None else settings.max_compression_ratio,
    )
    try:
        if fmt == "zip":
            _extract_zip(writer)
        else:
            _extract_tar(writer, fmt)
        writer.copy_links()
    except BaseException as error:
        _clean(destination, remove_folder=created)
        if isinstance(error, OSError) and not isinstance(error, SegflowError):
            # Reads are wrapped where they happen, so a bare OSError comes from writing.
            reason = f"extraction failed while writing ({error})"
            raise OutputError(reason, path=destination) from error
        raise
    return ExtractionResult(
        root=writer.root,
        extracted=tuple(writer.root / relative for relative in writer.written),
        rejected=tuple(writer.rejected),
        total_bytes=writer.total,
    )


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


def _extract_zip(writer: MemberWriter) -> None:
    with decoding(writer.archive):
        zf = zipfile.ZipFile(writer.archive)
    with zf:
        infos = zf.infolist()
        writer.check_declared(sum(info.file_size for info in infos))
        for info in infos:
            writer.check_ratio(info.file_size, info.compress_size, f"member '{info.filename}'")
        for info in infos:
            kind, link = _zip_kind(zf, info, writer.archive)
            relative = writer.admit(info.filename, kind, link)
            if relative is None:
                continue

            def ratio(done: int, info: zipfile.ZipInfo = info) -> None:
                writer.check_ratio(done, info.compress_size, f"member '{info.filename}'")

            def open_member(info: zipfile.ZipInfo = info) -> IO[bytes]:
                return zf.open(info)

            writer.write(info.filename, relative, open_member, ratio)


def _zip_kind(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path) -> tuple[MemberKind, str]:
    """The member's kind (and link target) from its Unix mode bits, when it has them."""
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    if info.is_dir() or stat.S_ISDIR(mode):
        return "dir", ""
    if stat.S_ISLNK(mode):
        # Zip stores a symlink's target as the member's content.
        with decoding(archive, info.filename), zf.open(info) as handle:
            return "symlink", handle.read(_MAX_ZIP_LINK_BYTES).decode("utf-8", "replace")
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        return "special", ""
    return "file", ""


def _extract_tar(writer: MemberWriter, fmt: ArchiveFormat) -> None:
    declared = 0
    with writer.archive.open("rb") as raw:
        # Streamed, so headers are checked before their data is read. The ratio is the whole
        # stream's: bytes written over compressed bytes read so far.
        def ratio(_member_bytes: int) -> None:
            writer.check_ratio(writer.total, raw.tell(), "the archive")

        with decoding(writer.archive):
            tar = tarfile.open(fileobj=raw, mode=_TAR_MODES[fmt])  # noqa: SIM115
        with tar:
            while True:
                with decoding(writer.archive):
                    info = tar.next()
                if info is None:
                    return
                if info.isreg():
                    declared += info.size
                    writer.check_declared(declared)
                relative = writer.admit(info.name, _tar_kind(info), info.linkname)
                if relative is not None:

                    def open_member(info: tarfile.TarInfo = info) -> IO[bytes]:
                        handle = tar.extractfile(info)
                        if handle is None:
                            raise tarfile.ReadError(f"no data for {info.name}")
                        return handle

                    writer.write(info.name, relative, open_member, ratio)


def _tar_kind(info: tarfile.TarInfo) -> MemberKind:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "special"
