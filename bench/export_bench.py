"""ONNX Runtime against PyTorch windows/s on the CPU, in one run, for the same exported model.

The demo's architecture (DeepLab v3+ ResNet-18, 4 bands, 6 classes, output stride 16; random weights: speed does
not depend on them) is exported with :func:`rs_deeplab.inference.runtimes.export.write_onnx` and both run the
inference path's
modules: the model in ``torch.inference_mode`` float32 (what
:class:`~rs_deeplab.inference.predicting.predictor.Predictor`
runs on a CPU) and :class:`~rs_deeplab.inference.runtimes.exported.OnnxModule`. Both use the same thread count; the two
alternate per repeat, so load from other jobs hits both alike. Windows/s are medians over ``--repeats`` batches
after a warm-up; the largest logit difference is printed too.

    PYTHONPATH=$PWD python bench/export_bench.py --size 512 --batch 2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rs_deeplab.inference.runtimes.export import MainLogits, write_onnx
from rs_deeplab.inference.runtimes.exported import OnnxModule
from rs_deeplab.models import build_model


def timed(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds one call takes, and its output."""
    start = time.perf_counter()
    out = run(x)
    return time.perf_counter() - start, out


def main() -> None:
    """Parse the options, export, time both runtimes and print one table row each and their ratio."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deeplabv3plus", help="MODELS name (deeplabv3plus)")
    p.add_argument("--backbone", default="resnet18", help="backbone (resnet18, as the demo)")
    p.add_argument("--size", type=int, default=512, help="window side (512, the demo's infer.size)")
    p.add_argument("--batch", type=int, default=2, help="windows per call (2, the demo's infer.batch_size)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per runtime (5)")
    p.add_argument("--threads", type=int, default=0, help="threads for both (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=6, in_channels=4, backbone=args.backbone).eval()
    wrapper = MainLogits(model).eval()
    x = torch.randn(args.batch, 4, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        write_onnx(wrapper, torch.zeros(1, 4, 64, 64), path, 17, "{}")
        export_s = time.perf_counter() - start
        session = OnnxModule(path, torch.device("cpu"))

        def run_torch(t: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return wrapper(t)

        times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
        runners = {"pytorch": run_torch, "onnxruntime": session}
        outputs = {name: run(x) for name, run in runners.items()}  # warm-up
        for _ in range(args.repeats):
            for name, run in runners.items():
                seconds, outputs[name] = timed(run, x)
                times[name].append(seconds)
    diff = float((outputs["pytorch"] - outputs["onnxruntime"]).abs().max())
    print(
        f"{args.model} {args.backbone}, {args.batch}x4x{args.size}x{args.size}, {torch.get_num_threads()} "
        f"threads, export {export_s:.1f} s, max logit difference {diff:.2g}"
    )
    print("| runtime | median s/batch | windows/s |")
    print("|---|---:|---:|")
    rates = {}
    for name, values in times.items():
        median = statistics.median(values)
        rates[name] = args.batch / median
        print(f"| {name} | {median:.3f} | {rates[name]:.2f} |")
    print(f"onnxruntime / pytorch windows/s: {rates['onnxruntime'] / rates['pytorch']:.2f}")


if __name__ == "__main__":
    main()
