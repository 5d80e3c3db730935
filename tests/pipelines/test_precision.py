"""Mixed precision where the hardware computes it natively (inference and training)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from data_contracts import ModelSpec, TrainConfig
from pipelines import precision
from pipelines.infer.sliding import probability_predictor
from pipelines.train.trainer import resolve_precision


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def cpu_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """This CPU as one with, then without, native bf16 instructions."""
    native = bool(request.param)
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: native)
    return native


def test_inference_runs_bf16_only_on_cpus_that_compute_it(cpu_bf16: bool) -> None:
    cpu = torch.device("cpu")
    assert precision.autocast_dtype(cpu, amp=True) == (torch.bfloat16 if cpu_bf16 else None)
    assert precision.autocast_dtype(cpu, amp=False) is None
    assert precision.autocast_dtype(torch.device("cuda"), amp=True) == torch.float16
    assert precision.autocast_dtype(torch.device("cuda"), amp=False) is None


def test_training_is_bf16_mixed_only_on_cpus_that_compute_it(cpu_bf16: bool) -> None:
    config = TrainConfig(accelerator="cpu")
    expected = "bf16-mixed" if cpu_bf16 else "32-true"
    assert precision.training_precision("cpu") == expected
    assert resolve_precision(config) == expected
    assert resolve_precision(config, cpu_mixed=False) == "32-true"  # Mask R-CNN
    assert resolve_precision(TrainConfig(accelerator="cpu", precision="32-true")) == "32-true"
    assert precision.training_autocast_dtype("bf16-mixed") == torch.bfloat16
    assert precision.training_autocast_dtype("32-true") is None


class _RecordsPrecision(nn.Module):
    """A 1×1 convolution that notes the dtype its output had."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=1)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        self.seen.append(out.dtype)
        return out


@pytest.mark.parametrize("amp", [True, False])
def test_predictor_runs_the_network_in_the_options_precision(cpu_bf16: bool, amp: bool) -> None:
    torch.manual_seed(0)
    network = _RecordsPrecision().eval()
    spec = ModelSpec(name="unet", in_channels=3, num_classes=2, spatial_dims=2)
    windows = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        reference = torch.softmax(network.conv(windows), dim=1)
        probabilities = probability_predictor(network, spec, amp=amp)(windows)
    reduced = amp and cpu_bf16
    assert network.seen == [torch.bfloat16 if reduced else torch.float32]
    assert probabilities.dtype == torch.float32  # whatever the network computed in
    tolerance = 2e-2 if reduced else 1e-6
    torch.testing.assert_close(probabilities, reference, atol=tolerance, rtol=0)
