"""Post-processing of predicted label maps: thresholds, morphology and size filters."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from data_contracts._base import Contract


class PostprocessConfig(Contract):
    """How a predicted label map is cleaned before it is written.

    Keep-largest-foreground runs first, on every foreground class as one region; then the
    steps run per foreground class in a fixed order: opening → small objects → holes → keep
    largest. Every default leaves the labels unchanged.

    Sizes are physical so that one setting means the same thing whatever the resolution:

    * volumes (NIfTI): mm³ (voxel count × product of the voxel spacing in mm);
    * georeferenced rasters: CRS units², i.e. m² for projected CRSs (pixel count × pixel area);
    * plain images (PNG, TIFF without georeferencing): pixels (the spacing is 1).

    Attributes:
        min_object_size: connected components of a class smaller than this (in the physical
            unit above) become background; 0 turns the step off.
        fill_holes: fill background cavities fully enclosed by a class with that class
            (2D holes in images and rasters, 3D cavities in volumes).
        keep_largest_foreground: every foreground class together as one region (a tumour and
            its sub-regions, one organ with its parts): only that region's largest connected
            component stays, the others become background (nnU-Net's first post-processing
            step). Where class 0 is the background and there are more than two classes,
            inference also decides that region first from the probabilities: foreground where
            class 0 is at most 0.5 (or below ``1 − threshold``), then the most probable
            foreground class (``pipelines.postprocess.decision``).
        keep_largest: class values of which only the largest connected component is kept
            (e.g. one liver per scan); the others become background.
        opening_radius: radius in pixels/voxels of the disk/ball of a morphological opening
            that removes thin spurs and specks; 0 turns the step off.
        threshold: the foreground probability (``1 − P(class 0)``; for two classes, the
            second class's) at or above which a pixel is foreground; it then takes its most
            probable foreground class. Lower it to trade precision for recall (a model that
            under-segments). Class 0 must be the background when there are more than two
            classes. ``None`` takes the argmax over classes (or 0.5 with
            ``keep_largest_foreground``, above).
        connectivity: neighbourhood of connected components: 1 for faces only (4-/6-connected),
            2 adds edges (8-connected in 2D, 18 in 3D), 3 adds corners (26 in 3D); ``None`` is
            full connectivity for the array's dimensionality. Values above the number of
            dimensions mean full connectivity.
    """

    min_object_size: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    fill_holes: bool = False
    keep_largest_foreground: bool = False
    keep_largest: tuple[Annotated[int, Field(ge=0)], ...] = ()
    opening_radius: int = Field(default=0, ge=0)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    connectivity: Literal[1, 2, 3] | None = None

    @field_validator("keep_largest")
    @classmethod
    def _unique_classes(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(values)) != len(values):
            raise ValueError(f"keep_largest lists a class value twice: {values}")
        return values

    @property
    def changes_output(self) -> bool:
        """True when the labels differ from the argmax's: a threshold or a morphological step."""
        return self.threshold is not None or self.changes_labels

    @property
    def changes_labels(self) -> bool:
        """True when at least one morphological step is switched on."""
        return bool(
            self.min_object_size > 0
            or self.fill_holes
            or self.keep_largest_foreground
            or self.keep_largest
            or self.opening_radius > 0
        )

    @property
    def needs_whole_map(self) -> bool:
        """True when a step looks at whole components (keep largest), not a neighbourhood."""
        return bool(self.keep_largest_foreground or self.keep_largest)
