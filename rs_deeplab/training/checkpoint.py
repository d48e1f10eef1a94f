"""Checkpoints: atomic save, validated load, and the RNG state needed for bit-exact resume.

A checkpoint holds only tensors and plain data (dicts, lists, tuples, strings, numbers, booleans, None), so it loads
with ``torch.load(weights_only=True)`` (see :func:`rs_deeplab.config.modelcard.load_checkpoint_file`) and reading one
never
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

from rs_deeplab.cli.diskspace import check_free_space, size_text
from rs_deeplab.cli.errors import CheckpointError
from rs_deeplab.config.modelcard import load_checkpoint_file
from rs_deeplab.geo.raster import atomic_output

FORMAT_VERSION = 1
CHECKPOINT_COPIES = 3
"""Checkpoint files a run holds at most at once: ``last.pt``, ``best.pt`` and the temporary copy of a new one."""
REQUIRED_KEYS = ("format_version", "model", "config", "class_names", "band_stats", "iteration")
PLAIN = (str, int, float, bool, bytes, type(None))


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format version) to ``path`` via a temporary file and an atomic rename.

    NumPy scalars become Python numbers and ``str``/``int``/``float`` subclasses (``torch.__version__``) their
    base type, so the file loads with ``weights_only=True``. The file is written through a Python file object, so
    a full disk is an ``OSError`` with its ``errno`` (torch's own writer only says ``iostream error``).

    Raises:
        TypeError: ``state`` holds something else than tensors and plain data (nothing is written).
        DiskFullError: Less free space than the checkpoint's tensors take, or the disk filled while writing
            (the previous file at ``path`` stays as it was).
    """
    plain = plain_data({"format_version": FORMAT_VERSION, **state})
    needed = tensor_bytes(plain) + (1 << 20)
    check_free_space(path, needed, "the checkpoint")
    with atomic_output(path, needed=needed) as tmp, tmp.open("wb") as fh:
        torch.save(plain, fh)
    return Path(path)


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested state (dicts, lists, tuples): about a checkpoint's size on disk."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, copies: int = 1) -> int:
    """About the size of one checkpoint before the first is written: the model's state (``copies`` of it: 2 with a
    moving average of the weights), the optimiser's buffers per trained parameter (SGD's momentum; AdamW's two
    moments) and 1 MB for the rest.
    """  # noqa: D205
    state = copies * sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    slots = 2 if "betas" in optimizer.defaults else int(optimizer.defaults.get("momentum", 0) > 0)
    return state + slots * trained + (1 << 20)


def check_checkpoint_space(run_dir: Path, size: int) -> None:
    """Refuse to start a run whose checkpoints cannot fit in ``run_dir``: ``last.pt``, ``best.pt`` and the
    temporary copy written before it replaces one of them, ``size`` bytes each (less what those files take now).

    Raises:
        DiskFullError: Less free space than that.
    """  # noqa: D205
    existing = sum(p.stat().st_size for p in (run_dir / "last.pt", run_dir / "best.pt") if p.is_file())
    what = f"the run's checkpoints (last.pt, best.pt and a temporary copy, about {size_text(size)} each)"
    check_free_space(run_dir, CHECKPOINT_COPIES * size - existing, what)


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
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold only tensors and plain data "
        "(dicts, lists, str, numbers, None), which load without running code"
    )


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
