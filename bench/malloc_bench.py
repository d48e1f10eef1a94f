"""Effect of the glibc malloc tuning (rs_deeplab.runtime.tuning) on CPU model speed, measured in one run.

Each case runs twice in fresh child processes, with ``RS_DEEPLAB_MALLOC_TUNING=0`` (glibc's defaults) and ``=1``,
alternating, and prints the best time of each and the speed-up:
  * DeepLab v3+ ResNet-18 inference, 4 windows of 512² × 4 bands (as ``infer.py`` runs it);
  * a training step of the demo recipe (v3+ R18, 4 crops of 128², AdamW), as ``make demo`` trains;
  * the small 3-layer CNN of ``bench/infer_bench.py``'s memory part, 4 windows of 512².
It also prints the minor page faults per iteration and the peak RSS of each child.

    PYTHONPATH=$PWD python bench/malloc_bench.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {"deeplab_infer": 3, "deeplab_train": 12, "small_cnn_infer": 8}


def child(case: str, iterations: int) -> None:
    import torch

    from rs_deeplab.runtime.tuning import tune_malloc

    applied = tune_malloc()
    sys.path.insert(0, str(REPO / "bench"))
    from infer_bench import deeplab, small_cnn

    model = small_cnn() if case.startswith("small") else deeplab()
    if case.endswith("train"):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=0.002)
        x, y = torch.randn(4, 4, 128, 128), torch.randint(0, 6, (4, 128, 128))

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        x = torch.randn(4, 4, 512, 512)

        def step() -> None:
            with torch.inference_mode():
                model(x).softmax(1)

    step()  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    seconds = (time.perf_counter() - start) / iterations
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / iterations
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"applied": applied, "seconds": seconds, "faults": faults, "peak_mib": peak}))


def run(case: str, switch: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RS_DEEPLAB_MALLOC_TUNING": switch}
    cmd = [sys.executable, __file__, "--child", case]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="child runs per case and setting (best is kept)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, CASES[args.child])
        return
    import torch

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    for case in CASES:
        runs: dict[str, list[dict[str, float]]] = {"0": [], "1": []}
        for _ in range(args.rounds):
            for switch in ("0", "1"):
                runs[switch].append(run(case, switch))
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
        for switch, label in (("0", "glibc defaults"), ("1", "tuned")):
            r = best[switch]
            print(
                f"  {case:16s} {label:14s} {r['seconds'] * 1000:8.1f} ms/iter  "
                f"{r['faults']:9.0f} page faults/iter  peak RSS {r['peak_mib']:6.0f} MiB"
            )
        print(f"  {case:16s} speed-up {best['0']['seconds'] / best['1']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
