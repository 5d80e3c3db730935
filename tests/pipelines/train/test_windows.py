"""Validation windows: a volume under a 2D plan is predicted slice by slice."""

from __future__ import annotations

import pytest
import torch

from pipelines.train.windows import window_logits


class _PixelSum(torch.nn.Module):
    """Two logits per pixel from the channels (pixelwise: windows cannot change the result)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.sum(dim=1, keepdim=True)
        return torch.cat([total, -total], dim=1)


def test_a_volume_under_a_2d_plan_is_predicted_slice_by_slice() -> None:
    volume = torch.randn(2, 3, 20, 24, 5, generator=torch.Generator().manual_seed(0))
    logits = window_logits(_PixelSum(), volume, (16, 16))
    assert logits.shape == (2, 2, 20, 24, 5)
    for z in range(volume.shape[-1]):
        expected = window_logits(_PixelSum(), volume[..., z], (16, 16))
        torch.testing.assert_close(logits[..., z], expected)
    torch.testing.assert_close(logits[:, 0], volume.sum(dim=1), rtol=1e-5, atol=1e-5)


def test_windows_of_the_images_own_axes() -> None:
    image = torch.randn(1, 3, 40, 36)
    torch.testing.assert_close(
        window_logits(_PixelSum(), image, (16, 16))[:, 0], image.sum(dim=1), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="cannot cover"):
        window_logits(_PixelSum(), image, (16, 16, 16))
