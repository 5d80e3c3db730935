"""Label and probability images for plain 2D inputs (PNG, TIFF without georeferencing).

Labels are written losslessly as single-channel greyscale: uint8 when every value fits, else
uint16 (Pillow's ``I;16`` mode for PNG), and always uint16 for instance maps, so that the ids
of one dataset share one dtype. Probabilities go to a uint8 TIFF (value = round(p × 255)) with
one sample per class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from data_contracts import OutputError, UsageError
from pipelines.files import atomic_output
from pipelines.write.nifti import mask_dtype_for

__all__ = ["LABEL_SUFFIXES", "write_label_image", "write_probability_image"]

logger = logging.getLogger(__name__)

LABEL_SUFFIXES = (".png", ".tif", ".tiff")
_TIFF_SUFFIXES = (".tif", ".tiff")


def write_label_image(
    labels: np.ndarray, destination: str | Path, *, instance: bool = False
) -> Path:
    """Write an ``(H, W)`` label map as a greyscale PNG or TIFF, atomically.

    Args:
        labels: ``(H, W)`` non-negative integer class values or instance ids.
        destination: ``.png``, ``.tif`` or ``.tiff`` path.
        instance: the labels are instance ids: always written as uint16.

    Returns:
        ``destination`` as a Path.

    Raises:
        UsageError: an unsupported suffix, a non-2D or non-integer array, or values outside
            uint16.
        OutputError: the file cannot be written.
    """
    destination = Path(destination)
    suffix = _suffix(destination, LABEL_SUFFIXES)
    array = np.asarray(labels)
    if array.ndim != 2 or array.dtype.kind not in "iub":
        raise UsageError(
            f"labels must be a 2D integer array (H, W), got {array.dtype} of shape {array.shape}"
        )
    if array.size and int(array.min()) < 0:
        raise UsageError("labels must not be negative")
    dtype = mask_dtype_for(int(array.max(initial=0)))
    dtype = np.dtype(np.uint16) if instance else dtype
    _write(array.astype(dtype), destination, suffix)
    return destination


def write_probability_image(probabilities: np.ndarray, destination: str | Path) -> Path:
    """Write ``(K, H, W)`` probabilities as a uint8 TIFF with K samples, atomically.

    The TIFF holds one page of K separate planes (``planarconfig=separate``, axes ``SYX``);
    ``tifffile.imread`` returns ``(K, H, W)`` (``(H, W)`` for K = 1, such as an entropy map).
    Divide by 255 to get probabilities back.

    Args:
        probabilities: ``(K, H, W)`` values in [0, 1] (values outside are clipped).
        destination: ``.tif`` or ``.tiff`` path.

    Raises:
        UsageError: not ``(K, H, W)``, non-finite values, or not a TIFF destination.
        OutputError: the file cannot be written.
    """
    destination = Path(destination)
    suffix = _suffix(destination, _TIFF_SUFFIXES)
    array = np.asarray(probabilities)
    if array.ndim != 3 or array.shape[0] < 1:
        raise UsageError(f"probabilities must be (K, H, W), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise UsageError("probabilities hold NaN or infinite values")
    codes = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    _write(codes[0] if len(codes) == 1 else codes, destination, suffix)  # 1 plane: a 2D page
    return destination


def _suffix(destination: Path, allowed: tuple[str, ...]) -> str:
    suffix = destination.suffix.lower()
    if suffix not in allowed:
        raise UsageError(
            f"cannot write {destination.name}: the suffix must be one of {', '.join(allowed)}"
        )
    return suffix


def _write(array: np.ndarray, destination: Path, suffix: str) -> None:
    """PNG through Pillow, TIFF through tifffile (deflate), into a temp file then renamed."""
    try:
        with atomic_output(destination, suffix=suffix) as temp_path:
            if suffix == ".png":
                Image.fromarray(array).save(temp_path, format="PNG")
            elif array.ndim == 2:
                tifffile.imwrite(temp_path, array, photometric="minisblack", compression="zlib")
            else:
                tifffile.imwrite(
                    temp_path,
                    array,
                    photometric="minisblack",
                    planarconfig="separate",
                    compression="zlib",
                )
    except ValueError as error:
        raise OutputError(f"cannot be encoded ({error})", path=destination) from error
    logger.debug("wrote %s %s %s", destination, array.shape, array.dtype)
