"""Benchmark inference memory against the scene's width (issue 25.5): peak RSS at 25k, 50k, 100k and 200k columns.

Generated 4-band uint8 scenes ``--rows`` high (default 2,048) and ``--widths`` wide, DEFLATE-compressed in 256²
tiles (written strip by strip, so generating them holds one strip), are predicted on the CPU by DeepLab v3+ R18
(4 bands, 6 classes, random weights: memory does not depend on them), windows 512 every 256, batch 2 (the demo's
``infer`` settings), each width in a fresh child process that reports its own peak RSS (``VmHWM``). ``--model
cnn`` runs a 3-layer CNN instead (quicker; the model's own working set is then smaller). It prints each width's peak
and its ratio to the narrowest one's: flat in width means ratios near 1.

``--valid-every N`` makes the scenes nodata (0) except 512-column stripes every N columns: every row is still read,
decoded and blended over the whole width, but the model runs only the windows that touch a stripe, so a 2-core
machine measures a 200,000-wide scene in minutes (the strips and accumulators are allocated and filled as for a
valid scene; a nodata scene adds a valid mask of 1 byte per pixel of a strip).

``--panel-columns N`` sets the panel width (:func:`rs_deeplab.inference.predict_scene`'s ``panel_columns``);
``--panel-columns 0`` predicts every scene as one panel of its whole width, as before issue 25.5 (for comparison).

    PYTHONPATH=$PWD python bench/width_memory_bench.py [--widths 25000,50000,100000,200000] [--rows 2048]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from rs_deeplab.geo.raster import geotiff_profile
from rs_deeplab.inference import predict_scene
from rs_deeplab.models import build_model
from rs_deeplab.runtime.tuning import tune_malloc

TRANSFORM = Affine(0.1, 0.0, 368_000.0, 0.0, -0.1, 5_808_000.0)
MEAN, STD = [110.0, 110.0, 100.0, 120.0], [50.0, 45.0, 45.0, 55.0]
SIZE, STRIDE, CLASSES = 512, 256, 6
PANEL_COLUMNS = 8192
"""The library's default (:data:`rs_deeplab.inference.predicting.rows.PANEL_COLUMNS`; not imported, so that this
script also
measures the code before it, put first on ``PYTHONPATH``)."""


def write_scene(path: Path, height: int, width: int, valid_every: int = 0, strip: int = 256) -> Path:
    """A 4-band uint8 scene of smooth random fields plus noise, DEFLATE in 256² tiles, written strip by strip.

    With ``valid_every``, nodata (0) except 512-column stripes every ``valid_every`` columns.
    """
    if path.exists():
        return path
    rng = np.random.default_rng(width)
    profile = geotiff_profile(
        width=width,
        height=height,
        count=4,
        dtype="uint8",
        crs="EPSG:32633",
        transform=TRANSFORM,
        compress="deflate",
        tiled=True,
        blocksize=256,
        nodata=0 if valid_every else None,
    )
    base = rng.integers(40, 220, (4, 64, 64)).astype(np.uint8)
    xx = (np.arange(width) // 37) % 64
    nodata = (np.arange(width) % valid_every >= 512) if valid_every else None
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, height, strip):
            rows = min(strip, height - r)
            yy = (np.arange(r, r + rows) // 37) % 64
            pixels = base[:, yy][:, :, xx] + rng.integers(0, 20, (4, rows, width), dtype=np.uint8)
            if nodata is not None:
                pixels[:, :, nodata] = 0
            dst.write(pixels, window=Window(0, r, width, rows))
    os.replace(tmp, path)
    return path


def model_of(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "cnn":
        return torch.nn.Sequential(
            torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, CLASSES, 1)
        ).eval()
    return build_model(
        "deeplabv3plus", num_classes=CLASSES, in_channels=4, backbone="resnet18", output_stride=16
    ).eval()


def child(scene: str, out: str, kind: str, panel_columns: int, probs: bool, batch: int) -> None:
    """Predict one scene in this (fresh) process; print its peak RSS, time and windows as JSON."""
    model = model_of(kind)
    start = time.perf_counter()
    probs_path = Path(out).with_suffix(".probs.tif") if probs else None
    known = inspect.signature(predict_scene).parameters
    panels = {"panel_columns": panel_columns or 10**9} if "panel_columns" in known else {}  # the code before: none
    result = predict_scene(
        model,
        scene,
        out,
        size=SIZE,
        stride=STRIDE,
        batch_size=batch,
        mean=MEAN,
        std=STD,
        device="cpu",
        resume=False,
        probs_path=probs_path,
        **panels,
    )
    seconds = time.perf_counter() - start
    peak = vm_hwm_mib()
    print(json.dumps({"peak_mib": peak, "seconds": seconds, "windows": result.windows}))


def vm_hwm_mib() -> float:
    """This process's peak RSS in MiB, from ``VmHWM``: ``ru_maxrss`` survives exec, so a child started by a big
    process would report its parent's peak.
    """  # noqa: D205
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmHWM"].split()[0]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="25000,50000,100000,200000")
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--model", choices=("deeplab", "cnn"), default="deeplab")
    p.add_argument("--panel-columns", type=int, default=PANEL_COLUMNS, help="0: one panel of the whole width")
    p.add_argument("--probs", action="store_true", help="also write the probability raster")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--valid-every", type=int, default=0, help="nodata but for 512-column stripes every N columns")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--child", nargs=2, metavar=("SCENE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    tune_malloc()  # as the pipelines do
    if args.child:
        child(*args.child, kind=args.model, panel_columns=args.panel_columns, probs=args.probs, batch=args.batch)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="width_memory_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    panels = "one panel (whole width)" if args.panel_columns == 0 else f"panels of {args.panel_columns} columns"
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch {torch.__version__}, work {work}")
    sparse = f", valid 512 of every {args.valid_every} columns" if args.valid_every else ""
    print(
        f"# {args.rows} rows{sparse}, {args.model}, {CLASSES} classes, windows {SIZE}/{STRIDE}, batch {args.batch}, "
        f"cpu, {panels}{', --probs' if args.probs else ''}, load {os.getloadavg()[0]:.1f}"
    )
    first = None
    for width in [int(w) for w in args.widths.split(",")]:
        name = f"scene_{args.rows}x{width}_{args.valid_every}.tif"
        scene = write_scene(work / name, args.rows, width, args.valid_every)
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(scene),
            str(work / f"labels_{width}.tif"),
            "--model",
            args.model,
            "--panel-columns",
            str(args.panel_columns),
            "--batch",
            str(args.batch),
            *(["--probs"] if args.probs else []),
        ]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ))
        r = json.loads(done.stdout.strip().splitlines()[-1])
        first = first or r["peak_mib"]
        print(
            f"  {width:7d} wide: peak RSS {r['peak_mib']:7.0f} MiB  ({r['peak_mib'] / first:.3f}× the first)  "
            f"{r['windows']} windows in {r['seconds']:.0f} s, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
