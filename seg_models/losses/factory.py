"""``build_loss``: losses and weighted sums of losses by name."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

from data_contracts import LossError
from seg_models.losses._common import SegLoss
from seg_models.losses.compound import ComboLoss, SumLoss
from seg_models.losses.cross_entropy import (
    BalancedCrossEntropyLoss,
    CrossEntropyLoss,
    FocalLoss,
    WeightedCrossEntropyLoss,
)
from seg_models.losses.distance import HausdorffDTLoss, ShapeAwareLoss
from seg_models.losses.overlap import (
    DiceLoss,
    ExpLogLoss,
    LogCoshDiceLoss,
    SensitivitySpecificityLoss,
)

__all__ = [
    "LOSS_ALIASES",
    "LossInfo",
    "available_losses",
    "build_loss",
    "loss_info",
    "loss_terms",
]


@dataclass(frozen=True)
class LossInfo:
    """One row of the loss table.

    Attributes:
        name: the name :func:`build_loss` takes.
        cls: the loss class.
        source: the paper it follows.
        implementation: "MONAI" when MONAI computes it, else "segflow".
    """

    name: str
    cls: type[SegLoss]
    source: str
    implementation: str = "segflow"


_LOSSES = {
    info.name: info
    for info in (
        LossInfo("ce", CrossEntropyLoss, "standard (Jadon, CIBCB 2020 survey)", "PyTorch"),
        LossInfo("weighted_ce", WeightedCrossEntropyLoss, "Ronneberger et al., MICCAI 2015"),
        LossInfo("balanced_ce", BalancedCrossEntropyLoss, "Xie & Tu, HED, ICCV 2015"),
        LossInfo("focal", FocalLoss, "Lin et al., ICCV 2017", "MONAI"),
        LossInfo("dice", DiceLoss, "Milletari et al., V-Net, 3DV 2016", "MONAI"),
        LossInfo(
            "sensitivity_specificity", SensitivitySpecificityLoss, "Brosch et al., MICCAI 2015"
        ),
        LossInfo("log_cosh_dice", LogCoshDiceLoss, "Jadon, CIBCB 2020", "MONAI Dice"),
        LossInfo("hausdorff_dt", HausdorffDTLoss, "Karimi & Salcudean, IEEE TMI 2020", "MONAI"),
        LossInfo("shape_aware", ShapeAwareLoss, "Hayder et al., CVPR 2017; Jadon, CIBCB 2020"),
        LossInfo("combo", ComboLoss, "Taghanaki et al., CMIG 2019"),
        LossInfo("exp_log", ExpLogLoss, "Wong et al., MICCAI 2018"),
    )
}
LOSS_ALIASES = {"bce": "ce", "cross_entropy": "ce"}
_TERM = re.compile(r"^\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([a-z_]+)\s*$")


def available_losses() -> list[str]:
    """Canonical loss names, sorted (aliases: ``bce`` and ``cross_entropy`` → ``ce``)."""
    return sorted(_LOSSES)


def loss_info(name: str) -> LossInfo:
    """The :class:`LossInfo` of a loss name or alias.

    Raises:
        LossError: for an unknown name.
    """
    key = LOSS_ALIASES.get(name, name)
    if key not in _LOSSES:
        raise LossError(
            f"unknown loss {name!r}",
            hint=f"choose from {', '.join(available_losses())} (see docs/models.md's loss table)",
        )
    return _LOSSES[key]


def loss_terms(name: str) -> list[str]:
    """Canonical names of the terms of a loss expression (``"0.5*dice+bce"`` → dice, ce).

    Raises:
        LossError: for a term that cannot be parsed or an unknown loss name.
    """
    return [
        loss_info(term_name).name
        for _, term_name in (_parse_term(t, name) for t in name.split("+"))
    ]


def build_loss(name: str, **options: Any) -> SegLoss:
    """Builds a loss, or a weighted sum of losses, by name.

    Every loss takes ``(logits, target)``: logits ``(B, C, *spatial)`` (C = 1: binary sigmoid
    mode, C ≥ 2: multiclass softmax mode) and integer class indices ``(B, 1, *spatial)`` or
    ``(B, *spatial)``, 2D or 3D, and returns a scalar.

    ``name`` is one loss (``"dice"``) or a sum of terms ``[weight*]name`` joined by ``+``
    (``"dice+focal"``, ``"0.5*dice+ce"``). Options:

    - ``ignore_index``: target value removed from every term (nodata pixels).
    - ``<loss name>={...}``: options for that term only, e.g. ``focal={"gamma": 1.0}``.
    - any other keyword goes to every term that accepts it (``gamma=1.0`` reaches ``focal``);
      a keyword that no term accepts is an error.

    Args:
        name: loss name or sum expression; see :func:`available_losses`.
        **options: as above.

    Returns:
        The loss module.

    Raises:
        LossError: for unknown names, unknown options, missing options (``weighted_ce``
            without ``weight``) or invalid option values.
    """
    ignore_index = options.pop("ignore_index", None)
    terms = [_parse_term(term, name) for term in name.split("+")]
    canonical = loss_terms(name)
    nested: dict[str, dict[str, Any]] = {}
    for key in [k for k in options if LOSS_ALIASES.get(k, k) in canonical]:
        value = options.pop(key)
        if not isinstance(value, dict):
            raise LossError(
                f"option {key!r} of loss {name!r} must be a dict of that term's options",
                hint=f"e.g. {key}: {{{_example_option(key)}}} under `loss_options:` in the YAML",
            )
        nested[LOSS_ALIASES.get(key, key)] = value
    used: set[str] = set()
    losses = []
    for key in canonical:
        cls = _LOSSES[key].cls
        accepted = _keywords(cls)
        kwargs = {k: v for k, v in options.items() if k in accepted}
        used |= kwargs.keys()
        kwargs |= nested.get(key, {})
        losses.append(_construct(key, cls, kwargs, ignore_index))
    if unused := sorted(options.keys() - used):
        raise LossError(
            f"loss {name!r} accepts no option {', '.join(unused)}",
            hint=_options_hint(canonical),
        )
    if len(losses) == 1 and terms[0][0] == 1.0:
        return losses[0]
    return SumLoss(losses, [w for w, _ in terms], ignore_index=ignore_index)


def _parse_term(term: str, expression: str) -> tuple[float, str]:
    match = _TERM.match(term)
    if match is None:
        raise LossError(
            f"cannot parse loss term {term!r} in {expression!r}",
            hint='write losses as "name" or "weight*name" joined by "+", e.g. "0.5*dice+focal"',
        )
    weight, name = match.groups()
    return (float(weight) if weight else 1.0), name


def _keywords(cls: type[SegLoss]) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY} - {"ignore_index"}


def _required(cls: type[SegLoss]) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and p.default is p.empty}


def _options_hint(names: list[str]) -> str:
    """``"dice takes batch, …; focal takes alpha, gamma: set them under …"`` (the hint)."""
    accepted = "; ".join(
        f"{name} takes {', '.join(sorted(_keywords(_LOSSES[name].cls))) or 'no option'}"
        for name in dict.fromkeys(names)
    )
    return f"{accepted}: set options under `loss_options:` in the training YAML (docs/models.md)"


def _example_option(name: str) -> str:
    options = sorted(_keywords(_LOSSES[LOSS_ALIASES.get(name, name)].cls))
    return f"{options[0]}: ..." if options else ""


def _construct(
    name: str, cls: type[SegLoss], kwargs: dict[str, Any], ignore_index: int | None
) -> SegLoss:
    hint = _options_hint([name])
    if bad := sorted(kwargs.keys() - _keywords(cls)):
        raise LossError(f"loss {name!r} accepts no option {', '.join(bad)}", hint=hint)
    try:
        return cls(**kwargs, ignore_index=ignore_index)
    except (TypeError, ValueError) as exc:
        if missing := sorted(_required(cls) - kwargs.keys()):
            reason = f"loss {name!r} needs the option {', '.join(missing)}"
        else:
            reason = f"invalid options for loss {name!r}: {exc}"
        raise LossError(reason, hint=hint) from exc
