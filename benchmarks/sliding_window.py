"""P1: segflow's sliding-window inference vs MONAI's ``sliding_window_inference`` on a volume.

Same network (a seeded MONAI 3D U-Net), same in-memory volume, same ROI, overlap and gaussian
blending, same threads. The baseline is MONAI's inferer as its docs call it (one window per
forward pass, under ``torch.no_grad``); segflow's is :func:`pipelines.infer.sliding.sliding_probabilities`
with its defaults (several windows per pass, ``inference_mode``, channels-last memory when it
helps). Both output the same blended probabilities (checked: max abs difference ≤ 1e-4). The
ratio is median(segflow) / median(MONAI) over ``--runs`` runs each, alternating; floor ≤ 1.0.

Run: ``.venv/bin/python -m benchmarks.sliding_window``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from monai.inferers.utils import sliding_window_inference
from monai.networks.nets.unet import UNet

from benchmarks.results import record
from data_contracts import InferenceOptions, ModelSpec
from pipelines.infer.sliding import probability_predictor, sliding_probabilities
from pipelines.kinds import kind_adapter

CHANNELS, STRIDES = (16, 32, 64, 128), (2, 2, 2)


def _network(seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(3, 1, 2, channels=CHANNELS, strides=STRIDES, num_res_units=1).eval()


def _monai(
    network: UNet, volume: torch.Tensor, roi: tuple[int, ...], overlap: float
) -> torch.Tensor:
    def predictor(windows: torch.Tensor) -> torch.Tensor:
        return torch.softmax(network(windows), dim=1)

    with torch.no_grad():
        output = sliding_window_inference(
            volume[None],
            roi,
            sw_batch_size=1,
            predictor=predictor,
            overlap=overlap,
            mode="gaussian",
        )
    if not isinstance(output, torch.Tensor):
        raise TypeError("no tensor")
    return output[0]


def _timed(run: Callable[[], torch.Tensor], runs: int) -> tuple[list[float], torch.Tensor]:
    times, output = [], torch.empty(0)
    for _ in range(runs):
        started = time.perf_counter()
        output = run()
        times.append(time.perf_counter() - started)
    return times, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 160, 112])
    parser.add_argument("--roi", type=int, nargs=3, default=[96, 96, 64])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--batch-size", type=int, default=kind_adapter("volume").default_window_batch
    )
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    network = _network(0)
    volume = torch.randn(1, *args.shape, generator=torch.Generator().manual_seed(1))
    roi = tuple(args.roi)
    spec = ModelSpec(name="unet", in_channels=1, num_classes=2, spatial_dims=3)
    channels_last = (
        args.channels_last if args.channels_last is not None else InferenceOptions().channels_last
    )
    options = InferenceOptions(
        overlap=args.overlap, batch_size=args.batch_size, channels_last=channels_last
    )
    ours_predictor = probability_predictor(_network(0), spec, channels_last=channels_last)
    device = torch.device("cpu")
    monai_times, ours_times = [], []
    for _ in range(args.runs):  # alternate so drifts in machine load hit both sides
        times, baseline = _timed(lambda: _monai(network, volume, roi, args.overlap), 1)
        monai_times += times
        times, ours = _timed(
            lambda: sliding_probabilities(ours_predictor, volume, roi, 2, options, device=device), 1
        )
        ours_times += times
    difference = float((baseline - ours).abs().max())
    if difference > 1e-4:
        raise SystemExit(f"outputs differ by {difference:.2e}: not the same work")
    ratio = statistics.median(ours_times) / statistics.median(monai_times)
    print(
        f"P1 sliding window {tuple(args.shape)} roi {roi}: segflow {statistics.median(ours_times):.2f} s "
        f"vs MONAI {statistics.median(monai_times):.2f} s -> ratio {ratio:.3f} (floor <= 1.0); "
        f"max |diff| {difference:.1e}"
    )
    if not args.no_record:
        record(
            "inference_sliding_window",
            {
                "ratio": round(ratio, 4),
                "segflow_seconds": [round(t, 3) for t in ours_times],
                "monai_seconds": [round(t, 3) for t in monai_times],
                "shape": args.shape,
                "roi": args.roi,
                "overlap": args.overlap,
                "batch_size": args.batch_size,
                "channels_last": channels_last,
                "threads": torch.get_num_threads(),
                "max_abs_difference": difference,
                "network": f"monai UNet 3D channels {CHANNELS} strides {STRIDES} res units 1",
            },
            command="python -m benchmarks.sliding_window",
        )


if __name__ == "__main__":
    main()
