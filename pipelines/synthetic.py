"""Seeded synthetic datasets: NIfTI volumes, GeoTIFF tiles (+ GeoJSON) and 2D microscopy images.

Used by the demo (:func:`make_sample_archive`) and by the tests. Everything is drawn from
``numpy.random.default_rng(seed)``: the same arguments give the same arrays. Files are small and
objects are easy to learn (each class has its own intensity in each channel), so a few minutes of
CPU training can fit them. Every function writes only under the folder it is given.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal, cast

import nibabel as nib
import numpy as np
import rasterio
from numpy.typing import NDArray
from PIL import Image
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.transform import Affine
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_geom
from scipy import ndimage
from skimage.draw import disk, ellipse, rectangle
from skimage.segmentation import relabel_sequential

from pipelines.archives import archive_format
from pipelines.files import atomic_output

__all__ = [
    "VolumeLayout",
    "custom_albers_wkt",
    "make_image_dataset",
    "make_raster_dataset",
    "make_sample_archive",
    "make_volume_dataset",
    "pack_archive",
    "volume_affine",
]

VolumeLayout = Literal["nnunet", "images_labels"]
CHANNEL_NAMES = ("T1", "T2", "FLAIR", "T1c")
CLASS_NAMES = ("tumour", "oedema", "necrosis", "cyst")
#: HU = stored int16 value + this intercept, for ``modality="ct"`` (scl_slope 1).
CT_INTERCEPT = -1024.0
_BLOCK = 64


def _write_json(path: Path, payload: dict[str, Any], indent: int | None = 1) -> None:
    path.write_text(json.dumps(payload, indent=indent) + "\n", encoding="utf-8")


# --- NIfTI volumes ------------------------------------------------------------------------------


def volume_affine(
    shape: Sequence[int],
    spacing: Sequence[float],
    axcodes: Sequence[str],
    rotation_deg: float = 0.0,
) -> NDArray[np.float64]:
    """A voxel-to-RAS affine with the given orientation, spacing and a rotation about S.

    Args:
        shape: (X, Y, Z) voxels; the world origin is put at the volume's centre.
        spacing: voxel size along X, Y, Z in mm.
        axcodes: where each voxel axis points, e.g. ``("L", "P", "S")``.
        rotation_deg: rotation about the superior axis; keep it under 45° so that
            ``nibabel.aff2axcodes`` still reports ``axcodes``.

    Returns:
        The 4×4 affine.
    """
    ornt = nib.orientations.axcodes2ornt(tuple(axcodes))
    linear = np.zeros((3, 3))
    for voxel_axis, (world_axis, flip) in enumerate(ornt):
        linear[int(world_axis), voxel_axis] = flip * spacing[voxel_axis]
    angle = np.deg2rad(rotation_deg)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ linear
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _volume_label(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], n_classes: int
) -> NDArray[np.uint8]:
    """Ellipsoids (in mm, so they look round despite anisotropic voxels), labels 1..n_classes."""
    extent = np.asarray(shape) * np.asarray(spacing)
    grid = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"
    )
    label = np.zeros(tuple(shape), np.uint8)
    for value in range(1, n_classes + 1):
        radii = np.maximum(extent * rng.uniform(0.12, 0.22, 3), 2.01 * np.asarray(spacing))
        centre = rng.uniform(radii, extent - radii)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
        label[inside] = value
    return label


def _volume_channel(
    rng: np.random.Generator, label: NDArray[np.uint8], channel: int, modality: str
) -> NDArray[np.float32]:
    """Object intensity (a different contrast per channel) plus Gaussian noise."""
    classes = np.arange(int(label.max(initial=0)) + 2)
    if modality == "ct":
        levels, noise = -80.0 + 70.0 * classes, 15.0
    else:
        sign = 1.0 if channel % 2 == 0 else -0.6
        levels, noise = 100.0 + 20.0 * channel + sign * 60.0 * classes, 10.0
    image = levels[label] + rng.normal(0.0, noise, label.shape)
    return image.astype(np.float32)


def _save_nifti(
    path: Path, data: NDArray[Any], affine: NDArray[np.float64], *, ct: bool = False
) -> None:
    """Write with qform and sform (code 1, scanner) from ``affine``; CT as scaled int16."""
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if not ct:
        nib.save(image, path)
        return
    # nibabel recomputes slope/intercept on save, so write the header and raw int16 ourselves.
    header = image.header
    header.set_data_dtype(np.int16)
    header.set_slope_inter(1.0, CT_INTERCEPT)
    header.set_data_offset(352)
    raw = np.round(data - CT_INTERCEPT).astype("<i2")
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(header.binaryblock + b"\0" * 4)  # 348-byte header, "no extensions" flag
        handle.write(raw.tobytes(order="F"))


def make_volume_dataset(
    root: str | Path,
    *,
    n_cases: int = 3,
    shape: tuple[int, int, int] = (32, 28, 16),
    spacing: tuple[float, float, float] = (0.9, 1.1, 3.0),
    axcodes: tuple[str, str, str] = ("L", "P", "S"),
    n_channels: int = 2,
    n_classes: int = 2,
    seed: int = 0,
    layout: VolumeLayout = "nnunet",
    rotation_deg: float = 0.0,
    modality: Literal["mr", "ct"] = "mr",
    n_test: int = 0,
    class_names: Sequence[str] | None = None,
    list_cases: bool = True,
) -> Path:
    """Write a labelled NIfTI dataset of ellipsoids on a non-RAS, anisotropic grid.

    Args:
        root: dataset folder (created).
        n_cases: labelled cases, named ``case_000``…
        shape: (X, Y, Z) voxels.
        spacing: voxel size in mm.
        axcodes: voxel axis directions.
        n_channels: channel files per case (``_0000``, ``_0001``…).
        n_classes: foreground classes, labels 1..n_classes (uint8).
        seed: random seed.
        layout: ``"nnunet"`` (``imagesTr/``, ``labelsTr/``, ``imagesTs/``, nnU-Net v2
            ``dataset.json``) or ``"images_labels"`` (``images/``, ``labels/``, and a
            ``dataset.json`` listing the cases, like ``/work/shared/data``).
        rotation_deg: rotation of the grid about the S axis.
        modality: ``"mr"`` (float32, a different contrast per channel) or ``"ct"`` (HU stored
            as int16 with ``scl_slope`` 1 and ``scl_inter`` :data:`CT_INTERCEPT`).
        n_test: unlabelled cases ``test_000``… (``imagesTs/`` or ``images/``).
        class_names: names of labels 1..n_classes (default tumour, oedema…).
        list_cases: for ``"images_labels"``, whether ``dataset.json`` lists the cases (and
            their count, ``numCases``); without them, readers must scan the folders.

    Returns:
        ``root``.
    """
    root = Path(root)
    if layout == "nnunet":
        images, labels, tests = root / "imagesTr", root / "labelsTr", root / "imagesTs"
    else:
        images, labels, tests = root / "images", root / "labels", root / "images"
    for folder in (images, labels, tests) if n_test else (images, labels):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = volume_affine(shape, spacing, axcodes, rotation_deg)
    cases: list[dict[str, Any]] = []
    ids = [(f"case_{i:03d}", images, True) for i in range(n_cases)]
    ids += [(f"test_{i:03d}", tests, False) for i in range(n_test)]
    for case_id, folder, labelled in ids:
        label = _volume_label(rng, shape, spacing, n_classes)
        channel_files = [folder / f"{case_id}_{c:04d}.nii.gz" for c in range(n_channels)]
        for channel, path in enumerate(channel_files):
            data = _volume_channel(rng, label, channel, modality)
            _save_nifti(path, data, affine, ct=modality == "ct")
        if labelled:
            _save_nifti(labels / f"{case_id}.nii.gz", label, affine)
            rel = [str(p.relative_to(root)) for p in channel_files]
            cases.append({"image": rel, "label": f"{labels.name}/{case_id}.nii.gz"})
    channel_names = ["CT"] * n_channels if modality == "ct" else list(CHANNEL_NAMES)
    channel_names += [f"MR{c}" for c in range(len(channel_names), n_channels)]
    given = list(class_names or CLASS_NAMES)
    names = [given[k - 1] if k <= len(given) else f"class{k}" for k in range(1, n_classes + 1)]
    meta: dict[str, Any] = {
        "name": root.name,
        "description": f"segflow synthetic volumes (seed {seed})",
        "channel_names": {str(c): channel_names[c] for c in range(n_channels)},
        "labels": {"background": 0} | {name: k for k, name in enumerate(names, start=1)},
        "file_ending": ".nii.gz",
    }
    if layout == "nnunet":
        meta["numTraining"] = n_cases
    elif list_cases:
        meta["numCases"] = n_cases
        meta["cases"] = cases
    _write_json(root / "dataset.json", meta)
    return root


# --- GeoTIFF rasters ----------------------------------------------------------------------------


def custom_albers_wkt() -> str:
    """An Albers Equal Area CRS (WGS 84, lat_0 23, lon_0 -96, parallels 29.5/45.5) as WKT.

    The definition of ``/work/shared/data/landsat_center_pivots_albers``; it has no EPSG code
    (``CRS.from_wkt(...).to_epsg()`` is ``None``).
    """
    proj4 = "+proj=aea +lat_0=23 +lon_0=-96 +lat_1=29.5 +lat_2=45.5 +datum=WGS84 +units=m"
    return str(CRS.from_proj4(proj4).to_wkt())


def _default_origin(crs: CRS) -> tuple[float, float]:
    """A plausible upper-left corner inside the CRS's area of use (from its projection params)."""
    params = crs.to_dict()
    if "zone" in params:
        lon, lat = 6.0 * int(params["zone"]) - 183.0, -45.0 if params.get("south") else 45.0
    else:
        lon = float(params.get("lon_0", 15.0))
        parallels = [float(params[key]) for key in ("lat_1", "lat_2") if key in params]
        lat = float(np.mean(parallels)) if parallels else float(params.get("lat_0", 45.0)) or 45.0
    if crs.is_geographic:
        return lon, lat
    xs, ys = warp_points(CRS.from_epsg(4326), crs, [lon], [lat])
    return round(xs[0], -2), round(ys[0], -2)


