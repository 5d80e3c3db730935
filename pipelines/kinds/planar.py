"""What the two 2D kinds (GeoTIFF rasters and plain images) share: native grid, percentile
normalisation, smaller windows in bigger batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from data_contracts import Case, ChannelNormalization, ChannelStats
from pipelines.kinds.base import ModalityHint
from pipelines.plan.planner import intensity_window

__all__ = ["PlanarKind"]


class PlanarKind:
    """Members common to the 2D kinds; :class:`~pipelines.kinds.raster.RasterKind` and
    :class:`~pipelines.kinds.image2d.ImageKind` add the rest of :class:`KindAdapter`."""

    spatial_dims: Literal[2, 3] = 2
    target_spacing_unit: str | None = None
    channels_in_separate_files = False
    default_overlap = 0.25
    default_window_batch = 8

    def modality_hint(self, channels: Sequence[ChannelStats]) -> ModalityHint:
        """2D data is neither CT nor MR."""
        return "other"

    def partial_nodata_share(self, case: Case) -> float:
        """Images have no nodata (rasters override this)."""
        return 0.0

    def channel_normalization(self, stats: ChannelStats) -> ChannelNormalization:
        """Bands and image channels: scale [p0.5, p99.5] to [0, 1]."""
        lower, upper = intensity_window(stats)
        return ChannelNormalization(scheme="percentile", lower=lower, upper=upper)
