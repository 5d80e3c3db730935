"""Case ids from file names, when channel files are grouped, and names two inputs must not share.

The rule, for ``segflow ingest``, ``segflow segment`` and ``segflow evaluate`` alike:

- **A file is a case.** Its case id is its full stem: the file name without its extension
  (``.nii.gz``, ``.nii``, ``.tif``, ``.tiff``, ``.png``) and nothing else, so
  ``tile_2023.tif`` is case ``tile_2023`` and ``scene_0001.tif`` is case ``scene_0001``.
- **Unless told otherwise.** Files ``<case>_0000.<ext>``, ``<case>_0001.<ext>``… are the
  channels of one case ``<case>`` (in suffix order) only where the names are known to carry
  channel suffixes: the nnU-Net layout (``imagesTr/``, ``imagesTs/`` beside ``dataset.json``),
  a ``dataset.json`` declaring more than one channel (``channel_names`` or ``modality``),
  ``--channel-suffix``, and, for ``segflow segment``, a model that reads multi-channel volumes.
- **Two inputs never share a case id**, nor ids equal after case-folding (``Tile.tif`` and
  ``tile.tif`` are one file on a case-insensitive file system): every input of such a clash is
  rejected with :class:`~data_contracts.OutputNameCollisionError` naming the others, before any
  file is opened, and the other cases go on.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from data_contracts import OutputNameCollisionError
from pipelines.io.formats import strip_image_suffix

__all__ = [
    "CHANNEL_SUFFIX",
    "NNUNET_IMAGE_FOLDERS",
    "declared_channel_count",
    "full_stem",
    "groups_channels",
    "split_channel",
    "split_collisions",
]

#: ``<case>_<4 digits>``: the channel suffix of nnU-Net's file names.
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
#: Image folders of the nnU-Net v2 raw layout, whose file names always carry channel suffixes.
NNUNET_IMAGE_FOLDERS = ("imagesTr", "imagesTs")
_DATASET_IMAGE_FOLDERS = (*NNUNET_IMAGE_FOLDERS, "images")

T = TypeVar("T")


def full_stem(path: str | Path) -> str:
    """The case id of a file on its own: ``"tile_2023.tif"`` → ``"tile_2023"``."""
    return strip_image_suffix(path)


def split_channel(path: str | Path) -> tuple[str, int | None]:
    """``"pat1_0001.nii.gz"`` → ``("pat1", 1)``; names without a channel suffix → ``(stem, None)``.

    Only for names known to carry channel suffixes (see :func:`groups_channels`).
    """
    stem = full_stem(path)
    match = CHANNEL_SUFFIX.match(stem)
    return (match["case"], int(match["channel"])) if match else (stem, None)


def declared_channel_count(root: Path) -> int:
    """Channels ``root/dataset.json`` declares (``channel_names`` or ``modality``); 0 when it
    declares none or cannot be read (ingest reports an unreadable ``dataset.json`` itself)."""
    try:
        document: Any = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    if not isinstance(document, dict):
        return 0
    channels = document.get("channel_names") or document.get("modality")
    return len(channels) if isinstance(channels, dict | list) else 0


def groups_channels(images_dir: Path, *, requested: bool = False) -> bool:
    """Whether the file names in ``images_dir`` carry ``_0000`` channel suffixes to group.

    True when ``requested`` (``--channel-suffix``), for nnU-Net's ``imagesTr/``/``imagesTs/``,
    and when the dataset's ``dataset.json`` (in the folder, or beside ``images/``,
    ``imagesTr/``, ``imagesTs/``) declares more than one channel.
    """
    if requested or images_dir.name in NNUNET_IMAGE_FOLDERS:
        return True
    root = images_dir.parent if images_dir.name in _DATASET_IMAGE_FOLDERS else images_dir
    return declared_channel_count(root) > 1


def split_collisions(
    items: Sequence[T], case_id: Callable[[T], str], path: Callable[[T], Path]
) -> tuple[list[T], list[tuple[T, OutputNameCollisionError]]]:
    """Keep the items whose case ids are unique ignoring letter case; reject the others.

    Args:
        items: cases in any form (candidates, inference inputs, manifest cases).
        case_id: an item's case id.
        path: the file that names an item (its first channel).

    Returns:
        The kept items in their order, and each clashing item with an error naming every file
        it clashes with.
    """
    by_key: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_key[case_id(item).casefold()].append(index)
    clashing = {index for indices in by_key.values() if len(indices) > 1 for index in indices}
    kept = [item for index, item in enumerate(items) if index not in clashing]
    rejected = []
    for index in sorted(clashing):
        item = items[index]
        others = [items[j] for j in by_key[case_id(item).casefold()] if j != index]
        clashes = "; ".join(
            f"{path(other)} (case {case_id(other)!r}{_why(item, other, case_id, path)})"
            for other in others
        )
        error = OutputNameCollisionError(
            f"has case id {case_id(item)!r}, like {clashes}: outputs are named after the case "
            "id, so they would overwrite each other",
            path=path(item),
        )
        rejected.append((item, error))
    return kept, rejected


def _why(a: T, b: T, case_id: Callable[[T], str], path: Callable[[T], Path]) -> str:
    if case_id(a) != case_id(b):
        return "; the ids differ only in letter case"
    if path(a) == path(b):
        return "; the same file listed twice"
    if path(a).name == path(b).name:
        return "; the same name in another folder"
    if full_stem(path(a)) == full_stem(path(b)):
        return "; the names differ only in extension"
    return ""
