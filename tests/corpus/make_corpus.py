"""The hardening corpus: every kind of bad input, and which entry points must refuse it how.

Run as ``python -m tests.corpus.make_corpus OUTDIR`` (prints the table) or call
:func:`make_corpus`. The kinds of :mod:`tests.data.make_malformed` (ingest-only) are reused as
they are; this module adds the others (bombs in NIfTI headers, rotated and all-nodata rasters,
wrong band counts, names with unicode and spaces, duplicated content, a tar hard link out of
the archive, an unreadable file) and the output-side kinds (read-only output folder, full
disk), which are sources of good files whose *output* is hostile.

Every kind lists, per entry point, the class name (in :mod:`data_contracts.errors`) that the
bad file must fail with, or ``"ok"`` when the input is valid there (a name with spaces is fine;
two files with the same content are one case too many for training but two fine segmentations):

- ``ingest``: :func:`pipelines.ingest.ingest` (the case is rejected, good cases kept);
- ``train``: training data loading, :func:`pipelines.preprocess.verify.check_training_cases`
  then :func:`pipelines.preprocess.datasets.build_datasets`, on a manifest made before the file
  went bad (the bad case is dropped with its error, the others train);
- ``segment``: :func:`pipelines.services.batch.run_batch` on the source's images (the file fails, the
  others are segmented, no output of the failed file is left).

Kinds whose damage needs the test's help (``setup``): ``unreadable`` (the file must raise
``PermissionError``, which root never gets from permissions), ``readonly_output`` and
``full_disk`` (the output folder must refuse writes).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tarfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from tests.data import make_malformed as mm
from tests.data.make_malformed import BAD, CorpusItem

__all__ = ["ENTRY_POINTS", "Kind", "make_corpus", "table"]

ENTRY_POINTS = ("ingest", "train", "segment")
#: ``max_extract_bytes`` for the NIfTI gzip bomb (it declares 16 MiB of voxels).
NIFTI_BOMB_LIMIT = 1_000_000
OK = "ok"


@dataclass
class Kind:
    """One kind of bad input: its source, and the expected outcome per entry point.

    Attributes:
        item: the source, the bad file's name (which every message must contain), good cases.
        data: ``volume``, ``volume2`` (two channels), ``raster`` or ``image``: which model
            segments it.
        expected: entry point → error class name, or ``"ok"``; entry points it cannot reach
            are absent.
        setup: ``unreadable``, ``readonly_output`` or ``full_disk`` when the test must make the
            damage real (see the module docstring).
        env: environment the kind needs (limits), e.g. ``SEGFLOW_MAX_EXTRACT_BYTES``.
        named: entry point → the file its message names, where not ``item.bad_file`` (segment
            reports a case without its second channel by its first file).
    """

    item: CorpusItem
    data: str
    expected: dict[str, str]
    setup: str = ""
    env: dict[str, str] = field(default_factory=dict)
    named: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.item.name


Builder = Callable[[Path], Kind]
_KINDS: list[Builder] = []


def _kind(builder: Builder) -> Builder:
    _KINDS.append(builder)
    return builder


def _all(error: str, *, segment: str | None = None, train: str | None = None) -> dict[str, str]:
    return {"ingest": error, "train": train or error, "segment": segment or error}


# --- the kinds of tests/data/make_malformed.py, with their other entry points --------------------

_REUSED: dict[str, tuple[str, dict[str, str]]] = {
    # name: (data, expected per entry point)
    "empty_image": ("volume", _all("EmptyFileError")),
    "truncated_nifti": ("volume", _all("CorruptFileError")),
    "truncated_geotiff": ("raster", _all("CorruptFileError")),
    "text_as_nifti": ("volume", _all("NotAnImageError")),
    "text_as_tif": ("raster", _all("NotAnImageError")),
    "text_as_png": ("image", _all("NotAnImageError")),
    # Segmented on its own grid, the mask without CRS like its image: valid for segment.
    "raster_without_crs": ("raster", _all("GeoreferenceError", segment=OK)),
    "raster_label_shifted": (
        "raster",
        {"ingest": "LabelGeometryError", "train": "LabelGeometryError"},
    ),
    "volume_label_shape": (
        "volume",
        {"ingest": "LabelGeometryError", "train": "LabelGeometryError"},
    ),
    "volume_label_affine": (
        "volume",
        {"ingest": "LabelGeometryError", "train": "LabelGeometryError"},
    ),
    "nifti_nan_affine": ("volume", _all("InvalidGeometryError")),
    "nifti_zero_spacing": ("volume", _all("InvalidGeometryError")),
    "label_4d": ("volume", {"ingest": "InvalidGeometryError", "train": "InvalidGeometryError"}),
    "channel_shape_mismatch": ("volume2", _all("ChannelGeometryError")),
    "label_value_undeclared": ("volume", {"ingest": "LabelValueError", "train": "LabelValueError"}),
    "label_non_integer": (
        "volume",
        {"ingest": "NonIntegerLabelError", "train": "NonIntegerLabelError"},
    ),
    "label_nan": ("volume", {"ingest": "NonFiniteLabelError", "train": "NonFiniteLabelError"}),
    # A case whose second channel file is gone: ingest cannot pair it; a manifest that lists it
    # fails to load it; segment sees a one-channel case for a two-channel model.
    "missing_channel": (
        "volume2",
        {"ingest": "PairingError", "train": "MissingFileError", "segment": "ChannelCountError"},
    ),
    "label_without_image": ("volume", {"ingest": "PairingError"}),
    "zip_dotdot": (
        "volume",
        {"ingest": "UnsafeArchivePathError", "segment": "UnsafeArchivePathError"},
    ),
    "zip_absolute": (
        "volume",
        {"ingest": "UnsafeArchivePathError", "segment": "UnsafeArchivePathError"},
    ),
    "tar_symlink_out": ("volume", {"ingest": "ArchiveLinkError", "segment": "ArchiveLinkError"}),
    "tar_device": (
        "volume",
        {"ingest": "ArchiveSpecialFileError", "segment": "ArchiveSpecialFileError"},
    ),
    "zip_bomb": (
        "volume",
        {"ingest": "DecompressionBombError", "segment": "DecompressionBombError"},
    ),
}


def _reused(builder: Callable[[Path], CorpusItem]) -> Builder:
    def build(folder: Path) -> Kind:
        item = builder(folder)
        data, expected = _REUSED[item.name]
        env = {}
        if "max_extract_bytes" in item.extra_args:
            env["SEGFLOW_MAX_EXTRACT_BYTES"] = str(item.extra_args["max_extract_bytes"])
        named = {"segment": f"{BAD}_0000.nii.gz"} if item.name == "missing_channel" else {}
        return Kind(item, data, dict(expected), env=env, named=named)

    build.__name__ = builder.__name__
    return build


for _builder in mm._BUILDERS:
    _KINDS.append(_reused(_builder))


# --- new kinds ------------------------------------------------------------------------------------


def _gzip_nifti(path: Path, shape: tuple[int, ...], payload: bytes) -> None:
    """A ``.nii.gz`` whose header declares ``shape`` uint8 voxels, followed by ``payload``
    (NIfTI-2 when a dimension does not fit NIfTI-1's int16)."""
    header = nib.Nifti1Header() if max(shape) < 2**15 else nib.Nifti2Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_zooms((1.0,) * len(shape))
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    block = header.binaryblock + b"\0" * 4
    header.set_data_offset(len(block))
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as handle:
        handle.write(header.binaryblock + b"\0" * 4)
        handle.write(payload)


@_kind
def nifti_gzip_bomb(folder: Path) -> Kind:
    """A 16 KiB ``.nii.gz`` of zeros declaring 256³ voxels (16 MiB), over a 1 MB limit."""
    path = mm._volumes(folder) / "images" / f"{BAD}_0000.nii.gz"
    _gzip_nifti(path, (256, 256, 256), bytes(256**3))
    item = mm._item(folder, path.name, "DecompressionBombError")
    env = {"SEGFLOW_MAX_EXTRACT_BYTES": str(NIFTI_BOMB_LIMIT)}
    return Kind(item, "volume", _all("DecompressionBombError"), env=env)


@_kind
def nifti_huge_header(folder: Path) -> Kind:
    """A tiny ``.nii.gz`` (NIfTI-2) whose header declares 100000³ voxels (10¹⁵ bytes)."""
    path = mm._volumes(folder) / "images" / f"{BAD}_0000.nii.gz"
    _gzip_nifti(path, (100_000, 100_000, 100_000), bytes(1024))
    item = mm._item(folder, path.name, "DecompressionBombError")
    return Kind(item, "volume", _all("DecompressionBombError"))


@_kind
def nifti_singular_affine(folder: Path) -> Kind:
    """An image whose sform has a zero column (rank 2): no orientation can be derived."""
    path = mm._volumes(folder) / "images" / f"{BAD}_0000.nii.gz"
    image = mm._load(path)
    header = image.header.copy()
    header["srow_y"][:3] = header["srow_x"][:3]  # two equal rows: singular
    header["quatern_b"] = np.nan  # and no usable qform to fall back on
    mm._save_raw_nifti(path, header, np.asarray(image.dataobj))
    item = mm._item(folder, path.name, "InvalidGeometryError")
    return Kind(item, "volume", _all("InvalidGeometryError"))


@_kind
def image_4d(folder: Path) -> Kind:
    """A channel file with two volumes along a 4th axis where one channel is declared."""
    path = mm._volumes(folder) / "images" / f"{BAD}_0000.nii.gz"
    image = mm._load(path)
    data = np.asarray(image.dataobj)
    mm._save_nifti(path, np.stack([data, data], axis=-1), image.affine)
    item = mm._item(folder, path.name, "ChannelCountError")
    return Kind(item, "volume", _all("ChannelCountError"))


@_kind
def raster_label_other_crs(folder: Path) -> Kind:
    """A label with the image's transform numbers but another CRS (UTM 34N for 33N)."""
    path = mm._rasters(folder) / "labels" / f"{BAD}.tif"
    with rasterio.open(path) as src:
        transform = src.transform
    mm._rewrite_raster(path, crs=CRS.from_epsg(32634), transform=transform)
    item = mm._item(folder, path.name, "LabelGeometryError")
    return Kind(item, "raster", {"ingest": "LabelGeometryError", "train": "LabelGeometryError"})


@_kind
def raster_rotated(folder: Path) -> Kind:
    """Image and label with a rotated (non north-up) geotransform."""
    mm._rasters(folder)
    for sub in ("images", "labels"):
        path = folder / sub / f"{BAD}.tif"
        with rasterio.open(path) as src:
            crs, transform = src.crs, src.transform
        mm._rewrite_raster(path, crs=crs, transform=transform * Affine.rotation(10))
    item = mm._item(folder, f"{BAD}.tif", "GeoreferenceError")
    return Kind(item, "raster", _all("GeoreferenceError"))


@_kind
def raster_all_nodata(folder: Path) -> Kind:
    """An image whose every pixel is nodata: nothing to learn from; an all-nodata mask."""
    path = mm._rasters(folder) / "images" / f"{BAD}.tif"
    with rasterio.open(path, "r+") as dst:
        dst.write(np.full((dst.count, dst.height, dst.width), dst.nodata, dst.dtypes[0]))
    item = mm._item(folder, path.name, "NoValidPixelsError")
    expected = {"ingest": "NoValidPixelsError", "train": "NoValidPixelsError", "segment": OK}
    return Kind(item, "raster", expected)


@_kind
def raster_band_count(folder: Path) -> Kind:
    """A tile with three bands where the dataset (and the model) has two."""
    path = mm._rasters(folder) / "images" / f"{BAD}.tif"
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    profile.update(count=3)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.concatenate([data, data[:1]]))
    item = mm._item(folder, path.name, "ChannelCountError")
    return Kind(item, "raster", _all("ChannelCountError"))


