"""Class probabilities → class indices: the argmax, or the foreground decided first.

Every inference path (volumes, images, streamed rasters) turns its blended probabilities into
labels here, so the model's :class:`~data_contracts.PostprocessConfig` means the same thing
everywhere:

* by default, the most probable class (ties go to the first);
* with a foreground cut (the config's ``threshold``, or 0.5 where the plan's foreground is one
  region split into classes), a pixel is foreground where ``1 − P(class 0)`` reaches the cut,
  and then takes its most probable foreground class.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from data_contracts import PostprocessConfig, TrainingPlan

__all__ = ["class_indices", "foreground_cut", "one_foreground_region"]

#: The cut of the one-region decision when the config names none: foreground where the
#: background is less likely than all foreground classes together.
_ONE_REGION_CUT = 0.5


def one_foreground_region(postprocess: PostprocessConfig, plan: TrainingPlan) -> bool:
    """Whether the foreground is one region split into several classes beside a background.

    True where the post-processing keeps one foreground object (``keep_largest_foreground``,
    which the plan sets where the training labels are one object: a tumour and its
    sub-regions), class 0 is the background and there are three classes or more.
    """
    one_object = postprocess.keep_largest_foreground and plan.num_classes > 2
    return one_object and tuple(plan.class_values[:1]) == (0,)


def foreground_cut(postprocess: PostprocessConfig, plan: TrainingPlan) -> float | None:
    """The foreground probability at or above which a pixel is foreground, or ``None``.

    The config's ``threshold`` when set; else 0.5 where the foreground is one region
    (:func:`one_foreground_region`); else ``None`` (the argmax decides).
    """
    if postprocess.threshold is not None:
        return postprocess.threshold
    return _ONE_REGION_CUT if one_foreground_region(postprocess, plan) else None


def class_indices(
    probabilities: NDArray[np.floating], *, foreground_cut: float | None = None
) -> NDArray[np.unsignedinteger]:
    """Class indices from ``(K, *S)`` probabilities: uint8, or uint16 past 256 classes.

    One comparison pass per class instead of NumPy's ``argmax`` along a non-last axis, which
    walks the array with a stride of a whole plane and is several times slower.

    Args:
        probabilities: softmax over K classes.
        foreground_cut: where set, class 0 is the background: a pixel is foreground where
            ``1 − P(class 0)`` is at or above the cut (with two classes, ``P(class 1)``), and
            takes its most probable foreground class. Plain argmax hands the background a pixel
            whose foreground probability is split among classes (a tumour's core shared by
            necrosis and enhancing tumour, each below the background). ``None``: the argmax.

    Returns:
        ``S``-shaped class indices.
    """
    count = len(probabilities)
    if foreground_cut is not None and count > 1:
        return _foreground_then_class(probabilities, foreground_cut)
    labels = np.zeros(probabilities.shape[1:], dtype=_index_dtype(count))
    if count == 2:
        np.greater(probabilities[1], probabilities[0], out=labels, casting="unsafe")
        return labels
    best = probabilities[0].copy()
    for index, channel in enumerate(probabilities[1:], start=1):
        labels[channel > best] = index
        np.maximum(best, channel, out=best)
    return labels


def _foreground_then_class(
    probabilities: NDArray[np.floating], cut: float
) -> NDArray[np.unsignedinteger]:
    """1 + the argmax over the foreground classes where the foreground reaches ``cut``, else 0."""
    dtype = _index_dtype(len(probabilities))
    if len(probabilities) == 2:
        return np.asarray(probabilities[1] >= cut, dtype=dtype)
    foreground = (1.0 - probabilities[0]) >= cut
    among_foreground = class_indices(probabilities[1:]).astype(dtype) + 1
    labels: NDArray[np.unsignedinteger] = np.where(foreground, among_foreground, 0).astype(dtype)
    return labels


def _index_dtype(count: int) -> type[np.unsignedinteger]:
    return np.uint8 if count <= 256 else np.uint16
