"""Generate a corpus of malformed inputs, one small source per kind of damage.

Run as ``python tests/data/make_malformed.py OUTDIR`` or call :func:`make_corpus`. Every item is
its own source for ``segflow ingest``: a dataset folder in the ``images/`` + ``labels/`` layout
(volumes also carry a ``dataset.json`` with ``channel_names``, ``labels`` and ``file_ending`` but
no case list, so cases are found by scanning the folders), or an archive holding such a folder.
Each source holds :data:`GOOD_CASES` valid case(s) named ``case_000``… and one damaged case named
``broken`` (files ``broken_0000.nii.gz`` / ``broken.nii.gz``, ``broken.tif``, ``broken.png``).

``bad_file`` is the name the error message must contain: the damaged file, the missing channel
file (``missing_channel``), the archive member (archives), or the archive itself for the
decompression bomb, which refuses the whole source (``good_cases`` 0, the only such item).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from pipelines.synthetic import (
    make_image_dataset,
    make_raster_dataset,
    make_volume_dataset,
    pack_archive,
)

GOOD_CASES = 1
BAD = "broken"
VOLUME_SHAPE = (12, 10, 8)
#: The bomb's limit, passed as ``extra_args["max_extract_bytes"]``: its one member is 4 MiB.
BOMB_LIMIT_BYTES = 1_000_000
_TEXT = b"This is a plain text file, not an image.\n" * 4


@dataclass
class CorpusItem:
    """One malformed source and what ``segflow ingest`` must report for it.

    Attributes:
        name: unique name of the item (also its folder or archive stem).
        source: the dataset folder or archive to give to ``segflow ingest``.
        bad_file: the file name (or archive member) the error message must contain.
        expected_error: the class name in :mod:`data_contracts.errors`.
        good_cases: valid cases in the same source, which must be kept.
        extra_args: ingest options the item needs (``labels``, ``max_extract_bytes``).
    """

    name: str
    source: Path
    bad_file: str
    expected_error: str
    good_cases: int
    extra_args: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[Path], CorpusItem]
_BUILDERS: list[Builder] = []


def _register(builder: Builder) -> Builder:
    _BUILDERS.append(builder)
    return builder


def make_corpus(root: str | Path) -> list[CorpusItem]:
    """Build every corpus item under ``root`` (created) and return them in a fixed order."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    items = [builder(root / builder.__name__) for builder in _BUILDERS]
    assert len({item.name for item in items}) == len(items), "corpus names must be unique"
    return items


# --- helpers ------------------------------------------------------------------------------------


def _item(folder: Path, bad_file: str, error: str, **kwargs: Any) -> CorpusItem:
    kwargs.setdefault("good_cases", GOOD_CASES)
    return CorpusItem(folder.name, kwargs.pop("source", folder), bad_file, error, **kwargs)


def _volumes(
    folder: Path,
    *,
    n_channels: int = 1,
    class_names: list[str] | None = None,
    broken: bool = True,
) -> Path:
    """A volume source; its ``broken`` case (if asked for) starts as a copy of ``case_000``."""
    make_volume_dataset(
        folder,
        n_cases=GOOD_CASES,
        shape=VOLUME_SHAPE,
        n_channels=n_channels,
        n_classes=1,
        layout="images_labels",
        list_cases=False,
        class_names=class_names,
    )
    if not broken:
        return folder
    for channel in range(n_channels):
        name = f"_{channel:04d}.nii.gz"
        shutil.copy(folder / "images" / f"case_000{name}", folder / "images" / f"{BAD}{name}")
    shutil.copy(folder / "labels" / "case_000.nii.gz", folder / "labels" / f"{BAD}.nii.gz")
    return folder


def _load(path: Path) -> nib.Nifti1Image:
    return cast(nib.Nifti1Image, nib.load(path))


def _good_label(folder: Path) -> tuple[NDArray[Any], NDArray[np.float64]]:
    image = _load(folder / "labels" / "case_000.nii.gz")
    return np.asarray(image.dataobj), image.affine


