"""The model card: read from a real training checkpoint and from its ONNX/TorchScript exports alike, validated, one
line for a bad checkpoint, and only tensors and plain data loaded (``weights_only``)."""

from __future__ import annotations

import json
import pathlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.export import main as export_main
from rs_deeplab.cli.errors import CheckpointError
from rs_deeplab.config.modelcard import Architecture, ModelCard, card_from_metadata, read_checkpoint
from rs_deeplab.config.schema import InferConfig
from rs_deeplab.inference.runtimes.exported import load_exported
from rs_deeplab.inference.runtimes.trained import TrainedModel, load_trained_model
from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.training.checkpoint import load_checkpoint, set_rng_state
from tests import trainkit

trained = trainkit.trained  # the module-scoped tiny checkpoint (a fixture)


def edited(source: Path, target: Path, change: Any) -> Path:
    """A copy of the checkpoint ``source`` whose state ``change`` edited (as someone might by hand)."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    change(state)
    torch.save(state, target)
    return target


def one_line(failure: pytest.ExceptionInfo[CheckpointError], path: Path) -> str:
    message = str(failure.value)
    assert str(path) in message and "\n" not in message, message
    assert failure.value.__cause__ is None  # no library traceback chained to it
    return message


@pytest.mark.slow
def test_the_card_of_a_training_checkpoint_is_what_the_run_recorded(trained: Path) -> None:
    card, weights = read_checkpoint(trained)
    state = torch.load(trained, map_location="cpu", weights_only=True)
    cfg = state["config"]
    assert card.architecture == Architecture("deeplabv3plus", "resnet18", 16, "paper", cfg["model"]["aux_weight"])
    assert card.class_names == SCHEMES["potsdam"].classes and card.scheme == "potsdam"
    assert card.colormap == dict(SCHEMES["potsdam"].colormap())
    assert card.in_channels == 4 and card.bands is None
    assert card.mean == tuple(state["band_stats"]["mean"]) and card.std == tuple(state["band_stats"]["std"])
    assert card.gsd == pytest.approx(0.1)  # make_tiles' 0.1 m pixels
    assert (card.infer.size, card.infer.stride, card.infer.batch_size) == (64, 32, 4)
    assert [str(s) for s in card.infer.scenes] == [str(trained.parents[2] / "val.tif")]
    assert card.infer.window == InferConfig().window  # not in the test config: the config's default
    assert weights.keys() == state["model"].keys()
    model, same = load_trained_model(trained, torch.device("cpu"))
    assert same == card and not model.training


@pytest.mark.slow
def test_exported_models_carry_an_equal_card(trained: Path, tmp_path: Path) -> None:
    checkpoint_card, _ = read_checkpoint(trained)
    for name in ("model.onnx", "model.ts"):
        assert export_main([str(trained), "--out", str(tmp_path / name), "-q"]) == 0
        _, card = load_exported(tmp_path / name, torch.device("cpu"))
        assert card == checkpoint_card, name
        assert TrainedModel(tmp_path / name).load(torch.device("cpu")).card == checkpoint_card
    assert export_main([str(trained), "--out", str(tmp_path / "os8.onnx"), "--output-stride", "8", "-q"]) == 0
    _, baked = load_exported(tmp_path / "os8.onnx", torch.device("cpu"))
    assert baked == replace(checkpoint_card, architecture=replace(checkpoint_card.architecture, output_stride=8))


def test_the_card_survives_its_plain_form() -> None:
    card = ModelCard(
        Architecture("deeplabv2", "resnet50", 8, "paper", 0.0, (1.0, 0.75)),
        ("road", "roof", "tree"),
        3,
        (1.0, 2.0, 3.0),
        (4.0, 5.0, 6.0),
        bands=(4, 3, 2),
        band_names=("nir", "red", "green"),
        colormap={0: (1, 2, 3, 255), 2: (7, 8, 9, 255), 255: (0, 0, 0, 0)},
        scheme="",
        gsd=0.3,
        infer=InferConfig(size=256, stride=128, tta=True, output_stride=16),
    )
    text = json.dumps(card.to_dict())
    assert ModelCard.from_dict(json.loads(text)) == card
    assert card_from_metadata(Path("m.onnx"), text) == card


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: s.pop("band_stats"), "missing band_stats"),
        (lambda s: s.pop("config"), "missing config"),
        (lambda s: s["band_stats"].update(mean=[0.0, 0.0, 0.0]), "band statistics for 3/4 bands"),
        (lambda s: s["config"]["infer"].update(stride=999), "must not exceed size"),
        (lambda s: s["config"]["model"].update(name="unet"), "name"),
        (lambda s: s.update(model=[1, 2]), "not a state dict"),
    ],
    ids=["no-stats", "no-config", "stats-of-other-bands", "stride-above-size", "unknown-model", "no-weights"],
)
def test_a_broken_checkpoint_is_one_checkpoint_error(trained: Path, tmp_path: Path, change: Any, words: str) -> None:
    bad = edited(trained, tmp_path / "bad.pt", change)
    with pytest.raises(CheckpointError) as failure:
        read_checkpoint(bad)
    assert words in one_line(failure, bad)


def test_weights_of_another_class_count_are_one_line(trained: Path, tmp_path: Path) -> None:
    bad = edited(
        trained,
        tmp_path / "five.pt",
        lambda s: s.update(class_names=s["class_names"][:5], class_colours=s["class_colours"][:5]),
    )
    assert read_checkpoint(bad)[0].num_classes == 5  # the card alone is consistent; the weights are not
    with pytest.raises(CheckpointError) as failure:
        load_trained_model(bad, torch.device("cpu"))
    message = one_line(failure, bad)
    assert "5 classes" in message and "of another shape" in message


def test_the_card_refuses_parts_that_contradict_each_other() -> None:
    arch = Architecture("deeplabv3plus")
    ModelCard(arch, ("a", "b"), 2, (0.0, 0.0), (1.0, 1.0))  # consistent
    for bad in (
        {"class_names": ()},
        {"mean": (0.0,)},
        {"bands": (1, 2, 3)},
        {"bands": (0, 1)},
        {"band_names": ("red",)},
        {"colormap": {2: (1, 1, 1, 255)}},
        {"gsd": -1.0},
        {"std": (1.0, float("nan"))},
    ):
        kwargs: dict[str, Any] = {"class_names": ("a", "b"), "mean": (0.0, 0.0), "std": (1.0, 1.0), **bad}
        with pytest.raises(ValueError):
            ModelCard(arch, in_channels=2, **kwargs)


class Planted:
    """An object whose unpickling creates a file: what a malicious checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


