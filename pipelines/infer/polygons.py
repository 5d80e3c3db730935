"""Polygons of a written raster mask: GeoPackage in the source CRS, GeoJSON in WGS84."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.windows import Window

from pipelines.infer.loaded_model import LoadedModel
from pipelines.io.raster import bounded_gdal_env, open_raster
from pipelines.postprocess.polygons import label_polygons, write_polygons

__all__ = ["POLYGON_BLOCK_ROWS", "write_raster_polygons"]

#: Masks are polygonised in blocks of this many rows (a polygon crossing a block edge is split).
POLYGON_BLOCK_ROWS = 4096


def write_raster_polygons(mask: Path, model: LoadedModel, stem: Path) -> dict[str, Path]:
    """Polygonise the class regions of ``mask`` into ``<stem>.gpkg`` and ``<stem>.geojson``.

    The mask is read in blocks of :data:`POLYGON_BLOCK_ROWS` rows so memory stays bounded;
    nodata pixels and the background class are left out.

    Returns:
        ``{"polygons_gpkg": path, "polygons_geojson": path}``.
    """
    names = dict(zip(model.plan.class_values, model.plan.class_names, strict=True))
    background = model.plan.class_values[0]
    features: list[dict[str, object]] = []
    with bounded_gdal_env(), open_raster(mask) as dataset:
        crs, nodata = dataset.crs, dataset.nodata
        for row in range(0, dataset.height, POLYGON_BLOCK_ROWS):
            window = Window(0, row, dataset.width, min(POLYGON_BLOCK_ROWS, dataset.height - row))
            labels = dataset.read(1, window=window)
            valid = labels != nodata if nodata is not None else np.ones(labels.shape, bool)
            features += label_polygons(
                labels,
                dataset.window_transform(window),
                class_names=names,
                valid=valid,
                background=background,
            )
    gpkg, geojson = stem.parent / f"{stem.name}.gpkg", stem.parent / f"{stem.name}.geojson"
    write_polygons(features, crs, gpkg=gpkg, geojson=geojson)
    return {"polygons_gpkg": gpkg, "polygons_geojson": geojson}