def _raster_label(
    rng: np.random.Generator, size: tuple[int, int], n_classes: int
) -> NDArray[np.uint8]:
    """Rectangles ("buildings", odd classes) and discs (even classes) on a 0 background."""
    label = np.zeros(size, np.uint8)
    for index in range(max(2 * n_classes, int(rng.integers(4, 7)))):
        value = 1 + index % n_classes
        extent = rng.uniform(0.08, 0.2, 2) * np.array(size)
        centre = rng.uniform(extent, np.array(size) - extent)
        if value % 2:
            start = np.floor(centre - extent / 2).astype(int)
            rows, cols = rectangle(
                tuple(start), extent=tuple(np.ceil(extent).astype(int)), shape=size
            )
        else:
            rows, cols = disk(tuple(centre), float(extent.min() / 2), shape=size)
        label[rows, cols] = value
    return label


def _raster_image(
    rng: np.random.Generator, label: NDArray[np.uint8], bands: int, n_classes: int
) -> NDArray[np.float64]:
    """(bands, H, W) values in [0.05, 0.95]: smooth background plus a per-class, per-band level.

    Even bands brighten with the class value and odd bands darken, so every class differs from
    the background by at least 0.3 in some band.
    """
    steps = np.arange(n_classes + 1) / n_classes
    even = np.arange(bands)[:, None] % 2 == 0
    levels = np.where(even, 0.25 + 0.6 * steps, 0.6 - 0.45 * steps)
    levels += rng.uniform(-0.03, 0.03, levels.shape)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (bands, *label.shape)), (0, 4, 4))
    image = levels[:, label] + 0.08 * texture + rng.normal(0, 0.02, (bands, *label.shape))
    return np.clip(image, 0.05, 0.95)


