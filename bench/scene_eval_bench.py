"""Benchmark scene-level evaluation (``rs_deeplab.evaluation.scenes.scene_confusion``) against whole-array scoring.

Writes a ``--size``² ISPRS colour-coded truth (3 bands, tiled, deflate, ~8 % black boundary pixels) and a uint8
prediction (~80 % right, 2 % nodata) as GeoTIFFs, then in one run times (CPU, best of ``--repeats``) and
traces the peak numpy memory (``tracemalloc``; GDAL's block cache is not counted) of:

* whole: read both rasters whole, decode the colours, one ``confusion_matrix`` (what fits only small scenes);
* block-wise ``scene_confusion`` at several block sizes (2048 is the default).

    PYTHONPATH=$PWD python bench/scene_eval_bench.py [--size 6000] [--repeats 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from rs_deeplab.evaluation.metrics import confusion_matrix
from rs_deeplab.evaluation.scenes import scene_confusion
from rs_deeplab.geo.raster import geotiff_profile
from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.labels.decoding import decode_label

POTSDAM = SCHEMES["potsdam"]
TRANSFORM = Affine(0.05, 0.0, 368_000.0, 0.0, -0.05, 5_808_000.0)
STRIP = 500


def strip_arrays(row0: int, rows: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour truth ``(3, rows, size)`` and prediction ``(rows, size)`` of one strip, deterministic per strip."""
    rng = np.random.default_rng((seed, row0))
    ids = ((np.arange(size)[None, :] // 97 + (np.arange(row0, row0 + rows)[:, None] // 83)) % 6).astype(np.uint8)
    truth_ids = ids.copy()
    truth_ids[rng.random(ids.shape) < 0.08] = 255
    pred = np.where(rng.random(ids.shape) < 0.8, ids, rng.integers(0, 6, ids.shape)).astype(np.uint8)
    pred[rng.random(ids.shape) < 0.02] = 255
    return POTSDAM.encode_colours(truth_ids), pred


def write_inputs(folder: Path, size: int, seed: int = 0) -> tuple[Path, Path]:
    """Write the truth and prediction GeoTIFFs strip by strip."""
    truth_path, pred_path = folder / "truth.tif", folder / "pred.tif"
    common = {"width": size, "height": size, "crs": "EPSG:32633", "transform": TRANSFORM}
    with (
        rasterio.open(truth_path, "w", **geotiff_profile(count=3, dtype="uint8", **common)) as truth,
        rasterio.open(pred_path, "w", **geotiff_profile(count=1, dtype="uint8", nodata=255, **common)) as pred,
    ):
        for row0 in range(0, size, STRIP):
            rows = min(STRIP, size - row0)
            colours, ids = strip_arrays(row0, rows, size, seed)
            window = Window(0, row0, size, rows)
            truth.write(colours, window=window)
            pred.write(ids, 1, window=window)
    return pred_path, truth_path


def whole_array(pred_path: Path, truth_path: Path) -> np.ndarray:
    """Score by reading both rasters whole."""
    with rasterio.open(pred_path) as pred, rasterio.open(truth_path) as truth:
        return confusion_matrix(pred.read(1), decode_label(truth.read(), POTSDAM), 6)


def measure(repeats: int, run: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    """Best CPU seconds, peak traced MiB of the last run, and its result."""
    cpu = float("inf")
    for _ in range(repeats):
        tracemalloc.start()
        c0 = time.process_time()
        out = run()
        cpu = min(cpu, time.process_time() - c0)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return cpu, peak, out


def main() -> None:
    """Write the inputs and print one line per mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t0 = time.perf_counter()
        pred, truth = write_inputs(Path(tmp), args.size)
        print(f"{args.size}² scene written in {time.perf_counter() - t0:.1f} s")
        decode_label(np.zeros((3, 1, 1), np.uint8), POTSDAM)  # build the cached colour table outside the timings
        base_cpu, base_mem, expected = measure(args.repeats, lambda: whole_array(pred, truth))
        print(f"{'whole array':22s} cpu {base_cpu:6.2f} s  ×1.00  peak {base_mem:7.1f} MiB")
        for block in (512, 1024, 2048, 4096):
            cpu, mem, cm = measure(
                args.repeats,
                lambda block=block: (
                    scene_confusion(pred, truth, num_classes=6, scheme=POTSDAM, block_size=block).confusion
                ),
            )
            assert np.array_equal(cm, expected), "block-wise result differs from the whole-array one"
            print(f"{f'block-wise {block}':22s} cpu {cpu:6.2f} s  ×{cpu / base_cpu:4.2f}  peak {mem:7.1f} MiB")


if __name__ == "__main__":
    main()
