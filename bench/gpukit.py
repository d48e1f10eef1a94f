"""Pure helpers of the GPU checks (``bench/gpu_check.py``, ``tests/test_gpu.py``), tested on the CPU.

What a comparison on a GPU must allow, and nothing more: settings that a check changes come back afterwards
(:func:`torch_flags`), fp32 means fp32 (:func:`fp32_exact`: no TF32), two runs of one model in two processes agree
up to near-ties (:func:`near_tie_agreement`), graph breaks are counted (:func:`count_graph_breaks`), and child
processes see what the parent sees (:func:`prepend_pythonpath`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIN_EQUAL = 0.999
"""Two runs of one model in two processes (bf16 autocast, kernels cuDNN picks per process): at least this share
of the pixels carries the same label ..."""
MAX_TIE_MARGIN = 2
"""... and every pixel that differs is a near-tie: its two highest probabilities are at most this many uint8 steps
(1/255 each) apart in the reference run. bf16 keeps 8 bits of mantissa: a logit of ~10 moves by ~0.04, which moves a
softmax probability by ~0.01 (~2.5 steps) at worst; a class change with a wider margin is a real difference."""


def prepend_pythonpath(env: Mapping[str, str], *paths: str | os.PathLike[str]) -> dict[str, str]:
    """``env`` with ``paths`` put in front of its ``PYTHONPATH`` (kept, not replaced: carried wheels stay visible)."""
    old = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    new = [str(p) for p in paths]
    merged = list(dict.fromkeys(new + old))
    return {**env, "PYTHONPATH": os.pathsep.join(merged)}


_FLAGS = {
    "cudnn_benchmark": ("backends.cudnn", "benchmark"),
    "cudnn_allow_tf32": ("backends.cudnn", "allow_tf32"),
    "cuda_matmul_allow_tf32": ("backends.cuda.matmul", "allow_tf32"),
}
"""The torch backend flags a check may change: keyword → (owner under ``torch``, attribute)."""


def _owner(path: str) -> Any:
    import torch

    obj: Any = torch
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@contextlib.contextmanager
def torch_flags(**values: bool) -> Iterator[None]:
    """Set torch backend flags (the keys of ``_FLAGS``) for a block, then give the caller its own values back.

    The values come back also when the block raises.
    """
    unknown = sorted(set(values) - set(_FLAGS))
    if unknown:
        raise ValueError(f"unknown torch flag(s) {unknown}; known: {sorted(_FLAGS)}")
    saved = {key: getattr(_owner(_FLAGS[key][0]), _FLAGS[key][1]) for key in values}
    try:
        for key, value in values.items():
            setattr(_owner(_FLAGS[key][0]), _FLAGS[key][1], value)
        yield
    finally:
        for key, value in saved.items():
            setattr(_owner(_FLAGS[key][0]), _FLAGS[key][1], value)


def fp32_exact() -> contextlib.AbstractContextManager[None]:
    """fp32 that means fp32 on a GPU: no TF32 in matmuls or cuDNN convolutions (both restored afterwards).

    Ampere and later GPUs run "fp32" convolutions in TF32 by default (10-bit mantissa), which moves probabilities
    by ~1e-3: a GPU-vs-CPU comparison of fp32 runs needs TF32 off.
    """
    return torch_flags(cudnn_allow_tf32=False, cuda_matmul_allow_tf32=False)


@dataclass(frozen=True)
class Agreement:
    """How two label rasters of one model agree, and whether every difference is a near-tie."""

    pixels: int
    differ: int
    widest_margin: int
    """The largest top-two probability gap (uint8 steps) among the differing pixels; -1 where none differ."""
    min_equal: float
    max_margin: int

    @property
    def equal_share(self) -> float:
        return 1.0 - self.differ / self.pixels if self.pixels else 1.0

    @property
    def ok(self) -> bool:
        return self.equal_share >= self.min_equal and self.widest_margin <= self.max_margin

    def describe(self) -> str:
        if not self.differ:
            return f"identical ({self.pixels} pixels)"
        verdict = "near-ties only" if self.ok else "**NOT near-ties**"
        return (
            f"{self.equal_share:.4%} equal ({self.differ} of {self.pixels} pixels differ; widest top-two margin "
            f"{self.widest_margin}/255; allowed: ≥ {self.min_equal:.1%} equal, margins ≤ {self.max_margin}/255): "
            f"{verdict}"
        )


def near_tie_agreement(
    labels_a: np.ndarray,
    labels_b: np.ndarray,
    probs: np.ndarray,
    *,
    min_equal: float = MIN_EQUAL,
    max_margin: int = MAX_TIE_MARGIN,
) -> Agreement:
    """Compare two label rasters of one model; ``probs`` (``(classes, H, W)`` uint8) are run A's probabilities.

    A pixel may change class between runs only where run A's two highest probabilities are within ``max_margin``
    steps of 1/255, and at least ``min_equal`` of the pixels must agree.
    """
    if labels_a.shape != labels_b.shape or probs.shape[1:] != labels_a.shape:
        raise ValueError(f"shapes differ: labels {labels_a.shape} and {labels_b.shape}, probabilities {probs.shape}")
    if probs.shape[0] < 2:
        raise ValueError(f"need probabilities of at least two classes, got {probs.shape[0]}")
    differ = labels_a != labels_b
    count = int(differ.sum())
    widest = -1
    if count:
        top = np.sort(probs[:, differ].astype(np.int32), axis=0)
        widest = int((top[-1] - top[-2]).max())
    return Agreement(int(labels_a.size), count, widest, min_equal, max_margin)


def count_graph_breaks(counters: Mapping[str, Mapping[str, int]]) -> tuple[int, list[str]]:
    """Graph breaks in ``torch._dynamo.utils.counters``: their number, and the distinct reasons.

    Each reason is its first line plus dynamo's explanation, shortened; the most frequent comes first.
    """
    breaks = counters.get("graph_break", {})
    reasons = []
    for reason, _ in sorted(breaks.items(), key=lambda item: -item[1]):
        lines = [line.strip() for line in str(reason).strip().splitlines() if line.strip()]
        explained = [line.removeprefix("Explanation:").strip() for line in lines if line.startswith("Explanation:")]
        text = lines[0] if lines else "?"
        reasons.append((f"{text}: {explained[0]}" if explained else text)[:200])
    return sum(breaks.values()), reasons


def unwritable_results(folder: Path) -> str | None:
    """None where ``folder`` can hold results (created if missing, a probe file written), else the one error line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".rs_deeplab_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        return f"error: results folder {folder} is not writable ({why}); pass --out a folder you can write"
    return None
