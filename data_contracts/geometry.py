"""Geometry contracts: where the pixels of a volume, raster or 2D image are.

All three carry a ``kind`` discriminator so that a :class:`~data_contracts.dataset.Case` can hold
any of them and still round-trip exactly through JSON.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from data_contracts._base import Contract

Matrix4 = tuple[
    tuple[float, float, float, float],
    tuple[float, float, float, float],
    tuple[float, float, float, float],
    tuple[float, float, float, float],
]
Transform6 = tuple[float, float, float, float, float, float]
AxisCode = Literal["L", "R", "P", "A", "I", "S"]


class VolumeGeometry(Contract):
    """Geometry of a NIfTI volume.

    Attributes:
        shape: spatial shape (X, Y, Z) in voxels.
        affine: 4×4 voxel-to-world (RAS+ mm) matrix, the sform if set, else the qform.
        spacing: voxel size along X, Y, Z in mm.
        orientation: axis codes of the voxel axes, e.g. ``("L", "P", "S")``.
        dtype: on-disk data type, e.g. ``"float32"``.
        channels: channels stored in the file (a 4th dimension), 1 for a plain 3D volume.
    """

    kind: Literal["volume"] = "volume"
    shape: tuple[int, int, int]
    affine: Matrix4
    spacing: tuple[float, float, float]
    orientation: tuple[AxisCode, AxisCode, AxisCode]
    dtype: str
    channels: int = Field(default=1, ge=1)

    @field_validator("shape")
    @classmethod
    def _positive_shape(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(size < 1 for size in shape):
            raise ValueError(f"every dimension must be ≥ 1, got {shape}")
        return shape

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not math.isfinite(s) or s <= 0 for s in spacing):
            raise ValueError(f"spacing must be finite and > 0 mm, got {spacing}")
        return spacing

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return self.spacing[0] * self.spacing[1] * self.spacing[2]

    @property
    def pixel_count(self) -> int:
        """Voxels in the volume (X × Y × Z), per channel."""
        return self.shape[0] * self.shape[1] * self.shape[2]


class RasterGeometry(Contract):
    """Geometry of a georeferenced raster (GeoTIFF / COG).

    Attributes:
        width: columns in pixels.
        height: rows in pixels.
        count: number of bands.
        dtype: band data type, e.g. ``"uint16"``.
        crs_wkt: the CRS as WKT; ``None`` only when un-georeferenced input was explicitly allowed.
        epsg: the EPSG code when the CRS has one.
        transform: affine pixel-to-CRS transform ``(a, b, c, d, e, f)`` as in rasterio.
        nodata: the nodata value, ``None`` when none is declared (NaN allowed).
        block_size: internal block (rows, columns).
        resolution: pixel size (x, y) in CRS units, both positive.
    """

    kind: Literal["raster"] = "raster"
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    count: int = Field(ge=1)
    dtype: str
    crs_wkt: str | None
    epsg: int | None = None
    transform: Transform6
    nodata: float | None = None
    block_size: tuple[int, int]
    resolution: tuple[float, float]

    @model_validator(mode="after")
    def _epsg_needs_crs(self) -> RasterGeometry:
        if self.epsg is not None and self.crs_wkt is None:
            raise ValueError("an EPSG code was given without a CRS WKT")
        return self

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in squared CRS units (m² for projected CRSs in metres)."""
        a, b, _, d, e, _ = self.transform
        return abs(a * e - b * d)

    @property
    def pixel_count(self) -> int:
        """Pixels in the raster (width × height), per band."""
        return self.width * self.height


class ImageGeometry(Contract):
    """Geometry of a plain 2D image without georeferencing (microscopy, photographs).

    Attributes:
        height: rows in pixels.
        width: columns in pixels.
        channels: colour/intensity channels (1 grey, 3 RGB, 4 RGBA).
        dtype: pixel data type.
    """

    kind: Literal["image"] = "image"
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    channels: int = Field(ge=1)
    dtype: str

    @property
    def pixel_count(self) -> int:
        """Pixels in the image (width × height), per channel."""
        return self.width * self.height


Geometry = Annotated[VolumeGeometry | RasterGeometry | ImageGeometry, Field(discriminator="kind")]
