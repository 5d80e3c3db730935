"""The segflow exception tree.

One root, :class:`SegflowError`; every subclass also inherits the builtin that matches it, so a
caller may catch ours or the standard type (``except ValueError`` still works), as rasterio does.

Every message names the file, the reason, and what to do about it::

    >>> str(EmptyFileError("is empty (0 bytes)", path="a.nii.gz", hint="re-export the file"))
    'a.nii.gz: is empty (0 bytes). Fix: re-export the file'
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ArchiveError",
    "ArchiveLinkError",
    "ArchiveSpecialFileError",
    "ChannelCountError",
    "ChannelGeometryError",
    "ConfigError",
    "CorruptFileError",
    "DatasetLayoutError",
    "DecompressionBombError",
    "EmptyFileError",
    "GeometryMismatchError",
    "GeoreferenceError",
    "InputDriftError",
    "InputError",
    "InvalidGeometryError",
    "LabelGeometryError",
    "LabelValueError",
    "LossError",
    "MissingFileError",
    "ModelError",
    "NoValidPixelsError",
    "NonFiniteLabelError",
    "NonIntegerLabelError",
    "NotAnImageError",
    "ObjectStoreError",
    "OutputError",
    "OutputNameCollisionError",
    "PairingError",
    "SegflowError",
    "UnreadableFileError",
    "UnsafeArchivePathError",
    "UnsupportedFormatError",
    "UsageError",
    "VectorLabelError",
]


class SegflowError(Exception):
    """Root of every error segflow raises on purpose.

    Args:
        reason: what is wrong, phrased to follow the file name ("is empty (0 bytes)").
        path: the file or folder the error is about, when there is one.
        hint: what the user can do about it.
    """

    default_hint: str = ""

    def __init__(self, reason: str, *, path: str | Path | None = None, hint: str | None = None):
        self.reason = reason
        self.path = str(path) if path is not None else None
        self.hint = hint if hint is not None else self.default_hint
        super().__init__(self._format())

    def _format(self) -> str:
        head = f"{self.path}: {self.reason}" if self.path else self.reason
        return f"{head}. Fix: {self.hint}" if self.hint else head

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the keyword-only arguments when pickled (Prefect and Dask move errors between
        # processes).
        return (_rebuild, (type(self), self.reason, self.path, self.hint))


def _rebuild(
    cls: type[SegflowError], reason: str, path: str | None, hint: str | None
) -> SegflowError:
    return cls(reason, path=path, hint=hint)


class UsageError(SegflowError, ValueError):
    """The command line or API was called wrongly (exit code 2)."""

    default_hint = "see `segflow --help`"


class ConfigError(SegflowError, ValueError):
    """A configuration file or setting is invalid."""

    default_hint = "correct the configuration value"


class LossError(ConfigError):
    """A training loss cannot be built: unknown name, unknown option, missing or bad value."""

    default_hint = (
        "choose a loss and its options from the loss table in docs/models.md (`segflow train "
        "--help` for --loss); options go under `loss_options:` in the training YAML (--config)"
    )


class InputError(SegflowError, ValueError):
    """An input file or dataset is invalid; the case is rejected, the batch goes on."""

    default_hint = "fix or remove this input and run again"


class MissingFileError(InputError, FileNotFoundError):
    """A file that a layout, CSV or dataset.json refers to does not exist."""

    default_hint = "check the path, or remove the entry that refers to it"


class UnreadableFileError(InputError, PermissionError):
    """The file exists but cannot be read (permissions, I/O error)."""

    default_hint = "check the file's permissions and the storage it lives on"


class EmptyFileError(InputError):
    """The file has zero bytes."""

    default_hint = "the file is empty: re-export or re-download it"


class CorruptFileError(InputError):
    """The file starts like a known format but cannot be decoded (truncated, bad checksum)."""

    default_hint = "the file is damaged or truncated: re-export or re-download it"


class NotAnImageError(InputError):
    """The file's extension promises an image but its content is something else."""

    default_hint = "the file is not an image despite its name: remove it or fix its extension"


class UnsupportedFormatError(InputError):
    """The file's format is not one segflow reads."""

    default_hint = "convert it to NIfTI (.nii/.nii.gz), GeoTIFF (.tif) or PNG"


class InvalidGeometryError(InputError):
    """The header's geometry is unusable: NaN or singular affine, zero spacing, wrong dims."""

    default_hint = "repair the header (affine, spacing, dimensions) with the tool that wrote it"


class NoValidPixelsError(InputError):
    """An image holds no valid pixel: every pixel is nodata (or non-finite)."""

    default_hint = "remove the image, or correct its nodata value (gdal_edit.py -a_nodata)"


class GeoreferenceError(InputError):
    """A raster lacks a CRS or transform, or has one segflow cannot use."""

    default_hint = (
        "assign a CRS and geotransform (e.g. gdal_edit.py -a_srs), or pass --allow-ungeoreferenced"
    )


class GeometryMismatchError(InputError):
    """Channels and label do not share one grid (shape, affine, CRS or transform)."""

    default_hint = "resample the label/channel onto the image grid, or pair the right files"


class ChannelGeometryError(GeometryMismatchError):
    """The channel files of one case differ in shape or grid."""

    default_hint = "all channels of a case must share one grid: resample them or fix the pairing"


