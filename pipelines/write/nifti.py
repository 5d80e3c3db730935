"""NIfTI masks and probabilities in the source's voxel grid, header fidelity verified.

A mask is built from a copy of the source header, so orientation, spacing, both qform and sform
*and their codes*, units and the quaternion sign survive bit for bit; only what describes the
voxel values changes (dtype, slope/intercept, cal_min/cal_max, intent, description). nibabel
writes it (MONAI's ``SaveImage`` rewrites the codes); the file is then re-read and compared with
the source, and a mismatch raises instead of leaving a mask that overlays wrongly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy

from data_contracts import GeometryMismatchError, OutputError, UsageError
from pipelines.files import atomic_output
from pipelines.io.nifti import open_volume

__all__ = ["mask_dtype_for", "write_nifti_map", "write_nifti_mask", "write_nifti_probabilities"]

logger = logging.getLogger(__name__)

_AFFINE_TOLERANCE = 1e-5
_PROBABILITY_SLOPE = 1.0 / 255.0
_NiftiImage = nib.Nifti1Image | nib.Nifti2Image


def mask_dtype_for(max_value: int) -> np.dtype:
    """uint8 for label values up to 255, uint16 up to 65535.

    Raises:
        UsageError: a negative value, or one beyond uint16.
    """
    if max_value < 0 or max_value > np.iinfo(np.uint16).max:
        raise UsageError(f"label value {max_value} does not fit uint8/uint16 masks")
    return np.dtype(np.uint8 if max_value <= np.iinfo(np.uint8).max else np.uint16)


@dataclass(frozen=True)
class _Expected:
    """What the written file must hold besides the source's geometry."""

    shape: tuple[int, ...]
    dtype: np.dtype
    slope: float


class _Mismatch(Exception):
    """The re-read file differs from what was meant (turned into an OutputError)."""


def write_nifti_mask(mask: np.ndarray, source: str | Path, destination: str | Path) -> Path:
    """Write a label mask in the source's voxel grid and verify the round trip.

    Args:
        mask: ``(X, Y, Z)`` integer labels in the source's voxel order (not reoriented).
        source: the NIfTI image the mask was predicted from (3D, or 4D with channels last).
        destination: ``.nii.gz`` (or ``.nii``) path; written atomically.

    Returns:
        ``destination`` as a Path.

    Raises:
        UsageError: the mask is not integer or holds values outside uint16.
        GeometryMismatchError: the mask's shape is not the source's spatial shape.
        OutputError: the file cannot be written, or re-reading it shows a different geometry,
            dtype or scaling.
    """
    array = np.asarray(mask)
    if array.dtype.kind not in "iub":
        raise UsageError(f"a mask must hold integer labels, got {array.dtype}")
    if array.size and int(array.min()) < 0:
        raise UsageError("a mask must not hold negative labels")
    dtype = mask_dtype_for(int(array.max(initial=0)))
    image = open_volume(source)
    spatial = _spatial_shape(image, array.shape, source, what="mask")
    header = _derived_header(image, spatial, dtype, "label", "segflow labels")
    header["cal_min"], header["cal_max"] = 0, int(array.max(initial=0))
    expected = _Expected(shape=spatial, dtype=dtype, slope=1.0)
    return _write_verified(array.astype(dtype), image, header, expected, source, destination)


