"""Vector labels (GeoJSON, GeoPackage): read, reproject to the image CRS, rasterise on its grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from rasterio.windows import Window

from data_contracts import RasterGeometry, VectorLabelError
from pipelines.files import atomic_output, require_nonempty_file

RFC7946_CRS = "EPSG:4326"
_ROWS_PER_WINDOW = 2048


@dataclass(frozen=True)
class VectorLabels:
    """Shapes of a vector label file, in the raster's CRS, with the value each one burns."""

    shapes: tuple[tuple[dict[str, Any], int], ...]
    source_crs: str


def sidecar_crs(vector_path: Path) -> str | None:
    """WKT from a ``<name>.crs.wkt`` sidecar beside the vector file, when there is one."""
    stem = vector_path.name.rsplit(".", 1)[0]
    for candidate in (
        vector_path.with_name(f"{stem}.crs.wkt"),
        vector_path.with_suffix(".crs.wkt"),
    ):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").strip()
    sibling = [p for p in vector_path.parent.glob("*.crs.wkt") if stem.startswith(p.name[:-8])]
    return sibling[0].read_text(encoding="utf-8").strip() if len(sibling) == 1 else None


def _declares_crs(vector_path: Path) -> bool:
    if vector_path.suffix.lower() != ".geojson":
        return True
    with open(vector_path, encoding="utf-8", errors="replace") as handle:
        return '"crs"' in handle.read(4096)


def read_vector_labels(
    vector_path: str | Path,
    target_crs: str,
    *,
    attribute: str | None = None,
    label_names: dict[str, int] | None = None,
    instance: bool = False,
    vector_crs: str | None = None,
) -> VectorLabels:
    """Read shapes and burn values, reprojected to ``target_crs``.

    The vector's CRS is, in order: ``vector_crs``; a ``.crs.wkt`` sidecar; the file's own CRS
    member; else EPSG:4326 (RFC 7946 GeoJSON).

    Args:
        vector_path: GeoJSON or GeoPackage file.
        target_crs: the image's CRS (WKT or authority string).
        attribute: feature property holding the class value (integer, or a label name).
        label_names: label name → value, to translate string attributes.
        instance: number features 1..N (or by ``instance_id``) instead of burning classes.
        vector_crs: explicit CRS of the vector coordinates.

    Raises:
        VectorLabelError: unreadable file, unknown attribute or class, bad CRS.
    """
    path = Path(vector_path)
    require_nonempty_file(path)
    try:
        meta, _, geometries, fields = pyogrio.raw.read(path)
    except Exception as error:  # pyogrio raises several GDAL-specific types
        raise VectorLabelError(f"cannot be read as vector data ({error})", path=path) from error
    source_crs = vector_crs or sidecar_crs(path)
    if source_crs is None:
        source_crs = meta.get("crs") if _declares_crs(path) else None
    source_crs = source_crs or RFC7946_CRS
    columns = {str(name): values for name, values in zip(meta["fields"], fields, strict=True)}
    values = _burn_values(columns, len(geometries), path, attribute, label_names, instance)
    try:
        source, target = CRS.from_user_input(source_crs), CRS.from_user_input(target_crs)
    except CRSError as error:
        raise VectorLabelError(f"has an unusable CRS ({error})", path=path) from error
    shapes = []
    for wkb, value in zip(geometries, values, strict=True):
        if wkb is None or value is None:
            continue
        mapping = shapely.geometry.mapping(shapely.from_wkb(wkb))
        if source != target:
            mapping = transform_geom(source, target, mapping)
        shapes.append((mapping, int(value)))
    return VectorLabels(shapes=tuple(shapes), source_crs=source.to_string())


def _burn_values(
    columns: dict[str, np.ndarray],
    count: int,
    path: Path,
    attribute: str | None,
    label_names: dict[str, int] | None,
    instance: bool,
) -> list[int | None]:
    if instance and attribute is None:
        ids = columns.get("instance_id")
        return [int(v) for v in ids] if ids is not None else list(range(1, count + 1))
    if attribute is None:
        return [1] * count
    if attribute not in columns:
        raise VectorLabelError(
            f"has no property {attribute!r} (properties: {sorted(columns)})", path=path
        )
    burned: list[int | None] = []
    for raw in columns[attribute]:
        if raw is None:
            burned.append(None)
        elif isinstance(raw, str) and not raw.lstrip("-").isdigit():
            if not label_names or raw not in label_names:
                raise VectorLabelError(
                    f"has class {raw!r} in {attribute!r}, which is not a declared label", path=path
                )
            burned.append(label_names[raw])
        else:
            burned.append(int(raw))
    return burned


def rasterize_to_file(
    labels: VectorLabels, grid: RasterGeometry, destination: str | Path, *, dtype: str = "uint8"
) -> Path:
    """Burn ``labels`` onto the raster grid ``grid`` and write a tiled GeoTIFF atomically.

    Rasterises by windows of rows, so memory stays bounded for large scenes.
    """
    destination = Path(destination)
    transform = Affine(*grid.transform)
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "dtype": dtype,
        "crs": grid.crs_wkt,
        "transform": transform,
        "nodata": None,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with atomic_output(destination) as temp_path, rasterio.open(temp_path, "w", **profile) as out:
        for top in range(0, grid.height, _ROWS_PER_WINDOW):
            window = Window(0, top, grid.width, min(_ROWS_PER_WINDOW, grid.height - top))
            block = (
                rasterize(
                    labels.shapes,
                    out_shape=(int(window.height), grid.width),
                    transform=transform @ Affine.translation(0, top),
                    fill=0,
                    dtype=dtype,
                )
                if labels.shapes
                else np.zeros((int(window.height), grid.width), dtype=dtype)
            )
            out.write(block, 1, window=window)
    return destination
