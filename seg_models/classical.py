"""Classical baselines: a random forest on multiscale features, and Otsu + watershed.

They show what a deep model buys on the user's own data. Neither is an ``nn.Module``; both
follow :class:`ClassicalSegmenter`: ``fit(images, labels)`` then ``predict(image)`` on NumPy
arrays, channels first like the networks' inputs (``(C, *spatial)``, 2D or 3D).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
from scipy import ndimage

__all__ = ["ClassicalSegmenter", "OtsuWatershed", "RandomForestSegmenter"]


@runtime_checkable
class ClassicalSegmenter(Protocol):
    """What every classical baseline offers."""

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> Self:
        """Learns from images ``(C, *spatial)`` and label maps ``(*spatial)``."""
        ...

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Label map ``(*spatial)`` for one image ``(C, *spatial)``."""
        ...


def _features(image: np.ndarray, sigma_min: float, sigma_max: float) -> np.ndarray:
    if image.ndim not in (3, 4):
        raise ValueError(f"expected a (C, H, W) or (C, X, Y, Z) image, got shape {image.shape}")
    # scikit-image loads in ~1 s: only these baselines need it, so only they import it.
    from skimage.feature import multiscale_basic_features

    features: np.ndarray = multiscale_basic_features(  # type: ignore[no-untyped-call]
        np.moveaxis(image, 0, -1).astype(np.float32),
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        channel_axis=-1,
        workers=1,
    )
    return features


