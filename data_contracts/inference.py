"""Options of ``segflow segment``: what to write besides the masks, and how windows run.

One contract from the command line down to the sliding window and the raster stream: the CLI
(or any caller) builds :class:`InferenceOptions` once, which checks every value, and every
layer below reads the same object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError

from data_contracts._base import Contract
from data_contracts.errors import UsageError

__all__ = ["InferenceOptions"]

#: What each constrained option must be, as error messages say it.
_RULES = {
    "overlap": "must be in [0, 1)",
    "batch_size": "must be at least 1",
    "mode": "must be 'gaussian' or 'constant'",
    "sigma_scale": "must be positive",
    "read_ahead": "must be 0 or more",
    "read_threads": "must be at least 1",
    "on_drift": "must be 'warn', 'skip' or 'fail'",
}


class InferenceOptions(Contract):
    """How cases are segmented (every field has a default; unset window settings take the
    defaults of the model's data kind).

    Attributes:
        polygons: raster masks also as polygons (GeoPackage in the source CRS, GeoJSON WGS84).
        probabilities: also write class probabilities (compact uint8, scale 1/255).
        tta: test-time flips along each spatial axis (volumes and 2D images; not applied to
            streamed rasters).
        overlap: fraction of a window shared with its neighbour along each axis, in [0, 1);
            ``None``: the kind's default (0.5 volumes, 0.25 2D).
        batch_size: windows per forward pass; ``None``: the kind's default (4 volumes, 8 2D).
        device: ``cpu``, ``cuda``, ``cuda:1``…; ``None``: CUDA when present.
        mode: window blending: ``gaussian`` (less weight near window edges) or ``constant``.
        sigma_scale: standard deviation of the gaussian, as a fraction of the window size.
        amp: mixed precision: float16 on CUDA, bfloat16 on CPUs with native bf16 instructions
            (AVX-512 BF16 or AMX); float32 elsewhere or when off (networks; Mask R-CNN and
            classical models always run in float32).
        channels_last: channels-last memory format for the network's inputs where it is faster
            (CUDA, and CPUs without native bf16; the network was laid out so when loaded).
        read_ahead: rasters: strips whose new rows are read on a background thread while the
            model runs; worth it when the model leaves CPU idle (GPU, or fewer torch threads
            than cores). Each strip read ahead holds ``stride × width × bands`` source pixels.
        read_threads: rasters: threads GDAL decodes the tiles of one read on; ``None``: one
            per core.
        uncertainty: also write the normalised entropy of the probabilities on the mask's
            grid (``<case>_entropy``: NIfTI for volumes, COG for rasters, TIFF for images;
            uint8, value / 255).
        on_drift: what to do with an input that lies outside the model's training data:
            ``warn`` (segment it, flag it), ``skip`` (do not segment it) or ``fail``.
        postprocess: apply the model's post-processing (``processing.postprocess``: the
            plan's keep-largest-foreground, or what was logged with it); off writes the
            network's labels as they are.

    Raises:
        UsageError: a value out of its range, or an unknown option (when constructed).
    """

    polygons: bool = False
    probabilities: bool = False
    tta: bool = False
    overlap: float | None = Field(default=None, ge=0, lt=1)
    batch_size: int | None = Field(default=None, ge=1)
    device: str | None = None
    mode: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = Field(default=0.125, gt=0)
    amp: bool = True
    channels_last: bool = True
    read_ahead: int = Field(default=0, ge=0)
    read_threads: int | None = Field(default=None, ge=1)
    uncertainty: bool = False
    on_drift: Literal["warn", "skip", "fail"] = "warn"
    postprocess: bool = True

    if not TYPE_CHECKING:  # type checkers keep pydantic's signature, with every field typed

        def __init__(self, **fields: Any) -> None:
            try:
                super().__init__(**fields)
            except ValidationError as error:
                raise _usage_error(error) from error

    def with_window_defaults(self, *, overlap: float, batch_size: int) -> InferenceOptions:
        """These options with an unset overlap and batch size set to a kind's defaults."""
        return self.model_copy(
            update={
                "overlap": overlap if self.overlap is None else self.overlap,
                "batch_size": batch_size if self.batch_size is None else self.batch_size,
            }
        )

    def window_settings(self) -> tuple[float, int]:
        """The overlap and the batch size, once set (see :meth:`with_window_defaults`).

        Raises:
            UsageError: either is still unset.
        """
        if self.overlap is None or self.batch_size is None:
            raise UsageError(
                "the window overlap and batch size are unset",
                hint="set them, or fill in the model's kind defaults with "
                "pipelines.infer.sliding.window_options",
            )
        return self.overlap, self.batch_size


def _usage_error(error: ValidationError) -> UsageError:
    """The first problem of ``error`` in the project's words: ``overlap must be in [0, 1),
    not 1.5``."""
    first = error.errors()[0]
    name = ".".join(str(part) for part in first["loc"]) or "options"
    if first["type"] == "extra_forbidden":
        return UsageError(f"{name} is not an inference option")
    rule = _RULES.get(name, f"is invalid ({first['msg']})")
    return UsageError(f"{name} {rule}, not {first['input']!r}")
