"""NIfTI mask/probability writers: header fidelity against awkward sources, and lineage."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_contracts import GeometryMismatchError, OutputError, PostprocessConfig, UsageError
from pipelines.synthetic.volumes import volume_affine
from pipelines.write.lineage import lineage_path, lineage_record, write_lineage
from pipelines.write.nifti import mask_dtype_for, write_nifti_mask, write_nifti_probabilities

SHAPE = (9, 11, 5)
SPACING = (0.8, 1.1, 3.0)


def _ct_source(path: Path, *, slope: float = 1.0, channels: int = 0) -> Path:
    """An int16 CT-like volume: LPS with a 20° rotation, qform_code 1 but sform_code 2."""
    affine = volume_affine(SHAPE, SPACING, ("L", "P", "S"), rotation_deg=20.0)
    shape = (*SHAPE, channels) if channels else SHAPE
    data = np.random.default_rng(0).integers(-200, 900, shape).astype(np.int16)
    image = nib.Nifti1Image(data, affine, dtype=np.int16)
    image.set_qform(affine, code=1)
    shifted = affine.copy()
    shifted[:3, 3] += (0.25, -0.5, 1.0)  # sform differs from qform: it must win and survive
    image.set_sform(shifted, code=2)
    image.header.set_slope_inter(slope, -1024.0)
    nib.save(image, path)
    return path


def _raw_header(path: Path) -> nib.Nifti1Header:
    """The header as stored (nibabel's loaded header hides scl_slope/scl_inter)."""
    with gzip.open(path, "rb") as handle:
        return nib.Nifti1Header.from_fileobj(handle)


def _load(path: Path) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_filename(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("slope", [1.0, 2.0])
def test_mask_keeps_source_geometry_and_resets_scaling(tmp_path: Path, slope: float) -> None:
    source = _ct_source(tmp_path / "ct.nii.gz", slope=slope)
    digest = _sha256(source)
    mask = np.zeros(SHAPE, np.int64)
    mask[2:6, 3:8, 1:4] = 2
    written = write_nifti_mask(mask, source, tmp_path / "out" / "ct_mask.nii.gz")

    src, out = _load(source), _load(written)
    assert out.shape == SHAPE and out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), mask)
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
    assert nib.aff2axcodes(out.affine) == ("L", "P", "S")
    for form in ("get_qform", "get_sform"):
        (found, found_code), (wanted, wanted_code) = (
            getattr(img.header, form)(coded=True) for img in (out, src)
        )
        assert int(found_code) == int(wanted_code)
        np.testing.assert_allclose(found, wanted, atol=1e-6)
    raw = _raw_header(written)
    assert (int(raw["qform_code"]), int(raw["sform_code"])) == (1, 2)
    assert (float(raw["scl_slope"]), float(raw["scl_inter"])) == (1.0, 0.0)
    assert raw["pixdim"][0] == _raw_header(source)["pixdim"][0]  # qfac kept
    assert raw.get_intent()[0] == "label" and b"segflow" in raw["descrip"].item()
    assert float(raw["cal_max"]) == 2.0
    assert _sha256(source) == digest
    assert sorted(p.name for p in written.parent.iterdir()) == ["ct_mask.nii.gz"]


def test_labels_past_255_are_uint16(tmp_path: Path) -> None:
    source = _ct_source(tmp_path / "ct.nii.gz")
    mask = np.arange(np.prod(SHAPE)).reshape(SHAPE) % 301
    written = write_nifti_mask(mask, source, tmp_path / "many.nii.gz")
    out = _load(written)
    assert out.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), mask)


@pytest.mark.parametrize(
    ("value", "dtype"), [(0, np.uint8), (255, np.uint8), (256, np.uint16), (65535, np.uint16)]
)
def test_mask_dtype_for(value: int, dtype: type) -> None:
    assert mask_dtype_for(value) == np.dtype(dtype)


def test_mask_dtype_for_rejects_out_of_range() -> None:
    with pytest.raises(UsageError):
        mask_dtype_for(65536)


