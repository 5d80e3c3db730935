"""Loader transforms for GeoTIFF rasters and plain 2D images (volumes use MONAI's LoadImaged).

Both produce MONAI ``MetaTensor`` s with ``filename_or_obj`` in their metadata: images
``(C, H, W)`` float32, labels ``(1, H, W)`` float32 (raw values, mapped later).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from rasterio.errors import RasterioIOError

from data_contracts import CorruptFileError, InputError
from pipelines.io.image2d import read_image
from pipelines.io.raster import bounded_gdal_env, open_raster
from pipelines.plan.fingerprint import to_channels_first

__all__ = ["LoadImage2Dd", "LoadRasterd", "read_raster_stack"]


def _paths(value: str | Path | Sequence[str | Path]) -> list[str]:
    return [str(value)] if isinstance(value, str | Path) else [str(v) for v in value]


def _meta_tensor(array: np.ndarray, path: str) -> MetaTensor:
    return MetaTensor(np.ascontiguousarray(array), meta={"filename_or_obj": path})


def read_raster_stack(paths: Sequence[str | Path], *, nodata_to_nan: bool = True) -> np.ndarray:
    """Read every band of every file into ``(C, H, W)`` float32.

    Args:
        paths: raster files of one case on one grid (their bands are concatenated in order).
        nodata_to_nan: turn each file's declared nodata pixels into NaN (images; a label's
            values are kept as they are, its "nodata" is often the background).

    Raises:
        CorruptFileError: a file's pixels cannot be decoded.
        InputError: the files differ in size.
    """
    bands: list[np.ndarray] = []
    with bounded_gdal_env():
        for path in paths:
            with open_raster(path) as dataset:
                try:
                    data = dataset.read().astype(np.float32)
                except RasterioIOError as error:
                    raise CorruptFileError(
                        f"pixel data cannot be read: {error}", path=path
                    ) from error
                nodata = dataset.nodata
                if nodata_to_nan and nodata is not None and not np.isnan(nodata):
                    data[data == np.float32(nodata)] = np.nan
                if bands and data.shape[1:] != bands[0].shape:  # bands holds (H, W) arrays
                    raise InputError(
                        f"is {data.shape[1:]} pixels, the case's first file {bands[0].shape}",
                        path=path,
                    )
                bands.extend(data)
    return np.stack(bands)


class LoadRasterd(MapTransform):
    """Read GeoTIFF bands with rasterio: the image from a list of files, the label from one.

    Image nodata pixels become NaN (the label there becomes ``IGNORE_INDEX`` later, the image 0
    after normalisation).

    Args:
        keys: image and label keys (an item value is a path or a list of paths).
        image_key: which key is the image (its channel count is checked).
        channels: channels the plan expects, or ``None`` not to check.
        allow_missing_keys: skip absent keys (inference items have no label).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        channels: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            paths = _paths(d[key])
            array = read_raster_stack(paths, nodata_to_nan=key == self.image_key)
            if key == self.image_key and self.channels not in (None, array.shape[0]):
                raise InputError(
                    f"has {array.shape[0]} bands, the plan expects {self.channels}",
                    path=paths[0],
                    hint="use a plan made for this dataset",
                )
            if key != self.image_key:
                array = array[:1]
            d[key] = _meta_tensor(array, paths[0])
        return d


class LoadImage2Dd(MapTransform):
    """Read PNG/TIFF 2D images: alpha dropped, grey repeated to RGB (or RGB averaged to grey)
    to match the plan's channels; labels as ``(1, H, W)``.

    Args:
        keys: image and label keys (an item value is a path or a one-element list).
        image_key: which key is the image.
        channels: channels the plan expects (``plan.in_channels``).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        channels: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = _paths(d[key])[0]
            array = read_image(path)
            if key == self.image_key:
                try:
                    image = to_channels_first(array, self.channels)
                except ValueError as error:
                    raise InputError(str(error), path=path) from error
                d[key] = _meta_tensor(image, path)
            else:
                if array.ndim == 3:
                    array = array[..., 0]
                d[key] = _meta_tensor(array[None].astype(np.float32), path)
        return d
