"""Per-file confidence from the probabilities a model produced anyway (no second pass).

:class:`ConfidenceAccumulator` takes the class probabilities block by block (a whole volume or
image at once, or one strip of a streamed raster at a time) and keeps only sums: the
normalised entropy over valid pixels, the foreground pixels, and those of them whose top
probability is below :data:`~data_contracts.LOW_PROBABILITY`. :meth:`quality` turns the sums
into a :class:`~data_contracts.FileQuality`. Each block's entropy map is returned for
``--write-uncertainty``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from data_contracts import LOW_PROBABILITY, FileQuality, UsageError, confidence_score

__all__ = ["ConfidenceAccumulator", "low_score_share", "normalized_entropy"]

_EPSILON = np.float32(1e-7)


def _class_planes(probabilities: NDArray[np.floating]) -> list[NDArray[np.float32]]:
    """The class planes of ``(K, *S)`` probabilities; one sigmoid channel becomes two."""
    array = np.asarray(probabilities, dtype=np.float32)
    if array.ndim < 2 or array.shape[0] < 1:
        raise UsageError(f"probabilities must be (K, *S) with K >= 1, got shape {array.shape}")
    if array.shape[0] == 1:
        return [1.0 - array[0], array[0]]
    return list(array)


def normalized_entropy(probabilities: NDArray[np.floating]) -> NDArray[np.float32]:
    """``S``-shaped entropy of ``(K, *S)`` class probabilities over ``log K``, in [0, 1].

    Raises:
        UsageError: not ``(K, *S)``.
    """
    planes = _class_planes(probabilities)
    entropy = np.zeros(planes[0].shape, dtype=np.float32)
    scratch = np.empty_like(entropy)
    for plane in planes:  # one plane at a time: no (K, *S) temporaries
        np.maximum(plane, _EPSILON, out=scratch)
        np.log(scratch, out=scratch)
        scratch *= plane
        entropy -= scratch
    entropy /= np.float32(math.log(len(planes)))
    return np.clip(entropy, 0.0, 1.0, out=entropy)


def _top_probability(planes: list[NDArray[np.float32]]) -> NDArray[np.float32]:
    best = planes[0].copy()
    for plane in planes[1:]:
        np.maximum(best, plane, out=best)
    return best


def _foreground(planes: list[NDArray[np.float32]]) -> NDArray[np.bool_]:
    """Pixels whose most probable class is not the first (background)."""
    background = planes[0]
    foreground = np.zeros(background.shape, dtype=bool)
    for plane in planes[1:]:
        foreground |= plane > background
    return foreground


def low_score_share(scores: Sequence[float]) -> float | None:
    """Share of detections scored below :data:`~data_contracts.LOW_PROBABILITY` (``None``
    when there are none)."""
    if not scores:
        return None
    return sum(1 for score in scores if score < LOW_PROBABILITY) / len(scores)


@dataclass
class ConfidenceAccumulator:
    """Sums over the blocks of one file's probabilities (see the module docstring)."""

    entropy_sum: float = 0.0
    pixels: int = 0
    foreground: int = 0
    low_foreground: int = 0

    def add(
        self,
        probabilities: NDArray[np.floating],
        valid: NDArray[np.bool_] | None = None,
        foreground: NDArray[np.bool_] | None = None,
    ) -> NDArray[np.float32]:
        """Add one block of ``(K, *S)`` probabilities; returns its entropy map ``S``.

        Args:
            probabilities: class probabilities (one sigmoid channel for K = 1).
            valid: pixels with data (default: all).
            foreground: pixels labelled foreground (default: the top class is not the first).

        Raises:
            UsageError: not ``(K, *S)``, or ``valid``/``foreground`` of another shape.
        """
        planes = _class_planes(probabilities)
        entropy = normalized_entropy(probabilities)
        inside = np.ones(entropy.shape, dtype=bool) if valid is None else np.asarray(valid, bool)
        chosen = _foreground(planes) if foreground is None else np.asarray(foreground, bool)
        if inside.shape != entropy.shape or chosen.shape != entropy.shape:
            raise UsageError(
                f"valid {inside.shape} / foreground {chosen.shape} do not match the "
                f"probabilities' grid {entropy.shape}"
            )
        chosen = chosen & inside
        self.entropy_sum += float(entropy[inside].sum(dtype=np.float64))
        self.pixels += int(np.count_nonzero(inside))
        self.foreground += int(np.count_nonzero(chosen))
        if self.foreground:
            low = _top_probability(planes)[chosen] < LOW_PROBABILITY
            self.low_foreground += int(np.count_nonzero(low))
        return entropy

    def quality(self, *, scores: Sequence[float] | None = None) -> FileQuality:
        """The file's confidence measures (``scores``: its detections', for instance models)."""
        share = low_score_share(scores) if scores is not None else None
        mean_entropy = self.entropy_sum / self.pixels if self.pixels else None
        low_fraction: float | None = (
            self.low_foreground / self.foreground if self.foreground else 0.0
        )
        if self.pixels == 0 and scores is not None:  # detections only, no probability map
            low_fraction = None
        return FileQuality(
            confidence=confidence_score(mean_entropy, low_fraction, share),
            mean_entropy=None if mean_entropy is None else min(max(mean_entropy, 0.0), 1.0),
            low_confidence_fraction=low_fraction,
            low_score_share=share,
            foreground_fraction=self.foreground / self.pixels if self.pixels else None,
        )
