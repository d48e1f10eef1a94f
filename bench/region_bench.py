"""Benchmark many scenes as one job on a Dask cluster against the same scenes predicted one at a time (issue 23).

Part 1 (speed): ``--scenes`` generated 4-band uint8 scenes of ``--size``² (default 50 of 1024²), a small CNN
(random weights: speed does not depend on them), windows 512 every 384, on a local Dask cluster of ``--workers``
single-threaded worker processes (default 2). In one run, alternating, best of ``--repeats``:
  * one job — :func:`~rs_deeplab.inference.predicting.scene.predict_scenes` with every scene: one stream of tasks;
  * one at a time — :func:`~rs_deeplab.inference.predicting.scene.predict_scene` per scene, as ``infer.py`` did
  before: a
    client, a model shipped, and only that scene's tasks in flight, scene after scene.
It prints windows per second of both and their ratio (target ≥ 1.5 with 2 workers on 50 scenes of 1024²).

Part 2 (memory, ``--memory``): one job of ``--memory-scenes`` scenes (default 20 and 200, of 256²) on the same
cluster, each in a fresh child process that reports its peak RSS (``ru_maxrss``): it should not grow with the
number of scenes.

    PYTHONPATH=$PWD python bench/region_bench.py [--scenes 50] [--size 1024] [--workers 2] [--repeats 2]
    PYTHONPATH=$PWD python bench/region_bench.py --memory [--memory-scenes 20,200]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from affine import Affine

from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference.predicting.scene import SceneTask, predict_scene, predict_scenes

KW = {"size": 512, "stride": 384, "batch_size": 2, "mean": [110.0] * 4, "std": [50.0] * 4, "quiet": True}


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 6, 1),
    )


def write_scenes(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` scenes of ``size``², side by side on one grid (a region's tiles)."""
    rng = np.random.default_rng(size)
    image = rng.integers(0, 255, (4, size, size)).astype(np.uint8)
    out = []
    for i in range(count):
        transform = Affine(0.5, 0, 368_000 + i * size * 0.5, 0, -0.5, 5_808_000)
        out.append(
            write_geotiff(
                folder / f"tile_{i:04d}.tif", np.roll(image, i, axis=2), crs="EPSG:32633", transform=transform
            )
        )
    return out


def one_job(model: torch.nn.Module, scenes: list[Path], out: Path, address: str) -> int:
    tasks = [SceneTask(s, out / f"job_{s.stem}.tif") for s in scenes]
    results = predict_scenes(model, tasks, scheduler=address, resume=False, **KW)  # type: ignore[arg-type]
    return sum(r.windows for r in results)


def one_at_a_time(model: torch.nn.Module, scenes: list[Path], out: Path, address: str) -> int:
    windows = 0
    for s in scenes:
        r = predict_scene(model, s, out / f"single_{s.stem}.tif", scheduler=address, resume=False, **KW)  # type: ignore[arg-type]
        windows += r.windows
    return windows


def speed(args: argparse.Namespace, address: str, folder: Path) -> None:
    scenes = write_scenes(folder, args.scenes, args.size)
    model = small_model()
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in (("one job", one_job), ("one at a time", one_at_a_time)):
            start = time.perf_counter()
            windows = fn(model, scenes, folder, address)
            rate = windows / (time.perf_counter() - start)
            best[name] = max(best.get(name, 0.0), rate)
            print(f"  {name}: {windows} windows, {rate:.1f} windows/s", flush=True)
    ratio = best["one job"] / best["one at a time"]
    print(
        f"{args.scenes} scenes of {args.size}², {args.workers} workers: one job {best['one job']:.1f} windows/s, "
        f"one at a time {best['one at a time']:.1f} windows/s: ratio {ratio:.2f} (target >= 1.5)"
    )


def memory_child(address: str, count: int, folder: str) -> None:
    scenes = write_scenes(Path(folder), count, 256)
    tasks = [SceneTask(s, Path(folder) / f"out_{s.stem}.tif") for s in scenes]
    small = {**KW, "size": 128, "stride": 96}
    predict_scenes(small_model(), tasks, scheduler=address, resume=False, **small)  # type: ignore[arg-type]
    print(json.dumps({"scenes": count, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory(args: argparse.Namespace, address: str) -> None:
    peaks = {}
    for count in (int(c) for c in args.memory_scenes.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            out = subprocess.run(
                [sys.executable, __file__, "--child", address, str(count), folder],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        peaks[count] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
        print(f"  one job of {count} scenes of 256²: peak RSS of the client process {peaks[count]:.0f} MB", flush=True)
    lo, hi = min(peaks), max(peaks)
    print(f"peak RSS {hi} scenes / {lo} scenes: {peaks[hi] / peaks[lo]:.2f} (flat: about 1)")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        memory_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=50)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--memory", action="store_true", help="measure peak memory against the number of scenes instead")
    p.add_argument("--memory-scenes", default="20,200")
    args = p.parse_args()
    from distributed import LocalCluster

    torch.set_num_threads(1)
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        tempfile.TemporaryDirectory() as folder,
    ):
        if args.memory:
            memory(args, cluster.scheduler_address)
        else:
            speed(args, cluster.scheduler_address, Path(folder))


if __name__ == "__main__":
    main()
