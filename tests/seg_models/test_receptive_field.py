"""Receptive fields of atrous convolutions and their stacks."""

from __future__ import annotations

import pytest
from torch import nn

from seg_models import effective_kernel_size, receptive_field


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ([3], 3),
        ([(3, 2)], 5),  # one 3×3 kernel at rate 2 covers 5×5
        ([(3, 2), (3, 2)], 9),  # stacks compose
        ([(3, 1), (3, 2), (3, 4)], 15),
        ([(2, 1, 2), 3], 6),  # a 3×3 conv after a stride-2 layer adds 2·2
        ([(3, 6)], 13),  # the ASPP rates
        ([(3, 12)], 25),
        ([(3, 18)], 37),
        ([], 1),
    ],
)
def test_receptive_field_of_layer_lists(layers, expected: int) -> None:
    assert receptive_field(layers) == expected


def test_receptive_field_of_a_module_chain() -> None:
    chain = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
    )
    assert receptive_field(chain) == 5 + 1 + 2 * 2


@pytest.mark.parametrize(("k", "d", "expected"), [(3, 1, 3), (3, 2, 5), (3, 6, 13), (5, 3, 13)])
def test_effective_kernel_size(k: int, d: int, expected: int) -> None:
    assert effective_kernel_size(k, d) == expected


def test_malformed_layers_are_refused() -> None:
    with pytest.raises(ValueError):
        receptive_field([(3, 1, 1, 1)])
    with pytest.raises(ValueError):
        effective_kernel_size(0)