def _save_nifti(path: Path, data: NDArray[Any], affine: NDArray[np.float64]) -> None:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _save_raw_nifti(path: Path, header: nib.Nifti1Header, data: NDArray[Any]) -> None:
    """Write ``header`` exactly as given (nibabel's save would repair the geometry)."""
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header.set_data_offset(352)
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(header.binaryblock + b"\0" * 4)
        handle.write(data.tobytes(order="F"))


def _rasters(folder: Path) -> Path:
    """A raster source whose ``broken`` tile starts as a copy of ``tile_000``."""
    make_raster_dataset(folder, n_tiles=GOOD_CASES, size=(32, 32), bands=2)
    for sub in ("images", "labels"):
        shutil.copy(folder / sub / "tile_000.tif", folder / sub / f"{BAD}.tif")
    return folder


def _rewrite_raster(path: Path, *, crs: Any = None, transform: Affine | None = None) -> None:
    """Rewrite a GeoTIFF with the same pixels but another (or no) CRS and transform."""
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    profile.update(crs=crs, transform=transform or Affine.identity())
    path.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)


def _images(folder: Path) -> Path:
    make_image_dataset(folder, n_images=GOOD_CASES, size=(32, 32))
    shutil.copy(folder / "labels" / "img_000.png", folder / "labels" / f"{BAD}.png")
    return folder


def _archive(folder: Path, suffix: str, add: Callable[[Any], None]) -> Path:
    """Pack a good volume source into ``<folder><suffix>``, let ``add`` append hostile members."""
    staging = _volumes(folder, broken=False)
    archive = pack_archive(staging, folder.with_name(folder.name + suffix))
    shutil.rmtree(staging)
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as zf:
            add(zf)
    else:
        with tarfile.open(archive, "a") as tar:
            add(tar)
    return archive


def _tar_member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


# --- unreadable files ---------------------------------------------------------------------------


@_register
def empty_image(folder: Path) -> CorpusItem:
    """A 0-byte channel file."""
    (_volumes(folder) / "images" / f"{BAD}_0000.nii.gz").write_bytes(b"")
    return _item(folder, f"{BAD}_0000.nii.gz", "EmptyFileError")


@_register
def truncated_nifti(folder: Path) -> CorpusItem:
    """A ``.nii.gz`` whose gzip stream is cut in half (the header still reads)."""
    path = _volumes(folder) / "images" / f"{BAD}_0000.nii.gz"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return _item(folder, f"{BAD}_0000.nii.gz", "CorruptFileError")


