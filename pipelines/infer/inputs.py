"""What ``segflow segment INPUT`` segments: a file, a folder, an archive or a manifest.

Files are grouped into cases by case id: the file name without its extension and without a
``_0000``-style channel suffix (``pat1_0000.nii.gz`` and ``pat1_0001.nii.gz`` are the two
channels of case ``pat1``, in suffix order). A folder is read at its top level; when it holds
no images, its ``imagesTs``, ``imagesTr`` or ``images`` subfolder is read instead (nnU-Net and
segflow layouts). Archives are extracted safely into a work folder first. A manifest (the JSON
``segflow ingest`` writes) lists its cases with their channels; its labels are not used.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from data_contracts import DatasetLayoutError, MissingFileError, SegflowError
from pipelines.archives import extract_archive, is_archive
from pipelines.files import sha256_file
from pipelines.ingest import read_manifest
from pipelines.ingest.layouts import split_channel
from pipelines.io.formats import IMAGE_SUFFIXES, is_image_name

__all__ = ["InferenceInput", "InputSet", "case_id_of", "discover_inputs"]

_IMAGE_SUBFOLDERS = ("imagesTs", "imagesTr", "images")


@dataclass(frozen=True)
class InferenceInput:
    """One case to segment.

    Attributes:
        case_id: output file stem.
        channels: the case's files in channel order (one for rasters and 2D images).
        origin: where it came from (the archive member or manifest, for lineage).
    """

    case_id: str
    channels: tuple[Path, ...]
    origin: str = ""

    def checksum(self) -> str:
        """SHA-256 of the first channel file (the lineage's source checksum)."""
        return sha256_file(self.channels[0])


@dataclass
class InputSet:
    """The cases found under an input, and the inputs that could not become cases."""

    cases: list[InferenceInput] = field(default_factory=list)
    rejected: list[SegflowError] = field(default_factory=list)


def case_id_of(path: str | Path) -> str:
    """``"pat1_0001.nii.gz"`` → ``"pat1"``; ``"scene.tif"`` → ``"scene"``."""
    return split_channel(Path(path))[0]


def _group(files: list[Path], origin: str) -> InputSet:
    grouped: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for path in sorted(files):
        case, channel = split_channel(path)
        grouped[case].append((channel if channel is not None else -1, path))
    found = InputSet()
    for case, members in sorted(grouped.items()):
        indices = [index for index, _ in members]
        if len(members) > 1 and -1 in indices:
            found.rejected.append(
                DatasetLayoutError(
                    f"case {case!r} has files with and without a _0000 channel suffix",
                    path=members[0][1].parent,
                    hint="name every channel <case>_0000, <case>_0001, …",
                )
            )
            continue
        channels = tuple(path for _, path in sorted(members))
        found.cases.append(InferenceInput(case, channels, origin or str(channels[0])))
    return found


def _image_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and is_image_name(p)]


def _from_folder(folder: Path, origin: str = "") -> InputSet:
    files = _image_files(folder)
    if not files:
        for name in _IMAGE_SUBFOLDERS:
            if (folder / name).is_dir() and (files := _image_files(folder / name)):
                break
    if not files:
        raise DatasetLayoutError(
            f"holds no images ({', '.join(IMAGE_SUFFIXES)}) at its top level or in "
            f"{'/'.join(_IMAGE_SUBFOLDERS)}",
            path=folder,
        )
    return _group(files, origin)


def _from_manifest(path: Path) -> InputSet:
    manifest = read_manifest(path)
    cases = [
        InferenceInput(
            case.case_id,
            tuple(Path(channel.path) for channel in case.channels),
            f"{path}#{case.case_id}",
        )
        for case in manifest.cases
    ]
    return InputSet(cases=cases)


def discover_inputs(source: str | Path, *, workdir: str | Path) -> InputSet:
    """The cases to segment under ``source``.

    Args:
        source: an image file, a folder, a zip/tar archive, or a manifest JSON.
        workdir: scratch folder; archives are extracted under it.

    Raises:
        MissingFileError: ``source`` does not exist.
        DatasetLayoutError: a folder or archive without images.
        ArchiveError: an unsafe or unreadable archive.
    """
    source = Path(source)
    if not source.exists():
        raise MissingFileError("does not exist", path=source)
    if source.is_dir():
        return _from_folder(source)
    if source.suffix.lower() == ".json":
        return _from_manifest(source)
    if is_archive(source):
        extracted = extract_archive(source, Path(workdir) / "extracted")
        found = _from_folder(_single_root(extracted.root), origin=str(source))
        found.rejected.extend(extracted.rejected)
        return found
    if is_image_name(source):
        return InputSet(cases=[InferenceInput(case_id_of(source), (source,), str(source))])
    raise DatasetLayoutError(
        "is neither an image, a folder, an archive nor a manifest",
        path=source,
        hint=f"pass a file ending in {', '.join(IMAGE_SUFFIXES)}, a folder, a .zip/.tar.gz or a "
        "manifest .json",
    )


def _single_root(root: Path) -> Path:
    """An archive that wraps everything in one folder is read from inside that folder."""
    entries = [entry for entry in root.iterdir() if not entry.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root
