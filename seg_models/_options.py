"""Typed reading of ``ModelSpec.options`` with errors that name the model and the option."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeGuard, TypeVar

from data_contracts import ModelError

__all__ = ["Options"]

T = TypeVar("T")


class Options:
    """Reads options one by one and rejects the ones nobody read.

    Args:
        model: model name, for messages.
        options: the spec's options.
    """

    def __init__(self, model: str, options: Mapping[str, object]) -> None:
        self._model = model
        self._left = dict(options)
        self._known: list[str] = []

    def _take(self, key: str) -> object | None:
        self._known.append(key)
        return self._left.pop(key, None)

    def _error(self, key: str, expected: str, value: object) -> ModelError:
        return ModelError(
            f"option {key!r} of model {self._model!r} must be {expected}, got {value!r}",
            hint="fix the value in the model spec's options",
        )

    def integer(self, key: str, default: int, *, minimum: int = 1) -> int:
        """An integer ≥ ``minimum``."""
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._error(key, f"an integer ≥ {minimum}", value)
        return value

    def optional_integer(self, key: str, *, minimum: int = 1) -> int | None:
        """An integer ≥ ``minimum``, or None when absent."""
        if self._left.get(key) is None:
            self._take(key)
            return None
        return self.integer(key, 0, minimum=minimum)

    def number(self, key: str, default: float) -> float:
        """A number."""
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(key, "a number", value)
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        """A boolean."""
        value = self._take(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._error(key, "true or false", value)
        return value

    def choice(self, key: str, default: T, choices: Sequence[T]) -> T:
        """One of ``choices``."""
        value = self._take(key)
        if value is None:
            return default
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return choice
        raise self._error(key, f"one of {list(choices)}", value)

    def int_list(self, key: str, default: Sequence[int] | None) -> list[int] | None:
        """A list of positive integers."""
        value = self._take(key)
        if value is None:
            return None if default is None else list(default)
        ints = _positive_ints(value)
        if ints is None:
            raise self._error(key, "a list of positive integers", value)
        return ints

    def float_list(self, key: str, length: int | None = None) -> list[float] | None:
        """A list of numbers (of ``length`` values when given), or None when absent."""
        value = self._take(key)
        if value is None:
            return None
        numbers = [float(v) for v in value if _is_number(v)] if isinstance(value, list) else []
        wanted = length if length is not None else len(numbers)
        if not isinstance(value, list) or len(numbers) != len(value) or len(value) != wanted:
            size = f"{length} " if length is not None else ""
            raise self._error(key, f"a list of {size}numbers", value)
        return numbers

    def nested_int_list(self, key: str) -> list[list[int]] | None:
        """A list of lists of positive integers (e.g. anchor sizes per level), or None."""
        value = self._take(key)
        if value is None:
            return None
        levels = [_positive_ints(level) for level in value] if isinstance(value, list) else []
        kept = [level for level in levels if level]
        if not isinstance(value, list) or len(kept) != len(value):
            raise self._error(key, "a list of lists of positive integers", value)
        return kept

    def finish(self) -> None:
        """Raises when an option was given that the model does not read."""
        if self._left:
            raise ModelError(
                f"model {self._model!r} has no option {', '.join(sorted(self._left))}",
                hint=f"its options are {', '.join(sorted(set(self._known))) or 'none'}",
            )


def _positive_ints(value: object) -> list[int] | None:
    """The list's items when all are positive integers, else None."""
    if not isinstance(value, list):
        return None
    ints = [v for v in value if _is_pos_int(v)]
    return ints if len(ints) == len(value) else None


def _is_pos_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
