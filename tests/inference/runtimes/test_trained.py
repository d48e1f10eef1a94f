"""Checkpoints as models (``rs_deeplab/inference/runtimes/trained.py``): built without random weights, then loaded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rs_deeplab.config.modelcard import read_checkpoint
from rs_deeplab.inference.runtimes.trained import (
    build_from_card,
    build_uninitialised,
    load_trained_model,
    model_from_weights,
)
from tests import trainkit

trained = trainkit.trained  # the session's tiny checkpoint (a fixture)


def test_a_checkpoint_loads_as_a_usual_build_with_its_weights(trained: Path) -> None:
    model, card = load_trained_model(trained, torch.device("cpu"))
    _, weights = read_checkpoint(trained, map_location="cpu")
    usual = build_from_card(card)  # random weights, then the checkpoint's
    usual.load_state_dict(weights)
    usual.eval()
    for name, tensor in model.state_dict().items():
        assert tensor.device.type == "cpu" and torch.equal(tensor, weights[name]), name
    x = torch.randn(2, card.in_channels, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), usual(x))


def test_weights_to_load_draw_no_random_numbers(trained: Path) -> None:
    card, _ = read_checkpoint(trained, map_location="cpu")
    # three bands: the encoder's own first convolution (for four, the encoder draws a new one)
    card = replace(card, in_channels=3, mean=card.mean[:3], std=card.std[:3], bands=None, band_names=None)
    weights = build_from_card(card).state_dict()
    torch.manual_seed(3)
    rng = torch.get_rng_state()
    model = model_from_weights(trained, card, weights, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)  # no initialiser drew a number
    build_from_card(card)
    assert not torch.equal(torch.get_rng_state(), rng)  # as the usual build does
    assert all(torch.equal(t, weights[name]) for name, t in model.state_dict().items())


class WithGrid(torch.nn.Module):
    """A layer and a buffer no state dict holds (made in ``__init__``, never loaded)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 1)
        self.register_buffer("grid", torch.arange(6.0), persistent=False)


class NeedsNumbers(torch.nn.Module):
    """A builder that reads its tensors' values (``meta`` tensors have none)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 1)
        self.scale = float(np.asarray(torch.ones(1).numpy())[0])


def test_builds_the_meta_device_cannot_serve_are_built_as_usual() -> None:
    with_grid = build_uninitialised(WithGrid)
    assert torch.equal(with_grid.grid, torch.arange(6.0))  # not left empty: the buffer would never be loaded
    assert build_uninitialised(NeedsNumbers).scale == 1.0
    plain = build_uninitialised(lambda: torch.nn.Conv2d(2, 3, 1))
    assert plain.weight.device.type == "cpu" and plain.weight.shape == (3, 2, 1, 1)
