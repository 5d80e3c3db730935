"""Find the cases of a dataset folder or CSV: nnU-Net v2, images/ + labels/, flat folders, CSV."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from data_contracts import DatasetLayoutError, MissingFileError, PairingError
from pipelines.ingest.candidates import CaseCandidate, DatasetDeclaration
from pipelines.io.formats import is_image_name, is_vector_name, strip_image_suffix

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def split_channel(path: Path) -> tuple[str, int | None]:
    """``"pat1_0001.nii.gz"`` → ``("pat1", 1)``; names without a channel suffix → ``(stem, None)``."""
    stem = strip_image_suffix(path)
    match = CHANNEL_SUFFIX.match(stem)
    return (match["case"], int(match["channel"])) if match else (stem, None)


def discover(root: Path, *, label_suffix: str = "") -> DatasetDeclaration:
    """Find the cases under ``root`` (a dataset folder or a CSV file).

    Raises:
        DatasetLayoutError: no layout applies (no images found, unreadable dataset.json/CSV).
    """
    if root.is_file() and root.suffix.lower() == ".csv":
        return _discover_csv(root)
    if not root.is_dir():
        raise MissingFileError("is not a folder, an archive or a CSV", path=root)
    declaration = _read_dataset_json(root)
    if (root / "imagesTr").is_dir():
        _discover_nnunet(root, declaration)
    elif declaration.candidates:
        pass  # dataset.json listed its cases explicitly
    elif (root / "images").is_dir():
        _pair_folder(root / "images", root / "labels", declaration, label_suffix)
    else:
        _pair_folder(root, None, declaration, label_suffix)
    if not declaration.candidates and not declaration.failures:
        raise DatasetLayoutError(
            "holds no image files (.nii.gz, .nii, .tif, .png) that segflow can read", path=root
        )
    return declaration


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
    case_id = split_channel(channels[0])[0]
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


def _discover_nnunet(root: Path, declaration: DatasetDeclaration) -> None:
    expected = len(declaration.channel_names) or None
    _pair_folder(root / "imagesTr", root / "labelsTr", declaration, "", expected_channels=expected)
    if (root / "imagesTs").is_dir():
        test = DatasetDeclaration(name=declaration.name, root=root)
        _pair_folder(root / "imagesTs", None, test, "", expected_channels=expected)
        declaration.candidates.extend(test.candidates)
        declaration.failures.extend(test.failures)


def _pair_folder(
    images_dir: Path,
    labels_dir: Path | None,
    declaration: DatasetDeclaration,
    label_suffix: str,
    *,
    expected_channels: int | None = None,
) -> None:
    """Group channel files by case id and pair each case with ``<case><label_suffix>.<ext>``."""
    groups: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in sorted(p for p in images_dir.iterdir() if p.is_file() and is_image_name(p)):
        case_id, channel = split_channel(path)
        groups[case_id][channel if channel is not None else 0] = path
    labels = _label_files(labels_dir)
    if expected_channels is None and groups:
        expected_channels = max(len(channels) for channels in groups.values())
    for case_id, channels in sorted(groups.items()):
        wanted = list(range(expected_channels or len(channels)))
        if sorted(channels) != wanted:
            first = next(iter(channels.values()))
            suffix = first.name[len(strip_image_suffix(first)) :]
            missing = [f"{case_id}_{c:04d}{suffix}" for c in wanted if c not in channels]
            declaration.failures.append(
                (
                    case_id,
                    PairingError(
                        f"case {case_id!r} has channels {sorted(channels)} of {len(wanted)}: "
                        f"missing {', '.join(missing)}",
                        path=first,
                    ),
                )
            )
            labels.pop(case_id + label_suffix, None)
            continue
        label = labels.pop(case_id + label_suffix, None)
        declaration.candidates.append(
            CaseCandidate(case_id, tuple(channels[c] for c in wanted), label)
        )
    _report_unpaired_labels(labels, set(groups), label_suffix, declaration)


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