@_kind
def raster_label_size(folder: Path) -> Kind:
    """A label one row shorter than its image (same origin and pixel size)."""
    path = mm._rasters(folder) / "labels" / f"{BAD}.tif"
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    profile.update(height=profile["height"] - 1)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[:, :-1])
    item = mm._item(folder, path.name, "LabelGeometryError")
    return Kind(item, "raster", {"ingest": "LabelGeometryError", "train": "LabelGeometryError"})


@_kind
def image_label_size(folder: Path) -> Kind:
    """A PNG label of another size than its image."""
    from PIL import Image

    mm._images(folder)
    shutil.copy(folder / "images" / "img_000.png", folder / "images" / f"{BAD}.png")
    label = np.asarray(Image.open(folder / "labels" / f"{BAD}.png"))
    Image.fromarray(label[:-3, :-5]).save(folder / "labels" / f"{BAD}.png")
    item = mm._item(folder, f"{BAD}.png", "LabelGeometryError")
    return Kind(item, "image", {"ingest": "LabelGeometryError", "train": "LabelGeometryError"})


def _flipped(path: Path, destination: Path) -> None:
    """Move a volume to ``destination`` with its voxels flipped: new content, same grid."""
    image = mm._load(path)
    data = np.ascontiguousarray(np.asarray(image.dataobj)[::-1])
    path.unlink()
    mm._save_nifti(destination, data, image.affine)


