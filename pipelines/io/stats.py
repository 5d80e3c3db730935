"""Streamed pixel statistics: label values, integer checks, non-finite counts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PixelStats:
    """Accumulates statistics block by block, so that memory stays bounded by one block.

    Attributes:
        counts: pixels per distinct value (only when ``track_values``).
        nonfinite: NaN and infinite pixels seen.
        noninteger: finite pixels whose value is not an integer.
        first_noninteger: one offending value, for the error message.
        pixels: pixels seen.
    """

    track_values: bool = True
    counts: dict[float, int] = field(default_factory=dict)
    nonfinite: int = 0
    noninteger: int = 0
    first_noninteger: float | None = None
    pixels: int = 0

    def update(self, block: np.ndarray, *, valid: np.ndarray | None = None) -> None:
        """Add one block of pixels.

        Args:
            block: pixel values of any shape.
            valid: optional boolean mask of the pixels to count (False = nodata, skipped).
        """
        values = block if valid is None else block[valid]
        self.pixels += values.size
        if np.issubdtype(values.dtype, np.floating):
            finite = np.isfinite(values)
            self.nonfinite += int(values.size - np.count_nonzero(finite))
            values = values[finite]
            if self.track_values and values.size:
                fractional = values != np.round(values)
                bad = int(np.count_nonzero(fractional))
                if bad and self.first_noninteger is None:
                    self.first_noninteger = float(values[fractional][0])
                self.noninteger += bad
        if self.track_values and values.size:
            uniques, counts = np.unique(values, return_counts=True)
            for value, count in zip(uniques.tolist(), counts.tolist(), strict=True):
                self.counts[value] = self.counts.get(value, 0) + count

    def consume(self, blocks: Iterable[np.ndarray]) -> PixelStats:
        """Update with every block of an iterable; returns ``self``."""
        for block in blocks:
            self.update(block)
        return self

    def integer_counts(self) -> dict[int, int]:
        """Pixels per integer value, ascending (meaningful once ``noninteger == 0``)."""
        merged: dict[int, int] = {}
        for value, count in self.counts.items():
            merged[int(value)] = merged.get(int(value), 0) + count
        return dict(sorted(merged.items()))