@_register
def truncated_geotiff(folder: Path) -> CorpusItem:
    """A GeoTIFF cut after its header and IFD, inside its first tile: it opens, reads fail."""
    path = _rasters(folder) / "images" / f"{BAD}.tif"
    with rasterio.open(path) as src:
        first_tile = int(src.tags(bidx=1, ns="TIFF").get("BLOCK_OFFSET_0_0", 0))
    content = path.read_bytes()
    path.write_bytes(content[: (first_tile or len(content) // 2) + 16])
    return _item(folder, f"{BAD}.tif", "CorruptFileError")


@_register
def text_as_nifti(folder: Path) -> CorpusItem:
    """A text file named ``.nii.gz``."""
    (_volumes(folder) / "images" / f"{BAD}_0000.nii.gz").write_bytes(_TEXT)
    return _item(folder, f"{BAD}_0000.nii.gz", "NotAnImageError")


@_register
def text_as_tif(folder: Path) -> CorpusItem:
    """A text file named ``.tif``."""
    (_rasters(folder) / "images" / f"{BAD}.tif").write_bytes(_TEXT)
    return _item(folder, f"{BAD}.tif", "NotAnImageError")


@_register
def text_as_png(folder: Path) -> CorpusItem:
    """A text file named ``.png``."""
    (_images(folder) / "images" / f"{BAD}.png").write_bytes(_TEXT)
    return _item(folder, f"{BAD}.png", "NotAnImageError")


# --- geometry -----------------------------------------------------------------------------------


@_register
def raster_without_crs(folder: Path) -> CorpusItem:
    """Image and label with neither CRS nor geotransform."""
    _rasters(folder)
    for sub in ("images", "labels"):
        _rewrite_raster(folder / sub / f"{BAD}.tif")
    return _item(folder, f"{BAD}.tif", "GeoreferenceError")


@_register
def raster_label_shifted(folder: Path) -> CorpusItem:
    """A label on another grid: its transform is shifted by 5 pixels east."""
    path = _rasters(folder) / "labels" / f"{BAD}.tif"
    with rasterio.open(path) as src:
        crs, transform = src.crs, src.transform
    _rewrite_raster(path, crs=crs, transform=transform @ Affine.translation(5, 0))
    return _item(folder, f"{BAD}.tif", "LabelGeometryError")


@_register
def volume_label_shape(folder: Path) -> CorpusItem:
    """A label with one slice fewer than its image."""
    label, affine = _good_label(_volumes(folder))
    _save_nifti(folder / "labels" / f"{BAD}.nii.gz", label[:, :, :-1], affine)
    return _item(folder, f"{BAD}.nii.gz", "LabelGeometryError")


@_register
def volume_label_affine(folder: Path) -> CorpusItem:
    """A label whose affine is translated by 5 mm along x."""
    label, affine = _good_label(_volumes(folder))
    shifted = affine.copy()
    shifted[0, 3] += 5.0
    _save_nifti(folder / "labels" / f"{BAD}.nii.gz", label, shifted)
    return _item(folder, f"{BAD}.nii.gz", "LabelGeometryError")


@_register
def nifti_nan_affine(folder: Path) -> CorpusItem:
    """An image whose sform and qform (both with code 1) hold NaN."""
    path = _volumes(folder) / "images" / f"{BAD}_0000.nii.gz"
    image = _load(path)
    header = image.header.copy()
    header["srow_x"][:] = np.nan
    header["quatern_b"] = np.nan
    _save_raw_nifti(path, header, np.asarray(image.dataobj))
    return _item(folder, f"{BAD}_0000.nii.gz", "InvalidGeometryError")


@_register
def nifti_zero_spacing(folder: Path) -> CorpusItem:
    """An image with pixdim 0 and qform/sform codes 0 (nibabel's load resets 0 to 1, warning)."""
    path = _volumes(folder) / "images" / f"{BAD}_0000.nii.gz"
    image = _load(path)
    header = image.header.copy()
    header.set_qform(None, code=0)
    header.set_sform(None, code=0)
    header["pixdim"][1:4] = 0.0
    _save_raw_nifti(path, header, np.asarray(image.dataobj))
    return _item(folder, f"{BAD}_0000.nii.gz", "InvalidGeometryError")


@_register
def label_4d(folder: Path) -> CorpusItem:
    """A 4D label (X, Y, Z, 2): labels must be 3D."""
    label, affine = _good_label(_volumes(folder))
    _save_nifti(folder / "labels" / f"{BAD}.nii.gz", np.stack([label, label], axis=-1), affine)
    return _item(folder, f"{BAD}.nii.gz", "InvalidGeometryError")


@_register
def channel_shape_mismatch(folder: Path) -> CorpusItem:
    """Channel ``_0001`` has one slice fewer than ``_0000``."""
    path = _volumes(folder, n_channels=2) / "images" / f"{BAD}_0001.nii.gz"
    image = _load(path)
    _save_nifti(path, np.asarray(image.dataobj)[:, :, :-1], image.affine)
    return _item(folder, f"{BAD}_0001.nii.gz", "ChannelGeometryError")


# --- label values -------------------------------------------------------------------------------


@_register
def label_value_undeclared(folder: Path) -> CorpusItem:
    """dataset.json declares {background: 0, fg: 1}; the label also holds 5."""
    label, affine = _good_label(_volumes(folder, class_names=["fg"]))
    label = label.copy()
    label[:3, :3, :3] = 5
    _save_nifti(folder / "labels" / f"{BAD}.nii.gz", label, affine)
    labels = {"background": 0, "fg": 1}
    return _item(folder, f"{BAD}.nii.gz", "LabelValueError", extra_args={"labels": labels})


@_register
def label_non_integer(folder: Path) -> CorpusItem:
    """A float32 label holding 0.5."""
    label, affine = _good_label(_volumes(folder))
    values = label.astype(np.float32)
    values[:3, :3, :3] = 0.5
    _save_nifti(folder / "labels" / f"{BAD}.nii.gz", values, affine)
    return _item(folder, f"{BAD}.nii.gz", "NonIntegerLabelError")


@_register
def label_nan(folder: Path) -> CorpusItem:
    """A float32 label holding NaN."""
    label, affine = _good_label(_volumes(folder))
    values = label.astype(np.float32)
    values[:3, :3, :3] = np.nan
    _save_nifti(folder / "labels" / f"{BAD}.nii.gz", values, affine)
    return _item(folder, f"{BAD}.nii.gz", "NonFiniteLabelError")


# --- pairing ------------------------------------------------------------------------------------


@_register
def missing_channel(folder: Path) -> CorpusItem:
    """dataset.json declares two channels; ``broken_0001.nii.gz`` does not exist."""
    (_volumes(folder, n_channels=2) / "images" / f"{BAD}_0001.nii.gz").unlink()
    return _item(folder, f"{BAD}_0001.nii.gz", "PairingError")


@_register
def label_without_image(folder: Path) -> CorpusItem:
    """``labels/orphan.nii.gz`` has no image (the ``broken`` case is removed)."""
    _volumes(folder)
    (folder / "images" / f"{BAD}_0000.nii.gz").unlink()
    (folder / "labels" / f"{BAD}.nii.gz").rename(folder / "labels" / "orphan.nii.gz")
    return _item(folder, "orphan.nii.gz", "PairingError")


# --- archives -----------------------------------------------------------------------------------


@_register
def zip_dotdot(folder: Path) -> CorpusItem:
    """A zip member ``../evil.txt``."""
    archive = _archive(folder, ".zip", lambda zf: zf.writestr("../evil.txt", _TEXT))
    return _item(folder, "../evil.txt", "UnsafeArchivePathError", source=archive)


@_register
def zip_absolute(folder: Path) -> CorpusItem:
    """A zip member with an absolute path."""
    name = "/segflow_evil.txt"
    archive = _archive(folder, ".zip", lambda zf: zf.writestr(zipfile.ZipInfo(name), _TEXT))
    return _item(folder, name, "UnsafeArchivePathError", source=archive)


@_register
def tar_symlink_out(folder: Path) -> CorpusItem:
    """A tar symlink ``images/escape_0000.nii.gz`` pointing at ``../../../etc/passwd``."""
    name = "images/escape_0000.nii.gz"
    member = _tar_member(name, tarfile.SYMTYPE, "../../../etc/passwd")
    archive = _archive(folder, ".tar", lambda tar: tar.addfile(member))
    return _item(folder, name, "ArchiveLinkError", source=archive)


@_register
def tar_device(folder: Path) -> CorpusItem:
    """A tar character-device member (made with TarInfo, no mknod needed)."""
    name = "images/device_0000.nii.gz"
    member = _tar_member(name, tarfile.CHRTYPE)
    member.devmajor, member.devminor = 1, 3
    archive = _archive(folder, ".tar", lambda tar: tar.addfile(member))
    return _item(folder, name, "ArchiveSpecialFileError", source=archive)


@_register
def zip_bomb(folder: Path) -> CorpusItem:
    """A zip whose 4 MiB member of zeros deflates ~1028-fold, over ``max_extract_bytes``.

    The whole archive is refused, good cases included: ``good_cases`` is 0.
    """

    def add(zf: zipfile.ZipFile) -> None:
        zf.writestr("images/bomb_0000.nii.gz", bytes(4 << 20), compresslevel=9)

    archive = _archive(folder, ".zip", add)
    extra = {"max_extract_bytes": BOMB_LIMIT_BYTES}
    return _item(
        folder,
        archive.name,
        "DecompressionBombError",
        source=archive,
        good_cases=0,
        extra_args=extra,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: build the corpus in OUTDIR and print one line per item."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    for item in make_corpus(args.outdir):
        print(f"{item.name:24} {item.expected_error:24} {item.bad_file}  ({item.source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