class ChannelCountError(InputError):
    """An input has another number of channels (modalities, bands) than the model expects."""

    default_hint = "pass the channels, in order, that the model was trained on"


class LabelGeometryError(GeometryMismatchError):
    """The label is not on the image's grid (shape, affine, CRS or transform)."""

    default_hint = (
        "resample the label onto the image grid (nearest neighbour), or pair the right file"
    )


class LabelValueError(InputError):
    """A label holds values outside the declared label set, or non-finite values."""

    default_hint = "declare the extra values with --labels, or fix the label file"


class NonIntegerLabelError(LabelValueError):
    """A label holds non-integer values (e.g. 0.5): it looks like a probability or image."""

    default_hint = (
        "labels must hold integer class values: threshold or round it, or pair the right file"
    )


class NonFiniteLabelError(LabelValueError):
    """A label holds NaN or infinite values."""

    default_hint = "labels must be finite integers: replace NaN by the ignore value"


class PairingError(InputError):
    """Images and labels cannot be paired (missing channel, label without image, duplicate)."""

    default_hint = (
        "check file names: a label is named like its image (images/tile_2023.tif ↔ "
        "labels/tile_2023.tif, plus any --label-suffix); files <case>_0000, <case>_0001… are "
        "the channels of one case only in the nnU-Net layout, with a dataset.json declaring "
        "several channels, or with --channel-suffix"
    )


class DatasetLayoutError(InputError):
    """A dataset folder, dataset.json or CSV does not follow a layout segflow knows."""

    default_hint = "use the nnU-Net v2 layout, images/ + labels/, or a CSV with columns image,label"


class OutputNameCollisionError(DatasetLayoutError):
    """Two inputs would get the same case id, so their outputs would overwrite each other.

    Case ids are compared after case-folding (``Tile.tif`` and ``tile.tif`` clash on a
    case-insensitive file system); names differing only in extension (``scene.tif``,
    ``scene.tiff``) and one name in two folders clash too. Every input of a clash is rejected.
    """

    default_hint = (
        "rename one of them: every case id (the file name without its extension) must be "
        "unique, ignoring letter case"
    )


class VectorLabelError(InputError):
    """A vector label (GeoJSON/GeoPackage) cannot be read or rasterised."""

    default_hint = (
        "check the vector file, its CRS (a .crs.wkt sidecar or --vector-crs) and its attribute"
    )


class ArchiveError(InputError):
    """A zip or tar archive cannot be read, or holds a member segflow refuses to extract."""

    default_hint = (
        "re-download the archive, or repack it (zip or tar) with relative paths and regular "
        "files only"
    )


class UnsafeArchivePathError(ArchiveError):
    """An archive member has an absolute path or `..` that would leave the extraction folder."""

    default_hint = "repack the archive from inside its folder, so that no path starts with / or .."


class ArchiveLinkError(ArchiveError):
    """An archive member is a link that points outside the archive."""

    default_hint = (
        "repack the archive with the linked files themselves (tar --dereference, zip without "
        "--symlinks), or remove the link"
    )


class ArchiveSpecialFileError(ArchiveError):
    """An archive member is a device, FIFO or other special file."""

    default_hint = "repack the archive without devices, FIFOs or sockets: regular files only"


class DecompressionBombError(ArchiveError):
    """An archive or compressed file would expand beyond the allowed size or ratio."""

    default_hint = "raise --max-extract-bytes if the archive is trusted, or repack it"


class OutputError(SegflowError, OSError):
    """An output cannot be written (read-only folder, full disk, failed verification)."""

    default_hint = "check that the output folder exists, is writable and has free space"


class ObjectStoreError(SegflowError, OSError):
    """An ``s3://`` location cannot be used: no such bucket or key, access denied, bad URI."""

    default_hint = (
        "check the URI, that the bucket exists, and the S3 endpoint and credentials "
        "(SEGFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
    )


class ModelError(SegflowError, ValueError):
    """A model spec, weight file or registry entry is invalid or incompatible with the input."""

    default_hint = "check the model name/URI and that it was trained for this kind of input"


class InputDriftError(InputError):
    """An input lies outside the model's training data and ``--on-drift`` is ``skip`` or
    ``fail``.

    Args:
        reason, path, hint: as for :class:`SegflowError`.
        checks: ``(check, message)`` of each drift flag.
        policy: ``skip`` (the file is reported skipped) or ``fail`` (reported failed).
    """

    default_hint = "segment it with --on-drift warn to get a (flagged) mask, or use a model trained on such data"

    def __init__(
        self,
        reason: str,
        *,
        path: str | Path | None = None,
        hint: str | None = None,
        checks: tuple[tuple[str, str], ...] = (),
        policy: str = "fail",
    ):
        self.checks, self.policy = tuple(checks), policy
        super().__init__(reason, path=path, hint=hint)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_drift, (self.reason, self.path, self.hint, self.checks, self.policy))


def _rebuild_drift(
    reason: str,
    path: str | None,
    hint: str | None,
    checks: tuple[tuple[str, str], ...],
    policy: str,
) -> InputDriftError:
    return InputDriftError(reason, path=path, hint=hint, checks=checks, policy=policy)
