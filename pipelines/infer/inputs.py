"""What ``segflow segment INPUT`` segments: a file, a folder, an archive or a manifest.

Case ids follow :mod:`pipelines.case_names`: every image file is one case named by its full
stem (``scene_8192.tif`` → ``scene_8192``, written as ``scene_8192.tif``). Files
``<case>_0000``, ``<case>_0001``… are grouped into the channels of case ``<case>`` (in suffix
order) only when asked (``channel_suffix``), in nnU-Net's ``imagesTr``/``imagesTs``, or when
the dataset's ``dataset.json`` declares more than one channel; ``segflow segment`` also asks
for a model that reads multi-channel volumes (:func:`channel_suffix_for`). Inputs whose case
ids are equal, or equal ignoring letter case, are rejected with
:class:`~data_contracts.OutputNameCollisionError` before any compute: their outputs would
overwrite each other.

A folder is read at its top level; when it holds no images, its ``imagesTs``, ``imagesTr`` or
``images`` subfolder is read instead (nnU-Net and segflow layouts). Archives are extracted
safely into a work folder first. A manifest (the JSON ``segflow ingest`` writes) lists its
cases with their channels; its labels are not used.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from data_contracts import (
    DatasetLayoutError,
    MissingFileError,
    OutputNameCollisionError,
    SegflowError,
    TrainingPlan,
)
from pipelines.case_names import full_stem, groups_channels, split_channel, split_collisions
from pipelines.files import sha256_file
from pipelines.ingest import read_manifest
from pipelines.io.archives import extract_archive, is_archive
from pipelines.io.formats import IMAGE_SUFFIXES, is_image_name
from pipelines.kinds import kind_adapter

__all__ = [
    "InferenceInput",
    "InputSet",
    "case_id_of",
    "channel_suffix_for",
    "discover_inputs",
]

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


def case_id_of(path: str | Path, *, channel_suffix: bool = False) -> str:
    """``"scene_8192.tif"`` → ``"scene_8192"``; with ``channel_suffix``,
    ``"pat1_0001.nii.gz"`` → ``"pat1"``."""
    return split_channel(Path(path))[0] if channel_suffix else full_stem(path)


def channel_suffix_for(plan: TrainingPlan, *, requested: bool = False) -> bool:
    """Whether ``segflow segment`` groups ``_0000`` channel files for a model with ``plan``.

    Asked for (``--channel-suffix``), or the model reads more than one channel of a kind whose
    channels come one file each (:attr:`~pipelines.kinds.KindAdapter.channels_in_separate_files`):
    multi-channel NIfTI data comes as ``pat1_0000.nii.gz``, ``pat1_0001.nii.gz``, nnU-Net's
    convention. Raster and image models read all their bands from one file, where numbered
    names (``tile_2023.tif``, ``scene_0001.tif``) are tiles, so they never group unless asked;
    neither does a one-channel model.
    """
    separate = kind_adapter(plan.kind).channels_in_separate_files
    return requested or (separate and plan.in_channels > 1)


def _one_per_file(files: list[Path], origin: str) -> list[InferenceInput]:
    return [InferenceInput(full_stem(path), (path,), origin or str(path)) for path in sorted(files)]


def _grouped(files: list[Path], origin: str, found: InputSet) -> list[InferenceInput]:
    """Channel files grouped by ``<case>_NNNN``, in suffix order; a case mixing names with and
    without a suffix, or with two files for one channel, is rejected."""
    grouped: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for path in sorted(files):
        case, channel = split_channel(path)
        grouped[case].append((channel if channel is not None else -1, path))
    cases = []
    for case, members in sorted(grouped.items()):
        indices = [index for index, _ in members]
        if len(set(indices)) < len(indices):
            found.rejected.extend(_doubled_channel(case, members))
        elif len(members) > 1 and -1 in indices:
            found.rejected.append(
                DatasetLayoutError(
                    f"case {case!r} has files with and without a _0000 channel suffix: "
                    + ", ".join(path.name for _, path in members),
                    path=members[0][1].parent,
                    hint="name every channel <case>_0000, <case>_0001, …, or leave out "
                    "--channel-suffix (then every file is its own case)",
                )
            )
        else:
            channels = tuple(path for _, path in sorted(members))
            cases.append(InferenceInput(case, channels, origin or str(channels[0])))
    return cases


def _doubled_channel(case: str, members: list[tuple[int, Path]]) -> list[SegflowError]:
    """One error per file of a channel that several files claim (``scene.tif``, ``scene.tiff``)."""
    errors: list[SegflowError] = []
    for index, path in members:
        others = [str(other) for i, other in members if i == index and other != path]
        if others:
            errors.append(
                OutputNameCollisionError(
                    f"is {'channel ' + str(index) if index >= 0 else 'the image'} of case "
                    f"{case!r}, and so is {', '.join(others)}: case {case!r} is left out",
                    path=path,
                )
            )
    return errors


def _group(files: list[Path], origin: str, channel_suffix: bool) -> InputSet:
    found = InputSet()
    cases = _grouped(files, origin, found) if channel_suffix else _one_per_file(files, origin)
    _keep_unique(cases, found)
    return found


def _keep_unique(cases: list[InferenceInput], found: InputSet) -> None:
    """Add the cases whose ids clash with no other (ignoring letter case); reject the others."""
    kept, clashing = split_collisions(cases, lambda c: c.case_id, lambda c: c.channels[0])
    found.cases.extend(kept)
    found.rejected.extend(error for _, error in clashing)


def _image_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and is_image_name(p)]


def _from_folder(folder: Path, channel_suffix: bool, origin: str = "") -> InputSet:
    images_dir, files = folder, _image_files(folder)
    if not files:
        for name in _IMAGE_SUBFOLDERS:
            if (folder / name).is_dir() and (files := _image_files(folder / name)):
                images_dir = folder / name
                break
    if not files:
        raise DatasetLayoutError(
            f"holds no images ({', '.join(IMAGE_SUFFIXES)}) at its top level or in "
            f"{'/'.join(_IMAGE_SUBFOLDERS)}",
            path=folder,
        )
    return _group(files, origin, groups_channels(images_dir, requested=channel_suffix))


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
    found = InputSet()
    _keep_unique(cases, found)
    return found


def discover_inputs(
    source: str | Path, *, workdir: str | Path, channel_suffix: bool = False
) -> InputSet:
    """The cases to segment under ``source``.

    Args:
        source: an image file, a folder, a zip/tar archive, or a manifest JSON.
        workdir: scratch folder; archives are extracted under it.
        channel_suffix: group ``<case>_0000``, ``<case>_0001``… files into one case (see the
            module docstring for where they group anyway). A manifest's cases are taken as
            listed.

    Returns:
        The cases, and the inputs rejected before any compute (clashing case ids, bad channel
        names, unsafe archive members).

    Raises:
        MissingFileError: ``source`` does not exist.
        DatasetLayoutError: a folder or archive without images.
        ArchiveError: an unsafe or unreadable archive.
    """
    group = channel_suffix
    source = Path(source)
    if not source.exists():
        raise MissingFileError("does not exist", path=source)
    if source.is_dir():
        return _from_folder(source, group)
    if source.suffix.lower() == ".json":
        return _from_manifest(source)
    if is_archive(source):
        extracted = extract_archive(source, Path(workdir) / "extracted")
        found = _from_folder(_single_root(extracted.root), group, origin=str(source))
        found.rejected.extend(extracted.rejected)
        return found
    if is_image_name(source):
        return _group([source], str(source), group)
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
