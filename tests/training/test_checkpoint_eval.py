"""A checkpoint scored on a split of its own data: what training measured, read back once from the card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines import evaluate as evaluate_cli
from rs_deeplab.cli.errors import InputError
from rs_deeplab.training.checkpoint import load_checkpoint
from rs_deeplab.training.checkpoint_eval import evaluate_checkpoint
from tests import trainkit


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`trainkit.train_tiny`'s checkpoint, trained on the CPU also where a GPU is present.

    Scoring it on the CPU must then give what its training's validation measured to 1e-6 (same model, same crops,
    same fp32 kernels). A GPU-trained checkpoint was validated in bf16, where near-tie pixels of a 4-iteration model
    fall either way: no tolerance would be both safe and tight, so the comparison keeps one device.
    """
    from rs_deeplab.config.schema import load_config
    from rs_deeplab.training.experiment import train_experiment

    folder = tmp_path_factory.mktemp("trained_cpu")
    tiles = trainkit.make_tiles(folder)
    infer = {"size": 64, "stride": 32, "batch_size": 4, "scenes": [str(folder / "val.tif")]}
    train = {"eval_every": 4, "checkpoint_every": 4, "log_every": 2, "device": "cpu"}
    cfg = trainkit.write_config(
        folder / "exp.yaml", tiles, folder / "runs" / "tiny", schedule={"iterations": 4}, train=train, infer=infer
    )
    result = train_experiment(load_config(cfg))
    assert result.best is not None
    return result.best


@pytest.mark.slow
def test_scores_on_val_equal_what_training_measured_for_the_best_checkpoint(trained: Path, tmp_path: Path) -> None:
    state = load_checkpoint(trained)
    report = evaluate_checkpoint(trained, "val", tmp_path / "eval", device="cpu")
    assert report["iteration"] == state["iteration"] and report["split"] == "val"
    assert report["mIoU"] == pytest.approx(state["best_miou"], abs=1e-6)  # the same model on the same crops
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() > 0 and cm.shape == (len(state["class_names"]),) * 2
    saved = json.loads((tmp_path / "eval" / "val_scores.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert (tmp_path / "eval" / "val_scores.md").read_text().startswith("| class |")


@pytest.mark.slow
def test_an_unknown_split_is_one_line(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="split"):
        evaluate_checkpoint(trained, "nosuchsplit", tmp_path / "eval", device="cpu")
    assert not (tmp_path / "eval").exists()


def test_evaluate_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate_cli.main([str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.arange(10).tobytes())
    assert evaluate_cli.main([str(junk)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
