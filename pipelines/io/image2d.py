"""Plain 2D images (PNG, non-georeferenced TIFF): microscopy and photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from data_contracts import CorruptFileError, ImageGeometry, NotAnImageError
from pipelines.io.formats import FileFormat, detect_format

_PIL_DTYPES = {
    "1": "bool",
    "L": "uint8",
    "P": "uint8",
    "RGB": "uint8",
    "RGBA": "uint8",
    "LA": "uint8",
    "I;16": "uint16",
    "I;16B": "uint16",
    "I": "int32",
    "F": "float32",
}


def read_image_geometry(path: str | Path) -> ImageGeometry:
    """Geometry of a 2D image from its header (pixels are not decoded for PNG).

    Raises:
        NotAnImageError: the file is not a PNG/TIFF despite its name.
        CorruptFileError: the header cannot be decoded.
    """
    path = Path(path)
    file_format = detect_format(path)
    if file_format is FileFormat.PNG:
        try:
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
                channels = len(image.getbands())
        except UnidentifiedImageError as error:
            # The PNG signature matched (detect_format): the rest is damaged or cut short.
            raise CorruptFileError(f"has a damaged PNG header ({error})", path=path) from error
        except OSError as error:
            raise CorruptFileError(f"has a damaged PNG header ({error})", path=path) from error
        return ImageGeometry(
            height=height, width=width, channels=channels, dtype=_PIL_DTYPES.get(mode, "uint8")
        )
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, axes = series.shape, series.dtype, series.axes
    except (tifffile.TiffFileError, ValueError, IndexError, OSError) as error:
        raise CorruptFileError(f"has a damaged TIFF structure ({error})", path=path) from error
    height, width, channels = _hwc(shape, axes, path)
    return ImageGeometry(height=height, width=width, channels=channels, dtype=str(dtype))


def _hwc(shape: tuple[int, ...], axes: str, path: Path) -> tuple[int, int, int]:
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3 and axes.endswith("S"):
        return shape[0], shape[1], shape[2]
    if len(shape) == 3:
        return shape[1], shape[2], shape[0]
    raise NotAnImageError(f"is not a 2D image (shape {shape}, axes {axes!r})", path=path)


def read_image(path: str | Path) -> np.ndarray:
    """Decode a 2D image to ``(H, W)`` or ``(H, W, C)``.

    Raises:
        CorruptFileError: the pixel data is truncated or damaged.
    """
    path = Path(path)
    file_format = detect_format(path)
    try:
        if file_format is FileFormat.PNG:
            with Image.open(path) as image:
                image.load()
                array = np.asarray(image)
        else:
            array = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError, UnidentifiedImageError) as error:
        raise CorruptFileError(
            f"pixel data cannot be decoded: truncated or damaged ({error})", path=path
        ) from error
    if array.ndim == 3 and array.shape[0] < 5 and array.shape[-1] >= 5:
        array = np.moveaxis(array, 0, -1)
    return array
