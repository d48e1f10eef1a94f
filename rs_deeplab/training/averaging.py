"""An exponential moving average of the weights (``train.ema``): what evaluation, checkpoints and inference use.

The last iterate of a run is noisy (validation mIoU moves by a few points between evaluations a few iterations
apart) and, on a small training set, late in the run it has memorised the crops. An average of the weights over the
recent iterations is smoother and generalises better (Polyak averaging; the "EMA" of timm, YOLO and MAE recipes).

The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run averages over its own
last tenth or so rather than over the random start. Floating-point buffers (BatchNorm's running statistics) are
averaged like the parameters; integer buffers are copied.

Checkpoints hold the average as ``model`` (what inference, evaluation and every reader of a checkpoint load), the
training weights as ``train_weights`` and the number of updates as ``ema_updates``, so a resumed run continues the
same average bit for bit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

TRAIN_WEIGHTS_KEY = "train_weights"
"""Where a checkpoint of a run with ``train.ema`` keeps the weights training resumes from."""
UPDATES_KEY = "ema_updates"
"""Where a checkpoint keeps the number of updates of the average (the decay's warm-up)."""


def warm_decay(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (1-based): ``decay``, lower for the first updates."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage:
    """A copy of ``model`` whose weights follow an exponential moving average of ``model``'s after each step.

    ``model`` is the plain module (not a DDP or compiled wrapper): the average reads its tensors in place.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        source, target = model.state_dict(keep_vars=True), self.model.state_dict(keep_vars=True)
        floats = [key for key in source if target[key].is_floating_point()]
        others = [key for key in source if not target[key].is_floating_point()]
        self._averaged = [target[key].detach() for key in floats]  # the lists one foreach call takes, built once
        self._current = [source[key].detach() for key in floats]
        self._others = [(target[key].detach(), source[key].detach()) for key in others]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights (after an optimiser step)."""
        self.updates += 1
        weight = 1.0 - warm_decay(self.decay, self.updates)
        if self._averaged:
            torch._foreach_lerp_(self._averaged, self._current, weight)
        for target, source in self._others:
            target.copy_(source)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights (what a checkpoint stores as ``model``)."""
        return self.model.state_dict()

    def load(self, weights: dict[str, Any], updates: int) -> None:
        """Continue an average a checkpoint holds."""
        self.model.load_state_dict(weights)
        self.updates = updates
