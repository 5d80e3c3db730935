"""Recognise file formats by name, then confirm by content (magic bytes)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from data_contracts import NotAnImageError, UnreadableFileError, UnsupportedFormatError
from pipelines.files import require_nonempty_file

_GZIP_MAGIC = b"\x1f\x8b"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGICS = (b"n+2\x00", b"ni2\x00")


class FileFormat(StrEnum):
    """File formats segflow reads."""

    NIFTI = "nifti"
    GEOTIFF = "tiff"
    PNG = "png"
    VECTOR = "vector"


_SUFFIXES: dict[str, FileFormat] = {
    ".nii.gz": FileFormat.NIFTI,
    ".nii": FileFormat.NIFTI,
    ".tif": FileFormat.GEOTIFF,
    ".tiff": FileFormat.GEOTIFF,
    ".png": FileFormat.PNG,
    ".geojson": FileFormat.VECTOR,
    ".gpkg": FileFormat.VECTOR,
}

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".tif", ".tiff", ".png")
VECTOR_SUFFIXES = (".geojson", ".gpkg")


def suffix_of(path: str | Path) -> str | None:
    """The recognised suffix of ``path`` (``".nii.gz"`` counts as one), or ``None``."""
    name = Path(path).name.lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def strip_image_suffix(path: str | Path) -> str:
    """File name without its recognised suffix: ``"a_0000.nii.gz"`` → ``"a_0000"``."""
    name = Path(path).name
    suffix = suffix_of(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


def is_image_name(path: str | Path) -> bool:
    """True when the name ends in a raster/volume/image suffix segflow reads."""
    return Path(path).name.lower().endswith(IMAGE_SUFFIXES)


def is_vector_name(path: str | Path) -> bool:
    """True when the name ends in a vector label suffix (GeoJSON, GeoPackage)."""
    return Path(path).name.lower().endswith(VECTOR_SUFFIXES)


def detect_format(path: str | Path) -> FileFormat:
    """Format of ``path`` from its name, confirmed by its first bytes.

    Raises:
        MissingFileError: the file does not exist.
        EmptyFileError: the file is empty.
        UnsupportedFormatError: the suffix is not one segflow reads.
        NotAnImageError: the content does not match the suffix (e.g. text named ``.tif``).
        UnreadableFileError: the file cannot be opened for reading (permissions).
    """
    path = Path(path)
    suffix = suffix_of(path)
    if suffix is None:
        raise UnsupportedFormatError(f"has an unsupported file type {path.suffix!r}", path=path)
    require_nonempty_file(path)
    file_format = _SUFFIXES[suffix]
    try:
        with open(path, "rb") as handle:
            head = handle.read(352)
    except PermissionError as error:
        raise UnreadableFileError(f"cannot be read ({error.strerror})", path=path) from error
    if not _content_matches(suffix, head):
        raise NotAnImageError(
            f"does not contain {file_format.value} data despite its {suffix!r} name "
            f"(starts with {head[:8]!r})",
            path=path,
        )
    return file_format


def _content_matches(suffix: str, head: bytes) -> bool:
    if suffix == ".nii.gz":
        return head.startswith(_GZIP_MAGIC)
    if suffix == ".nii":
        return head[344:348] in _NIFTI1_MAGICS or head[4:8] in _NIFTI2_MAGICS
    if suffix in (".tif", ".tiff"):
        return head[:4] in _TIFF_MAGICS
    if suffix == ".png":
        return head.startswith(_PNG_MAGIC)
    return True  # vector files are validated by their reader