@_kind
def truncated_png(folder: Path) -> Kind:
    """A PNG cut after 40 bytes: its signature is right, its header chunk incomplete."""
    mm._images(folder)
    path = folder / "images" / f"{BAD}.png"
    content = (folder / "images" / "img_000.png").read_bytes()
    path.write_bytes(content[:40])
    item = mm._item(folder, path.name, "CorruptFileError")
    return Kind(item, "image", _all("CorruptFileError"))


@_kind
def unicode_space_names(folder: Path) -> Kind:
    """A case named ``Fall ü 01 – ß`` (non-ASCII letters, spaces, a dash): valid everywhere."""
    mm._volumes(folder)
    name = "Fall ü 01 – ß"
    for sub, suffix in (("images", "_0000.nii.gz"), ("labels", ".nii.gz")):
        _flipped(folder / sub / f"{BAD}{suffix}", folder / sub / f"{name}{suffix}")
    item = mm._item(folder, f"{name}_0000.nii.gz", OK, good_cases=2)
    return Kind(item, "volume", _all(OK))


@_kind
def duplicate_content(folder: Path) -> Kind:
    """Case ``broken`` is a byte-for-byte copy of ``case_000`` under another name.

    For training it would sit in both the training and the validation split: ingest refuses
    the second copy. Segmenting both is harmless.
    """
    mm._volumes(folder)
    item = mm._item(folder, f"{BAD}_0000.nii.gz", "PairingError")
    return Kind(item, "volume", {"ingest": "PairingError", "segment": OK})


