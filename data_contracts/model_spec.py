"""The model spec: which network to build, for how many channels and classes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue, model_validator

from data_contracts._base import Contract


class ModelSpec(Contract):
    """What :func:`seg_models.build_model` builds.

    Attributes:
        name: model name in the factory, e.g. ``"unet"``, ``"fcn8s"``, ``"deeplabv3"``,
            ``"pspnet"``, ``"dynunet"``, ``"maskrcnn"``.
        spatial_dims: 2 for images and rasters, 3 for volumes.
        in_channels: input channels (modalities or bands).
        num_classes: output channels. 1 means a binary head (sigmoid); ≥ 2 a multiclass head
            (softmax over classes, background included).
        task: semantic segmentation or instance segmentation.
        options: model-specific keyword arguments (JSON values only), e.g.
            ``{"features": [32, 64, 128], "padding": "valid"}``.
    """

    name: str = Field(min_length=1)
    spatial_dims: Literal[2, 3] = 2
    in_channels: int = Field(ge=1)
    num_classes: int = Field(ge=1)
    task: Literal["semantic", "instance"] = "semantic"
    options: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _instance_is_2d(self) -> ModelSpec:
        if self.task == "instance" and self.spatial_dims != 2:
            raise ValueError("instance segmentation models are 2D only")
        return self

    @property
    def is_binary(self) -> bool:
        """True when the head has one sigmoid channel."""
        return self.num_classes == 1
