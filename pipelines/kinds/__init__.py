"""Data kinds: one adapter per kind of file segflow segments, found by name or by geometry.

Steps never branch on a kind's name; they ask its adapter (:class:`KindAdapter`)::

    adapter = kind_adapter(plan.kind)          # or adapter_for_geometry(case.geometry)
    outputs = adapter.segment(job)

Built-in kinds: ``volume`` (:mod:`pipelines.kinds.volume`, NIfTI), ``raster``
(:mod:`pipelines.kinds.raster`, GeoTIFF) and ``image`` (:mod:`pipelines.kinds.image2d`, 2D
PNG/TIFF). Each module registers its adapter when imported; they are imported on the first
lookup (not with this package, since the steps they delegate to import this package).
A new kind calls :func:`register_kind` (see ``docs/architecture.md``, "Adding a data kind").
"""

from __future__ import annotations

import importlib
import threading

from data_contracts import ConfigError
from pipelines.kinds.base import AnyGeometry, GridDifference, KindAdapter, SegmentJob

__all__ = [
    "AnyGeometry",
    "GridDifference",
    "KindAdapter",
    "SegmentJob",
    "adapter_for_geometry",
    "kind_adapter",
    "register_kind",
    "registered_adapters",
    "registered_kinds",
]

_BUILTIN_MODULES = ("pipelines.kinds.volume", "pipelines.kinds.raster", "pipelines.kinds.image2d")
_ADAPTERS: dict[str, KindAdapter] = {}
_builtins_lock = threading.RLock()
_builtins_loaded = False


def register_kind(adapter: KindAdapter) -> KindAdapter:
    """Make ``adapter`` the adapter of ``adapter.name`` (replacing one of that name).

    Returns:
        The adapter, so that a module can write ``VOLUME = register_kind(VolumeKind())``.
    """
    _ADAPTERS[adapter.name] = adapter
    return adapter


def _load_builtins() -> None:
    """Import the built-in kinds once (batches look kinds up from several threads)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    with _builtins_lock:
        if not _builtins_loaded:
            for module in _BUILTIN_MODULES:
                importlib.import_module(module)
            _builtins_loaded = True


def _rank(adapter: KindAdapter) -> int:
    """Built-in kinds in :data:`_BUILTIN_MODULES` order, whichever was imported first."""
    module = type(adapter).__module__
    return _BUILTIN_MODULES.index(module) if module in _BUILTIN_MODULES else len(_BUILTIN_MODULES)


def registered_adapters() -> tuple[KindAdapter, ...]:
    """Every registered adapter: the built-in ones (volume, raster, image), then the others in
    registration order."""
    _load_builtins()
    return tuple(sorted(_ADAPTERS.values(), key=_rank))


def registered_kinds() -> tuple[str, ...]:
    """The names of every registered kind, in the order of :func:`registered_adapters`."""
    return tuple(adapter.name for adapter in registered_adapters())


def kind_adapter(name: str) -> KindAdapter:
    """The adapter of the kind called ``name`` (``"volume"``, ``"raster"``, ``"image"``…).

    Raises:
        ConfigError: no kind of that name is registered.
    """
    _load_builtins()
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown data kind {name!r}; segflow reads {', '.join(registered_kinds())}",
            hint="use a dataset, plan or model of a registered kind, or register the kind "
            "(pipelines.kinds.register_kind)",
        ) from None


def adapter_for_geometry(geometry: AnyGeometry) -> KindAdapter:
    """The adapter of the kind ``geometry`` describes (every geometry names its kind).

    Raises:
        ConfigError: the geometry's kind is not registered.
    """
    return kind_adapter(geometry.kind)
