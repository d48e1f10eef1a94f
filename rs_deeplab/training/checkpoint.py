"""Checkpoints: atomic save, validated load, and the RNG state needed for bit-exact resume."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rs_deeplab.errors import CheckpointError
from rs_deeplab.raster import atomic_output

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "config", "class_names", "band_stats", "iteration")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format version) to ``path`` via a temporary file and an atomic rename."""
    with atomic_output(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: Missing file, unreadable/corrupt file, or a dictionary without the expected keys.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found; train first (pipelines/train.py) or pass --checkpoint")
    try:
        state = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(exc).__name__}); it may be truncated") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{p}: not an rs_deeplab checkpoint (holds a {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{p}: not an rs_deeplab checkpoint (missing {', '.join(missing)})")
    return state


def rng_state() -> dict[str, Any]:
    """Capture Python, NumPy and torch (CPU and CUDA) random states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # a run resumed on fewer GPUs (or a CPU-only machine, where this is skipped) restores what fits
        for index, gpu_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, index)
