"""MSC training cost: one training iteration (forward + backward) with multi-scale inputs vs a single scale, on CPU.

DeepLab v2's multi-scale inputs (``model.msc: [1.0, 0.75, 0.5]``) run the network three times per image; the
pixels add up to 1 + 0.5625 + 0.25 = 1.81 times the single-scale input, so about 1.8x the cost is expected. This
script measures it on the demo's architecture (DeepLab v3+ ResNet-18, 4 bands, 6 classes, output stride 16),
batch 2 of 256 px crops, cross-entropy on the fused and every scale's output as the engine computes it. The two
models share their weights and alternate iteration by iteration in one process, so machine load affects both alike.
Prints the median seconds per iteration of each, their ratio (of the medians, the median of the per-repeat ratios
and of the minima) and the ratio of the FLOPs torch counts per iteration, which no machine load affects.

Run: ``PYTHONPATH=$PWD python bench/msc_bench.py`` (``--repeats 7 --size 256 --threads 1``). One thread is the
default: on a shared, loaded 2-core machine two threads wait on each other and the timings scatter by 5x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from rs_deeplab.models import build_model
from rs_deeplab.training.engine import segmentation_loss

SCALES = (1.0, 0.75, 0.5)


def iteration_seconds(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    """Wall time of one forward + backward (gradients cleared first), as the engine's training step computes it."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss = segmentation_loss(model(x), target, class_weights=None, aux_weight=0.0)
    loss.backward()
    return time.perf_counter() - start


def iteration_flops(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    """FLOPs of one forward + backward (torch's counter: convolutions and matrix products), independent of load."""
    from torch.utils.flop_counter import FlopCounterMode

    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        segmentation_loss(model(x), target, class_weights=None, aux_weight=0.0).backward()
    return float(counter.get_total_flops())


def main() -> None:
    """Alternate single-scale and MSC iterations and print the medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 suffers least from a loaded machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    single = build_model("deeplabv3plus", num_classes=6, in_channels=4, backbone="resnet18").train()
    msc = build_model("deeplabv3plus", num_classes=6, in_channels=4, backbone="resnet18", msc=SCALES).train()
    msc.load_state_dict(single.state_dict())
    x = torch.randn(args.batch, 4, args.size, args.size)
    target = torch.randint(0, 6, (args.batch, args.size, args.size))
    flops = {name: iteration_flops(model, x, target) for name, model in (("single", single), ("msc", msc))}
    for model in (single, msc):  # warm-up: allocator and kernels
        iteration_seconds(model, x, target)
    times: dict[str, list[float]] = {"single scale": [], "MSC 1, 0.75, 0.5": []}
    for _ in range(args.repeats):
        times["single scale"].append(iteration_seconds(single, x, target))
        times["MSC 1, 0.75, 0.5"].append(iteration_seconds(msc, x, target))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"DeepLab v3+ ResNet-18, batch {args.batch} x 4 x {args.size} x {args.size}, {args.threads} threads, "
        f"{args.repeats} alternating repeats, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}"
    )
    for name, values in times.items():
        print(f"  {name:18s} median {medians[name]:.3f} s/iteration (min {min(values):.3f}, max {max(values):.3f})")
    ratio = medians["MSC 1, 0.75, 0.5"] / medians["single scale"]
    pairs = statistics.median(m / s for s, m in zip(*times.values(), strict=True))
    print(
        f"  MSC / single-scale cost per training iteration: {ratio:.2f}x (ratio of medians), {pairs:.2f}x (median "
        f"of the per-repeat ratios), {min(times['MSC 1, 0.75, 0.5']) / min(times['single scale']):.2f}x (ratio "
        f"of the minima)"
    )
    print(
        f"  FLOPs per iteration (forward + backward): {flops['single'] / 1e9:.1f} G vs {flops['msc'] / 1e9:.1f} G, "
        f"{flops['msc'] / flops['single']:.2f}x; input pixels: {sum(s * s for s in SCALES):.2f}x"
    )


if __name__ == "__main__":
    main()
