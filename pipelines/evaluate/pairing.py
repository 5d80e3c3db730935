"""Pairing written predictions with reference labels by case id.

PRED and TRUTH are each a label file or a folder of them (not searched recursively). Two files
are always one pair. Otherwise files pair by case id, as ``segflow segment`` names its outputs
(:mod:`pipelines.case_names`): the full stem, the name without its extension (``.nii.gz``,
``.nii``, ``.tif``, ``.tiff``, ``.png``), so the mask ``tile_2023.tif`` pairs with the truth
``tile_2023.tif``. A file whose stem finds no partner still pairs after dropping a
``_0000``-style 4-digit channel suffix (``brain_0000.nii.gz`` with ``brain.nii.gz``), when no
other file of its side pairs with that partner the same way. Sidecars are skipped
(``*.lineage.json``, ``*_prob.*`` probability maps, GeoPackage/GeoJSON vectors, hidden files);
files left without a partner are reported, and only a run where nothing pairs fails
(:class:`PairingError`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from data_contracts import MissingFileError, PairingError
from pipelines.case_names import full_stem, split_channel
from pipelines.io.formats import is_image_name, strip_image_suffix

__all__ = ["Pairing", "case_id", "pair_files"]

logger = logging.getLogger(__name__)

_SIDECAR_ENDINGS = (".lineage.json", ".gpkg", ".geojson")


@dataclass(frozen=True)
class Pairing:
    """Prediction/truth files matched by case id, and what could not be matched."""

    pairs: dict[str, tuple[Path, Path]]
    unpaired_prediction: list[str]
    unpaired_truth: list[str]
    duplicates: dict[str, str]  # case id → message naming the clashing files


def case_id(path: str | Path) -> str:
    """The full stem: ``"tile_2023.tif"`` → ``"tile_2023"``, ``"brain.nii.gz"`` → ``"brain"``."""
    return full_stem(path)


def _is_label_file(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or name.endswith(_SIDECAR_ENDINGS) or not is_image_name(name):
        return False
    return not strip_image_suffix(name).endswith("_prob")


def _collect(path: Path, role: str) -> dict[str, list[Path]]:
    """Label files at or under ``path``, by case id (a file given by name is never skipped)."""
    if not path.exists():
        raise MissingFileError(f"{role} does not exist", path=path)
    if path.is_file():
        return {case_id(path): [path]}
    by_case: dict[str, list[Path]] = {}
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        if _is_label_file(file):
            by_case.setdefault(case_id(file), []).append(file)
        else:
            logger.debug("skipped %s (not a label file)", file)
    return by_case


def pair_files(prediction: Path, truth: Path) -> Pairing:
    """Match prediction and truth files by case id (two single files always pair).

    Raises:
        MissingFileError: ``prediction`` or ``truth`` does not exist.
        PairingError: no prediction pairs with any truth.
    """
    predicted, truths = _collect(prediction, "prediction"), _collect(truth, "truth")
    if prediction.is_file() and truth.is_file():
        predicted = {case: [prediction] for case in truths}
    else:
        _pair_by_channel_suffix(predicted, truths)
        _pair_by_channel_suffix(truths, predicted)
    both = predicted.keys() & truths.keys()
    duplicates = {
        case: str(
            PairingError(
                "several files share this case id: "
                + ", ".join(str(p) for p in predicted[case] + truths[case]),
                path=case,
                hint="keep one prediction and one truth file per case",
            )
        )
        for case in sorted(both)
        if len(predicted[case]) + len(truths[case]) > 2
    }
    pairs = {
        case: (predicted[case][0], truths[case][0]) for case in sorted(both - duplicates.keys())
    }
    if not pairs and not duplicates:
        raise PairingError(
            f"no prediction pairs with a truth file ({len(predicted)} predicted cases, "
            f"{len(truths)} truth cases)",
            path=prediction,
            hint="name each prediction after its case like the truth (case.nii.gz, case.tif…)",
        )
    return Pairing(
        pairs=pairs,
        unpaired_prediction=sorted(str(p) for c in predicted.keys() - both for p in predicted[c]),
        unpaired_truth=sorted(str(p) for c in truths.keys() - both for p in truths[c]),
        duplicates=duplicates,
    )


def _pair_by_channel_suffix(side: dict[str, list[Path]], other: dict[str, list[Path]]) -> None:
    """Re-key ``side``'s unpartnered ``<case>_NNNN`` ids to ``<case>`` where ``other`` has an
    unpartnered ``<case>``: nnU-Net names inputs ``<case>_0000`` and labels ``<case>``.

    Several ids re-keyed to one case become duplicates of it (reported, not guessed).
    """
    moves: dict[str, list[str]] = {}
    for case in sorted(side.keys() - other.keys()):
        stripped, channel = split_channel(side[case][0])
        if channel is not None and stripped in other and stripped not in side:
            moves.setdefault(stripped, []).append(case)
    for stripped, cases in moves.items():
        side[stripped] = [path for case in cases for path in side.pop(case)]
