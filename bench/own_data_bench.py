"""Own-data benchmark (issue 24.3): the auto recipe against the old template and a plain baseline, same budget.

Three recipes train one after the other for the SAME wall-clock budget (``--budget``, default 10m) on the SAME
tiles and train/val split, and are scored the same way on the held-out split:

(a) **auto**: ``pipelines/train.py configs/own_data.yaml data.root=<tiles> work_dir=<run> seed=<seed> --budget B``
    plus any ``key=value`` given to this script (the config is the self-configuring recipe; this file does not
    look inside it).
(b) **template**: the pre-issue-24 template, kept verbatim as ``bench/own_data_template_v1.yaml``; a temporary
    copy without ``schedule.iterations`` trains with the same ``--budget``, so the budget plans its iteration
    count (the template's 600 would cap it otherwise).
(c) **plain**: a baseline as a peer would write it (:func:`train_plain`, in this process): smp's
    ``DeepLabV3Plus(encoder_name="resnet18", encoder_weights=None)`` (random initialisation, as (a) and (b) here:
    the machines have no network for ImageNet weights), Adam lr 1e-3, ``CrossEntropyLoss(ignore_index=255)``,
    batches of 8 random crops (the tiles' size, or the template's crop size when the tiles are bigger; nothing
    else: no flips, scaling, jitter, class weights or schedule), inputs standardised by the per-band mean/std of
    the training tiles, read with rasterio from the tile index (``split`` column). Its clock starts before it reads
    the tiles; it stops before a step that would end past the budget (a batch without any labelled pixel is
    skipped). torch threads are left at torch's default, as ``pipelines/train.py`` leaves them; this script calls
    :func:`rs_deeplab.runtime.tuning.tune_process` at its entry point as train.py does.

Scoring: the LAST weights of each recipe (no checkpoint selection on the validation split), one confusion matrix
over every crop of the ``val`` split. (a) and (b): ``pipelines/evaluate.py <run>/last.pt --split val``, which
predicts each val tile whole in one forward pass (no sliding windows), standardised with the checkpoint's band
statistics, batched with ``pad_collate`` (zeros / label 255 up to the largest tile of the batch: none for
equal-sized tiles), argmax of the logits, pixels labelled 255 skipped. (c) does the same with its own statistics:
the same val rows of the index, whole tiles, the same ``pad_collate``, then the library's own
``rs_deeplab.training.engine.evaluate`` (the function evaluate.py calls) counts the matrix. smp needs sides
divisible by 16, so (c)'s batches are further padded with zeros / 255 to that (no-op for 128 px tiles; the padded
pixels are never scored).

IoU per class = TP / (TP + FP + FN); mIoU is the mean over the classes that have val pixels (the same classes for
every column). The majority baseline predicts the held-out split's most frequent class everywhere: its IoU on that
class is the class's share of the val pixels, 0 on the others.

Datasets: ``--data nb`` the two New Brunswick aerial scenes (RGB, 0.5 m; polygons in one GeoPackage, attribute
``Quatreclasses``, uncovered pixels background) tiled 128/64, the first scene for training (20 crops), the second
held out (35 crops);
``--data generated`` the sample scenes of ``docs/own_data.md`` generated and tiled as that page does;
``--data both``.

Prints per dataset the per-class IoU table (``class | val share | auto | template | plain | majority``), the mIoU,
each recipe's iterations and seconds (train.py's whole process for (a)/(b), the budgeted part for (c)), and the
checks: auto's mIoU above the template's and the plain baseline's, auto's IoU above the majority's on every class
with >= 1 % of the val pixels (background included). Exit 0 when every check holds on every dataset, 1 otherwise
(a recipe that failed fails its checks; one left out with ``--only`` skips them).

``PYTHONPATH=$PWD python bench/own_data_bench.py [--data nb|generated|both] [--budget 10m] [--only auto,plain]
[--seed N] [--json out.json] [--work DIR] [key=value ...]`` (``key=value`` go to the auto run only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT.parent / "shared" / "data" / "real" / "new_brunswick"
NB_SCENES = ("23322E759967N_clipped_1m_1of2.tif", "23322E759967N_clipped_1m_2of2.tif")
NB_CLASSES = "background,vegetation,water,road,building"
AUTO_CONFIG = ROOT / "configs" / "own_data.yaml"
TEMPLATE = ROOT / "bench" / "own_data_template_v1.yaml"
RECIPES = ("auto", "template", "plain")
DATASETS = ("nb", "generated")
MIN_SHARE = 0.01
"""Classes with at least this share of the val pixels must beat the majority baseline."""
PLAIN_BATCH = 8
PLAIN_LR = 1e-3
SMP_DIVISOR = 16
"""smp's DeepLabV3+ takes sides divisible by its output stride."""
IGNORE = 255


