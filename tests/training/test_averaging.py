"""``train.ema``: a moving average of the weights is what training evaluates and saves, and it resumes bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pipelines import evaluate as evaluate_cli
from pipelines import train as train_cli
from rs_deeplab.training.averaging import TRAIN_WEIGHTS_KEY, UPDATES_KEY, WeightAverage, warm_decay
from rs_deeplab.training.checkpoint import load_checkpoint, save_checkpoint
from tests.badkit import ENV
from tests.killkit import kill_after_checkpoint
from tests.trainkit import make_tiles, one_thread, write_config

SECTIONS = {
    "schedule": {"iterations": 10},
    "train": {"eval_every": 5, "checkpoint_every": 2, "log_every": 1, "device": "cpu", "ema": 0.9},
}


def test_the_average_follows_the_closed_form_and_copies_integer_buffers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = WeightAverage(model, 0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 3))  # training mode: BN's running statistics and its batch counter move
        average.update()
        d = warm_decay(0.5, step)
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                expected[key] = d * expected[key] + (1 - d) * value
    got = average.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)
    assert int(got["1.num_batches_tracked"]) == 5  # copied, not averaged
    assert not any(p.requires_grad for p in average.model.parameters()) and not average.model.training
    assert warm_decay(0.999, 1) == pytest.approx(2 / 11) and warm_decay(0.999, 10**6) == 0.999
    with pytest.raises(ValueError, match=r"train\.ema"):
        WeightAverage(model, 1.0)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiles(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
def test_the_average_is_evaluated_saved_and_resumed_bit_for_bit(
    tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # only the killed run needs a process of its own: the undisturbed run and the resume run in this process, on one
    # thread as the script's OMP_NUM_THREADS=1 (the same floating-point sums)
    full = write_config(tmp_path / "full.yaml", tiles, tmp_path / "full", **SECTIONS)
    with one_thread():
        assert train_cli.main([str(full)]) == 0, capsys.readouterr().err[-3000:]
    assert "moving average of the weights (train.ema 0.9)" in capsys.readouterr().err

    cfg = write_config(tmp_path / "killed.yaml", tiles, tmp_path / "killed", **SECTIONS)
    last = tmp_path / "killed" / "last.pt"
    kill_after_checkpoint(cfg, last, ENV)
    killed_at = load_checkpoint(last)["iteration"]
    assert killed_at < 10, "the run finished before it could be killed; the test proves nothing"
    with one_thread():
        assert train_cli.main([str(cfg)]) == 0, capsys.readouterr().err[-3000:]
    assert f"resuming from {last} at iteration {killed_at}" in capsys.readouterr().err

    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(last)
    assert a[UPDATES_KEY] == b[UPDATES_KEY] == 10
    for weights in ("model", TRAIN_WEIGHTS_KEY):  # the average and the weights training goes on from
        assert a[weights].keys() == b[weights].keys()
        for key in a[weights]:
            torch.testing.assert_close(a[weights][key], b[weights][key], rtol=0, atol=1e-6, msg=f"{weights} {key}")
    moved = [k for k, v in a["model"].items() if v.is_floating_point() and not torch.equal(v, a[TRAIN_WEIGHTS_KEY][k])]
    assert len(moved) > len(a["model"]) // 2, "the saved model is not an average: it equals the training weights"

    # training evaluated the average: evaluate.py on best.pt ("model": the average) scores what training measured,
    # and the training weights of the same checkpoint score differently
    best = tmp_path / "full" / "best.pt"
    state = load_checkpoint(best)
    assert evaluate_cli.main([str(best), "--out", str(tmp_path / "avg")]) == 0
    averaged = json.loads((tmp_path / "avg" / "val_scores.json").read_text())
    assert averaged["mIoU"] == pytest.approx(state["val_miou"], abs=1e-6)
    raw = tmp_path / "raw.pt"
    save_checkpoint(raw, {**state, "model": state[TRAIN_WEIGHTS_KEY]})
    assert evaluate_cli.main([str(raw), "--out", str(tmp_path / "raw")]) == 0
    trained = json.loads((tmp_path / "raw" / "val_scores.json").read_text())
    assert trained["confusion_matrix"] != averaged["confusion_matrix"]


@pytest.mark.parametrize("value", ["1.0", "-0.1", "fast"])
def test_a_bad_decay_is_one_line(tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "a.yaml", tmp_path / "tiles", tmp_path / "run")
    assert train_cli.main([str(cfg), f"train.ema={value}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "train.ema" in lines[0], lines
    assert not (tmp_path / "run").exists()
