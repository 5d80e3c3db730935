"""Seeded synthetic NIfTI volume datasets (nnU-Net v2 or images/labels layouts)."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from pipelines.synthetic._common import (
    CHANNEL_NAMES,
    CLASS_NAMES,
    CT_INTERCEPT,
    VolumeLayout,
    write_json,
)


def volume_affine(
    shape: Sequence[int],
    spacing: Sequence[float],
    axcodes: Sequence[str],
    rotation_deg: float = 0.0,
) -> NDArray[np.float64]:
    """A voxel-to-RAS affine with the given orientation, spacing and a rotation about S.

    Args:
        shape: (X, Y, Z) voxels; the world origin is put at the volume's centre.
        spacing: voxel size along X, Y, Z in mm.
        axcodes: where each voxel axis points, e.g. ``("L", "P", "S")``.
        rotation_deg: rotation about the superior axis; keep it under 45° so that
            ``nibabel.aff2axcodes`` still reports ``axcodes``.

    Returns:
        The 4×4 affine.
    """
    ornt = nib.orientations.axcodes2ornt(tuple(axcodes))  # type: ignore[no-untyped-call]
    linear = np.zeros((3, 3))
    for voxel_axis, (world_axis, flip) in enumerate(ornt):
        linear[int(world_axis), voxel_axis] = flip * spacing[voxel_axis]
    angle = np.deg2rad(rotation_deg)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ linear
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _volume_label(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], n_classes: int
) -> NDArray[np.uint8]:
    """Ellipsoids (in mm, so they look round despite anisotropic voxels), labels 1..n_classes."""
    extent = np.asarray(shape) * np.asarray(spacing)
    grid = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"
    )
    label = np.zeros(tuple(shape), np.uint8)
    for value in range(1, n_classes + 1):
        radii = np.maximum(extent * rng.uniform(0.12, 0.22, 3), 2.01 * np.asarray(spacing))
        centre = rng.uniform(radii, extent - radii)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
        label[inside] = value
    return label


def _volume_channel(
    rng: np.random.Generator, label: NDArray[np.uint8], channel: int, modality: str
) -> NDArray[np.float32]:
    """Object intensity (a different contrast per channel) plus Gaussian noise."""
    classes = np.arange(int(label.max(initial=0)) + 2)
    if modality == "ct":
        levels, noise = -80.0 + 70.0 * classes, 15.0
    else:
        sign = 1.0 if channel % 2 == 0 else -0.6
        levels, noise = 100.0 + 20.0 * channel + sign * 60.0 * classes, 10.0
    image = levels[label] + rng.normal(0.0, noise, label.shape)
    return image.astype(np.float32)


def _save_nifti(
    path: Path, data: NDArray[Any], affine: NDArray[np.float64], *, ct: bool = False
) -> None:
    """Write with qform and sform (code 1, scanner) from ``affine``; CT as scaled int16."""
    image = nib.Nifti1Image(data, affine)  # type: ignore[no-untyped-call]
    image.set_qform(affine, code=1)  # type: ignore[no-untyped-call]
    image.set_sform(affine, code=1)  # type: ignore[no-untyped-call]
    if not ct:
        nib.save(image, path)
        return
    # nibabel recomputes slope/intercept on save, so write the header and raw int16 ourselves.
    header = image.header
    header.set_data_dtype(np.int16)  # type: ignore[no-untyped-call]
    header.set_slope_inter(1.0, CT_INTERCEPT)  # type: ignore[no-untyped-call]
    header.set_data_offset(352)  # type: ignore[no-untyped-call]
    raw = np.round(data - CT_INTERCEPT).astype("<i2")
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(header.binaryblock + b"\0" * 4)  # 348-byte header, "no extensions" flag
        handle.write(raw.tobytes(order="F"))


def make_volume_dataset(
    root: str | Path,
    *,
    n_cases: int = 3,
    shape: tuple[int, int, int] = (32, 28, 16),
    spacing: tuple[float, float, float] = (0.9, 1.1, 3.0),
    axcodes: tuple[str, str, str] = ("L", "P", "S"),
    n_channels: int = 2,
    n_classes: int = 2,
    seed: int = 0,
    layout: VolumeLayout = "nnunet",
    rotation_deg: float = 0.0,
    modality: Literal["mr", "ct"] = "mr",
    n_test: int = 0,
    class_names: Sequence[str] | None = None,
    list_cases: bool = True,
) -> Path:
    """Write a labelled NIfTI dataset of ellipsoids on a non-RAS, anisotropic grid.

    Args:
        root: dataset folder (created).
        n_cases: labelled cases, named ``case_000``…
        shape: (X, Y, Z) voxels.
        spacing: voxel size in mm.
        axcodes: voxel axis directions.
        n_channels: channel files per case (``_0000``, ``_0001``…).
        n_classes: foreground classes, labels 1..n_classes (uint8).
        seed: random seed.
        layout: ``"nnunet"`` (``imagesTr/``, ``labelsTr/``, ``imagesTs/``, nnU-Net v2
            ``dataset.json``) or ``"images_labels"`` (``images/``, ``labels/``, and a
            ``dataset.json`` listing the cases, like ``/work/shared/data``).
        rotation_deg: rotation of the grid about the S axis.
        modality: ``"mr"`` (float32, a different contrast per channel) or ``"ct"`` (HU stored
            as int16 with ``scl_slope`` 1 and ``scl_inter`` :data:`CT_INTERCEPT`).
        n_test: unlabelled cases ``test_000``… (``imagesTs/`` or ``images/``).
        class_names: names of labels 1..n_classes (default tumour, oedema…).
        list_cases: for ``"images_labels"``, whether ``dataset.json`` lists the cases (and
            their count, ``numCases``); without them, readers must scan the folders.

    Returns:
        ``root``.
    """
    root = Path(root)
    if layout == "nnunet":
        images, labels, tests = root / "imagesTr", root / "labelsTr", root / "imagesTs"
    else:
        images, labels, tests = root / "images", root / "labels", root / "images"
    for folder in (images, labels, tests) if n_test else (images, labels):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = volume_affine(shape, spacing, axcodes, rotation_deg)
    cases: list[dict[str, Any]] = []
    ids = [(f"case_{i:03d}", images, True) for i in range(n_cases)]
    ids += [(f"test_{i:03d}", tests, False) for i in range(n_test)]
    for case_id, folder, labelled in ids:
        label = _volume_label(rng, shape, spacing, n_classes)
        channel_files = [folder / f"{case_id}_{c:04d}.nii.gz" for c in range(n_channels)]
        for channel, path in enumerate(channel_files):
            data = _volume_channel(rng, label, channel, modality)
            _save_nifti(path, data, affine, ct=modality == "ct")
        if labelled:
            _save_nifti(labels / f"{case_id}.nii.gz", label, affine)
            rel = [str(p.relative_to(root)) for p in channel_files]
            cases.append({"image": rel, "label": f"{labels.name}/{case_id}.nii.gz"})
    channel_names = ["CT"] * n_channels if modality == "ct" else list(CHANNEL_NAMES)
    channel_names += [f"MR{c}" for c in range(len(channel_names), n_channels)]
    given = list(class_names or CLASS_NAMES)
    names = [given[k - 1] if k <= len(given) else f"class{k}" for k in range(1, n_classes + 1)]
    meta: dict[str, Any] = {
        "name": root.name,
        "description": f"segflow synthetic volumes (seed {seed})",
        "channel_names": {str(c): channel_names[c] for c in range(n_channels)},
        "labels": {"background": 0} | {name: k for k, name in enumerate(names, start=1)},
        "file_ending": ".nii.gz",
    }
    if layout == "nnunet":
        meta["numTraining"] = n_cases
    elif list_cases:
        meta["numCases"] = n_cases
        meta["cases"] = cases
    write_json(root / "dataset.json", meta)
    return root


# --- GeoTIFF rasters ----------------------------------------------------------------------------