# --- pure helpers --------------------------------------------------------------------------------------------------


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN) of a (truth, prediction) confusion matrix; NaN where all three are 0."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def val_shares(val_counts: Sequence[float] | np.ndarray) -> np.ndarray:
    """Each class's share of the labelled val pixels."""
    counts = np.asarray(val_counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("the val split has no labelled pixel")
    return counts / counts.sum()


def heldout_majority(val_counts: Sequence[float] | np.ndarray) -> tuple[int, np.ndarray]:
    """The held-out split's most frequent class and the IoU of predicting it everywhere.

    Predicting class ``k`` on every val pixel gives IoU ``share[k]`` on ``k`` (its pixels over all pixels) and 0 on
    every other class with val pixels; NaN on classes without val pixels.
    """
    shares = val_shares(val_counts)
    k = int(np.argmax(shares))
    iou = np.where(shares > 0, 0.0, np.nan)
    iou[k] = shares[k]
    return k, iou


def mean_iou(iou: np.ndarray, shares: np.ndarray) -> float:
    """Mean IoU over the classes that have val pixels (the same class set for every recipe)."""
    return float(np.mean(np.asarray(iou, dtype=np.float64)[np.asarray(shares) > 0]))


@dataclass(frozen=True)
class Check:
    """One target of the issue: ``ok`` None when a recipe it needs was not asked for."""

    text: str
    ok: bool | None

    def line(self) -> str:
        mark = {True: "ok", False: "FAIL", None: "n/a"}[self.ok]
        return f"[{mark:>4}] {self.text}"


def run_checks(
    names: Sequence[str],
    shares: np.ndarray,
    ious: Mapping[str, np.ndarray | None],
    majority: np.ndarray,
    *,
    min_share: float = MIN_SHARE,
) -> list[Check]:
    """The issue's targets: auto beats template and plain in mIoU, and the majority on every class >= ``min_share``.

    Args:
        names: Class names, in index order.
        shares: Each class's share of the val pixels.
        ious: Per-class IoU of each recipe that was asked for; None for one that was asked for but failed. A recipe
            missing from the mapping was not asked for: its checks are skipped (``ok`` None).
        majority: Per-class IoU of the held-out majority baseline.
        min_share: Smallest val share of a class that must beat the majority.
    """
    auto = ious.get("auto")
    checks = []
    for other in ("template", "plain"):
        text, theirs = f"auto mIoU > {other} mIoU", ious.get(other)
        if "auto" not in ious or other not in ious:
            checks.append(Check(text, None))
        elif auto is None or theirs is None:
            checks.append(Check(f"{text} (a run failed)", False))
        else:
            a, b = mean_iou(auto, shares), mean_iou(theirs, shares)
            checks.append(Check(f"{text} ({a:.3f} vs {b:.3f})", a > b))
    for i, name in enumerate(names):
        if shares[i] < min_share:
            continue
        text = f"auto IoU > majority on {name} ({100 * shares[i]:.1f} % of val pixels)"
        if "auto" not in ious:
            checks.append(Check(text, None))
        elif auto is None:
            checks.append(Check(f"{text} (auto failed)", False))
        else:
            checks.append(Check(f"{text}: {auto[i]:.3f} vs {majority[i]:.3f}", bool(auto[i] > majority[i])))
    return checks


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None or not math.isfinite(value) else f"{value:>{width}.3f}"


def format_table(
    names: Sequence[str], shares: np.ndarray, ious: Mapping[str, np.ndarray | None], majority: np.ndarray
) -> str:
    """``class | val share | auto | template | plain | majority`` IoU, then an mIoU row ('-': not run or failed)."""
    width = max(12, *(len(n) for n in names))
    head = f"{'class':<{width}} {'val share':>9}" + "".join(f" {r:>8}" for r in RECIPES) + f" {'majority':>8}"
    lines = [head, "-" * len(head)]
    columns = [ious.get(r) for r in RECIPES]
    for i, name in enumerate(names):
        cells = "".join(f" {_cell(None if c is None else c[i], 8)}" for c in columns)
        lines.append(f"{name:<{width}} {shares[i]:>9.3f}{cells} {_cell(majority[i], 8)}")
    means = "".join(f" {_cell(None if c is None else mean_iou(c, shares), 8)}" for c in columns)
    lines.append(f"{'mIoU':<{width}} {'':>9}{means} {_cell(mean_iou(majority, shares), 8)}")
    return "\n".join(lines)


def template_without_iterations(text: str) -> str:
    """The template config as YAML without ``schedule.iterations`` (a budget then plans the count)."""
    config = yaml.safe_load(text)
    config.get("schedule", {}).pop("iterations", None)
    return yaml.safe_dump(config, sort_keys=False)


def class_names(classes: Any) -> list[str]:
    """Class names by id from the index's ``classes`` table (255 left out; a skipped id is ``class_<i>``)."""
    known = {int(i): str(n) for i, n in zip(classes.class_id, classes.name, strict=True) if int(i) != IGNORE}
    return [known.get(i, f"class_{i}") for i in range(max(known, default=-1) + 1)]


def _jsonable(values: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    return {n: (float(v) if math.isfinite(v) else None) for n, v in zip(names, values, strict=True)}


# --- data ----------------------------------------------------------------------------------------------------------


def run(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A Python script of this checkout, its output captured."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=_env())


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) if not path else f"{ROOT}{os.pathsep}{path}"}


def checked(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{(done.stdout + done.stderr)[-3000:]}")


def tile_nb(out: Path, work: Path, seed: int) -> None:
    """New Brunswick: the first scene trains, the second is held out; one GeoPackage, 128 px tiles, stride 64.

    A held-out scene, not ``--val-fraction``: the scenes (341 x 280 and 482 x 326 px) are smaller than the default
    hold-out block, so a 30 % fraction held out 30 of the 45 crops, leaving 15 training crops of one scene with
    0.08 % road. ``seed`` does not change a scene split (it seeds training).
    """
    del seed
    nb_options = ["--split", "train", "val", "--label-fill", "0", "--classes", NB_CLASSES]
    scenes = [str(NB / s) for s in NB_SCENES]
    tile(scenes, NB / "BakerLake_2017_clipped.gpkg", "Quatreclasses", nb_options, out, work, "tiling New Brunswick")


def tile_generated(out: Path, work: Path, seed: int) -> None:
    """docs/own_data.md's data: three generated 0.15 m RGB+NIR scenes, two of them tiled with a 25 % hold-out."""
    data = work / "my_data"
    ids = ["2_13", "2_14", "3_10"]
    sample = ["-m", "rs_deeplab.sample", "potsdam", str(data), "--ids", *ids, "--size", "640", "--gsd", "0.15"]
    checked(run([*sample, "--polygons", str(data / "landcover.gpkg")], work), "generating the sample")
    scenes = [str(data / "4_Ortho_RGBIR" / f"top_potsdam_{i}_RGBIR.tif") for i in ("2_13", "2_14")]
    held_out = ["--val-fraction", "0.25", "--block", "256", "--seed", str(seed)]
    tile(scenes, data / "landcover.gpkg", "class_name", held_out, out, work, "tiling the generated scenes")


def tile(scenes: list[str], labels: Path, field: str, options: list[str], out: Path, work: Path, what: str) -> None:
    """``pipelines/tile.py`` on ``scenes`` with the polygons ``labels`` (class attribute ``field``), in one process."""
    command = [str(ROOT / "pipelines" / "tile.py"), *scenes, "--labels", str(labels), "--label-field", field, *options]
    checked(
        run([*command, "--size", "128", "--stride", "64", "--out", str(out), "--workers", "1", "--quiet"], work), what
    )


def read_split(tiles: Path, split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(bands, H, W)`` images and ``(H, W)`` labels of the crops of ``split`` in the tile index, with rasterio."""
    import rasterio

    from rs_deeplab.tiling.index import read_index

    index, _ = read_index(tiles / "index.gpkg")
    rows = index[index.split == split]
    images, labels = [], []
    for image, label in zip(rows.image, rows.label, strict=True):
        with rasterio.open(tiles / image) as src:
            images.append(src.read())
        with rasterio.open(tiles / label) as src:
            labels.append(src.read(1))
    return images, labels


# --- recipes -------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One recipe's result: its val confusion matrix (None: it failed), iterations, seconds, error text."""

    cm: np.ndarray | None
    iterations: int | None
    seconds: float | None
    error: str | None = None


def train_config(
    config: Path, tiles: Path, work: Path, name: str, seed: int, budget: str, overrides: Sequence[str] = ()
) -> Outcome:
    """Train ``config`` with train.py for ``budget``, then score its last.pt on val with evaluate.py."""
    run_dir = work / name
    start = time.perf_counter()
    done = run(
        [
            str(ROOT / "pipelines" / "train.py"),
            str(config),
            f"data.root={tiles}",
            f"work_dir={run_dir}",
            f"seed={seed}",
            *overrides,
            "--budget",
            budget,
        ],
        work,
    )
    seconds = time.perf_counter() - start
    (work / f"{name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return Outcome(None, None, seconds, f"train.py exit {done.returncode}: {done.stderr[-2000:]}")
    out = work / f"{name}_eval"
    scored = run(
        [
            str(ROOT / "pipelines" / "evaluate.py"),
            str(run_dir / "last.pt"),
            "--split",
            "val",
            "--out",
            str(out),
            "--quiet",
        ],
        work,
    )
    if scored.returncode != 0:
        return Outcome(None, None, seconds, f"evaluate.py exit {scored.returncode}: {scored.stderr[-2000:]}")
    report = json.loads((out / "val_scores.json").read_text())
    return Outcome(np.asarray(report["confusion_matrix"], dtype=np.int64), int(report["iteration"]), seconds)


def plain_crop(images: Sequence[np.ndarray]) -> int:
    """The tiles' size, or the template's crop size when the tiles are bigger; a multiple of 16 for smp."""
    template = int(yaml.safe_load(TEMPLATE.read_text())["data"]["crop_size"])
    side = min(template, *(min(img.shape[1:]) for img in images))
    return max(SMP_DIVISOR, side // SMP_DIVISOR * SMP_DIVISOR)


def train_plain(tiles: Path, num_classes: int, seed: int, budget_s: float) -> Outcome:
    """The plain baseline (c): train for ``budget_s`` from its start, data reading included; score its last weights.

    See the module docstring for the recipe and how its scoring equals evaluate.py's.
    """
    import segmentation_models_pytorch as smp
    import torch
    from torch import nn

    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels = read_split(tiles, "train")
    pixels = np.concatenate([img.reshape(img.shape[0], -1) for img in images], axis=1).astype(np.float64)
    mean, std = pixels.mean(axis=1), np.maximum(pixels.std(axis=1), 1e-6)
    norm = [((img - mean[:, None, None]) / std[:, None, None]).astype(np.float32) for img in images]
    crop = plain_crop(images)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = smp.DeepLabV3Plus(
        encoder_name="resnet18", encoder_weights=None, in_channels=len(mean), classes=num_classes
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=PLAIN_LR)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE)
    model.train()
    iterations, step_s = 0, 0.0
    while iterations == 0 or time.perf_counter() - start + step_s <= budget_s:
        began = time.perf_counter()
        x, y = random_crops(norm, labels, crop, PLAIN_BATCH, rng)
        if (y != IGNORE).any():
            loss = criterion(model(torch.from_numpy(x).to(device)), torch.from_numpy(y).long().to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        iterations += 1
        step_s = time.perf_counter() - began
    seconds = time.perf_counter() - start
    val_images, val_labels = read_split(tiles, "val")
    cm = score_plain(model, val_images, val_labels, mean, std, num_classes, device)
    return Outcome(cm, iterations, seconds)


def random_crops(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], crop: int, batch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` crops of ``crop`` pixels, each from a uniformly drawn tile at a uniform offset."""
    xs, ys = [], []
    for i in rng.integers(len(images), size=batch):
        img, lab = images[i], labels[i]
        r = int(rng.integers(img.shape[1] - crop + 1))
        c = int(rng.integers(img.shape[2] - crop + 1))
        xs.append(img[:, r : r + crop, c : c + crop])
        ys.append(lab[r : r + crop, c : c + crop])
    return np.stack(xs), np.stack(ys)


def score_plain(
    model: Any,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    mean: np.ndarray,
    std: np.ndarray,
    num_classes: int,
    device: Any,
) -> np.ndarray:
    """Confusion matrix of whole val tiles, batched and counted as evaluate.py does (module docstring)."""
    import torch
    import torch.nn.functional as F

    from rs_deeplab.training.datasets.sampling import pad_collate
    from rs_deeplab.training.engine import evaluate

    def sample(img: np.ndarray, lab: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        norm = ((img - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
        return torch.from_numpy(norm), torch.from_numpy(np.ascontiguousarray(lab))

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in range(0, len(images), PLAIN_BATCH):
            chunk = zip(images[k : k + PLAIN_BATCH], labels[k : k + PLAIN_BATCH], strict=True)
            x, y = pad_collate([sample(img, lab) for img, lab in chunk])
            dh, dw = (-x.shape[2]) % SMP_DIVISOR, (-x.shape[3]) % SMP_DIVISOR
            yield F.pad(x, (0, dw, 0, dh)), F.pad(y, (0, dw, 0, dh), value=IGNORE)

    loader = cast(Any, batches())  # evaluate() only iterates over its loader
    return np.asarray(evaluate(model, loader, num_classes, device=device), dtype=np.int64)


def recipe_record(outcome: Outcome, names: Sequence[str], shares: np.ndarray) -> dict[str, Any]:
    """A recipe's numbers for the JSON file."""
    iou = None if outcome.cm is None else iou_from_confusion(outcome.cm)
    return {
        "iou": None if iou is None else _jsonable(iou, names),
        "mIoU": None if iou is None else mean_iou(iou, shares),
        "iterations": outcome.iterations,
        "seconds": outcome.seconds,
        "error": outcome.error,
        "confusion_matrix": None if outcome.cm is None else outcome.cm.tolist(),
    }


# --- one dataset ---------------------------------------------------------------------------------------------------


def bench_dataset(data: str, work: Path, args: argparse.Namespace, only: Sequence[str]) -> dict[str, Any]:
    """Tile ``data``, train and score each recipe in ``only``, print the table and checks; the JSON record."""
    from rs_deeplab.cli.durations import parse_duration
    from rs_deeplab.tiling.index import read_index

    work.mkdir(parents=True, exist_ok=True)
    tiles = work / "tiles"
    (tile_nb if data == "nb" else tile_generated)(tiles, work, args.seed)
    index, classes = read_index(tiles / "index.gpkg")
    names = class_names(classes)
    val = index[index.split == "val"]
    counts = np.array([val[f"n_{n}"].sum() if f"n_{n}" in val else 0 for n in names], dtype=np.float64)
    shares = val_shares(counts)
    majority_class, majority = heldout_majority(counts)
    outcomes: dict[str, Outcome] = {}
    for recipe in only:
        print(f"[{data}] training {recipe} for {args.budget} ...", file=sys.stderr, flush=True)
        if recipe == "auto":
            outcomes[recipe] = train_config(AUTO_CONFIG, tiles, work, "auto", args.seed, args.budget, args.overrides)
        elif recipe == "template":
            config = work / "template_budget.yaml"
            config.write_text(template_without_iterations(TEMPLATE.read_text()))
            outcomes[recipe] = train_config(config, tiles, work, "template", args.seed, args.budget)
        else:
            outcomes[recipe] = train_plain(tiles, len(names), args.seed, parse_duration(args.budget))
        if outcomes[recipe].error:
            print(f"[{data}] {recipe} FAILED: {outcomes[recipe].error}", file=sys.stderr, flush=True)
    ious = {r: None if o.cm is None else iou_from_confusion(o.cm) for r, o in outcomes.items()}
    mismatch = [r for r, o in outcomes.items() if o.cm is not None and not np.array_equal(o.cm.sum(axis=1), counts)]
    checks = run_checks(names, shares, ious, majority)
    n_train = int((index.split == "train").sum())
    print(f"\n== {data}: {n_train} train / {len(val)} val crops, budget {args.budget}, seed {args.seed} ==")
    print(format_table(names, shares, ious, majority))
    print(f"majority (held-out split): {names[majority_class]}")
    for recipe, o in outcomes.items():
        its, secs = "-" if o.iterations is None else o.iterations, "-" if o.seconds is None else f"{o.seconds:.1f}"
        print(f"{recipe:<9} {its!s:>6} iterations {secs:>7} s" + ("  (FAILED)" if o.error else ""))
    if mismatch:
        print(f"WARNING: val pixel counts of {', '.join(mismatch)} differ from the index's", file=sys.stderr)
    for check in checks:
        print(check.line())
    return {
        "classes": names,
        "train_crops": n_train,
        "val_crops": len(val),
        "val_pixels": _jsonable(counts, names),
        "val_share": _jsonable(shares, names),
        "majority": {
            "class": names[majority_class],
            "iou": _jsonable(majority, names),
            "mIoU": mean_iou(majority, shares),
        },
        "recipes": {r: recipe_record(o, names, shares) for r, o in outcomes.items()},
        "checks": [{"check": c.text, "ok": c.ok} for c in checks],
        "ok": all(c.ok is not False for c in checks) and not any(o.error for o in outcomes.values()),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=[*DATASETS, "both"], default="nb")
    parser.add_argument("--budget", default="10m", help="wall-clock training budget of each recipe (10m)")
    parser.add_argument("--only", default=",".join(RECIPES), help="comma-separated recipes to run (all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation blocks and of training (0)")
    parser.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    parser.add_argument("--work", type=Path, default=None, help="keep tiles and runs here (default: a temp folder)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of configs/own_data.yaml (auto run only)")
    args = parser.parse_intermixed_args(argv)
    from rs_deeplab.cli.durations import parse_duration

    try:
        parse_duration(args.budget)
    except ValueError as exc:
        parser.error(f"--budget: {exc}")
    args.recipes = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = sorted(set(args.recipes) - set(RECIPES))
    if unknown or not args.recipes:
        parser.error(f"--only: {', '.join(unknown) or 'nothing'}; choose from {', '.join(RECIPES)}")
    args.recipes = [r for r in RECIPES if r in args.recipes]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    datasets = list(DATASETS) if args.data == "both" else [args.data]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="own_data_bench-") as tmp:
        work = args.work or Path(tmp)
        for data in datasets:
            results[data] = bench_dataset(data, work / data, args, args.recipes)
    ok = all(r["ok"] for r in results.values())
    if args.json is not None:
        record = {
            "budget": args.budget,
            "seed": args.seed,
            "recipes": args.recipes,
            "overrides": args.overrides,
            "datasets": results,
            "ok": ok,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nall checks hold on {', '.join(datasets)}: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    from rs_deeplab.runtime.tuning import tune_process

    tune_process()  # as pipelines/train.py does: the plain run gets the same process settings
    sys.exit(main())
