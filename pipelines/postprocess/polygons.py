"""Label rasters → polygons, written as GeoPackage (native CRS) and GeoJSON (RFC 7946).

Polygons come from :func:`rasterio.features.shapes` on the label raster itself (4-connected,
so every polygon is valid); clean the labels first with
:func:`pipelines.postprocess.labels.postprocess_labels`. Writing goes through pyogrio's raw
interface (no GeoPandas or Fiona needed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio.raw
import shapely
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import shapes
from rasterio.transform import Affine
from rasterio.warp import transform_geom

from data_contracts import OutputError, UsageError
from pipelines.files import atomic_output

__all__ = ["BASE_FIELDS", "RFC7946_CRS", "label_polygons", "write_polygons"]

logger = logging.getLogger(__name__)

RFC7946_CRS = "EPSG:4326"
# The attributes every output has, with their types; an empty output has exactly these.
BASE_FIELDS: dict[str, type] = {"class_value": int, "class_name": str, "area": float}
_SHAPES_DTYPES = ("int16", "int32", "uint8", "uint16")


def label_polygons(
    labels: np.ndarray,
    transform: Affine,
    *,
    class_names: Mapping[int, str] | Sequence[str],
    valid: np.ndarray | None = None,
    scores: Mapping[int, float] | None = None,
    background: int = 0,
    instance: bool = False,
    instance_classes: Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """GeoJSON-like polygon features of a label raster, in the raster's CRS.

    Args:
        labels: ``(H, W)`` integer class values, or instance ids when ``instance`` is set.
        transform: the raster's affine transform (pixel → CRS coordinates).
        class_names: name of each class value (a mapping, or a sequence indexed by value);
            values without a name are called ``class_<value>``.
        valid: ``(H, W)`` boolean mask of pixels with data; pixels outside make no polygon.
        scores: a score per raster value (instance id, or class value), added as ``score``.
        background: the value that makes no polygon.
        instance: ``labels`` holds instance ids; each feature gets ``instance_id``.
        instance_classes: class value of each instance id (default 1, the only foreground
            class of an instance model).

    Returns:
        Features ``{"type": "Feature", "geometry": {...}, "properties": {...}}`` with
        properties ``class_value``, ``class_name``, ``area`` (CRS units², e.g. m²), plus
        ``instance_id`` for instance rasters and ``score`` when ``scores`` has the value.

    Raises:
        UsageError: labels not a 2D integer array, or a ``valid`` mask of another shape.
    """
    raster = _shapes_array(labels)
    include = raster != background
    if valid is not None:
        inside = np.asarray(valid, dtype=bool)
        if inside.shape != raster.shape:
            raise UsageError(f"valid mask {inside.shape} does not match labels {raster.shape}")
        include &= inside
    features = []
    for geometry, raw_value in shapes(raster, mask=include, transform=transform):
        value = int(raw_value)
        class_value = (instance_classes or {}).get(value, 1) if instance else value
        properties: dict[str, Any] = {
            "class_value": class_value,
            "class_name": _class_name(class_names, class_value),
            "area": float(shapely.geometry.shape(geometry).area),
        }
        if instance:
            properties["instance_id"] = value
        if scores is not None and value in scores:
            properties["score"] = float(scores[value])
        features.append({"type": "Feature", "geometry": dict(geometry), "properties": properties})
    return features


def _shapes_array(labels: np.ndarray) -> np.ndarray:
    """``labels`` in a dtype that :func:`rasterio.features.shapes` accepts."""
    array = np.asarray(labels)
    if array.ndim != 2 or array.dtype.kind not in "iub":
        raise UsageError(
            f"labels must be a 2D integer array (H, W), got {array.dtype} of shape {array.shape}"
        )
    if array.dtype.name in _SHAPES_DTYPES:
        return array
    info = np.iinfo(np.int32)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise UsageError("label values do not fit int32, the widest type polygons support")
    return array.astype(np.int32)


def _class_name(class_names: Mapping[int, str] | Sequence[str], value: int) -> str:
    if isinstance(class_names, Mapping):
        name = class_names.get(value)
    else:
        name = class_names[value] if 0 <= value < len(class_names) else None
    return str(name) if name is not None else f"class_{value}"


def write_polygons(
    features: Sequence[Mapping[str, Any]],
    crs: CRS | str,
    *,
    gpkg: str | Path | None,
    geojson: str | Path | None,
) -> None:
    """Write features as a GeoPackage in ``crs`` and/or RFC 7946 GeoJSON in EPSG:4326.

    Each file is written atomically. Attributes are the union of the features' properties
    (:data:`BASE_FIELDS` first); an empty list writes valid files with :data:`BASE_FIELDS`.
    The GeoPackage layer is named after the file; a WKT-only CRS (no EPSG code) is kept as is.

    Args:
        features: GeoJSON-like features whose geometries are in ``crs``
            (e.g. from :func:`label_polygons`).
        crs: the CRS of the geometries (the source raster's).
        gpkg: GeoPackage destination, or ``None``.
        geojson: GeoJSON destination (lon/lat, no ``crs`` member), or ``None``.

    Raises:
        UsageError: no destination, or an unusable CRS.
        OutputError: a file cannot be written.
    """
    if gpkg is None and geojson is None:
        raise UsageError("write_polygons needs a gpkg or a geojson destination")
    try:
        source_crs = CRS.from_user_input(crs)
    except CRSError as error:
        raise UsageError(f"the polygons' CRS is unusable ({error})") from error
    geometries = [dict(feature["geometry"]) for feature in features]
    names, columns = _attribute_columns([feature.get("properties") or {} for feature in features])
    if gpkg is not None:
        _write_layer(Path(gpkg), "GPKG", geometries, names, columns, source_crs.to_string())
    if geojson is not None:
        lonlat = [transform_geom(source_crs, RFC7946_CRS, geometry) for geometry in geometries]
        _write_layer(
            Path(geojson),
            "GeoJSON",
            lonlat,
            names,
            columns,
            RFC7946_CRS,
            layer_options={"RFC7946": "YES", "WRITE_NAME": "NO"},
        )
    logger.debug("wrote %d polygons to %s / %s", len(features), gpkg, geojson)


def _attribute_columns(
    properties: Sequence[Mapping[str, Any]],
) -> tuple[list[str], list[np.ndarray]]:
    """Field names and typed columns; a missing value is NaN (null) or an empty string."""
    names = list(BASE_FIELDS)
    for record in properties:
        names += [name for name in record if name not in names]
    columns = []
    for name in names:
        values = [record.get(name) for record in properties]
        present = [value for value in values if value is not None]
        kind = BASE_FIELDS.get(name) or _kind_of(present)
        if kind is int and len(present) < len(values):
            kind = float  # integers with gaps: written as reals so nulls survive
        if kind is str:
            columns.append(np.array(["" if v is None else str(v) for v in values], dtype=object))
        else:
            fill = np.nan if kind is float else 0
            columns.append(np.array([fill if v is None else v for v in values], dtype=kind))
    return names, columns


def _kind_of(values: Sequence[Any]) -> type:
    if values and all(isinstance(v, int | np.integer) for v in values):
        return int
    if values and all(isinstance(v, int | float | np.number) for v in values):
        return float
    return str


def _write_layer(
    destination: Path,
    driver: str,
    geometries: Sequence[Mapping[str, Any]],
    names: list[str],
    columns: list[np.ndarray],
    crs: str,
    *,
    layer_options: dict[str, str] | None = None,
) -> None:
    wkb = np.array(
        [shapely.to_wkb(shapely.geometry.shape(geometry)) for geometry in geometries],
        dtype=object,
    )
    types = {str(geometry["type"]) for geometry in geometries}
    geometry_type = "Polygon" if types <= {"Polygon"} else "MultiPolygon"
    if not types <= {"Polygon", "MultiPolygon"}:
        geometry_type = "Unknown"
    layer = destination.name.split(".")[0] or "polygons"
    try:
        with atomic_output(destination) as temp_path:
            # mkstemp left an empty file; some OGR drivers refuse to open it as a data source.
            temp_path.unlink()
            pyogrio.raw.write(
                temp_path,
                wkb,
                columns,
                names,
                layer=layer,
                driver=driver,
                geometry_type=geometry_type,
                crs=crs,
                promote_to_multi=geometry_type == "MultiPolygon",
                layer_options=layer_options,
            )
    except OutputError:
        raise
    except Exception as error:  # pyogrio raises several GDAL-specific types
        raise OutputError(f"{driver} writing failed ({error})", path=destination) from error