def _scale_to(image: NDArray[np.float64], dtype: str) -> NDArray[Any]:
    if np.issubdtype(np.dtype(dtype), np.floating):
        return image.astype(dtype)
    top = min(np.iinfo(dtype).max, 4000)
    return np.round(image * top).astype(dtype)


def _write_geotiff(
    path: Path, data: NDArray[Any], crs: CRS, transform: Affine, nodata: float | None
) -> None:
    """Write ``(bands, H, W)`` as a tiled (64×64), deflate-compressed GeoTIFF."""
    count, height, width = data.shape
    profile = {"driver": "GTiff", "tiled": True, "blockxsize": _BLOCK, "blockysize": _BLOCK}
    with rasterio.open(
        path, "w", **profile, count=count, height=height, width=width, dtype=data.dtype.name,
        crs=crs, transform=transform, nodata=nodata, compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(data)


def _vector_labels(
    label: NDArray[np.uint8], transform: Affine, crs: CRS, vector_crs: CRS
) -> dict[str, Any]:
    """The label's polygons (property ``class``) reprojected into ``vector_crs``."""
    features = [
        {
            "type": "Feature",
            "properties": {"class": int(value)},
            "geometry": transform_geom(crs, vector_crs, geometry),
        }
        for geometry, value in shapes(label, mask=label > 0, transform=transform, connectivity=4)
    ]
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    epsg = vector_crs.to_epsg()
    if epsg != 4326 and epsg is not None:
        # Pre-RFC 7946 "crs" member, which GDAL reads; RFC 7946 GeoJSON is lon/lat without one.
        urn = f"urn:ogc:def:crs:EPSG::{epsg}"
        collection["crs"] = {"type": "name", "properties": {"name": urn}}
    return collection


def make_raster_dataset(
    root: str | Path,
    *,
    n_tiles: int = 2,
    size: tuple[int, int] = (96, 96),
    bands: int = 3,
    crs: str = "EPSG:32633",
    pixel_size: float = 0.5,
    nodata: float | None = 0,
    dtype: str = "uint16",
    n_classes: int = 2,
    vector_labels: bool = False,
    raster_labels: bool = True,
    vector_crs: str = "EPSG:4326",
    origin: tuple[float, float] | None = None,
    seed: int = 0,
) -> Path:
    """Write GeoTIFF tiles with "buildings" (rectangles) and discs, and their labels.

    Tiles ``tile_000``… sit side by side (west to east). A strip in the upper-left corner of
    every image is ``nodata`` (its label is 0); elsewhere no pixel equals ``nodata``. The label
    rasters are the same whatever ``vector_labels``/``raster_labels`` say.

    Args:
        root: dataset folder (created): ``images/<tile>.tif``, ``labels/<tile>.tif``.
        n_tiles: number of tiles.
        size: (height, width) in pixels.
        bands: image bands.
        crs: any CRS rasterio accepts ("EPSG:32633", a WKT with no EPSG code…).
        pixel_size: pixel size in CRS units.
        nodata: image nodata value, or ``None`` for no nodata strip.
        dtype: image data type.
        n_classes: label classes 1..n_classes (uint8, 0 is background).
        vector_labels: also write ``labels/<tile>.geojson`` (polygons with an integer ``class``)
            in ``vector_crs``; outside EPSG:4326 a ``labels/<tile>.crs.wkt`` sidecar too.
        raster_labels: write ``labels/<tile>.tif``.
        vector_crs: CRS of the GeoJSON; EPSG:4326 follows RFC 7946 (lon/lat, no ``crs`` member).
        origin: upper-left corner of the first tile in CRS units (default: a point inside the
            CRS's area of use).
        seed: random seed.

    Returns:
        ``root``.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    raster_crs, target_crs = CRS.from_user_input(crs), CRS.from_user_input(vector_crs)
    x0, y0 = origin if origin is not None else _default_origin(raster_crs)
    for index in range(n_tiles):
        tile = f"tile_{index:03d}"
        west = x0 + index * size[1] * pixel_size
        transform = Affine.translation(west, y0) @ Affine.scale(pixel_size, -pixel_size)
        label = _raster_label(rng, size, n_classes)
        image = _scale_to(_raster_image(rng, label, bands, n_classes), dtype)
        if nodata is not None:
            strip = (slice(0, max(1, size[0] // 8)), slice(0, max(1, size[1] // 3)))
            image[(slice(None), *strip)] = nodata
            label[strip] = 0
        _write_geotiff(root / "images" / f"{tile}.tif", image, raster_crs, transform, nodata)
        if raster_labels:
            _write_geotiff(
                root / "labels" / f"{tile}.tif", label[None], raster_crs, transform, None
            )
        if vector_labels:
            collection = _vector_labels(label, transform, raster_crs, target_crs)
            _write_json(root / "labels" / f"{tile}.geojson", collection, indent=None)
            if target_crs.to_epsg() != 4326:
                (root / "labels" / f"{tile}.crs.wkt").write_text(target_crs.to_wkt() + "\n")
    return root


# --- 2D microscopy images -----------------------------------------------------------------------


def _blobs(rng: np.random.Generator, size: tuple[int, int]) -> NDArray[np.uint16]:
    """Instance map of elliptical "nuclei", numbered 1..N without gaps."""
    instances = np.zeros(size, np.uint16)
    scale = min(size) / 64
    for index in range(int(rng.integers(4, 9))):
        radii = rng.uniform(3, 7, 2) * scale
        centre = rng.uniform(radii.max(), np.array(size) - radii.max())
        angle = rng.uniform(0, np.pi)
        rows, cols = ellipse(centre[0], centre[1], radii[0], radii[1], shape=size, rotation=angle)
        instances[rows, cols] = index + 1
    relabelled, _, _ = relabel_sequential(instances)
    return relabelled.astype(np.uint16)


def make_image_dataset(
    root: str | Path,
    *,
    n_images: int = 3,
    size: tuple[int, int] = (64, 64),
    rgb: bool = False,
    seed: int = 0,
) -> Path:
    """Write fluorescence-like PNGs of blobs with instance labels.

    Args:
        root: dataset folder (created): ``images/img_000.png`` (uint8 grey, or RGB) and
            ``labels/img_000.png`` (uint16, 0 background, 1..N instances).
        n_images: number of images.
        size: (height, width) in pixels.
        rgb: write 3-channel images instead of grey.
        seed: random seed.

    Returns:
        ``root``.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n_images):
        instances = _blobs(rng, size)
        brightness = np.concatenate([[20.0], rng.uniform(120, 220, int(instances.max()))])
        image = ndimage.gaussian_filter(brightness[instances], 1.0) + rng.normal(0, 8, size)
        if rgb:
            image = image[..., None] * np.array([0.9, 0.55, 1.0])
        pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"img_{index:03d}.png")
        Image.fromarray(instances).save(root / "labels" / f"img_{index:03d}.png")
    return root