class RandomForestSegmenter:
    """scikit-image's trainable segmentation: a random forest on multiscale features.

    Per pixel: Gaussian-smoothed intensities, gradient magnitudes and Hessian eigenvalues at
    scales ``sigma_min``…``sigma_max`` (``skimage.feature.multiscale_basic_features``), classified
    by scikit-learn's ``RandomForestClassifier`` through ``skimage.future.fit_segmenter``.

    Args:
        n_estimators: trees.
        max_depth: tree depth limit.
        sigma_min: smallest feature scale (pixels).
        sigma_max: largest feature scale (pixels).
        max_pixels_per_image: random training pixels drawn per image (all when fewer).
        ignore_index: label value that is not trained on.
        seed: seeds the pixel sampling and the forest.
    """

    def __init__(
        self,
        *,
        n_estimators: int = 50,
        max_depth: int = 10,
        sigma_min: float = 1.0,
        sigma_max: float = 16.0,
        max_pixels_per_image: int = 20_000,
        ignore_index: int | None = None,
        seed: int = 0,
    ) -> None:
        from sklearn.ensemble import RandomForestClassifier  # only this baseline needs sklearn

        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.max_pixels_per_image = max_pixels_per_image
        self.ignore_index = ignore_index
        self._rng = np.random.default_rng(seed)
        self.classifier: Any = RandomForestClassifier(
            n_estimators=n_estimators, max_depth=max_depth, n_jobs=1, random_state=seed
        )

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> Self:
        """Trains on labelled pixels; labels are class indices ``(*spatial)``."""
        if len(images) != len(labels) or not images:
            raise ValueError("fit needs as many label maps as images, at least one")
        features, shifted = [], []
        for image, label in zip(images, labels, strict=True):
            if image.shape[1:] != label.shape:
                raise ValueError(f"label {label.shape} does not match image {image.shape}")
            # fit_segmenter reads 0 as "unlabelled": shift classes by one, 0 = not sampled.
            keep = self._sample(label)
            features.append(_features(image, self.sigma_min, self.sigma_max)[keep])
            shifted.append(label[keep].astype(np.int64) + 1)
        from skimage.future import fit_segmenter

        fit_segmenter(np.concatenate(shifted), np.concatenate(features), self.classifier)  # type: ignore[no-untyped-call]
        return self

    def _sample(self, label: np.ndarray) -> np.ndarray:
        usable = (
            np.ones(label.shape, bool) if self.ignore_index is None else label != self.ignore_index
        )
        where = np.flatnonzero(usable)
        if where.size > self.max_pixels_per_image:
            where = self._rng.choice(where, self.max_pixels_per_image, replace=False)
        keep = np.zeros(label.size, bool)
        keep[where] = True
        return keep.reshape(label.shape)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class index per pixel, ``(*spatial)`` int64."""
        features = _features(image, self.sigma_min, self.sigma_max)
        from skimage.future import predict_segmenter

        return np.asarray(predict_segmenter(features, self.classifier), dtype=np.int64) - 1  # type: ignore[no-untyped-call]


class OtsuWatershed:
    """Instances from an Otsu threshold split by a watershed on the distance transform.

    The image is averaged over channels and smoothed; Otsu's threshold separates objects from
    background; maxima of the distance to the background, at least ``min_distance`` apart, seed
    a watershed that splits touching objects. :meth:`fit` needs no training but learns from the
    labels whether objects are brighter or darker than background, and sets ``min_distance``
    to half the median object radius when it was not given.

    Args:
        min_distance: minimum distance between seeds (pixels); None = learn in :meth:`fit`
            (3 before fitting).
        smoothing_sigma: Gaussian smoothing before thresholding (pixels).
        min_size: objects smaller than this (pixels) are dropped.
        bright_objects: objects are brighter than background; None = learn in :meth:`fit`
            (True before fitting).
    """

    def __init__(
        self,
        *,
        min_distance: int | None = None,
        smoothing_sigma: float = 1.0,
        min_size: int = 10,
        bright_objects: bool | None = None,
    ) -> None:
        self.min_distance = min_distance
        self.smoothing_sigma = smoothing_sigma
        self.min_size = min_size
        self.bright_objects = bright_objects

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> Self:
        """Learns polarity and seed spacing from instance label maps (0 = background)."""
        inside, outside, radii = [], [], []
        for image, label in zip(images, labels, strict=True):
            intensity = image.mean(axis=0)
            inside.append(intensity[label > 0])
            outside.append(intensity[label == 0])
            sizes = np.bincount(label.ravel().astype(np.int64))[1:]
            radii += list(_equivalent_radius(sizes[sizes > 0], label.ndim))
        if self.bright_objects is None and any(a.size for a in inside):
            self.bright_objects = bool(
                np.concatenate(inside).mean() >= np.concatenate(outside).mean()
            )
        if self.min_distance is None and radii:
            self.min_distance = max(1, round(float(np.median(radii)) / 2))
        return self

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Instance labels ``(*spatial)`` int32: 0 background, 1…N objects."""
        from skimage.feature import peak_local_max
        from skimage.filters import threshold_otsu
        from skimage.segmentation import watershed

        intensity = ndimage.gaussian_filter(
            image.mean(axis=0).astype(np.float64), self.smoothing_sigma
        )
        if np.ptp(intensity) == 0:
            return np.zeros(intensity.shape, np.int32)
        bright = True if self.bright_objects is None else self.bright_objects
        threshold = threshold_otsu(intensity)  # type: ignore[no-untyped-call]
        mask = intensity > threshold if bright else intensity < threshold
        parts, count = ndimage.label(mask)
        sizes = np.bincount(parts.ravel(), minlength=count + 1)
        mask &= (sizes >= self.min_size)[parts]
        distance = ndimage.distance_transform_edt(mask)
        peaks = peak_local_max(  # type: ignore[no-untyped-call]
            distance,
            min_distance=self.min_distance or 3,
            labels=ndimage.label(mask)[0],
            exclude_border=False,
        )
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        instances: np.ndarray = watershed(-distance, markers, mask=mask)  # type: ignore[no-untyped-call]
        return instances.astype(np.int32)


def _equivalent_radius(sizes: np.ndarray, dims: int) -> np.ndarray:
    """Radius of the disc (2D) or ball (3D) with the given area or volume."""
    if dims == 2:
        return np.sqrt(sizes / np.pi)
    return np.cbrt(sizes * 3 / (4 * np.pi))