@_kind
def tar_hardlink_out(folder: Path) -> Kind:
    """A tar hard link ``images/escape_0000.nii.gz`` to ``../../etc/passwd``."""
    name = "images/escape_0000.nii.gz"
    member = mm._tar_member(name, tarfile.LNKTYPE, "../../etc/passwd")
    archive = mm._archive(folder, ".tar", lambda tar: tar.addfile(member))
    item = mm._item(folder, name, "ArchiveLinkError", source=archive)
    return Kind(item, "volume", {"ingest": "ArchiveLinkError", "segment": "ArchiveLinkError"})


@_kind
def zip_unicode_spaces_dotdot(folder: Path) -> Kind:
    """A zip member ``images/../../é vil_0000.nii.gz``: ``..`` hidden after a real folder."""
    import zipfile

    name = "images/../../é vil_0000.nii.gz"

    def add(zf: zipfile.ZipFile) -> None:
        zf.writestr(name, mm._TEXT)

    archive = mm._archive(folder, ".zip", add)
    item = mm._item(folder, name, "UnsafeArchivePathError", source=archive)
    expected = {"ingest": "UnsafeArchivePathError", "segment": "UnsafeArchivePathError"}
    return Kind(item, "volume", expected)


@_kind
def unreadable_file(folder: Path) -> Kind:
    """A channel file without read permission (mode 000)."""
    mm._volumes(folder)
    for sub, suffix in (("images", "_0000.nii.gz"), ("labels", ".nii.gz")):
        _flipped(folder / sub / f"{BAD}{suffix}", folder / sub / f"{BAD}{suffix}")
    path = folder / "images" / f"{BAD}_0000.nii.gz"
    path.chmod(0)
    item = mm._item(folder, path.name, "UnreadableFileError")
    return Kind(item, "volume", _all("UnreadableFileError"), setup="unreadable")


