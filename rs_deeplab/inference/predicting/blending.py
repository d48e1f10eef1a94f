"""Blending weights of overlapping windows and the strip accumulator that turns them into finished rows.

A window's weight is the outer product of two 1-D profiles (Hann or Gaussian) that fall toward the window's
edges, except on a side where the window touches the scene border: there the profile stays flat at 1, so the
scene's edge pixels are not down-weighted (nothing else covers them). Probabilities times weights are summed
over the windows covering a pixel and divided by the summed weights; pixels no valid window covered get 255.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from rs_deeplab.labels.classes import IGNORE_INDEX

WindowKind = Literal["hann", "gaussian"]
WEIGHT_FLOOR = 1e-4
"""Smallest weight inside a window: keeps a pixel that only window edges cover from dividing by ~0."""


@functools.lru_cache(maxsize=64)
def axis_profile(size: int, kind: WindowKind, flat_start: bool, flat_end: bool) -> np.ndarray:
    """1-D weights of ``size`` samples, flat (1) on the half that touches a scene border.

    Args:
        size: Window side in pixels.
        kind: ``hann`` (raised cosine) or ``gaussian`` (sigma = size / 8).
        flat_start: The window starts at the scene's first pixel along this axis.
        flat_end: The window ends at the scene's last pixel along this axis.
    """
    centre = (size - 1) / 2
    x = np.arange(size, dtype=np.float64)
    if kind == "hann":
        w = 0.5 - 0.5 * np.cos(2 * math.pi * (x + 0.5) / size)
    elif kind == "gaussian":
        w = np.exp(-0.5 * ((x - centre) / (size / 8)) ** 2)
    else:
        raise ValueError(f"unknown blending window {kind!r}; use 'hann' or 'gaussian'")
    w /= w.max()
    if flat_start:
        w[x <= centre] = 1.0
    if flat_end:
        w[x >= centre] = 1.0
    out = np.maximum(w, WEIGHT_FLOOR).astype(np.float32)
    out.setflags(write=False)
    return out


def window_weight(
    row_off: int, col_off: int, size: int, height: int, width: int, kind: WindowKind = "hann"
) -> np.ndarray:
    """``(size, size)`` float32 weights of the window at ``(row_off, col_off)`` in a ``height × width`` scene."""
    wy = axis_profile(size, kind, row_off == 0, row_off + size >= height)
    wx = axis_profile(size, kind, col_off == 0, col_off + size >= width)
    return np.outer(wy, wx)


@dataclass(frozen=True)
class FinishedRows:
    """Rows ``[row_start, row_start + len(labels))`` of the scene whose windows have all been added.

    ``labels`` is ``(rows, width)`` uint8 (255 where no valid window covered the pixel); ``probs`` is the blended
    ``(classes, rows, width)`` probabilities when the accumulator keeps them, else None: float32, or uint8 0..255
    when quantised (:func:`quantise_probs`). Rows of a column panel (wide scenes) start at scene column
    ``col_start`` and are as wide as ``labels``; otherwise they span the scene's width.
    """

    row_start: int
    labels: np.ndarray
    probs: np.ndarray | None
    col_start: int = 0

    @property
    def row_stop(self) -> int:
        """One past the last row."""
        return self.row_start + self.labels.shape[0]


def quantise_probs(probs: np.ndarray) -> np.ndarray:
    """Probabilities as the probability raster stores them: uint8 ``rint(p × 255)`` (uint8 input is returned)."""
    if probs.dtype == np.uint8:
        return probs
    return np.rint(probs * 255).astype(np.uint8)


def quantise_probs_torch(probs: torch.Tensor) -> torch.Tensor:
    """:func:`quantise_probs` on the tensor's device (the same float32 product and half-to-even rounding)."""
    return torch.round(probs * 255).to(torch.uint8)


