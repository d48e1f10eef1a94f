"""What a run writes besides checkpoints: metrics.csv rows that survive a resume, TensorBoard events, PNG plots."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rs_deeplab.evaluation.metrics import Scores, confusion_matrix, scores
from rs_deeplab.training.runlog import RunLog, plot_confusion, plot_curves

NAMES = ["road", "building", "tree"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def evaluation(seed: int) -> tuple[np.ndarray, Scores]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, 500)
    pred = np.where(rng.random(500) < 0.7, truth, rng.integers(0, 3, 500))
    cm = confusion_matrix(pred, truth, 3)
    return cm, scores(cm)


def run(log: RunLog, iterations: range, eval_every: int) -> None:
    for it in iterations:
        log.train(it, loss=1.0 / it, lr=0.01 * (1 - it / 100))
        if it % eval_every == 0:
            log.evaluation(it, evaluation(it)[1])


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_rows_are_readable_and_a_resume_drops_what_came_after_the_checkpoint(tmp_path: Path) -> None:
    log = RunLog(tmp_path, NAMES, start_iteration=0, enabled=True)
    run(log, range(1, 9), eval_every=4)
    log.close()  # the process dies at iteration 8; its last checkpoint was at iteration 4
    first = read_rows(tmp_path / "metrics.csv")
    assert [(r["iteration"], r["split"]) for r in first if r["split"] == "val"] == [("4", "val"), ("8", "val")]
    assert len(first) == 10

    resumed = RunLog(tmp_path, NAMES, start_iteration=4, enabled=True)
    run(resumed, range(5, 9), eval_every=4)
    resumed.close()
    rows = read_rows(tmp_path / "metrics.csv")
    assert rows == resumed.rows()
    train = [int(r["iteration"]) for r in rows if r["split"] == "train"]
    assert train == list(range(1, 9))  # each iteration once: nothing lost, nothing doubled
    assert rows[:5] == first[:5]  # rows up to the checkpoint are kept as they were
    val = [r for r in rows if r["split"] == "val"]
    assert [r["iteration"] for r in val] == ["4", "8"]
    expected = evaluation(8)[1]
    assert float(val[1]["mIoU"]) == pytest.approx(expected.miou, abs=1e-6)
    for name, iou in zip(NAMES, expected.iou, strict=True):
        assert float(val[1][f"IoU/{name}"]) == pytest.approx(iou, abs=1e-6)
    assert float(rows[0]["loss"]) == pytest.approx(1.0) and rows[0]["mIoU"] == ""
    assert list((tmp_path / "tensorboard").iterdir())  # event files beside the CSV


def test_a_rank_that_does_not_log_writes_nothing(tmp_path: Path) -> None:
    log = RunLog(tmp_path, NAMES, start_iteration=0, enabled=False)
    run(log, range(1, 5), eval_every=2)
    log.close()
    assert list(tmp_path.iterdir()) == []


def png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_curves_and_confusion_are_pngs(tmp_path: Path) -> None:
    log = RunLog(tmp_path, NAMES, start_iteration=0, enabled=True)
    run(log, range(1, 13), eval_every=3)
    log.close()
    curves = plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    width, height = png_size(curves)
    assert width > 2 * height  # three panels side by side
    cm = evaluation(1)[0]
    cm[2] = 0  # a class without truth pixels must not divide by zero
    small = png_size(plot_confusion(cm, NAMES, tmp_path / "confusion_matrix.png"))
    many = [f"class_{i}" for i in range(30)]  # too many classes for numbers in the cells
    big = png_size(plot_confusion(np.eye(30, dtype=np.int64) * 5, many, tmp_path / "confusion_30.png"))
    assert big[0] > small[0] and big[1] > small[1]  # the figure grows with the class count
