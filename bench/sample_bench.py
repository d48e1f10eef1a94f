"""Benchmark of the synthetic scene generator: time per scene size, scaling with pixel count, peak memory.

Usage: ``PYTHONPATH=. python bench/sample_bench.py [--full]`` (``--full`` adds a 6000 x 6000 Potsdam tile and
its four GeoTIFFs).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from rs_deeplab.sample import generate_scene, write_potsdam


def timed_scene(size: int, gsd: float) -> tuple[float, float]:
    """Seconds of one ``generate_scene(size, gsd=gsd)`` and the process's peak resident memory so far (GiB)."""
    start = time.perf_counter()
    scene = generate_scene(size, seed=1, gsd=gsd)
    seconds = time.perf_counter() - start
    del scene
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also time a 6000 x 6000 scene and Potsdam tile")
    args = parser.parse_args(argv)
    sizes = [(1024, 0.05), (1536, 0.1), (2048, 0.05)] + ([(6000, 0.05)] if args.full else [])
    generate_scene(256, seed=0)  # warm-up: imports, OpenCV thread pool
    base = None
    for size, gsd in sizes:
        seconds, grown = timed_scene(size, gsd)
        per_mpix = seconds / (size * size / 1e6)
        base = base or per_mpix
        ratio = per_mpix / base
        print(f"scene {size}x{size} gsd {gsd}: {seconds:6.2f} s, {per_mpix:.3f} s/Mpx (x{ratio:.2f}), ", end="")
        print(f"peak RSS {grown:.2f} GiB")
    if args.full:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_potsdam(Path(tmp), ids=((2, 13),), size=6000)
            print(f"write_potsdam one 6000x6000 tile (scene + 4 GeoTIFFs): {time.perf_counter() - start:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
