"""Every error of the tree carries a hint of its own, fitting its cause."""

from __future__ import annotations

import pytest

import data_contracts
from data_contracts import errors
from data_contracts.errors import SegflowError

# A subclass that keeps its parent's hint on purpose names it here, with the reason.
SHARES_PARENT_HINT: dict[type[SegflowError], str] = {}


def _subclasses(cls: type[SegflowError]) -> list[type[SegflowError]]:
    found = []
    for sub in cls.__subclasses__():
        if sub.__module__ == errors.__name__:
            found += [sub, *_subclasses(sub)]
    return found


ERROR_CLASSES = sorted(set(_subclasses(SegflowError)), key=lambda cls: cls.__name__)


def test_every_subclass_of_the_tree_is_exported() -> None:
    assert {cls.__name__ for cls in ERROR_CLASSES} | {"SegflowError"} == set(errors.__all__)
    assert all(getattr(data_contracts, cls.__name__) is cls for cls in ERROR_CLASSES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_has_a_hint_of_its_own(cls: type[SegflowError]) -> None:
    assert cls.default_hint.strip(), f"{cls.__name__} has no hint"
    assert cls("is broken").hint == cls.default_hint
    if cls in SHARES_PARENT_HINT:
        return
    for parent in cls.__mro__[1:]:
        if isinstance(parent, type) and issubclass(parent, SegflowError):
            assert cls.default_hint != parent.default_hint, (
                f"{cls.__name__} repeats the hint of {parent.__name__}: give it one that fits "
                "its own cause, or list it in SHARES_PARENT_HINT with the reason"
            )


def test_a_loss_error_is_a_config_error_that_hints_at_the_loss_options() -> None:
    error = data_contracts.LossError("loss 'weighted_ce' needs the option weight")
    assert isinstance(error, data_contracts.ConfigError | ValueError)
    assert not isinstance(error, data_contracts.ModelError)
    assert "loss_options" in error.hint and "docs/models.md" in error.hint
    assert "model name" not in str(error)
