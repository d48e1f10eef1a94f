"""Checkpoints: atomic save, round trip of a real model's training state, RNG states that replay draws, bad files."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from rs_deeplab.cli.errors import CheckpointError, DiskFullError
from rs_deeplab.training import checkpoint
from rs_deeplab.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def training_state(seed: int = 0) -> dict[str, Any]:
    """A real model and optimiser after one step, with every key a checkpoint must hold."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    state: dict[str, Any] = {key: None for key in checkpoint.REQUIRED_KEYS if key != "format_version"}
    state.update(
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        config={"model": {"name": "deeplabv3plus"}, "data": {"bands": [1, 2, 3]}},
        class_names=["road", "building"],
        band_stats={"mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]},
        iteration=7,
    )
    return state


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_keeps_every_tensor_and_value(tmp_path: Path) -> None:
    state = training_state()
    path = save_checkpoint(tmp_path / "last.pt", state)
    assert path == tmp_path / "last.pt"
    assert os.listdir(tmp_path) == ["last.pt"]  # written under a temporary name, then renamed: nothing else left
    loaded = load_checkpoint(path)
    assert "format_version" in loaded
    assert_same({k: v for k, v in loaded.items() if k != "format_version"}, state)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    model.load_state_dict(loaded["model"])  # what training and inference do with it


class FailsHalfWay(torch.Tensor):
    """A tensor whose pickling fails, as a full disk or a killed writer would, after part of the file is out."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise OSError(28, "No space left on device")


def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "last.pt", training_state(seed=1))
    before = path.read_bytes()
    state = training_state(seed=2)
    state["model"] = {**state["model"], "zz_last": torch.zeros(3).as_subclass(FailsHalfWay)}
    with pytest.raises(DiskFullError, match=r"last\.pt: cannot be written: no space left on the device"):
        save_checkpoint(path, state)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]
    assert load_checkpoint(path)["iteration"] == 7


def draws() -> tuple[float, np.ndarray, torch.Tensor]:
    return random.random(), np.random.rand(4), torch.rand(4)


def test_rng_state_saved_in_a_checkpoint_replays_the_same_draws(tmp_path: Path) -> None:
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    draws()  # somewhere in the middle of a run
    path = save_checkpoint(tmp_path / "last.pt", {**training_state(), "rng": rng_state()})
    expected = [draws() for _ in range(3)]
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)  # a restarted process starts elsewhere
    assert draws()[0] != expected[0][0]
    set_rng_state(load_checkpoint(path)["rng"])
    for want in expected:
        got = draws()
        assert got[0] == want[0]
        np.testing.assert_array_equal(got[1], want[1])
        assert torch.equal(got[2], want[2])


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9])
def test_a_truncated_checkpoint_is_one_checkpoint_error(tmp_path: Path, keep: float) -> None:
    data = save_checkpoint(tmp_path / "best.pt", training_state()).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as failure:
        load_checkpoint(cut)
    message = str(failure.value)
    assert str(cut) in message and "\n" not in message
    assert failure.value.__cause__ is None and failure.value.__suppress_context__  # one error, no torch traceback


def test_missing_and_foreign_files_are_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "partial.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")
