"""Forward and forward+backward time and peak memory of each DeepLab model at 512x512, batch 1 and 8.

Every configuration runs in its own subprocess so that the CPU peak (``ru_maxrss``, the resident-set high-water
mark) belongs to that configuration alone; on CUDA the peak is ``torch.cuda.max_memory_allocated``. On CUDA the
models run with bf16 autocast and channels_last by default (``--no-amp``/``--no-channels-last`` to compare).

    PYTHONPATH=$PWD python bench/model_bench.py --models deeplabv3plus:resnet101 deeplabv1 --batch 1 8 --size 512

A model is ``name[:backbone[:head[:output_stride]]]``, e.g. ``deeplabv3:resnet50:mmseg:8``. Times are medians
over ``--repeats`` runs after one warm-up, as wall time and as process CPU time (less sensitive to other work on a
shared machine, e.g. with ``--threads 1``); ratios use CPU time, "vs first" is relative to the first model in the
same run (forward CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_MODELS = [
    "deeplabv1",
    "deeplabv2:resnet101",
    "deeplabv3:resnet101",
    "deeplabv3plus:resnet101",
    "deeplabv3:resnet101:mmseg",
    "deeplabv3plus:resnet101:mmseg",
]


def parse_spec(spec: str) -> dict[str, Any]:
    parts = spec.split(":")
    keys = ("name", "backbone", "head", "output_stride")
    kwargs: dict[str, Any] = {k: v for k, v in zip(keys, parts, strict=False) if v}
    if "output_stride" in kwargs:
        kwargs["output_stride"] = int(kwargs["output_stride"])
    return kwargs


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run one configuration in this process and return its numbers."""
    import torch
    from torch.nn.functional import cross_entropy

    from rs_deeplab.models import SegOutput, build_model

    if args.mem_limit_gb:
        limit = int(args.mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch[0]
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(**parse_spec(args.one), num_classes=args.classes).to(device)
    x = torch.randn(batch, 3, args.size, args.size, device=device)
    target = torch.randint(0, args.classes, (batch, args.size, args.size), device=device)
    if cuda and args.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and args.amp)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def forward() -> None:
        with torch.inference_mode(), autocast:
            model(x)

    def train_step() -> None:
        with autocast:
            out = model(x)
            if isinstance(out, SegOutput):
                loss = cross_entropy(out.out, target) + model.aux_weight * cross_entropy(out.aux, target)
            else:
                loss = cross_entropy(out, target)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def timed(step: Any) -> tuple[float, float]:
        """Median wall and process-CPU seconds of ``step`` over the repeats, after one warm-up."""
        step()  # warm-up: allocator, oneDNN/cuDNN algorithm choice
        sync()
        wall, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            sync()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        return statistics.median(wall), statistics.median(cpu)

    def peak_mb() -> float:
        if cuda:
            return torch.cuda.max_memory_allocated(device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    load_before = os.getloadavg()[0]  # other work on the machine skews CPU times; recorded with each row
    base = peak_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    model.eval()
    fwd = timed(forward)
    fwd_peak = peak_mb()
    model.train()
    if batch == 1:  # BN statistics of the 1x1 image-pooling map need two images; freeze BN as small-batch runs do
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        train: tuple[float, float] | None = timed(train_step)
    except (MemoryError, RuntimeError) as exc:  # e.g. over --mem-limit-gb: keep the forward numbers
        if "memory" not in str(exc).lower():
            raise
        train = None
    return {
        "model": args.one,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch": batch,
        "size": args.size,
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu x{torch.get_num_threads()} threads",
        "amp": "bf16" if cuda and args.amp else "fp32",
        "channels_last": bool(cuda and args.channels_last),
        "fwd_s": fwd[0],
        "train_s": train[0] if train else None,
        "fwd_cpu_s": fwd[1],
        "train_cpu_s": train[1] if train else None,
        "base_mb": base,
        "fwd_peak_mb": fwd_peak,
        "train_peak_mb": peak_mb(),
        "load": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
    }


def run_isolated(args: argparse.Namespace, spec: str, batch: int) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", spec, "--batch", str(batch)]
    cmd += ["--size", str(args.size), "--repeats", str(args.repeats), "--device", args.device]
    cmd += ["--classes", str(args.classes), "--mem-limit-gb", str(args.mem_limit_gb), "--threads", str(args.threads)]
    cmd += [] if args.amp else ["--no-amp"]
    cmd += [] if args.channels_last else ["--no-channels-last"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": spec, "batch": batch, "error": tail[:160]}
    return dict(json.loads(lines[-1]))


def markdown(rows: list[dict[str, Any]]) -> str:
    columns = ["model", "params (M)", "batch", "forward (s)", "fwd+bwd (s)", "fwd CPU (s)", "fwd+bwd CPU (s)"]
    columns += ["fwd+bwd / fwd", "vs first"]
    columns += ["peak fwd (MB)", "peak train (MB)", "base (MB)", "load avg"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    first: dict[int, float] = {}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | {r['batch']} | failed: {r['error']} |" + " |" * (len(columns) - 4))
            continue
        ref = first.setdefault(r["batch"], r["fwd_cpu_s"])
        trained = r["train_s"] is not None
        cells = [r["model"], f"{r['params_m']:.1f}", str(r["batch"]), f"{r['fwd_s']:.2f}"]
        cells += [f"{r['train_s']:.2f}" if trained else "out of memory", f"{r['fwd_cpu_s']:.2f}"]
        cells += [f"{r['train_cpu_s']:.2f}" if trained else "out of memory"]
        cells += [f"{r['train_cpu_s'] / r['fwd_cpu_s']:.2f}" if trained else "", f"{r['fwd_cpu_s'] / ref:.2f}"]
        cells += [f"{r['fwd_peak_mb']:.0f}", f"{r['train_peak_mb']:.0f}", f"{r['base_mb']:.0f}", r["load"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per worker (0: torch's default)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="CUDA: run fp32 instead of bf16 autocast")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--mem-limit-gb", type=float, default=0.0, help="cap each worker's data segment (0: none)")
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args)))
        return 0
    rows = []
    for batch in args.batch:
        for spec in args.models:
            row = run_isolated(args, spec, batch)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