# --- archives -----------------------------------------------------------------------------------


def _compressor(raw: IO[bytes], fmt: str) -> IO[bytes]:
    """A deterministic compressing writer (gzip with mtime 0, no file name)."""
    if fmt == "tar.gz":
        return cast(IO[bytes], gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0))
    if fmt == "tar.bz2":
        return cast(IO[bytes], bz2.BZ2File(raw, "wb"))
    if fmt == "tar.xz":
        return cast(IO[bytes], lzma.LZMAFile(raw, "wb"))
    return raw


def pack_archive(folder: str | Path, archive: str | Path) -> Path:
    """Pack every file under ``folder`` into a zip or tar archive chosen by ``archive``'s suffix.

    Members are named relative to ``folder`` (``images/a.tif``), sorted, with fixed times and
    permissions, so the same files give the same bytes.

    Args:
        folder: the folder to pack (it is not itself a member).
        archive: the archive to write (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``,
            ``.tar.xz``); written atomically.

    Returns:
        ``archive``.

    Raises:
        ValueError: the suffix is not an archive suffix.
    """
    folder, archive = Path(folder), Path(archive)
    fmt = archive_format(archive)
    if fmt is None:
        raise ValueError(f"{archive}: not an archive suffix (.zip, .tar, .tar.gz, …)")
    files = sorted(
        path for path in folder.rglob("*") if path.is_file() and path.resolve() != archive.resolve()
    )
    with atomic_output(archive) as temp:
        if fmt == "zip":
            with zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in files:
                    info = zipfile.ZipInfo(
                        path.relative_to(folder).as_posix(), (1980, 1, 1, 0, 0, 0)
                    )
                    info.external_attr = 0o100644 << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(info, path.read_bytes())
        else:
            with (
                temp.open("wb") as raw,
                _compressor(raw, fmt) as stream,
                tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                for path in files:
                    member = tarfile.TarInfo(path.relative_to(folder).as_posix())
                    member.size, member.mode = path.stat().st_size, 0o644
                    with path.open("rb") as handle:
                        tar.addfile(member, handle)
    return archive


def make_sample_archive(destination: str | Path, *, seed: int = 0) -> Path:
    """Write the demo's sample: one zip with ``volumes/`` (nnU-Net layout) and ``rasters/``.

    Sizes suit a few minutes of CPU training: 8 two-channel volumes of 40×40×24 voxels
    (LPS, 0.9×1.1×3 mm, 2 classes) and 4 three-band 128×128 tiles in EPSG:32633 (2 classes).

    Args:
        destination: the archive path (ending in ``.zip``), or a folder to write
            ``segflow_sample.zip`` into. The datasets are staged in a temporary folder beside
            the archive, removed afterwards.
        seed: random seed.

    Returns:
        The archive's path.
    """
    destination = Path(destination)
    archive = destination if destination.suffix == ".zip" else destination / "segflow_sample.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".segflow-sample-", dir=archive.parent) as staging:
        make_volume_dataset(
            Path(staging) / "volumes", n_cases=8, shape=(40, 40, 24), n_channels=2, seed=seed
        )
        make_raster_dataset(Path(staging) / "rasters", n_tiles=4, size=(128, 128), seed=seed + 1)
        return pack_archive(staging, archive)