def test_a_checkpoint_holding_an_object_is_refused_without_running_it(trained: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bad = edited(trained, tmp_path / "planted.pt", lambda s: s.update(extra=Planted(marker)))
    for read in (read_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError) as failure:
            read(bad)
        assert "objects other than tensors and plain data" in one_line(failure, bad)
    assert not marker.exists()
    torch.load(bad, weights_only=False)  # what an unsafe load would have done
    assert marker.exists()


def test_a_checkpoint_of_the_earlier_layout_still_reads_and_resumes(trained: Path, tmp_path: Path) -> None:
    # earlier versions pickled NumPy's RNG state as an array and torch.__version__ as its own str subclass
    np.random.seed(5)
    legacy_rng = np.random.get_state()
    expected = np.random.rand(3)

    def as_before(state: dict[str, Any]) -> None:
        state["rng"]["numpy"] = legacy_rng
        state["runtime"]["torch"] = torch.__version__

    old = edited(trained, tmp_path / "old.pt", as_before)
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(old, weights_only=True)  # really not plain data
    assert read_checkpoint(old)[0] == read_checkpoint(trained)[0]
    np.random.seed(0)
    set_rng_state(load_checkpoint(old)["rng"])
    np.testing.assert_array_equal(np.random.rand(3), expected)


def test_checkpoints_written_by_training_load_with_weights_only(trained: Path) -> None:
    for name in ("best.pt", "last.pt"):
        state = torch.load(trained.with_name(name), map_location="cpu", weights_only=True)
        assert isinstance(state["rng"]["numpy"][1], torch.Tensor) and type(state["runtime"]["torch"]) is str


def test_damaged_or_missing_export_metadata_is_one_line() -> None:
    path = Path("model.onnx")
    for text, words in (
        (None, "has no rs_deeplab metadata"),
        ("{not json", "metadata is damaged"),
        ('{"format": 1}', "metadata is damaged"),
        ('{"format": 99}', "newer than this"),
    ):
        with pytest.raises(CheckpointError) as failure:
            card_from_metadata(path, text)
        message = str(failure.value)
        assert str(path) in message and words in message and "\n" not in message, message
