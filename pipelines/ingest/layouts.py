"""Find the cases of a dataset folder or CSV: nnU-Net v2, images/ + labels/, flat folders, CSV.

Case ids follow :mod:`pipelines.case_names`: every image file is a case named by its full stem;
``<case>_0000``, ``<case>_0001``… files are grouped into one case only in the nnU-Net layout,
with a ``dataset.json`` declaring several channels, or with ``--channel-suffix``. In
``images/`` + ``labels/``, an image ``<case>_0000.<ext>`` whose full stem names no label still
pairs with ``labels/<case>.<ext>`` (and is then case ``<case>``), as long as no other image
claims that label the same way.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from data_contracts import (
    DatasetLayoutError,
    MissingFileError,
    OutputNameCollisionError,
    PairingError,
)
from pipelines.case_names import CHANNEL_SUFFIX, full_stem, split_channel, split_collisions
from pipelines.ingest.candidates import CaseCandidate, DatasetDeclaration
from pipelines.io.formats import is_image_name, is_vector_name, strip_image_suffix

__all__ = ["CHANNEL_SUFFIX", "discover", "split_channel"]


def discover(
    root: Path, *, label_suffix: str = "", channel_suffix: bool = False
) -> DatasetDeclaration:
    """Find the cases under ``root`` (a dataset folder or a CSV file).

    Args:
        root: the dataset folder, or a CSV with columns ``image`` and ``label``.
        label_suffix: text between the case id and the extension of label files.
        channel_suffix: group ``<case>_0000``, ``<case>_0001``… files into one case in any
            folder (the nnU-Net layout and a ``dataset.json`` declaring several channels
            group without it).

    Returns:
        The candidates, and the inputs rejected before any file is opened (pairing problems,
        case ids that clash: :class:`~data_contracts.OutputNameCollisionError`).

    Raises:
        DatasetLayoutError: no layout applies (no images found, unreadable dataset.json/CSV).
    """
    if root.is_file() and root.suffix.lower() == ".csv":
        declaration = _discover_csv(root)
    elif root.is_dir():
        declaration = _discover_folder(root, label_suffix, channel_suffix)
    else:
        raise MissingFileError("is not a folder, an archive or a CSV", path=root)
    _reject_collisions(declaration)
    if not declaration.candidates and not declaration.failures:
        raise DatasetLayoutError(
            "holds no image files (.nii.gz, .nii, .tif, .png) that segflow can read", path=root
        )
    return declaration


def _discover_folder(root: Path, label_suffix: str, channel_suffix: bool) -> DatasetDeclaration:
    declaration = _read_dataset_json(root)
    declared = len(declaration.channel_names)
    group = channel_suffix or declared > 1
    expected = declared if declared > 1 else None
    if (root / "imagesTr").is_dir():
        _discover_nnunet(root, declaration)
    elif declaration.candidates:
        pass  # dataset.json listed its cases explicitly
    elif (root / "images").is_dir():
        _pair_folder(root / "images", root / "labels", declaration, label_suffix, group, expected)
    else:
        _pair_folder(root, None, declaration, label_suffix, group, expected)
    return declaration


def _reject_collisions(declaration: DatasetDeclaration) -> None:
    """Cases whose ids are equal ignoring letter case (two folders, two extensions) are failures."""
    kept, clashing = split_collisions(
        declaration.candidates, lambda c: c.case_id, lambda c: c.channels[0]
    )
    declaration.candidates = kept
    declaration.failures.extend((candidate.case_id, error) for candidate, error in clashing)


def _read_dataset_json(root: Path) -> DatasetDeclaration:
    declaration = DatasetDeclaration(name=root.name, root=root)
    path = root / "dataset.json"
    if not path.is_file():
        return declaration
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetLayoutError(f"is not valid JSON ({error})", path=path) from error
    declaration.name = str(document.get("name") or root.name)
    declaration.labels = _declared_labels(document.get("labels"), declaration, path)
    channels = document.get("channel_names") or document.get("modality") or {}
    if isinstance(channels, dict):
        declaration.channel_names = tuple(
            str(channels[key]) for key in sorted(channels, key=lambda k: int(k))
        )
    listed = document.get("cases") or document.get("training")
    if isinstance(listed, list) and not (root / "imagesTr").is_dir():
        for entry in listed:
            _add_listed_case(root, entry, declaration)
    return declaration


def _declared_labels(
    raw: object, declaration: DatasetDeclaration, path: Path
) -> dict[str, int] | None:
    """nnU-Net style ``{name: value}`` or MSD style ``{"value": name}``; anything else is ignored."""
    if not isinstance(raw, dict) or not raw:
        return None
    if all(isinstance(value, int) for value in raw.values()):
        return {str(name): int(value) for name, value in raw.items()}
    if all(str(key).lstrip("-").isdigit() for key in raw):
        return {str(name): int(key) for key, name in raw.items()}
    declaration.warnings.append(
        f"{path}: 'labels' is not a name→integer map ({raw!r}); label values are taken from the label files"
    )
    return None


def _add_listed_case(root: Path, entry: object, declaration: DatasetDeclaration) -> None:
    if not isinstance(entry, dict) or "image" not in entry:
        declaration.failures.append(
            (
                None,
                DatasetLayoutError(
                    f"has a case entry without 'image': {entry!r}", path=root / "dataset.json"
                ),
            )
        )
        return
    images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
    channels = tuple((root / str(image)).resolve() for image in images)
    label = (root / str(entry["label"])).resolve() if entry.get("label") else None
    case_id = _listed_case_id(channels, label)
    missing = [p for p in (*channels, *([label] if label else [])) if not p.is_file()]
    if missing:
        declaration.failures.append(
            (
                case_id,
                MissingFileError("is listed in dataset.json but does not exist", path=missing[0]),
            )
        )
        return
    declaration.candidates.append(CaseCandidate(case_id=case_id, channels=channels, label=label))


def _listed_case_id(channels: tuple[Path, ...], label: Path | None) -> str:
    """A listed case (dataset.json, CSV row) is named by its first file's full stem, except
    where its names say otherwise: channels ``<case>_0000``, ``<case>_0001``… listed together,
    or one image ``<case>_0000`` listed with the label ``<case>``."""
    split = [split_channel(path) for path in channels]
    cases = {case for case, channel in split if channel is not None}
    if len(channels) > 1 and len(cases) == 1 and all(c is not None for _, c in split):
        return cases.pop()
    if label is not None and split[0][1] is not None and split[0][0] == full_stem(label):
        return split[0][0]
    return full_stem(channels[0])


def _discover_nnunet(root: Path, declaration: DatasetDeclaration) -> None:
    expected = len(declaration.channel_names) or None
    _pair_folder(root / "imagesTr", root / "labelsTr", declaration, "", True, expected)
    if (root / "imagesTs").is_dir():
        test = DatasetDeclaration(name=declaration.name, root=root)
        _pair_folder(root / "imagesTs", None, test, "", True, expected)
        declaration.candidates.extend(test.candidates)
        declaration.failures.extend(test.failures)


def _pair_folder(
    images_dir: Path,
    labels_dir: Path | None,
    declaration: DatasetDeclaration,
    label_suffix: str,
    group: bool,
    expected_channels: int | None = None,
) -> None:
    """Make the cases of ``images_dir`` (one per file, or grouped by channel suffix) and pair
    each with ``<case><label_suffix>.<ext>`` in ``labels_dir``."""
    files = sorted(p for p in images_dir.iterdir() if p.is_file() and is_image_name(p))
    labels = _label_files(labels_dir)
    if group:
        _group_channels(files, labels, declaration, label_suffix, expected_channels)
    else:
        _one_case_per_file(files, labels, declaration, label_suffix)
    case_ids = {candidate.case_id for candidate in declaration.candidates}
    _report_unpaired_labels(labels, case_ids, label_suffix, declaration)


def _one_case_per_file(
    files: list[Path], labels: dict[str, Path], declaration: DatasetDeclaration, label_suffix: str
) -> None:
    """Every file is a case named by its full stem; one whose stem names no label may pair with
    ``<case>`` after dropping its ``_NNNN`` suffix, unless several files would."""
    found: list[CaseCandidate] = []
    claims: dict[str, list[Path]] = defaultdict(list)  # label case id → images claiming it
    unlabelled = []
    for path in files:
        label = labels.pop(full_stem(path) + label_suffix, None)
        if label is None:
            unlabelled.append(path)
        else:
            found.append(CaseCandidate(full_stem(path), (path,), label))
    for path in unlabelled:
        case, channel = split_channel(path)
        if channel is not None and case + label_suffix in labels:
            claims[case].append(path)
        else:
            found.append(CaseCandidate(full_stem(path), (path,)))
    for case, paths in claims.items():
        label = labels.pop(case + label_suffix)
        if len(paths) == 1:
            found.append(CaseCandidate(case, (paths[0],), label))
            continue
        for path in paths:
            others = ", ".join(other.name for other in paths if other != path)
            error = PairingError(
                f"pairs with label {label.name} only after dropping its _NNNN suffix, and so "
                f"does {others}; segflow does not fuse files into one case unless told to",
                path=path,
                hint="if they are the channels of one case, pass --channel-suffix (or declare "
                "channel_names in dataset.json); if not, name the label after one image",
            )
            declaration.failures.append((full_stem(path), error))
    declaration.candidates.extend(sorted(found, key=lambda candidate: candidate.case_id))


def _group_channels(
    files: list[Path],
    labels: dict[str, Path],
    declaration: DatasetDeclaration,
    label_suffix: str,
    expected_channels: int | None,
) -> None:
    """Group channel files by case id (a name without suffix is channel 0) and pair each case."""
    groups: dict[str, dict[int, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path in files:
        case_id, channel = split_channel(path)
        groups[case_id][channel if channel is not None else 0].append(path)
    if expected_channels is None and groups:
        expected_channels = max(len(channels) for channels in groups.values())
    for case_id, channels in sorted(groups.items()):
        label = labels.pop(case_id + label_suffix, None)
        doubled = [(c, paths) for c, paths in sorted(channels.items()) if len(paths) > 1]
        if doubled:
            declaration.failures.extend((case_id, e) for e in _doubled_channel(case_id, doubled))
            continue
        error = _channel_problem(case_id, channels, expected_channels)
        if error is not None:
            declaration.failures.append((case_id, error))
            continue
        members = tuple(channels[c][0] for c in sorted(channels))
        declaration.candidates.append(CaseCandidate(case_id, members, label))


def _doubled_channel(
    case_id: str, doubled: list[tuple[int, list[Path]]]
) -> list[OutputNameCollisionError]:
    """One error per file of a channel that several files claim (``scene.tif``, ``scene.tiff``)."""
    return [
        OutputNameCollisionError(
            f"is channel {channel} of case {case_id!r}, and so is "
            f"{', '.join(str(other) for other in paths if other != path)}: case {case_id!r} "
            "is left out",
            path=path,
            hint="keep one file per channel: rename or remove one of them",
        )
        for channel, paths in doubled
        for path in paths
    ]


def _channel_problem(
    case_id: str, channels: dict[int, list[Path]], expected: int | None
) -> PairingError | None:
    """Why the channel files of a case do not make ``expected`` channels, or ``None``."""
    wanted = list(range(expected or len(channels)))
    if sorted(channels) == wanted:
        return None
    first = next(iter(channels.values()))[0]
    suffix = first.name[len(strip_image_suffix(first)) :]
    missing = [f"{case_id}_{c:04d}{suffix}" for c in wanted if c not in channels]
    extra = [c for c in sorted(channels) if c not in wanted]
    return PairingError(
        f"case {case_id!r} has channels {sorted(channels)} of {len(wanted)}: "
        + (f"missing {', '.join(missing)}" if missing else f"unexpected channels {extra}"),
        path=first,
    )


def _label_files(labels_dir: Path | None) -> dict[str, Path]:
    if labels_dir is None or not labels_dir.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(labels_dir.iterdir()):
        if path.is_file() and (is_image_name(path) or is_vector_name(path)):
            stem = strip_image_suffix(path)
            # A raster label wins over a vector label of the same stem.
            if stem not in found or is_vector_name(found[stem]):
                found[stem] = path
    return found


def _report_unpaired_labels(
    labels: dict[str, Path], case_ids: set[str], label_suffix: str, declaration: DatasetDeclaration
) -> None:
    """Labels of no case are rejected; alternative labels of a known case are only mentioned."""
    alternatives = []
    for stem, path in sorted(labels.items()):
        if any(stem.startswith(f"{case_id}_") for case_id in case_ids):
            alternatives.append(path.name)
            continue
        declaration.failures.append(
            (
                stem,
                PairingError(
                    f"is a label without an image (no case {stem.removesuffix(label_suffix)!r} in the images folder)",
                    path=path,
                ),
            )
        )
    if alternatives:
        declaration.warnings.append(
            f"label files not used (choose with --label-suffix): {', '.join(alternatives[:8])}"
            + (" …" if len(alternatives) > 8 else "")
        )


def _discover_csv(csv_path: Path) -> DatasetDeclaration:
    """CSV with columns ``image`` and optional ``label``; channels joined by ``;``; relative paths."""
    declaration = DatasetDeclaration(name=csv_path.stem, root=csv_path.parent)
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DatasetLayoutError(f"cannot be read as CSV ({error})", path=csv_path) from error
    if not rows or "image" not in rows[0]:
        raise DatasetLayoutError(
            "needs a header with columns 'image' and optionally 'label'", path=csv_path
        )
    for number, row in enumerate(rows, start=2):
        images = [part.strip() for part in (row.get("image") or "").split(";") if part.strip()]
        if not images:
            declaration.failures.append(
                (None, DatasetLayoutError(f"row {number} has no image", path=csv_path))
            )
            continue
        entry: dict[str, Any] = {"image": images, "label": (row.get("label") or "").strip() or None}
        _add_listed_case(csv_path.parent, entry, declaration)
    return declaration
