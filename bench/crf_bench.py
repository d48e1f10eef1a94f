"""Benchmark DenseCRF refinement of one inference window (``rs_deeplab.inference.crf.dense.dense_crf``).

A synthetic Potsdam-like window (``rs_deeplab.sample.generate_scene``, urban, 10 cm) with 6 classes; the
"prediction" is its one-hot label shifted by (3, 4) px, blurred (sigma 4) and mixed with uniform, so edges are
smeared and misplaced. Times (best of ``--repeats``, CPU and wall) the CRF at DeepLab's settings with 5 and 10
iterations, on the uint8 RGB bands and on a uint16 copy (percentile stretch included), and on pure noise
colours (the permutohedral lattice's worst case), and once with a narrower, weaker bilateral kernel (sxy 40,
srgb 5, compat 4) for comparison; prints ratios to the 5-iteration uint8 run and the boundary
accuracy (pixels within 4 px of a class edge) and mIoU before and after.

Then windows/s of ``--windows`` windows refined in this process (as a thread did before issue 26) and by
:class:`~rs_deeplab.inference.crf.pool.CRFPool` with 1 and 2 worker processes (started before the clock runs),
and the 2-process speed-up (target >= 1.7x on a quiet machine with 2 free cores); the pool's labels are checked
against this process's.

    PYTHONPATH=$PWD python bench/crf_bench.py [--size 512] [--repeats 3] [--windows 8] [--pool-only]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np

from rs_deeplab.inference.crf.dense import CRFSettings, dense_crf
from rs_deeplab.inference.crf.pool import CRFPool
from rs_deeplab.sample.scene import generate_scene

CLASSES = 6


def blurred_prediction(label: np.ndarray) -> np.ndarray:
    """One-hot label shifted (3, 4) px, blurred with sigma 4 and mixed 60/40 with uniform."""
    onehot = np.stack([(label == c).astype(np.float32) for c in range(CLASSES)])
    onehot = np.roll(onehot, (3, 4), axis=(1, 2))
    probs = 0.6 * np.stack([cv2.GaussianBlur(b, (0, 0), 4.0) for b in onehot]) + 0.4 / CLASSES
    return (probs / probs.sum(axis=0)).astype(np.float32)


def edge_band(label: np.ndarray, radius: int = 4) -> np.ndarray:
    """Pixels within ``radius`` px of a class boundary."""
    grad = cv2.morphologyEx(label, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    return cv2.dilate(grad.astype(np.uint8), np.ones((2 * radius + 1,) * 2, np.uint8)) > 0


def quality(probs: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Boundary accuracy and mIoU (over classes present) of the argmax."""
    pred = probs.argmax(axis=0)
    ious = [((pred == c) & (label == c)).sum() / ((pred == c) | (label == c)).sum() for c in np.unique(label)]
    return float((pred == label)[edge_band(label)].mean()), float(np.mean(ious))


def best_of(repeats: int, run: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    """Best CPU and wall seconds of ``repeats`` calls, and the last result."""
    cpu = wall = float("inf")
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        out = run()
        cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
    return cpu, wall, out


def pool_rates(probs: np.ndarray, rgb: np.ndarray, windows: int) -> None:
    """Windows/s refined here and by 1 and 2 worker processes (the pool warmed up first); same labels checked."""
    params, valid = CRFSettings(), np.ones(probs.shape[1:], bool)
    blocks = [(probs, rgb, valid)] * windows
    start = time.perf_counter()
    here = [params.refine(p, i, valid=v) for p, i, v in blocks]
    rates = {"this process (a thread before)": windows / (time.perf_counter() - start)}
    for n in (1, 2):
        with CRFPool(n) as pool:
            pool.warm_up()
            start = time.perf_counter()
            out = list(pool.map(params, blocks, None))
            rates[f"{n} process{'es' if n > 1 else ''}"] = windows / (time.perf_counter() - start)
        assert all(np.array_equal(a.argmax(0), b.argmax(0)) for a, b in zip(out, here, strict=True)), "labels differ"
    for name, rate in rates.items():
        print(f"{name:32s} {rate:6.2f} windows/s")
    print(f"2 processes / 1 process: {rates['2 processes'] / rates['1 process']:.2f}x (target >= 1.7x)")


def main() -> None:
    """Run the benchmark and print one line per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=8, help="windows refined per process-pool measurement")
    parser.add_argument("--pool-only", action="store_true", help="only the 1 vs 2 processes measurement")
    args = parser.parse_args()
    scene = generate_scene(args.size, seed=1, gsd=0.1)
    label, rgb = scene.classes, scene.image[:3]
    probs = blurred_prediction(label)
    rgb16 = rgb.astype(np.uint16) * 40 + 500
    noise = np.random.default_rng(0).integers(0, 256, rgb.shape, dtype=np.uint8)
    cases: dict[str, Callable[[], np.ndarray]] = {
        "uint8 RGB, 5 iterations": lambda: dense_crf(probs, rgb),
        "uint8 RGB, 10 iterations": lambda: dense_crf(probs, rgb, iterations=10),
        "uint16 RGB, 5 iterations": lambda: dense_crf(probs, rgb16),
        "noise colours, 5 iterations": lambda: dense_crf(probs, noise),
        "uint8, bilateral 40/5/4": lambda: dense_crf(
            probs, rgb, bilateral_sxy=40.0, bilateral_srgb=5.0, bilateral_compat=4.0
        ),
    }
    if args.pool_only:
        pool_rates(probs, rgb, args.windows)
        return
    before = quality(probs, label)
    print(f"{args.size}² window, {CLASSES} classes; before CRF: boundary acc {before[0]:.3f}, mIoU {before[1]:.3f}")
    base = None
    for name, run in cases.items():
        cpu, wall, out = best_of(args.repeats, run)
        base = base or cpu
        edge, miou = quality(out, label)
        print(
            f"{name:28s} cpu {cpu:6.3f} s  wall {wall:6.3f} s  ×{cpu / base:4.2f}  "
            f"boundary acc {edge:.3f}  mIoU {miou:.3f}"
        )
    pool_rates(probs, rgb, args.windows)


if __name__ == "__main__":
    main()
