"""Demo training benchmark: does ``configs/demo.yaml`` learn, and how fast, on this machine's CPU cores.

Runs the stages of ``make demo`` up to training in this one process, with the demo's own helpers
(``pipelines/demo.py``): writes the synthetic Potsdam-layout scenes, tiles them with the Potsdam preset, trains
``configs/demo.yaml`` and scores the last weights on the validation split (crops of the held-out scene). Prints
the held-out mIoU and per-class IoU, the training iterations/s, the training stage's wall time (data set-up,
iterations, evaluations and checkpoints: everything ``train_experiment`` does) and the load average, and whether
the training issue's targets are met: mIoU >= 0.70 and training within 6 minutes on 2 CPU cores.

Run on a quiet machine: ``PYTHONPATH=$PWD python bench/train_bench.py`` (``--iterations 20`` for a quick look;
``key=value`` arguments override the config as in ``pipelines/demo.py``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pipelines.demo import GSD, SIZE, TRAIN_IDS, demo_config, prepare_data
from rs_deeplab.cli.console import setup_logging
from rs_deeplab.runtime.tuning import tune_malloc
from rs_deeplab.training.experiment import train_experiment

MIOU_TARGET = 0.70
TIME_TARGET_S = 6 * 60.0


def last_evaluation(metrics_csv: Path) -> dict[str, float]:
    """The scores of the last ``val`` row of a run's ``metrics.csv`` (mIoU, OA and ``IoU/<class>``)."""
    with metrics_csv.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val"]
    if not rows:
        raise SystemExit(f"{metrics_csv}: no evaluation was recorded; check train.eval_every")
    row = rows[-1]
    return {k: float(v) for k, v in row.items() if k in ("iteration", "mIoU", "OA") or k.startswith("IoU/")}


class StepClock(logging.Handler):
    """Times of the training log lines (``iter N  loss``) and of the evaluations, from the train logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.steps: list[tuple[float, int]] = []
        self.evaluations: list[tuple[float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Record one log line's time."""
        message = record.getMessage()
        found = re.match(r"iter (\d+)  loss", message)
        if found:
            self.steps.append((record.created, int(found.group(1))))
        elif "val mIoU" in message and self.steps:
            self.evaluations.append((self.steps[-1][0], record.created))  # logged right before evaluating

    def iteration_rate(self) -> float | None:
        """Iterations/s between the first and the last training log line, evaluations taken out."""
        if len(self.steps) < 2:
            return None
        (t0, i0), (t1, i1) = self.steps[0], self.steps[-1]
        evaluating = sum(end - begin for begin, end in self.evaluations if t0 <= begin and end <= t1)
        return (i1 - i0) / max(t1 - t0 - evaluating, 1e-9)


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report; returns 0 whether or not the targets are met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rs_deeplab_train_bench")
    parser.add_argument("--iterations", type=int, help="override schedule.iterations (the targets need the default)")
    parser.add_argument("--size", type=int, default=SIZE, help=f"sample scene side in pixels ({SIZE})")
    parser.add_argument("--gsd", type=float, default=GSD, help=f"sample scene pixel size in metres ({GSD})")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of configs/demo.yaml")
    args = parser.parse_args(argv)
    setup_logging(quiet=False, verbose=False)
    tune_malloc()  # as pipelines/train.py and make demo do (RS_DEEPLAB_MALLOC_TUNING=0 for glibc's defaults)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + ([f"schedule.iterations={args.iterations}"] if args.iterations else [])
    overrides.append("resume=false")  # a benchmark always trains from scratch
    cfg = demo_config(args.out, overrides)

    for stale in ("potsdam", "tiles", "run"):  # a run with other settings may have left them
        shutil.rmtree(args.out / stale, ignore_errors=True)
    start = time.perf_counter()
    _, tiles, _ = prepare_data(args.out, size=args.size, gsd=args.gsd, quiet=True)
    prepared = time.perf_counter() - start
    load_before = load()
    clock = StepClock()
    train_log = logging.getLogger("rs_deeplab.train")
    train_log.addHandler(clock)
    train_log.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        result = train_experiment(cfg)
    finally:
        train_log.removeHandler(clock)
    seconds = time.perf_counter() - start
    rate = clock.iteration_rate()
    scores = last_evaluation(result.run_dir / "metrics.csv")
    iterations = cfg.schedule.iterations

    m, d = cfg.model, cfg.data
    print(
        f"machine: {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable, torch {torch.get_num_threads()} "
        f"threads; load average before training {load_before}, after {load()}"
    )
    print(
        f"data: {len(TRAIN_IDS)} training scenes and 1 held out, {args.size}² px at {args.gsd} m, "
        f"{tiles.crops} crops, written and tiled in {prepared:.1f} s"
    )
    print(
        f"model: {m.name} {m.backbone} os{m.output_stride}; crop {d.crop_size}, batch {d.batch_size}, "
        f"{cfg.optimizer.name} lr {cfg.optimizer.lr}, {iterations} iterations"
    )
    print(
        f"training: {seconds:.1f} s wall ({seconds / 60:.2f} min) for {iterations} iterations: "
        f"{iterations / seconds:.3f} iterations/s, {seconds / iterations:.2f} s/iteration overall "
        f"(set-up, {len(clock.evaluations)} evaluations and checkpoints included)"
    )
    if rate is not None:
        evaluating = sum(end - begin for begin, end in clock.evaluations)
        print(
            f"  while iterating: {rate:.3f} iterations/s, {1 / rate:.2f} s/iteration; "
            f"evaluations took {evaluating:.1f} s in all"
        )
    print(
        f"held-out val mIoU {scores['mIoU']:.4f} at iteration {scores['iteration']:.0f}, "
        f"OA {scores['OA']:.4f}; best {result.best_miou:.4f}"
    )
    for key, value in scores.items():
        if key.startswith("IoU/"):
            print(f"  IoU {key[4:]:<20} {value:.4f}")
    miou_ok, time_ok = scores["mIoU"] >= MIOU_TARGET, seconds <= TIME_TARGET_S
    print(
        f"target mIoU >= {MIOU_TARGET:.2f}: {'met' if miou_ok else 'NOT met'}; "
        f"training <= {TIME_TARGET_S / 60:.0f} min: {'met' if time_ok else 'NOT met'}"
    )
    print(f"outputs: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
