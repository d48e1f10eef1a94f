"""Trained checkpoints as inference models: what they need (bands, statistics, classes) and a per-process cache.

:class:`TrainedModel` is a small picklable description of a checkpoint (``.pt``) or an exported model (``.onnx``,
``.ts``; see :mod:`rs_deeplab.inference.exported`), so a Dask worker can be sent it and load the model once
(cached per process and device), instead of receiving the weights with every task.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rs_deeplab.classes import SCHEMES, colour_table
from rs_deeplab.cli import one_line
from rs_deeplab.errors import CheckpointError, InputError
from rs_deeplab.models import build_model, set_output_stride
from rs_deeplab.training.checkpoint import load_checkpoint


@dataclass(frozen=True)
class CheckpointInfo:
    """What inference reads from a checkpoint besides the weights."""

    path: Path
    class_names: tuple[str, ...]
    colormap: dict[int, tuple[int, int, int, int]] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bands: tuple[int, ...] | None
    """1-based scene bands the model was trained on (None: all bands, ``in_channels`` of them)."""
    in_channels: int
    infer: dict[str, Any]
    """The ``infer`` section of the training config (window size, stride, held-out scenes, ...)."""
    model: dict[str, Any]
    scheme: str
    """The class scheme of the training data (``potsdam``, ``voc``, ...)."""
    gsd: float | None = None
    """Ground sampling distance (metres per pixel) of the training scenes (their median, ``state["gsd"]``); None
    for pixel-only data and checkpoints written before it was recorded."""
    band_names: tuple[str, ...] | None = None
    """Names of the bands the model sees (the training crops' band descriptions, ``state["band_names"]``); None
    when the crops' bands were unnamed."""


_CACHE: dict[tuple[str, int, str, int | None], tuple[torch.nn.Module, CheckpointInfo]] = {}
_LOCK = threading.Lock()


def newest_checkpoint(root: Path = Path("runs")) -> Path:
    """The most recently written ``<root>/*/best.pt``.

    Raises:
        CheckpointError: None exists.
    """
    found = sorted(root.glob("*/best.pt"), key=lambda p: p.stat().st_mtime_ns)
    if not found:
        raise CheckpointError(
            f"no checkpoint found under {root}/*/best.pt; train one first (make demo or pipelines/train.py) "
            "or pass --checkpoint"
        )
    return found[-1]


CHECKPOINT_SUFFIXES = (".pt", ".pth")
EXPORTED_SUFFIXES = (".onnx", ".ts")


def model_kind(path: Path) -> str:
    """``checkpoint`` or ``exported`` from a model file's suffix.

    Raises:
        CheckpointError: Any other suffix.
    """
    suffix = path.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix in EXPORTED_SUFFIXES:
        return "exported"
    raise CheckpointError(f"{path}: is neither a training checkpoint (.pt) nor an exported model (.onnx, .ts); "
                          "pass runs/<name>/best.pt or a file written by pipelines/export.py")  # fmt: skip


@dataclass(frozen=True)
class TrainedModel:
    """A checkpoint or exported model to run.

    A checkpoint can run at another output stride (e.g. trained at 16, inferred at 8); an exported model's stride
    is baked in.
    """

    path: Path
    output_stride: int | None = None

    @property
    def key(self) -> tuple[str, int]:
        """The file and its modification time: a changed checkpoint is loaded again."""
        try:
            return str(self.path.resolve()), self.path.stat().st_mtime_ns
        except OSError:
            raise CheckpointError(f"{self.path}: checkpoint not found; pass an existing --checkpoint") from None

    def fingerprint(self) -> str:
        """Identifies the weights and the output stride (for resuming an interrupted run)."""
        path, mtime = self.key
        return f"{path}:{mtime}:{self.path.stat().st_size}:os{self.output_stride}"

    def load(self, device: torch.device) -> tuple[torch.nn.Module, CheckpointInfo]:
        """The model in eval mode on ``device`` and the checkpoint's info (the model is cached per process)."""
        path, mtime = self.key
        cache_key = (path, mtime, str(device), self.output_stride)
        with _LOCK:
            cached = _CACHE.get(cache_key)
            if cached is None:
                cached = self._load(device)
                _CACHE.clear()  # one model per process at a time
                _CACHE[cache_key] = cached
        return cached

    def _load(self, device: torch.device) -> tuple[torch.nn.Module, CheckpointInfo]:
        if model_kind(self.path) == "exported":
            from rs_deeplab.inference.exported import baked_output_stride, load_exported

            module, info = load_exported(self.path, device)
            baked = baked_output_stride(info)
            if self.output_stride is not None and self.output_stride != baked:
                raise InputError(
                    f"--output-stride {self.output_stride}: {self.path} is an exported model whose "
                    f"output stride ({baked}) is baked in; drop --output-stride or export the "
                    f"checkpoint again with pipelines/export.py --output-stride {self.output_stride}"
                )
            return module, info
        model, state = load_trained_model(self.path, device)
        if self.output_stride is not None:
            set_output_stride(model, self.output_stride)
        return model, checkpoint_info(self.path, state)


def checkpoint_info(path: Path, state: dict[str, Any]) -> CheckpointInfo:
    """Collect :class:`CheckpointInfo` from a loaded checkpoint dictionary."""
    cfg = state["config"]
    scheme_name = str(cfg.get("data", {}).get("scheme", ""))
    scheme = SCHEMES.get(scheme_name)
    names = tuple(state["class_names"])
    colours = state.get("class_colours")
    if colours is not None and len(colours) == len(names):  # recorded at training (generated for own classes)
        colormap: dict[int, tuple[int, int, int, int]] | None = colour_table([tuple(c) for c in colours])
    elif scheme is not None and scheme.num_classes == len(names):
        colormap = dict(scheme.colormap())
    else:
        colormap = None
    stats = state["band_stats"]
    bands = cfg.get("data", {}).get("bands")
    return CheckpointInfo(
        path=path,
        class_names=names,
        colormap=colormap,
        mean=tuple(stats["mean"]),
        std=tuple(stats["std"]),
        bands=None if bands is None else tuple(bands),
        in_channels=int(state["in_channels"]),
        infer=dict(cfg.get("infer", {})),
        model=dict(cfg.get("model", {})),
        scheme=scheme_name,
        gsd=_gsd(state.get("gsd")),
        band_names=None if not state.get("band_names") else tuple(str(b) for b in state["band_names"]),
    )


def _gsd(value: Any) -> float | None:
    """A checkpoint's recorded GSD, if it is a positive number."""
    try:
        gsd = float(value)
    except (TypeError, ValueError):
        return None
    return gsd if gsd > 0 and gsd != float("inf") else None


def module_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a module's parameters and buffers (for resuming runs of models given as objects)."""
    h = hashlib.sha1(usedforsecurity=False)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_trained_model(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained with and load its weights (eval mode)."""
    state = load_checkpoint(path, map_location="cpu")
    m = state["config"]["model"]
    model = build_model(
        m["name"],
        num_classes=len(state["class_names"]),
        in_channels=int(state["in_channels"]),
        backbone=m["backbone"],
        output_stride=m["output_stride"],
        head=m["head"],
        aux_weight=m["aux_weight"],
        msc=m.get("msc"),  # multi-scale inputs; checkpoints from before MSC have no key: one scale
    )
    problem = weights_mismatch(model.state_dict(), state["model"])
    if problem:
        raise CheckpointError(f"{path}: its weights do not fit the architecture it records ({m['name']}, "
                              f"{m['backbone']}): {problem}; pass the checkpoint this run wrote, unedited")  # fmt: skip
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: its weights do not fit the architecture it records ({m['name']}, "
                              f"{m['backbone']}): {one_line(exc)[:200]}") from None  # fmt: skip
    return model.to(device).eval(), state


def weights_mismatch(expected: Mapping[str, Any], given: Any) -> str | None:
    """One line saying how a state dict differs from a model's (missing, unexpected, other shapes); None: it fits."""
    if not isinstance(given, Mapping):
        return f"the weights are a {type(given).__name__}, not a state dict"
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and tuple(getattr(given[k], "shape", ())) != tuple(expected[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if keys:
            parts.append(f"{len(keys)} {what} (e.g. {keys[0]})")
    return None if not parts else "tensors " + ", ".join(parts)
