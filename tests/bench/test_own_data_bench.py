"""``bench/own_data_bench.py``: its scoring helpers, the held-out majority, the checks, and one short plain run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from rs_deeplab.config.schema import load_config
from rs_deeplab.evaluation.metrics import confusion_matrix, scores
from tests.bench.scripts import load_script
from tests.conftest import REAL_DATA

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "own_data_bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT)


def test_iou_from_confusion_matches_the_project_scores(bench: ModuleType) -> None:
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    iou = bench.iou_from_confusion(cm)
    np.testing.assert_allclose(iou[:2], [5 / 8, 3 / 6])
    assert np.isnan(iou[2])  # absent from truth and prediction
    np.testing.assert_allclose(iou, scores(cm).iou, equal_nan=True)


def test_majority_is_the_held_out_splits_class(bench: ModuleType) -> None:
    """The val split's most frequent class (not the training split's): IoU = its val share there, 0 elsewhere."""
    val = np.array([600, 100, 300, 0])
    k, iou = bench.heldout_majority(val)
    assert k == 0
    np.testing.assert_allclose(iou[:3], [0.6, 0.0, 0.0])
    assert np.isnan(iou[3])
    assert bench.mean_iou(iou, bench.val_shares(val)) == pytest.approx(0.2)  # over the 3 classes with val pixels


def _ious(auto: list[float]) -> dict[str, np.ndarray | None]:
    return {"auto": np.array(auto), "template": np.array([0.5, 0.1, 0.1, 0.0]), "plain": np.array([0.3] * 4)}


SHARES = np.array([0.5, 0.3, 0.195, 0.005])
MAJORITY = np.array([0.5, 0.0, 0.0, 0.0])
NAMES = ["background", "tree", "water", "car"]


def test_checks_hold_when_auto_wins_everywhere_that_counts(bench: ModuleType) -> None:
    checks = bench.run_checks(NAMES, SHARES, _ious([0.6, 0.5, 0.4, 0.0]), MAJORITY)
    assert [c.ok for c in checks] == [True, True, True, True, True]  # car (0.5 %) is not checked
    assert not any("car" in c.text for c in checks)


def test_check_fails_when_auto_loses_to_the_majority_on_one_class(bench: ModuleType) -> None:
    checks = bench.run_checks(NAMES, SHARES, _ious([0.45, 0.9, 0.9, 0.0]), MAJORITY)
    failed = [c.text for c in checks if c.ok is False]
    assert len(failed) == 1 and "background" in failed[0]


def test_check_fails_when_auto_loses_in_miou(bench: ModuleType) -> None:
    ious = _ious([0.6, 0.3, 0.3, 0.0])
    ious["plain"] = np.array([0.6, 0.6, 0.6, 0.6])
    checks = bench.run_checks(NAMES, SHARES, ious, MAJORITY)
    assert [c.ok for c in checks if "mIoU" in c.text] == [True, False]


def test_checks_skip_recipes_left_out_and_fail_failed_ones(bench: ModuleType) -> None:
    only_plain = bench.run_checks(NAMES, SHARES, {"plain": np.array([0.4] * 4)}, MAJORITY)
    assert {c.ok for c in only_plain} == {None}
    auto_failed = bench.run_checks(NAMES, SHARES, {"auto": None, "plain": np.array([0.4] * 4)}, MAJORITY)
    assert [c.ok for c in auto_failed] == [None, False, False, False, False]


def test_table_shows_every_column_and_the_miou(bench: ModuleType) -> None:
    table = bench.format_table(NAMES, SHARES, {"auto": np.array([0.6, 0.5, 0.4, 0.0]), "plain": None}, MAJORITY)
    lines = table.splitlines()
    assert lines[0].split() == ["class", "val", "share", "auto", "template", "plain", "majority"]
    assert lines[2].split() == ["background", "0.500", "0.600", "-", "-", "0.500"]
    assert lines[-1].split() == ["mIoU", "0.375", "-", "-", "0.125"]


def test_template_is_the_old_one_and_its_copy_lets_the_budget_plan(bench: ModuleType, tmp_path: Path) -> None:
    old = load_config(bench.TEMPLATE)
    assert old.schedule.iterations == 600 and old.data.crop_size == 128 and old.train.loss == "ce+dice"
    copy = tmp_path / "t.yaml"
    copy.write_text(bench.template_without_iterations(bench.TEMPLATE.read_text()))
    cfg = load_config(copy, ["schedule.budget=1m"])
    assert "iterations" not in cfg.schedule.model_fields_set
    assert cfg.model_dump(exclude={"schedule"}) == old.model_dump(exclude={"schedule"})
    assert cfg.schedule.min_lr == old.schedule.min_lr and cfg.schedule.warmup_iters == old.schedule.warmup_iters


def test_plain_crop_is_the_tile_or_the_templates_size(bench: ModuleType) -> None:
    assert bench.plain_crop([np.zeros((3, 128, 128))]) == 128
    assert bench.plain_crop([np.zeros((3, 512, 512))]) == 128
    assert bench.plain_crop([np.zeros((3, 100, 120))]) == 96  # smp needs multiples of 16


def test_plain_scoring_is_whole_tiles_ignoring_255_and_padding(bench: ModuleType) -> None:
    """Tiles of 40 and 24 px (not multiples of 16): the padding is never scored, every labelled pixel is."""
    rng = np.random.default_rng(0)
    model = torch.nn.Conv2d(2, 3, 1)
    images = [rng.integers(0, 255, size=(2, s, s)).astype(np.uint8) for s in (40, 24, 40)]
    labels = [rng.integers(0, 3, size=(s, s)).astype(np.uint8) for s in (40, 24, 40)]
    labels[1][:5] = 255
    mean, std = np.array([100.0, 50.0]), np.array([20.0, 10.0])
    got = bench.score_plain(model, images, labels, mean, std, 3, torch.device("cpu"))
    expected = np.zeros((3, 3), dtype=np.int64)
    with torch.no_grad():
        for img, lab in zip(images, labels, strict=True):
            x = torch.from_numpy(((img - mean[:, None, None]) / std[:, None, None]).astype(np.float32))
            expected += confusion_matrix(model(x[None]).argmax(1)[0].numpy(), lab, 3)
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == sum(int((lab != 255).sum()) for lab in labels)


PLAIN_BUDGET = 8
"""Seconds of the plain run: a step or more, within the budget (the bench's own default is ten minutes)."""


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "new_brunswick").is_dir(), reason="no New Brunswick sample beside the clone")
def test_plain_run_on_new_brunswick_writes_its_numbers(tmp_path: Path) -> None:
    """``--only plain`` with a short budget: the JSON holds the plain run and the held-out majority (~15 s)."""
    out = tmp_path / "odb.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--data",
            "nb",
            "--budget",
            f"{PLAIN_BUDGET}s",
            "--only",
            "plain",
            "--json",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "majority (held-out split): vegetation" in proc.stdout  # the held-out scene is 58 % vegetation
    nb = json.loads(out.read_text())["datasets"]["nb"]
    assert list(nb["recipes"]) == ["plain"]
    plain = nb["recipes"]["plain"]
    assert plain["error"] is None and plain["iterations"] >= 1 and plain["seconds"] <= PLAIN_BUDGET + 5
    val = np.array([nb["val_pixels"][n] for n in nb["classes"]])
    np.testing.assert_array_equal(np.asarray(plain["confusion_matrix"]).sum(axis=1), val)
    assert sum(nb["val_share"].values()) == pytest.approx(1.0)
    from rs_deeplab.tiling.index import read_index

    tiles, _ = read_index(tmp_path / "work" / "nb" / "tiles" / "index.gpkg")
    train = [tiles[tiles.split == "train"][f"n_{n}"].sum() for n in nb["classes"]]
    majority = nb["classes"][int(np.argmax(val))]
    assert nb["majority"]["class"] == majority != nb["classes"][int(np.argmax(train))]  # held-out, not train's
    assert nb["majority"]["iou"][majority] == pytest.approx(nb["val_share"][majority])
    assert all(c["ok"] is None for c in nb["checks"])  # no auto run: nothing to check
