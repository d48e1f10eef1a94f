"""Scenes and models the inference tests share, kept to numpy, torch and rasterio: the ``gpu`` tests that use them
run on a GPU machine without the GIS stack (see bench/device_check.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.conftest import RasterFactory

NAMES = ["a", "b", "c", "d", "e"]


class Oracle(torch.nn.Module):
    """Returns the label stored in band 1 of its input (raw values) as confident logits; counts windows."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.windows = 0
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        self.shapes.append(tuple(x.shape))
        ids = x[:, 0].round().long().clamp(0, self.num_classes - 1)
        return 20.0 * torch.nn.functional.one_hot(ids, self.num_classes).permute(0, 3, 1, 2).float()


def blobs(height: int, width: int, seed: int, classes: int = 5) -> np.ndarray:
    """Blocky random labels (cells of 7-23 px) so every window sees several classes."""
    rng = np.random.default_rng(seed)
    cell = int(rng.integers(7, 24))
    grid = rng.integers(0, classes, (height // cell + 1, width // cell + 1)).astype(np.uint8)
    return np.repeat(np.repeat(grid, cell, 0), cell, 1)[:height, :width]


def labelled_scene(make_raster: RasterFactory, label: np.ndarray, name: str = "scene.tif", **kw: object) -> Path:
    """Two-band scene: band 1 the label (what the oracle reads), band 2 noise."""
    noise = np.random.default_rng(0).integers(0, 200, label.shape).astype(np.uint8)
    return make_raster(np.stack([label, noise]), name, **kw)
