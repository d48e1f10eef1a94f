"""Checkpoints: atomic save, validated load, and the RNG state needed for bit-exact resume.

A checkpoint holds only tensors and plain data (dicts, lists, tuples, strings, numbers, booleans, None), so it loads
with ``torch.load(weights_only=True)`` (see :func:`rs_deeplab.modelcard.load_checkpoint_file`) and reading one never
runs code stored in it; :func:`save_checkpoint` refuses anything else.
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rs_deeplab.errors import CheckpointError
from rs_deeplab.modelcard import load_checkpoint_file
from rs_deeplab.raster import atomic_output

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "config", "class_names", "band_stats", "iteration")
PLAIN = (str, int, float, bool, bytes, type(None))


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format version) to ``path`` via a temporary file and an atomic rename.

    NumPy scalars become Python numbers and ``str``/``int``/``float`` subclasses (``torch.__version__``) their
    base type, so the file loads with ``weights_only=True``.

    Raises:
        TypeError: ``state`` holds something else than tensors and plain data (nothing is written).
    """
    plain = plain_data({"format_version": FORMAT_VERSION, **state})
    with atomic_output(path) as tmp:
        torch.save(plain, tmp)
    return Path(path)


def plain_data(value: Any, where: str = "state") -> Any:
    """``value`` with NumPy scalars and subclasses of plain types made plain; tensors kept as they are.

    Raises:
        TypeError: Anything ``torch.load(weights_only=True)`` would refuse (names where it is).
    """
    if isinstance(value, torch.Tensor) or type(value) in PLAIN:
        return value
    if isinstance(value, np.generic):
        return value.item()
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, dict):
        items = [(k, plain_data(v, f"{where}[{k!r}]")) for k, v in value.items()]
        if type(value) is dict:
            return dict(items)
        if isinstance(value, OrderedDict):  # a module's state dict: keep its class and version metadata
            out: OrderedDict[Any, Any] = OrderedDict(items)
            if hasattr(value, "_metadata"):
                out._metadata = value._metadata  # type: ignore[attr-defined]
            return out
    if type(value) in (list, tuple):
        return type(value)(plain_data(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoints hold only tensors and plain data "
                    "(dicts, lists, str, numbers, None), which load without running code")  # fmt: skip


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``).

    Raises:
        CheckpointError: Missing file, unreadable/corrupt file, objects other than tensors and plain data, or a
            dictionary without the expected keys.
    """
    p = Path(path)
    state = load_checkpoint_file(p, map_location)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{p}: not an rs_deeplab checkpoint (missing {', '.join(missing)})")
    return state


def rng_state() -> dict[str, Any]:
    """Capture Python, NumPy and torch (CPU and CUDA) random states, as plain data and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (also the NumPy arrays of checkpoints written before)."""
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # a run resumed on fewer GPUs (or a CPU-only machine, where this is skipped) restores what fits
        for index, gpu_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, index)


def _tuples(value: Any) -> Any:
    """Python's RNG state as ``random.setstate`` wants it (tuples, also where a copy made them lists)."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value
