"""Check a manifest's files before training reads them: a file that went bad since ``segflow
ingest`` (deleted, emptied, truncated, replaced) drops its case with the ingest error, instead
of failing the training deep inside a data loader.

Every file of every labelled case is hashed and compared with the manifest. A file that
differs is validated again the way ingest does (:func:`pipelines.ingest.validate.validate_case`),
so the case fails with the error class ingest would have given it (``CorruptFileError``,
``LabelValueError``…); if it still validates, with :class:`~data_contracts.InputError`
"changed since ingest", since the manifest's statistics no longer describe it.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from data_contracts import (
    Case,
    ChannelCountError,
    DatasetManifest,
    IngestOptions,
    InputError,
    MissingFileError,
    RejectedInput,
)
from pipelines.files import sha256_file
from pipelines.kinds import kind_adapter

__all__ = ["CheckedCases", "check_training_cases"]

logger = logging.getLogger(__name__)


@dataclass
class CheckedCases:
    """The manifest with only the cases whose files are as ingested, and why others left.

    Attributes:
        manifest: the input manifest, its ``cases`` reduced to those that passed and its
            ``rejected`` extended with those that did not.
        errors: case id → the error that dropped it.
    """

    manifest: DatasetManifest
    errors: dict[str, InputError] = field(default_factory=dict)

    @property
    def rejected(self) -> list[RejectedInput]:
        """The dropped cases as manifest rejections (error class and message)."""
        return [
            RejectedInput(
                path=error.path or "",
                case_id=case_id,
                error=type(error).__name__,
                reason=str(error),
            )
            for case_id, error in self.errors.items()
        ]


def check_training_cases(manifest: DatasetManifest) -> CheckedCases:
    """Drop the labelled cases whose files are missing, unreadable or changed since ingest.

    Unlabelled cases are kept as they are (training does not read them).

    Returns:
        The reduced manifest and the error of each dropped case.
    """
    errors: dict[str, InputError] = {}
    kept: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="segflow-verify-") as scratch:
        for case in manifest.cases:
            if case.label is None:
                kept.append(case)
                continue
            try:
                _check_case(case, manifest, Path(scratch))
            except InputError as error:
                logger.warning("case %s left out of training: %s", case.case_id, error)
                errors[case.case_id] = error
                continue
            kept.append(case)
    if not errors:
        return CheckedCases(manifest)
    checked = CheckedCases(manifest, errors)
    reduced = manifest.model_copy(
        update={"cases": tuple(kept), "rejected": (*manifest.rejected, *checked.rejected)}
    )
    return CheckedCases(reduced, errors)


def _check_case(case: Case, manifest: DatasetManifest, scratch: Path) -> None:
    records = [*case.channels, *([case.label] if case.label is not None else [])]
    changed: list[Path] = []
    for record in records:
        path = Path(record.path)
        if not path.is_file():
            raise MissingFileError(
                "is listed in the manifest but does not exist",
                path=path,
                hint="restore the file, or run segflow ingest again",
            )
        if path.stat().st_size != record.size_bytes or sha256_file(path) != record.sha256:
            changed.append(path)
    if not changed:
        return
    _validate_again(case, manifest, scratch)
    raise InputError(
        "changed since ingest (its SHA-256 differs from the manifest's)",
        path=changed[0],
        hint="run segflow ingest again, so the manifest describes the files as they are",
    )


def _validate_again(case: Case, manifest: DatasetManifest, scratch: Path) -> None:
    """Validate a changed case as ingest would; raise what ingest would have raised."""
    from pipelines.ingest.candidates import CaseCandidate
    from pipelines.ingest.validate import LabelRules, validate_case

    instance = manifest.label_kind == "instance"
    rules = LabelRules(
        allowed=frozenset(manifest.labels.values()) if manifest.labels and not instance else None,
        ignore_value=manifest.ignore_value,
        instance=instance,
    )
    adapter = kind_adapter(case.kind)
    options = IngestOptions(
        label_kind=manifest.label_kind,
        ignore_value=manifest.ignore_value,
        allow_ungeoreferenced=adapter.is_ungeoreferenced(case.geometry),
    )
    label = case.label
    if label is not None and label.source is not None:
        label = None  # a rasterised vector label: its source is not the file read here
    candidate = CaseCandidate(
        case.case_id,
        tuple(Path(record.path) for record in case.channels),
        Path(label.path) if label is not None else None,
    )
    fresh = validate_case(candidate, case.kind, options, rules, scratch)
    if adapter.fixed_channels and sum(fresh.channel_counts) != sum(case.channel_counts):
        raise ChannelCountError(
            f"has {sum(fresh.channel_counts)} channel(s); the manifest (and the plan) have "
            f"{sum(case.channel_counts)}",
            path=Path(case.channels[0].path),
        )
