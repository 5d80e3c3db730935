"""Options of ``segflow ingest``, shared by the CLI, the flow and the Python API."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from data_contracts._base import Contract
from data_contracts.dataset import LabelKind


class IngestOptions(Contract):
    """How to find, pair and validate the cases of a source.

    Attributes:
        label_suffix: text between the case id and the extension of label files
            (``"_mask"`` pairs ``a_mask.tif`` with ``a.tif``).
        channel_suffix: group files named ``<case>_0000``, ``<case>_0001``… into the channels
            of one case ``<case>`` in any folder. Off, every image file is a case named by its
            full stem (``tile_2023.tif`` → ``tile_2023``); the nnU-Net layout and a
            ``dataset.json`` declaring several channels group without it.
        labels: label name → value; overrides ``dataset.json``; ``None`` infers from the files.
        ignore_value: label value meaning "no label" (nodata), excluded from the label set.
        label_kind: semantic class maps or instance maps.
        kind: force the case kind; ``auto`` decides from the files.
        allow_ungeoreferenced: accept TIFFs without CRS/transform as rasters.
        vector_attribute: feature property holding the class of vector labels.
        vector_crs: CRS of vector label coordinates when the file does not say.
        subdir: folder inside the source (or the extracted archive) to ingest.
        atol_mm: tolerance for affine/origin differences between files of one case, in mm.
        rtol_pixel: tolerance for raster origin/resolution differences, as a fraction of a pixel.
    """

    label_suffix: str = ""
    channel_suffix: bool = False
    labels: dict[str, int] | None = None
    ignore_value: int | None = None
    label_kind: LabelKind = "semantic"
    kind: Literal["auto", "volume", "raster", "image"] = "auto"
    allow_ungeoreferenced: bool = False
    vector_attribute: str | None = None
    vector_crs: str | None = None
    subdir: str | None = None
    atol_mm: float = Field(default=1e-3, gt=0)
    rtol_pixel: float = Field(default=1e-3, gt=0)
