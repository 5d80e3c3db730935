"""Seeded synthetic 2D microscopy-like images with instance labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from skimage.draw import ellipse
from skimage.segmentation import relabel_sequential


def _blobs(rng: np.random.Generator, size: tuple[int, int]) -> NDArray[np.uint16]:
    """Instance map of elliptical "nuclei", numbered 1..N without gaps."""
    instances = np.zeros(size, np.uint16)
    scale = min(size) / 64
    for index in range(int(rng.integers(4, 9))):
        radii = rng.uniform(3, 7, 2) * scale
        centre = rng.uniform(radii.max(), np.array(size) - radii.max())
        angle = rng.uniform(0, np.pi)
        rows, cols = ellipse(centre[0], centre[1], radii[0], radii[1], shape=size, rotation=angle)  # type: ignore[no-untyped-call]
        instances[rows, cols] = index + 1
    relabelled: np.ndarray = relabel_sequential(instances)[0]  # type: ignore[no-untyped-call]
    return relabelled.astype(np.uint16)


def make_image_dataset(
    root: str | Path,
    *,
    n_images: int = 3,
    size: tuple[int, int] = (64, 64),
    rgb: bool = False,
    seed: int = 0,
) -> Path:
    """Write fluorescence-like PNGs of blobs with instance labels.

    Args:
        root: dataset folder (created): ``images/img_000.png`` (uint8 grey, or RGB) and
            ``labels/img_000.png`` (uint16, 0 background, 1..N instances).
        n_images: number of images.
        size: (height, width) in pixels.
        rgb: write 3-channel images instead of grey.
        seed: random seed.

    Returns:
        ``root``.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n_images):
        instances = _blobs(rng, size)
        brightness = np.concatenate([[20.0], rng.uniform(120, 220, int(instances.max()))])
        image = ndimage.gaussian_filter(brightness[instances], 1.0) + rng.normal(0, 8, size)
        if rgb:
            image = image[..., None] * np.array([0.9, 0.55, 1.0])
        pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"img_{index:03d}.png")
        Image.fromarray(instances).save(root / "labels" / f"img_{index:03d}.png")
    return root


# --- archives -----------------------------------------------------------------------------------
