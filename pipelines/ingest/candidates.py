"""What layouts produce: unvalidated cases (file paths only) and the dataset's declarations."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_contracts import SegflowError


@dataclass(frozen=True)
class CaseCandidate:
    """A case as found on disk, before any file is opened.

    Attributes:
        case_id: identifier and output name: the file's full stem (``tile_2023``), or
            ``<case>`` for channel files ``<case>_0000``… grouped by the layout,
            ``dataset.json`` or ``--channel-suffix`` (see :mod:`pipelines.case_names`).
        channels: channel files in channel order.
        label: label file (raster/volume/image, or a vector file), if any.
    """

    case_id: str
    channels: tuple[Path, ...]
    label: Path | None = None


@dataclass
class DatasetDeclaration:
    """What a layout found: candidates, pairing failures, and what dataset.json declares.

    Attributes:
        name: dataset name.
        root: the dataset folder (or the CSV's folder).
        candidates: cases to validate.
        failures: pairing problems found before opening any file, with the offending path.
        labels: declared label name → value (``None`` when undeclared).
        channel_names: declared channel names.
        warnings: layout-level remarks (unpaired alternative labels, ignored label maps).
    """

    name: str
    root: Path
    candidates: list[CaseCandidate] = field(default_factory=list)
    failures: list[tuple[str | None, SegflowError]] = field(default_factory=list)
    labels: dict[str, int] | None = None
    channel_names: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)