def test_wrong_shape_names_the_source(tmp_path: Path) -> None:
    source = _ct_source(tmp_path / "ct.nii.gz")
    destination = tmp_path / "mask.nii.gz"
    with pytest.raises(GeometryMismatchError) as caught:
        write_nifti_mask(np.zeros((5, 11, 9), np.uint8), source, destination)
    assert str(caught.value).startswith(f"{source}:")
    assert "(5, 11, 9)" in str(caught.value) and str(SHAPE) in str(caught.value)
    assert not destination.exists()


def test_bad_masks_are_refused(tmp_path: Path) -> None:
    source = _ct_source(tmp_path / "ct.nii.gz")
    for mask in (np.full(SHAPE, 0.5), np.full(SHAPE, -1)):
        with pytest.raises(UsageError):
            write_nifti_mask(mask, source, tmp_path / "mask.nii.gz")
    with pytest.raises(UsageError):
        write_nifti_mask(np.zeros(SHAPE, np.uint8), source, tmp_path / "mask.png")


def test_multichannel_source_gives_3d_mask(tmp_path: Path) -> None:
    source = _ct_source(tmp_path / "mr.nii.gz", channels=3)
    written = write_nifti_mask(np.ones(SHAPE, np.uint8), source, tmp_path / "mask.nii.gz")
    raw = _raw_header(written)
    assert _load(written).shape == SHAPE
    assert int(raw["dim"][0]) == 3
    np.testing.assert_allclose(_load(written).affine, _load(source).affine, atol=1e-6)


def test_probabilities_round_trip_within_one_step(tmp_path: Path) -> None:
    source = _ct_source(tmp_path / "ct.nii.gz", slope=2.0)
    probabilities = np.random.default_rng(1).dirichlet([1.0] * 3, size=SHAPE)
    probabilities = np.moveaxis(probabilities, -1, 0)  # (K, X, Y, Z)
    written = write_nifti_probabilities(probabilities, source, tmp_path / "probs.nii.gz")
    out = _load(written)
    assert out.shape == (*SHAPE, 3) and out.get_data_dtype() == np.uint8
    expected = np.moveaxis(probabilities, 0, -1)
    assert np.abs(out.get_fdata() - expected).max() <= 1 / 255
    np.testing.assert_allclose(out.affine, _load(source).affine, atol=1e-6)
    raw = _raw_header(written)
    assert float(raw["scl_slope"]) == pytest.approx(1 / 255) and float(raw["scl_inter"]) == 0
    assert (int(raw["qform_code"]), int(raw["sform_code"])) == (1, 2)
    with pytest.raises(GeometryMismatchError):
        write_nifti_probabilities(probabilities[:, :-1], source, tmp_path / "bad.nii.gz")


def test_verification_failure_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _ct_source(tmp_path / "ct.nii.gz")
    save = nib.save

    def bare_save(image: nib.Nifti1Image, filename: Path) -> None:
        # What a naive writer does: a bare image gets qform_code 0 and sform_code 2.
        save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine), filename)

    monkeypatch.setattr(nib, "save", bare_save)
    with pytest.raises(OutputError, match="qform_code 0 instead of 1"):
        write_nifti_mask(np.zeros(SHAPE, np.uint8), source, tmp_path / "out" / "m.nii.gz")
    assert list((tmp_path / "out").iterdir()) == []


def test_lineage_sidecar_is_sorted_json(tmp_path: Path) -> None:
    mask = tmp_path / "case_001.nii.gz"
    record = lineage_record(
        source=tmp_path / "case_001_0000.nii.gz",
        source_sha256="ab" * 32,
        model_uri="models:/liver@champion",
        model_name="liver",
        model_version="3",
        outputs={"mask": mask},
        settings={"postprocess": PostprocessConfig(keep_largest=(1,)), "overlap": np.float32(0.5)},
    )
    written = write_lineage(lineage_path(mask), record)
    assert written.name == "case_001.lineage.json"
    text = written.read_text()
    loaded = json.loads(text)
    assert list(loaded) == sorted(loaded)
    assert loaded["outputs"] == {"mask": str(mask)}
    assert loaded["settings"]["overlap"] == 0.5
    assert loaded["settings"]["postprocess"]["keep_largest"] == [1]
    assert loaded["segflow_version"] and loaded["created_utc"].endswith("+00:00")
    with pytest.raises(UsageError):
        write_lineage(tmp_path / "x.lineage.json", {"bad": object()})