def write_nifti_probabilities(
    probabilities: np.ndarray, source: str | Path, destination: str | Path
) -> Path:
    """Write class probabilities as a compact 4D ``(X, Y, Z, K)`` uint8 NIfTI.

    Stored values are ``round(p × 255)`` with ``scl_slope = 1/255``, so readers that apply the
    scaling (nibabel, ITK, MONAI) get probabilities back within 1/510.

    Args:
        probabilities: ``(K, X, Y, Z)`` probabilities in [0, 1] (values outside are clipped).
        source: the NIfTI image they were predicted from.
        destination: ``.nii.gz`` (or ``.nii``) path; written atomically.

    Raises:
        UsageError: not 4D ``(K, X, Y, Z)``, or holding NaN/infinite values.
        GeometryMismatchError: ``(X, Y, Z)`` is not the source's spatial shape.
        OutputError: the file cannot be written or does not re-read as written.
    """
    array = np.asarray(probabilities)
    if array.ndim != 4 or array.shape[0] < 1:
        raise UsageError(f"probabilities must be (K, X, Y, Z), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise UsageError("probabilities hold NaN or infinite values")
    image = open_volume(source)
    spatial = _spatial_shape(image, array.shape[1:], source, what="probabilities")
    shape = (*spatial, array.shape[0])
    header = _derived_header(
        image, shape, np.dtype(np.uint8), "estimate", "segflow probabilities (value / 255)"
    )
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    codes = np.rint(np.clip(np.moveaxis(array, 0, -1), 0.0, 1.0) * 255.0).astype(np.uint8)
    expected = _Expected(shape=shape, dtype=np.dtype(np.uint8), slope=_PROBABILITY_SLOPE)
    return _write_verified(codes, image, header, expected, source, destination)


def write_nifti_map(
    values: np.ndarray, source: str | Path, destination: str | Path, *, description: str
) -> Path:
    """Write a per-voxel map of values in [0, 1] (the entropy of ``--write-uncertainty``) as a
    3D uint8 NIfTI on the source grid, ``round(v × 255)`` with ``scl_slope = 1/255``.

    Raises:
        UsageError: not 3D, or holding NaN/infinite values.
        GeometryMismatchError: not the source's spatial shape.
        OutputError: the file cannot be written or does not re-read as written.
    """
    array = np.asarray(values)
    if array.ndim != 3:
        raise UsageError(f"a voxel map must be (X, Y, Z), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise UsageError("the voxel map holds NaN or infinite values")
    image = open_volume(source)
    shape = _spatial_shape(image, array.shape, source, what="voxel map")
    header = _derived_header(image, shape, np.dtype(np.uint8), "estimate", description)
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    codes = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    expected = _Expected(shape=shape, dtype=np.dtype(np.uint8), slope=_PROBABILITY_SLOPE)
    return _write_verified(codes, image, header, expected, source, destination)


def _spatial_shape(
    image: _NiftiImage, shape: tuple[int, ...], source: str | Path, *, what: str
) -> tuple[int, ...]:
    """The source's spatial shape (its first three dimensions), checked against ``shape``."""
    spatial = tuple(int(size) for size in image.header.get_data_shape()[:3])  # type: ignore[no-untyped-call]
    if tuple(shape) != spatial:
        raise GeometryMismatchError(
            f"the {what} has shape {tuple(shape)} but this source's voxel grid is {spatial}",
            path=source,
            hint=f"predict on the source's grid, or resample the {what} back to it (nearest "
            "neighbour for labels) before writing",
        )
    return spatial


def _derived_header(
    image: _NiftiImage, shape: tuple[int, ...], dtype: np.dtype, intent: str, description: str
) -> nib.Nifti1Header | nib.Nifti2Header:
    """A copy of the source header describing new voxel values on the same grid."""
    header = image.header.copy()  # type: ignore[no-untyped-call]
    zooms = image.header.get_zooms()[:3]  # type: ignore[no-untyped-call]
    header.set_data_shape(shape)
    header.set_zooms((*zooms, *[1.0] * (len(shape) - 3)))
    header.set_data_dtype(dtype)
    # Extensions describe the source's intensities (DICOM, AFNI, CIFTI): not the mask's.
    header.extensions.clear()
    header.set_intent(intent, name="segflow")
    header["descrip"] = description.encode("ascii")
    derived: nib.Nifti1Header | nib.Nifti2Header = header
    return derived


def _write_verified(
    data: np.ndarray,
    image: _NiftiImage,
    header: nib.Nifti1Header | nib.Nifti2Header,
    expected: _Expected,
    source: str | Path,
    destination: str | Path,
) -> Path:
    destination = Path(destination)
    suffix = ".nii.gz" if destination.name.endswith(".nii.gz") else destination.suffix
    if suffix not in (".nii", ".nii.gz"):
        raise UsageError(f"a NIfTI output must end in .nii.gz or .nii, got {destination.name}")
    output = type(image)(data, header.get_best_affine(), header)  # type: ignore[no-untyped-call]
    # The constructor resets scaling to "unset" (NaN); an explicit slope also stops nibabel
    # from rescaling the data on save.
    output.header.set_slope_inter(expected.slope, 0.0)  # type: ignore[no-untyped-call]
    try:
        with atomic_output(destination, suffix=suffix) as temp_path:
            nib.save(output, temp_path)
            _verify(temp_path, image, expected)
    except _Mismatch as error:
        raise OutputError(
            f"did not re-read as written: {error}",
            path=destination,
            hint=f"the writer could not reproduce the geometry of {source}; report this",
        ) from error
    logger.debug("wrote %s (%s, %s)", destination, expected.shape, expected.dtype)
    return destination


def _verify(written: Path, source: _NiftiImage, expected: _Expected) -> None:
    """Re-read ``written`` and compare it with the source's geometry and ``expected``."""
    loaded = type(source).from_filename(written)
    header = loaded.header
    found_shape = tuple(int(size) for size in header.get_data_shape())  # type: ignore[no-untyped-call]
    if found_shape != expected.shape:
        raise _Mismatch(f"shape {found_shape} instead of {expected.shape}")
    if header.get_data_dtype() != expected.dtype:  # type: ignore[no-untyped-call]
        raise _Mismatch(f"dtype {header.get_data_dtype()} instead of {expected.dtype}")  # type: ignore[no-untyped-call]
    for form in ("qform", "sform"):
        found, found_code = getattr(header, f"get_{form}")(coded=True)
        wanted, wanted_code = getattr(source.header, f"get_{form}")(coded=True)
        if int(found_code) != int(wanted_code):
            raise _Mismatch(f"{form}_code {int(found_code)} instead of {int(wanted_code)}")
        if wanted is not None and not np.allclose(found, wanted, atol=_AFFINE_TOLERANCE):
            raise _Mismatch(f"{form} {np.round(found, 6).tolist()} instead of {wanted.tolist()}")
    if not np.allclose(header.get_best_affine(), source.affine, atol=_AFFINE_TOLERANCE):  # type: ignore[no-untyped-call]
        raise _Mismatch(f"affine {np.round(header.get_best_affine(), 6).tolist()} differs")  # type: ignore[no-untyped-call]
    # A loaded header's scaling reads NaN (nibabel moves it to the data proxy, which also maps
    # NIfTI's "no scaling" values, NaN or a zero slope, to 1/0).
    proxy: ArrayProxy = loaded.dataobj  # type: ignore[assignment]
    slope, inter = float(proxy.slope), float(proxy.inter)
    if not math.isclose(slope, expected.slope, rel_tol=1e-6) or inter != 0.0:
        raise _Mismatch(f"scaling {slope}·x + {inter} instead of {expected.slope}·x + 0")
