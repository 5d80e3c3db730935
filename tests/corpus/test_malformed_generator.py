"""Tests of the malformed-input corpus generator itself (ingest's behaviour is tested elsewhere)."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import pytest

from data_contracts import errors
from tests.data.make_malformed import BOMB_LIMIT_BYTES, CorpusItem, main, make_corpus

# Every kind of damage the corpus must cover, with the error it must map to.
REQUIRED = {
    "empty_image": "EmptyFileError",
    "truncated_nifti": "CorruptFileError",
    "truncated_geotiff": "CorruptFileError",
    "text_as_nifti": "NotAnImageError",
    "text_as_tif": "NotAnImageError",
    "text_as_png": "NotAnImageError",
    "raster_without_crs": "GeoreferenceError",
    "raster_label_shifted": "LabelGeometryError",
    "volume_label_shape": "LabelGeometryError",
    "volume_label_affine": "LabelGeometryError",
    "label_value_undeclared": "LabelValueError",
    "label_non_integer": "NonIntegerLabelError",
    "label_nan": "NonFiniteLabelError",
    "channel_shape_mismatch": "ChannelGeometryError",
    "missing_channel": "PairingError",
    "label_without_image": "PairingError",
    "nifti_nan_affine": "InvalidGeometryError",
    "nifti_zero_spacing": "InvalidGeometryError",
    "label_4d": "InvalidGeometryError",
    "zip_dotdot": "UnsafeArchivePathError",
    "zip_absolute": "UnsafeArchivePathError",
    "tar_symlink_out": "ArchiveLinkError",
    "tar_device": "ArchiveSpecialFileError",
    "zip_bomb": "DecompressionBombError",
}
_GOOD_PREFIXES = ("case_", "tile_", "img_")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[CorpusItem]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _members(archive: Path) -> list[str]:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            return zf.namelist()
    with tarfile.open(archive) as tar:
        return tar.getnames()


def _good_labels(item: CorpusItem) -> list[str]:
    """Label files of the valid cases, in a folder source or an archive."""
    if item.source.is_dir():
        names = [p.relative_to(item.source).as_posix() for p in item.source.rglob("*")]
    else:
        names = _members(item.source)
    return [
        name
        for name in names
        if name.startswith("labels/") and Path(name).name.startswith(_GOOD_PREFIXES)
    ]


def test_corpus_covers_every_required_kind(corpus: list[CorpusItem]) -> None:
    assert len(corpus) >= 20
    names = [item.name for item in corpus]
    assert len(set(names)) == len(names)
    assert {item.name: item.expected_error for item in corpus} == REQUIRED


def test_expected_errors_are_segflow_errors(corpus: list[CorpusItem]) -> None:
    for item in corpus:
        error = getattr(errors, item.expected_error)
        assert issubclass(error, errors.SegflowError), item.name


def test_every_source_exists_with_its_bad_file(corpus: list[CorpusItem]) -> None:
    for item in corpus:
        assert item.source.exists(), item.name
        assert "/" not in item.bad_file or not item.source.is_dir(), item.name
        if item.source.is_dir():
            found = {p.name for p in item.source.rglob("*") if p.is_file()}
            if item.name == "missing_channel":
                # The bad file is the channel that is absent; its sibling is there.
                assert item.bad_file not in found and "broken_0000.nii.gz" in found
            else:
                assert item.bad_file in found, item.name
        elif item.name == "zip_bomb":
            assert item.bad_file == item.source.name
        else:
            assert item.bad_file in _members(item.source), item.name


def test_good_cases_are_present(corpus: list[CorpusItem]) -> None:
    for item in corpus:
        if item.name == "zip_bomb":
            assert item.good_cases == 0  # the whole archive is refused
        else:
            assert item.good_cases >= 1, item.name
        assert len(_good_labels(item)) >= max(item.good_cases, 1), item.name


def test_item_specifics(corpus: list[CorpusItem]) -> None:
    items = {item.name: item for item in corpus}
    assert items["label_value_undeclared"].extra_args == {"labels": {"background": 0, "fg": 1}}
    bomb = items["zip_bomb"]
    assert bomb.extra_args == {"max_extract_bytes": BOMB_LIMIT_BYTES}
    with zipfile.ZipFile(bomb.source) as zf:
        big = max(zf.infolist(), key=lambda info: info.file_size)
    assert big.file_size > BOMB_LIMIT_BYTES and big.file_size / big.compress_size > 1000
    assert (items["empty_image"].source / "images" / "broken_0000.nii.gz").stat().st_size == 0
    with tarfile.open(items["tar_device"].source) as tar:
        assert tar.getmember(items["tar_device"].bad_file).ischr()
    with tarfile.open(items["tar_symlink_out"].source) as tar:
        assert tar.getmember(items["tar_symlink_out"].bad_file).issym()


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "cli")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(REQUIRED)
