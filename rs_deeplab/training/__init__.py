"""Stage 2, training: datasets, transforms, the training loop, DDP, checkpoints of training state and run logs.

Public API: :func:`train_experiment` (what ``pipelines/train.py`` calls) and its :class:`TrainResult`;
:func:`evaluate_checkpoint` for a checkpoint on a split. Inference never imports this package.
"""

from __future__ import annotations

from rs_deeplab.training.checkpoint_eval import evaluate_checkpoint
from rs_deeplab.training.experiment import TrainResult, train_experiment

__all__ = ["TrainResult", "evaluate_checkpoint", "train_experiment"]
