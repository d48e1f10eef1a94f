"""Benchmark the prediction page on a large scene: time to write it, peak memory, folder size, time to open it.

Writes a generated ``--size``² 3-band uint8 scene and its label raster (blocks of 6 classes, tiled GeoTIFFs,
written block by block), then the page (tile pyramids of both, no polygons) in a child process that reports its
peak RSS (VmHWM), then opens the page in headless chromium (``--chromium``) and times ``window.RS.ready`` and the
first screen of tiles. Repeat with two sizes to see that memory stays flat as the scene grows. ``--baseline DIR``
also writes each page with the code of another checkout (e.g. ``git worktree add /tmp/old HEAD~1``) just before
this one's, from the same rasters: a before/after in one run (``"code"`` says which).

    PYTHONPATH=$PWD python bench/report_bench.py [--size 8192] [--workdir DIR] [--chromium /usr/bin/chromium]
        [--baseline DIR]
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

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

BLOCK = 1024


def make_rasters(folder: Path, size: int) -> tuple[Path, Path]:
    """A ``size``² scene and labels, written block by block (never a whole array in memory)."""
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "crs": "EPSG:32633",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "transform": from_origin(366_000, 5_811_000, 0.25, 0.25),
    }
    scene, labels = folder / "scene.tif", folder / "labels.tif"
    rng = np.random.default_rng(0)
    with (
        rasterio.open(scene, "w", count=3, dtype="uint8", **profile) as s,
        rasterio.open(labels, "w", count=1, dtype="uint8", nodata=255, **profile) as lab,
    ):
        for row in range(0, size, BLOCK):
            for col in range(0, size, BLOCK):
                h, w = min(BLOCK, size - row), min(BLOCK, size - col)
                r, c = np.mgrid[row : row + h, col : col + w]
                cls = ((r // 97 + c // 131) % 6).astype(np.uint8)
                lab.write(cls[None], window=Window(col, row, w, h))
                img = (cls[None] * 40 + rng.integers(0, 30, (3, h, w))).astype(np.uint8)
                s.write(img, window=Window(col, row, w, h))
    return scene, labels


CHILD = """
import json, sys, time
from pathlib import Path
from rs_deeplab.report.prediction import PredictionInputs, write_prediction_page
t = time.perf_counter()
out = write_prediction_page(Path(sys.argv[1]), PredictionInputs(labels=Path(sys.argv[2]), scene=Path(sys.argv[3])))
seconds = time.perf_counter() - t
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({"seconds": seconds, "files": out.files, "bytes": out.bytes, "peak_mb": int(hwm) / 1024}))
"""


def open_page(page: Path, chromium: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1280, "height": 800})
        start = time.perf_counter()
        tab.goto(page.resolve().as_uri())
        tab.wait_for_function("window.RS && window.RS.ready === true")
        ready = time.perf_counter() - start
        tab.wait_for_function("Array.from(document.querySelectorAll('img.leaflet-tile')).every(i => i.complete)")
        tiles = time.perf_counter() - start
        browser.close()
    return {"ready_s": ready, "first_screen_s": tiles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--baseline", type=Path, help="a checkout whose code also writes each page, first")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    codes = [("baseline", args.baseline.resolve())] if args.baseline else []
    codes.append(("current", here))
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for size in args.size:
            folder = Path(tmp) / str(size)
            folder.mkdir()
            t = time.perf_counter()
            scene, labels = make_rasters(folder, size)
            made = time.perf_counter() - t
            for code, root in codes:
                page = folder / f"{code}.html"
                env = {**os.environ, "PYTHONPATH": str(root)}
                run = subprocess.run(
                    [sys.executable, "-c", CHILD, str(page), str(labels), str(scene)],
                    cwd=root,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = {
                    "size": size,
                    "code": code,
                    "rasters_s": made,
                    **json.loads(run.stdout.strip().splitlines()[-1]),
                }
                result.update(open_page(page, args.chromium))
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