class StripAccumulator:
    """Weighted probability sums for one strip of ``size`` scene rows, on the model's device.

    Windows must arrive in row-major order (by ``row_off``). When a window of a lower row arrives, every row
    above it is complete: :meth:`add` yields those rows (classes, optionally probabilities) and the strip moves
    down. The strip is a ring buffer of rows, so moving it copies nothing, and finished rows are turned into
    classes a block of columns at a time. Memory is ``(classes + 1) × size × width`` floats plus a few column
    blocks, independent of the scene's height. With ``quantise``, kept probabilities are turned into uint8
    (:func:`quantise_probs_torch`) on the device before they are copied to the host: a quarter of the bytes.

    With ``cols`` (scene columns ``[first, stop)``), the strip holds only those columns (every window added must lie
    within them; weights still follow the scene's borders), and ``out`` (scene columns, within ``cols``) are the
    columns handed out: a column panel of a wide scene. Each value is summed from the same windows in the same
    order as in a strip of the whole width, so the panel's pixels are bit for bit those of the whole strip.
    """

    COLUMN_BLOCK = 2048
    """Columns of finished rows divided and arg-maxed at a time (bounds the temporaries for wide scenes)."""

    def __init__(
        self,
        num_classes: int,
        height: int,
        width: int,
        size: int,
        *,
        kind: WindowKind = "hann",
        device: torch.device | str = "cpu",
        keep_probs: bool = False,
        start_row: int = 0,
        quantise: bool = False,
        cols: tuple[int, int] | None = None,
        out: tuple[int, int] | None = None,
    ) -> None:
        self.num_classes, self.height, self.width, self.size = num_classes, height, width, size
        self.kind, self.keep_probs, self.quantise = kind, keep_probs, quantise
        self.probs_dtype = np.dtype(np.uint8 if quantise else np.float32)
        self.device = torch.device(device)
        self.rows = min(size, height)
        self.cols = (0, width) if cols is None else cols
        self.out = self.cols if out is None else out
        if not 0 <= self.cols[0] <= self.out[0] < self.out[1] <= self.cols[1] <= width:
            raise ValueError(f"columns {self.out} handed out must lie within the strip's {self.cols} and the scene")
        held = self.cols[1] - self.cols[0]
        self.sums = torch.zeros((num_classes, self.rows, held), dtype=torch.float32, device=self.device)
        self.weights = torch.zeros((self.rows, held), dtype=torch.float32, device=self.device)
        self.top = start_row
        """Scene row held at buffer row :attr:`head`; rows above it were handed out already."""
        self.head = 0
        self._weight_cache: dict[tuple[bool, bool, bool, bool], torch.Tensor] = {}

    def _weight(self, row_off: int, col_off: int) -> torch.Tensor:
        key = (row_off == 0, row_off + self.size >= self.height, col_off == 0, col_off + self.size >= self.width)
        cached = self._weight_cache.get(key)
        if cached is None:
            w = window_weight(row_off, col_off, self.size, self.height, self.width, self.kind)
            cached = torch.from_numpy(w).to(self.device)
            self._weight_cache[key] = cached
        return cached

    def _segments(self, first: int, count: int) -> list[tuple[int, int, int]]:
        """Strip rows ``first .. first + count`` (relative to :attr:`top`) as ``(buffer start, stop, offset)``."""
        start = (self.head + first) % self.rows
        before_wrap = min(count, self.rows - start)
        parts = [(start, start + before_wrap, 0)]
        if before_wrap < count:
            parts.append((0, count - before_wrap, before_wrap))
        return parts

    def add(
        self, row_off: int, col_off: int, probs: torch.Tensor, valid: torch.Tensor | None
    ) -> Iterator[FinishedRows]:
        """Add one window's ``(classes, size, size)`` probabilities; yield the rows it completes first.

        Args:
            row_off: Window's first scene row (windows arrive sorted by it).
            col_off: Window's first scene column.
            probs: Softmax probabilities over the whole (possibly padded) window.
            valid: ``(size, size)`` bool, False where the input is nodata or padding; None when all valid.
        """
        if row_off < self.top:
            raise ValueError(f"window at row {row_off} arrived after rows up to {self.top} were finished")
        yield from self.finish(row_off)
        h = min(self.size, self.height - row_off)
        w = min(self.size, self.width - col_off)
        if col_off < self.cols[0] or col_off + w > self.cols[1]:
            raise ValueError(f"window at column {col_off} reaches outside the strip's columns {self.cols}")
        weight = self._weight(row_off, col_off)[:h, :w]
        if valid is not None:
            weight = weight * valid[:h, :w].to(weight.dtype)
        cols = slice(col_off - self.cols[0], col_off - self.cols[0] + w)
        for a, b, k in self._segments(row_off - self.top, h):
            win = weight[k : k + b - a]
            self.sums[:, a:b, cols].addcmul_(probs[:, k : k + b - a, :w], win)
            self.weights[a:b, cols] += win

    def finish(self, until: int) -> Iterator[FinishedRows]:
        """Hand out every row above scene row ``until`` (all of them with ``until >= height``)."""
        until = min(until, self.height)
        if until <= self.top:
            return
        n = min(until - self.top, self.rows)
        yield self._rows(n)
        for a, b, _ in self._segments(0, n):
            self.sums[:, a:b].zero_()
            self.weights[a:b].zero_()
        self.head = (self.head + n) % self.rows
        if until - self.top > self.rows:  # rows no window reached (skipped nodata): all 255
            empty = np.full((until - self.top - self.rows, self.out[1] - self.out[0]), IGNORE_INDEX, np.uint8)
            probs = np.zeros((self.num_classes, *empty.shape), self.probs_dtype) if self.keep_probs else None
            yield FinishedRows(self.top + self.rows, empty, probs, self.out[0])
        self.top = until

    def _rows(self, n: int) -> FinishedRows:
        """Classes (and probabilities) of the strip's first ``n`` rows, computed block by block."""
        first, stop = self.out[0] - self.cols[0], self.out[1] - self.cols[0]  # in the strip's columns
        labels = np.empty((n, stop - first), np.uint8)
        kept = np.empty((self.num_classes, n, stop - first), self.probs_dtype) if self.keep_probs else None
        for a, b, k in self._segments(0, n):
            for c0 in range(first, stop, self.COLUMN_BLOCK):
                cols = slice(c0, min(c0 + self.COLUMN_BLOCK, stop))
                into = slice(cols.start - first, cols.stop - first)
                weights = self.weights[a:b, cols]
                covered = weights > 0
                probs = self.sums[:, a:b, cols] / torch.where(covered, weights, torch.ones_like(weights))
                classes = first_argmax(probs).masked_fill_(~covered, IGNORE_INDEX)
                labels[k : k + b - a, into] = classes.cpu().numpy()
                if kept is not None:
                    out = quantise_probs_torch(probs) if self.quantise else probs
                    kept[:, k : k + b - a, into] = out.cpu().numpy()
        return FinishedRows(self.top, labels, kept, self.out[0])


def first_argmax(probs: torch.Tensor) -> torch.Tensor:
    """uint8 index of the largest of ``(classes, ...)`` values (the first one on ties), like ``argmax(0)``.

    A running maximum over the classes: for a handful of classes about 6× faster on CPU than torch's ``argmax``
    over the leading dimension, and without its int64 result.
    """
    best = probs[0].clone()
    index = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    for c in range(1, probs.shape[0]):
        index.masked_fill_(probs[c] > best, c)
        torch.maximum(best, probs[c], out=best)
    return index
