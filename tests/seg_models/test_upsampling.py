"""The upsampling family: the lecture's worked examples, shapes, and the bilinear initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seg_models import (
    TransposedConvUpsample,
    bed_of_nails,
    max_pool_with_indices,
    max_unpool,
    nearest_upsample,
    transposed_conv,
)


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def _unpool_example(x: torch.Tensor) -> torch.Tensor:
    pooled, indices = max_pool_with_indices(
        _t([[1, 4, 4, 8], [7, 0, 3, 2], [3, 1, 2, 1], [2, 0, 3, 5]]), 2
    )
    assert torch.equal(pooled, _t([[7, 8], [3, 5]]))
    return max_unpool(x, indices, (4, 4))


WORKED_EXAMPLES = [
    pytest.param(
        lambda x: nearest_upsample(x, 2),
        [[1, 3], [2, 0]],
        [[1, 1, 3, 3], [1, 1, 3, 3], [2, 2, 0, 0], [2, 2, 0, 0]],
        id="nearest",
    ),
    pytest.param(
        lambda x: bed_of_nails(x, 2),
        [[1, 4], [3, 2]],
        [[1, 0, 4, 0], [0, 0, 0, 0], [3, 0, 2, 0], [0, 0, 0, 0]],
        id="bed_of_nails",
    ),
    pytest.param(
        lambda x: max_pool_with_indices(x, 2)[0],
        [[1, 4, 4, 8], [7, 0, 3, 2], [3, 1, 2, 1], [2, 0, 3, 5]],
        [[7, 8], [3, 5]],
        id="max_pool",
    ),
    pytest.param(
        _unpool_example,
        [[1, 3], [2, 4]],
        [[0, 0, 0, 3], [1, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 4]],
        id="max_unpool",
    ),
    pytest.param(
        lambda x: transposed_conv(x, torch.tensor([[0.0, 1.0], [2.0, 3.0]]), stride=1, padding=0),
        [[0, 2], [3, 1]],
        [[0, 0, 2], [0, 7, 7], [6, 11, 3]],
        id="transposed_conv",
    ),
]


@pytest.mark.parametrize(("op", "given", "expected"), WORKED_EXAMPLES)
def test_worked_examples(op, given, expected) -> None:
    assert torch.equal(op(_t(given)), _t(expected))


def test_transposed_conv_layer_reproduces_the_worked_example() -> None:
    layer = TransposedConvUpsample(
        1, 1, scale_factor=1, bilinear_init=False, bias=False, kernel_size=2, padding=0
    )
    with torch.no_grad():
        layer.conv.weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 3.0]])[None, None])
    assert torch.equal(layer(_t([[0, 2], [3, 1]])), _t([[0, 0, 2], [0, 7, 7], [6, 11, 3]]))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("scale", [2, 3])
def test_shapes_in_every_dimension(dims: int, scale: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, *([4] * dims))
    big = (2, 3, *([4 * scale] * dims))
    assert nearest_upsample(x, scale).shape == big
    nails = bed_of_nails(x, scale)
    assert nails.shape == big and nails.sum().item() == pytest.approx(x.sum().item(), abs=1e-4)
    assert TransposedConvUpsample(3, scale_factor=scale, spatial_dims=dims)(x).shape == big
    pooled, indices = max_pool_with_indices(x, 2)
    restored = max_unpool(pooled, indices, x.shape[2:])
    assert restored.shape == x.shape
    assert torch.equal(restored[restored != 0], x[restored != 0])


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_bilinear_init_matches_bilinear_interpolation_inside(scale: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 5)
    ours = TransposedConvUpsample(2, scale_factor=scale)(x)
    reference = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    inner = (slice(None), slice(None), slice(scale, -scale), slice(scale, -scale))
    torch.testing.assert_close(ours[inner], reference[inner], atol=1e-5, rtol=1e-5)


def test_bilinear_init_needs_matching_channels() -> None:
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        TransposedConvUpsample(2, 3, scale_factor=2)
    assert TransposedConvUpsample(2, 3, scale_factor=2, bilinear_init=False)(
        torch.zeros(1, 2, 3, 3)
    ).shape == (1, 3, 6, 6)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_bad_scales_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="scale"):
        nearest_upsample(torch.zeros(1, 1, 2, 2), bad)
