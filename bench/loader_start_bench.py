"""A training run's loader start-up, with the fork server's preload and with Python's default (``__main__``).

``PYTHONPATH=. python bench/loader_start_bench.py [--workers 2] [--repeats 2]`` on a quiet machine: each
measurement is a fresh process that does what ``train.py`` does before its first step: it makes its loaders (a
training and a validation loader of ``--workers`` fork-server workers each, on a tiles dataset), builds the model
(DeepLab v3+ ResNet-18), then takes the first batch of each loader. Once with
:data:`~rs_deeplab.training.datasets.sampling.WORKER_MODULES` preloaded (what ``loader_options`` does) and once with
only ``__main__`` (Python's default: since the scripts import the library after parsing their arguments, that
preloads nothing, and every worker imports the training stack itself). Alternating, in one run; prints the wall
time to both first batches and the CPU time the whole machine spent on the process and its workers (from
``/proc/stat``), and their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, multiprocessing, sys, time
from pathlib import Path
from torch.utils.data import DataLoader
from rs_deeplab.training.datasets import sampling
from rs_deeplab.training.datasets.tiles import TileIndexSource
from rs_deeplab.training.datasets.sampling import SegmentationDataset, pad_collate
from rs_deeplab.training.transforms import EvalTransform

root, workers, preload = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "preload"
if not preload:
    sampling.WORKER_MODULES = ("__main__",)
dataset = SegmentationDataset(TileIndexSource(root, "train"), EvalTransform(None))
start = time.perf_counter()
options = sampling.loader_options(workers, pin_memory=False)
train = DataLoader(dataset, batch_size=2, collate_fn=pad_collate, **options)
val = DataLoader(dataset, batch_size=2, collate_fn=pad_collate, persistent_workers=True, **options)
from rs_deeplab.models import build_model
model = build_model("deeplabv3plus", backbone="resnet18", num_classes=6, in_channels=4)
next(iter(train)), next(iter(val))
print(json.dumps({"first_batches_s": time.perf_counter() - start}))
"""


def make_tiles(folder: Path) -> Path:
    """A small tile set (a generated Potsdam-style scene cut into 64-pixel crops)."""
    sys.path.insert(0, str(REPO))
    from tests.trainkit import make_tiles as tiles

    return tiles(folder)


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores: user, nice, system, irq, softirq) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def measure(root: Path, workers: int, preload: bool) -> tuple[float, float]:
    """Wall seconds to both first batches (in the probe), CPU seconds of the machine for the whole probe."""
    busy = busy_seconds()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(root), str(workers), "preload" if preload else "default"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    cpu = busy_seconds() - busy
    return float(json.loads(done.stdout.strip().splitlines()[-1])["first_batches_s"]), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_tiles(Path(tmp))
        runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        started = time.perf_counter()
        for _ in range(args.repeats):
            for preload in (False, True):
                runs[preload].append(measure(root, args.workers, preload))
    wall = {k: min(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: min(c for _, c in v) for k, v in runs.items()}
    print(f"two loaders of {args.workers} fork-server worker(s) each and a model, best of {args.repeats} processes:")
    print("                              wall to both first batches   CPU of the process and its workers")
    for key, name in ((False, "default preload (__main__)"), (True, "training package preloaded")):
        print(f"  {name:27s} {wall[key]:6.1f} s {' ' * 20} {cpu[key]:6.1f} s")
    print(
        f"  ratio default / preloaded:  {wall[False] / wall[True]:.2f}x wall, {cpu[False] / cpu[True]:.2f}x CPU "
        f"({time.perf_counter() - started:.0f} s in all)"
    )


if __name__ == "__main__":
    main()
