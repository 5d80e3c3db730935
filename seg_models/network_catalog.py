"""The name → builder registry behind :func:`seg_models.build_model`."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from data_contracts import ModelError, ModelSpec
from seg_models._options import Options

__all__ = [
    "PLUGINS_ENV",
    "ModelInfo",
    "available_models",
    "load_plugins",
    "model_info",
    "register_model",
]

#: Environment variable naming modules (comma-separated) that register extra models when
#: imported, e.g. ``SEGFLOW_MODEL_PLUGINS=my_lab.networks``: every process that builds a model
#: (worker processes of a batch included) imports them before looking a name up.
PLUGINS_ENV = "SEGFLOW_MODEL_PLUGINS"

Kind = Literal["neural", "classical"]
Builder = Callable[[ModelSpec, Options], Any]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model name.

    Attributes:
        name: the factory name (``ModelSpec.name``).
        kind: ``"neural"`` (an ``nn.Module`` from :func:`~seg_models.build_model`) or
            ``"classical"`` (a :class:`~seg_models.classical.ClassicalSegmenter` from
            :func:`~seg_models.build_classical`).
        spatial_dims: the dimensionalities it supports.
        task: ``"semantic"`` or ``"instance"``.
        source: the implementation it wraps or the paper it follows.
        summary: one line for tables and ``--help``.
        builder: ``(spec, options) → model``.
    """

    name: str
    kind: Kind
    spatial_dims: tuple[int, ...]
    task: Literal["semantic", "instance"]
    source: str
    summary: str
    builder: Builder


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    kind: Kind = "neural",
    spatial_dims: tuple[int, ...] = (2,),
    task: Literal["semantic", "instance"] = "semantic",
    source: str,
    summary: str,
) -> Callable[[B], B]:
    """Decorator registering a builder ``(spec, options) → model`` under ``name``.

    The builder reads its options through :class:`~seg_models._options.Options`; the factory
    checks the spec's dimensions and task against the registration before calling it.
    """

    def decorate(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, kind, spatial_dims, task, source, summary, builder)
        return builder

    return decorate


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (a plugin unloaded, or a test's model)."""
    _REGISTRY.pop(name, None)


def available_models(kind: Kind | None = None) -> list[str]:
    """Registered model names, sorted; only neural or only classical ones when ``kind`` is set."""
    return sorted(n for n, info in _REGISTRY.items() if kind is None or info.kind == kind)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` for ``name``.

    Raises:
        ModelError: for an unknown name.
    """
    if name not in _REGISTRY:
        load_plugins()
    if name not in _REGISTRY:
        raise ModelError(
            f"unknown model {name!r}", hint=f"choose from {', '.join(available_models())}"
        )
    return _REGISTRY[name]


def load_plugins() -> list[str]:
    """Import the modules named in :data:`PLUGINS_ENV` (each once); returns their names.

    Raises:
        ModelError: a plugin module cannot be imported.
    """
    names = [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ModelError(
                f"model plugin module {name!r} (from {PLUGINS_ENV}) cannot be imported: {error}",
                hint=f"install it, or remove it from {PLUGINS_ENV}",
            ) from error
    return names


def check_spec(spec: ModelSpec, info: ModelInfo) -> None:
    """Raises :class:`ModelError` when the spec asks for dims or a task the model lacks."""
    if spec.spatial_dims not in info.spatial_dims:
        dims = " or ".join(f"{d}D" for d in info.spatial_dims)
        raise ModelError(
            f"model {info.name!r} is {dims} only; the spec asks for {spec.spatial_dims}D",
            hint="use unet or dynunet for 3D volumes, or set spatial_dims to 2",
        )
    if spec.task != info.task:
        raise ModelError(
            f"model {info.name!r} does {info.task} segmentation; the spec asks for {spec.task}",
            hint=f"choose a {spec.task} model: "
            + ", ".join(n for n, i in _REGISTRY.items() if i.task == spec.task),
        )
