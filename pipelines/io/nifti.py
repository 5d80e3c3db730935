"""NIfTI volumes via nibabel: header geometry without loading voxels, voxel data by slabs."""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener
from nibabel.spatialimages import HeaderDataError

from data_contracts import (
    CorruptFileError,
    DecompressionBombError,
    InvalidGeometryError,
    NotAnImageError,
    VolumeGeometry,
    get_settings,
)
from pipelines.io.formats import detect_format

_SLAB_BYTES = 64 * 1024**2


def open_volume(path: str | Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """Open a NIfTI file lazily (header parsed, voxels not read).

    Raises:
        EmptyFileError, NotAnImageError: the file is empty or not NIfTI.
        CorruptFileError: the header cannot be decoded (truncated, bad gzip stream).
        DecompressionBombError: the header declares more voxel bytes than
            ``max_extract_bytes`` (a gzip bomb, or a header asking for 100000³ voxels).
    """
    path = Path(path)
    detect_format(path)
    try:
        with _quiet_header_fixes():
            image = nib.load(path)
    except (ImageFileError, ValueError) as error:
        raise NotAnImageError(f"is not a readable NIfTI file ({error})", path=path) from error
    except HeaderDataError as error:  # nibabel's header checks (not a ValueError)
        raise CorruptFileError(f"has an invalid NIfTI header ({error})", path=path) from error
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as error:
        raise CorruptFileError(f"has a damaged or truncated header ({error})", path=path) from error
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise NotAnImageError(f"is a {type(image).__name__}, not NIfTI", path=path)
    _check_declared_size(image, path)
    _check_raw_spacing(image, path)
    return image


def _check_declared_size(image: nib.Nifti1Image | nib.Nifti2Image, path: Path) -> None:
    """Refuse a header that declares more voxel bytes than segflow may expand.

    A ``.nii.gz`` of zeros expands about 1000-fold, and a header can declare any size: the
    voxels are only read slab by slab, but a 10^15-byte volume would never finish.
    """
    shape = [int(size) for size in image.header.get_data_shape()]  # type: ignore[no-untyped-call]
    itemsize = np.dtype(image.header.get_data_dtype()).itemsize  # type: ignore[no-untyped-call]
    declared = itemsize
    for size in shape:
        declared *= max(size, 1)
    limit = get_settings().max_extract_bytes
    if declared > limit:
        dims = "×".join(str(size) for size in shape)
        raise DecompressionBombError(
            f"declares {dims} voxels of {image.header.get_data_dtype()} ({declared} bytes), "  # type: ignore[no-untyped-call]
            f"more than the limit of {limit} bytes",
            path=path,
            hint="raise SEGFLOW_MAX_EXTRACT_BYTES if the file is trusted, or repair its header",
        )


def _check_raw_spacing(image: nib.Nifti1Image | nib.Nifti2Image, path: Path) -> None:
    """Reject zero/negative pixdim when no sform overrides it.

    nibabel silently replaces a zero pixdim by 1 while loading; the raw header is re-read
    without its fixes so that a broken spacing is reported instead of invented.
    """
    if int(image.header["sform_code"]) > 0:
        return
    size = image.header_class.sizeof_hdr
    with ImageOpener(str(path), "rb") as handle:
        raw = image.header_class.from_fileobj(io.BytesIO(handle.read(size)), check=False)  # type: ignore[no-untyped-call]
    ndim = max(1, min(3, int(raw["dim"][0])))
    spacing = [float(v) for v in raw["pixdim"][1 : 1 + ndim]]
    if any(not np.isfinite(v) or v <= 0 for v in spacing):
        raise InvalidGeometryError(
            f"declares voxel spacing {spacing} (pixdim) with no sform to override it", path=path
        )


class _quiet_header_fixes:
    """Silence nibabel's log of header fixes: segflow reports header problems itself."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("nibabel.global")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)


def volume_geometry(image: nib.Nifti1Image | nib.Nifti2Image, path: str | Path) -> VolumeGeometry:
    """Geometry of an opened volume, validated.

    The affine is the one nibabel chooses (sform if its code is set, else qform, else the
    pixdim-only fallback). A 4D file is read as channels along the 4th axis.

    Raises:
        InvalidGeometryError: NaN or singular affine, zero spacing, or not 3D/4D.
    """
    header = image.header
    shape = tuple(int(size) for size in header.get_data_shape())  # type: ignore[no-untyped-call]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] < 1):
        raise InvalidGeometryError(
            f"has {len(shape)} dimensions {shape}; expected 3 (or 4 for channels)", path=path
        )
    if min(shape) < 1:
        raise InvalidGeometryError(f"has an empty dimension in its shape {shape}", path=path)
    affine = np.asarray(image.affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        raise InvalidGeometryError("has a non-finite (NaN/inf) affine in its header", path=path)
    linear = affine[:3, :3]
    spacing = np.sqrt((linear**2).sum(axis=0))
    if np.any(spacing <= 0) or abs(np.linalg.det(linear)) < 1e-12:
        raise InvalidGeometryError(
            f"has a singular affine or zero voxel spacing {tuple(spacing.round(6).tolist())} mm",
            path=path,
        )
    codes = nib.aff2axcodes(affine)  # type: ignore[no-untyped-call]
    if None in codes:
        raise InvalidGeometryError(
            f"has an affine whose axes cannot be oriented {codes}", path=path
        )
    # Validated from plain values: pydantic checks the 4×4 affine and the three axes.
    return VolumeGeometry.model_validate(
        {
            "shape": (shape[0], shape[1], shape[2]),
            "affine": tuple(tuple(float(v) for v in row) for row in affine),
            "spacing": tuple(float(s) for s in spacing),
            "orientation": codes,
            "dtype": str(header.get_data_dtype()),  # type: ignore[no-untyped-call]
            "channels": shape[3] if len(shape) == 4 else 1,
        }
    )


def read_volume_geometry(path: str | Path) -> VolumeGeometry:
    """Open ``path`` lazily and return its validated geometry."""
    return volume_geometry(open_volume(path), path)


def iter_volume_slabs(
    image: nib.Nifti1Image | nib.Nifti2Image, path: str | Path, *, max_bytes: int = _SLAB_BYTES
) -> Iterator[np.ndarray]:
    """Yield the voxels of a volume as slabs along the last spatial axis (scaled values).

    Slabs are read through nibabel's array proxy, so only one slab is in memory at a time.

    Raises:
        CorruptFileError: the data stream ends early or is damaged (e.g. truncated ``.nii.gz``).
    """
    shape = image.header.get_data_shape()  # type: ignore[no-untyped-call]
    depth = shape[2] if len(shape) >= 3 else 1
    itemsize = max(np.dtype(image.header.get_data_dtype()).itemsize, 4)  # type: ignore[no-untyped-call]
    per_slice = int(np.prod(shape[:2])) * int(np.prod(shape[3:] or (1,))) * itemsize
    step = max(1, max_bytes // max(per_slice, 1))
    proxy = image.dataobj
    try:
        if len(shape) < 3:
            yield np.asanyarray(proxy)
            return
        for start in range(0, depth, step):
            yield np.asanyarray(proxy[:, :, start : start + step, ...])
    except (EOFError, OSError, ValueError, zlib.error) as error:
        raise CorruptFileError(
            f"voxel data cannot be read: truncated or damaged ({error})", path=path
        ) from error


def load_volume(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image | nib.Nifti2Image]:
    """Read a whole volume (scaled to float where the header says so) and its image.

    Raises:
        CorruptFileError: the data cannot be read.
    """
    image = open_volume(path)
    try:
        data = np.asanyarray(image.dataobj)
    except (EOFError, OSError, ValueError, zlib.error) as error:
        raise CorruptFileError(
            f"voxel data cannot be read: truncated or damaged ({error})", path=path
        ) from error
    return data, image
