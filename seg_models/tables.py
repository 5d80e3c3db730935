"""The model and loss tables of ``docs/models.md``, computed from the registry."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from data_contracts import ModelSpec
from seg_models.factory import build_model
from seg_models.losses.factory import LOSS_ALIASES, available_losses, loss_info
from seg_models.network_catalog import available_models, model_info

__all__ = [
    "ModelRow",
    "count_parameters",
    "loss_table_markdown",
    "model_table",
    "model_table_markdown",
]


@dataclass(frozen=True)
class ModelRow:
    """One row of the model table.

    Attributes:
        name: factory name.
        kind: ``neural`` or ``classical``.
        task: ``semantic`` or ``instance``.
        dims: supported spatial dimensionalities.
        params_2d: trainable parameters at the default options for 3 input channels and 2
            classes in 2D (None for classical baselines).
        params_3d: the same in 3D, for models that support 3D.
        source: implementation or paper.
    """

    name: str
    kind: str
    task: str
    dims: tuple[int, ...]
    params_2d: int | None
    params_3d: int | None
    source: str


def count_parameters(spec: ModelSpec) -> int:
    """Trainable parameters of ``build_model(spec)``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(spec)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_table() -> list[ModelRow]:
    """One row per registered model, in name order."""
    rows = []
    for name in available_models():
        info = model_info(name)
        counts: dict[int, int | None] = {2: None, 3: None}
        if info.kind == "neural":
            for dims in info.spatial_dims:
                spec = ModelSpec.model_validate(
                    {
                        "name": name,
                        "spatial_dims": dims,
                        "in_channels": 3,
                        "num_classes": 2,
                        "task": info.task,
                    }
                )
                counts[dims] = count_parameters(spec)
        rows.append(
            ModelRow(
                name, info.kind, info.task, info.spatial_dims, counts[2], counts[3], info.source
            )
        )
    return rows


def _millions(count: int | None) -> str:
    return "—" if count is None else f"{count / 1e6:.2f} M"


def model_table_markdown() -> str:
    """The model table as Markdown (what ``docs/models.md`` must contain)."""
    lines = [
        "| name | kind | task | dims | params 2D | params 3D | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in model_table():
        dims = "/".join(f"{d}D" for d in row.dims)
        lines.append(
            f"| `{row.name}` | {row.kind} | {row.task} | {dims} | {_millions(row.params_2d)} "
            f"| {_millions(row.params_3d)} | {row.source} |"
        )
    return "\n".join(lines)


def loss_table_markdown() -> str:
    """The loss table as Markdown (what ``docs/models.md`` must contain)."""
    lines = [
        "| name | modes | computed by | source |",
        "|---|---|---|---|",
    ]
    for name in available_losses():
        info = loss_info(name)
        aliases = [a for a, target in LOSS_ALIASES.items() if target == name]
        label = f"`{name}`" + (
            f" (alias {', '.join(f'`{a}`' for a in aliases)})" if aliases else ""
        )
        lines.append(
            f"| {label} | binary, multiclass; 2D, 3D | {info.implementation} | {info.source} |"
        )
    return "\n".join(lines)
