"""Own-data benchmark: does ``configs/own_data.yaml`` learn a small real dataset on the CPU, and beat the majority?

The data: the two New Brunswick aerial scenes (RGB, 0.5 m, EPSG:2953) and their GeoPackage of land-cover polygons
in ``../shared/data/real/new_brunswick`` (string attribute ``Quatreclasses``: 1 vegetation, 2 water, 3 road,
4 building, 255 ignore; uncovered pixels are background). It runs what the own-data tutorial runs, as commands:

1. ``pipelines/tile.py`` both scenes with the one GeoPackage, a spatial validation hold-out (``--val-fraction``);
2. ``pipelines/train.py configs/own_data.yaml data.root=...``;
3. scores the last checkpoint (no selection on the validation split) on the validation crops, against predicting
   the training split's majority class everywhere (its IoU on that class is the class's share of the validation
   pixels, 0 on every other class).

Prints per-class IoU of both, the training wall time, and whether the issue's targets hold: the recipe beats the
majority in mIoU and in IoU on every class covering at least 1 % of the validation pixels, within 10 minutes.

``PYTHONPATH=$PWD python bench/own_data_bench.py [--seed N] [key=value ...]`` (overrides go to train.py).
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "real" / "new_brunswick"
SCENES = ("23322E759967N_clipped_1m_1of2.tif", "23322E759967N_clipped_1m_2of2.tif")
CLASSES = "background,vegetation,water,road,building"
TIME_TARGET_S = 600.0


def run(args: list[str], cwd: Path) -> None:
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")


def tile(out: Path, work: Path, seed: int, val_fraction: float) -> None:
    run([str(ROOT / "pipelines" / "tile.py"), *(str(DATA / s) for s in SCENES),
         "--labels", str(DATA / "BakerLake_2017_clipped.gpkg"), "--label-field", "Quatreclasses",
         "--label-fill", "0", "--classes", CLASSES, "--val-fraction", str(val_fraction), "--seed", str(seed),
         "--size", "128", "--stride", "64", "--out", str(out), "--workers", "1", "--quiet"], work)  # fmt: skip


def majority_baseline(cm: np.ndarray, train_counts: np.ndarray) -> np.ndarray:
    """Per-class IoU of predicting the training split's most frequent class everywhere (NaN: class absent)."""
    truth = cm.sum(axis=1).astype(np.float64)
    majority = int(np.argmax(train_counts))
    iou = np.where(truth > 0, 0.0, np.nan)
    iou[majority] = truth[majority] / truth.sum()
    return iou


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation blocks and of training")
    parser.add_argument("--val-fraction", type=float, default=0.3)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of configs/own_data.yaml")
    args = parser.parse_args()
    from rs_deeplab.tiling.index import read_index

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiles = work / "tiles"
        tile(tiles, work, args.seed, args.val_fraction)
        index, classes = read_index(tiles / "index.gpkg")
        names = [n for n in classes.sort_values("class_id").name if n != "ignore"]
        train_counts = np.array([index[index.split == "train"][f"n_{n}"].sum() for n in names])
        start = time.perf_counter()
        run([str(ROOT / "pipelines" / "train.py"), str(ROOT / "configs" / "own_data.yaml"), f"data.root={tiles}",
             f"work_dir={work / 'run'}", f"seed={args.seed}", *args.overrides], work)  # fmt: skip
        seconds = time.perf_counter() - start
        run([str(ROOT / "pipelines" / "evaluate.py"), str(work / "run" / "last.pt"), "--split", "val",
             "--out", str(work / "eval"), "--quiet"], work)  # fmt: skip
        report = json.loads((work / "eval" / "val_scores.json").read_text())
    cm = np.asarray(report["confusion_matrix"], dtype=np.float64)
    model = np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1)
    truth = cm.sum(axis=1)
    model = np.where(truth + cm.sum(0) > 0, model, np.nan)
    base = majority_baseline(cm, train_counts)
    share = truth / truth.sum()
    print(f"{'class':<12} {'val share':>9} {'recipe IoU':>10} {'majority IoU':>12}")
    for i, name in enumerate(names):
        print(f"{name:<12} {share[i]:>9.3f} {model[i]:>10.3f} {base[i]:>12.3f}")
    m_model, m_base = float(np.nanmean(model)), float(np.nanmean(base))
    print(f"{'mIoU':<12} {'':>9} {m_model:>10.3f} {m_base:>12.3f}")
    major = [i for i in range(len(names)) if share[i] >= 0.01]
    beats = m_model > m_base and all(model[i] > base[i] for i in major)
    print(f"training {seconds:.0f} s on {os.cpu_count()} CPU cores (target <= {TIME_TARGET_S:.0f} s)")
    print(f"beats the majority in mIoU and on every class >= 1 % of val pixels: {'yes' if beats else 'NO'}")
    print(f"within the time target: {'yes' if seconds <= TIME_TARGET_S else 'NO'}")
    return 0 if beats and seconds <= TIME_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
