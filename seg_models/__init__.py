"""segflow's models and losses: networks, classical baselines, upsampling layers, loss table.

``seg_models`` never touches files: weights are loaded and saved by ``pipelines``.

Public API:

- :func:`build_model` (``ModelSpec`` → ``nn.Module``), :func:`build_classical` (→ a
  :class:`ClassicalSegmenter`), :func:`available_models`, :func:`model_info`.
- :func:`predict` (probabilities of a semantic model) and :func:`predict_instances`.
- :func:`build_loss` and :func:`available_losses`.
- :func:`receptive_field` and the upsampling family (:mod:`seg_models.upsampling`).
"""

from seg_models.classical import ClassicalSegmenter, OtsuWatershed, RandomForestSegmenter
from seg_models.factory import build_classical, build_model, predict, predict_instances
from seg_models.losses import available_losses, build_loss
from seg_models.network_catalog import ModelInfo, available_models, model_info, register_model
from seg_models.receptive_field import effective_kernel_size, receptive_field
from seg_models.tables import loss_table_markdown, model_table, model_table_markdown
from seg_models.upsampling import (
    TransposedConvUpsample,
    bed_of_nails,
    bilinear_kernel,
    max_pool_with_indices,
    max_unpool,
    nearest_upsample,
    transposed_conv,
)

__all__ = [
    "ClassicalSegmenter",
    "ModelInfo",
    "OtsuWatershed",
    "RandomForestSegmenter",
    "TransposedConvUpsample",
    "available_losses",
    "available_models",
    "bed_of_nails",
    "bilinear_kernel",
    "build_classical",
    "build_loss",
    "build_model",
    "effective_kernel_size",
    "loss_table_markdown",
    "max_pool_with_indices",
    "max_unpool",
    "model_info",
    "model_table",
    "model_table_markdown",
    "nearest_upsample",
    "predict",
    "predict_instances",
    "receptive_field",
    "register_model",
    "transposed_conv",
]