@_kind
def readonly_output(folder: Path) -> Kind:
    """Good inputs; the output folder is read-only (mode 555): the batch fails before writing."""
    mm._volumes(folder)
    for sub, suffix in (("images", "_0000.nii.gz"), ("labels", ".nii.gz")):
        _flipped(folder / sub / f"{BAD}{suffix}", folder / sub / f"{BAD}{suffix}")
    item = mm._item(folder, "out", "OutputError", good_cases=0)
    return Kind(item, "volume", {"segment": "OutputError"}, setup="readonly_output")


#: The file-size limit (RLIMIT_FSIZE) of ``full_disk``: above the ledger's files, below the mask.
FULL_DISK_BYTES = 96 * 1024


@_kind
def full_disk(folder: Path) -> Kind:
    """Good inputs, but ``broken``'s mask (a noisy 128×128×96 volume) is bigger than the
    file-size limit: its write fails with EFBIG, as on a full disk; the small case fits. The
    mask is ``broken_0000.nii.gz``: a one-channel model's input file is a case named by its
    full stem."""
    mm._volumes(folder)
    image = mm._load(folder / "images" / f"{BAD}_0000.nii.gz")
    noise = np.random.default_rng(0).normal(0, 400, (128, 128, 96)).astype(np.int16)
    mm._save_nifti(folder / "images" / f"{BAD}_0000.nii.gz", noise, image.affine)
    mm._save_nifti(
        folder / "labels" / f"{BAD}.nii.gz", np.zeros(noise.shape, np.uint8), image.affine
    )
    item = mm._item(folder, f"{BAD}_0000.nii.gz", "OutputError")
    return Kind(item, "volume", {"segment": "OutputError"}, setup="full_disk")


def make_corpus(root: str | Path, *, only: Collection[str] | None = None) -> list[Kind]:
    """Build every kind (or those named in ``only``) under ``root`` (created); names are
    unique, order fixed."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    builders = [b for b in _KINDS if only is None or b.__name__ in only]
    kinds = [builder(root / builder.__name__) for builder in builders]
    names = [kind.name for kind in kinds]
    if len(set(names)) != len(names):
        raise ValueError(f"corpus kind names must be unique: {names}")
    return kinds


def table(kinds: list[Kind]) -> str:
    """The kind → entry point → expected error table, as aligned text."""
    lines = [f"{'kind':28} " + " ".join(f"{entry:24}" for entry in ENTRY_POINTS)]
    for kind in kinds:
        cells = [kind.expected.get(entry, "-") for entry in ENTRY_POINTS]
        lines.append(f"{kind.name:28} " + " ".join(f"{cell:24}" for cell in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: build the corpus in OUTDIR and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    kinds = make_corpus(args.outdir)
    print(table(kinds))
    print(f"{len(kinds)} kinds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
