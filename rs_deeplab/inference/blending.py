"""Blending weights of overlapping windows and the band accumulator that turns them into finished rows.

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

from rs_deeplab.classes import IGNORE_INDEX

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
    ``(classes, rows, width)`` float32 probabilities when the accumulator keeps them, else None.
    """

    row_start: int
    labels: np.ndarray
    probs: np.ndarray | None

    @property
    def row_stop(self) -> int:
        """One past the last row."""
        return self.row_start + self.labels.shape[0]


class BandAccumulator:
    """Weighted probability sums for one band of ``size`` scene rows, on the model's device.

    Windows must arrive in row-major order (by ``row_off``). When a window of a lower row arrives, every row
    above it is complete: :meth:`add` yields those rows (classes, optionally probabilities) and shifts the band.
    Memory is ``(classes + 1) × size × width`` floats, independent of the scene's height.
    """

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
    ) -> None:
        self.num_classes, self.height, self.width, self.size = num_classes, height, width, size
        self.kind, self.keep_probs = kind, keep_probs
        self.device = torch.device(device)
        rows = min(size, height)
        self.sums = torch.zeros((num_classes, rows, width), dtype=torch.float32, device=self.device)
        self.weights = torch.zeros((rows, width), dtype=torch.float32, device=self.device)
        self.top = start_row
        """Scene row held in the band's first row; rows above it were handed out already."""
        self._weight_cache: dict[tuple[int, int], torch.Tensor] = {}

    def _weight(self, row_off: int, col_off: int) -> torch.Tensor:
        key = (row_off == 0, row_off + self.size >= self.height, col_off == 0, col_off + self.size >= self.width)
        cached = self._weight_cache.get(key)  # type: ignore[arg-type]
        if cached is None:
            w = window_weight(row_off, col_off, self.size, self.height, self.width, self.kind)
            cached = torch.from_numpy(w).to(self.device)
            self._weight_cache[key] = cached  # type: ignore[index]
        return cached

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
        weight = self._weight(row_off, col_off)[:h, :w]
        if valid is not None:
            weight = weight * valid[:h, :w].to(weight.dtype)
        r0 = row_off - self.top
        self.sums[:, r0 : r0 + h, col_off : col_off + w] += probs[:, :h, :w] * weight
        self.weights[r0 : r0 + h, col_off : col_off + w] += weight

    def finish(self, until: int) -> Iterator[FinishedRows]:
        """Hand out every row above scene row ``until`` (all of them with ``until >= height``)."""
        until = min(until, self.height)
        if until <= self.top:
            return
        band_rows = self.weights.shape[0]
        n = min(until - self.top, band_rows)
        yield self._rows(n)
        if until - self.top > band_rows:  # rows no window reached (skipped nodata): all 255
            empty = np.full((until - self.top - band_rows, self.width), IGNORE_INDEX, np.uint8)
            probs = np.zeros((self.num_classes, *empty.shape), np.float32) if self.keep_probs else None
            yield FinishedRows(self.top + band_rows, empty, probs)
            self.sums.zero_()
            self.weights.zero_()
        else:
            self.sums = torch.roll(self.sums, -n, dims=1)
            self.weights = torch.roll(self.weights, -n, dims=0)
            self.sums[:, band_rows - n :].zero_()
            self.weights[band_rows - n :].zero_()
        self.top = until

    def _rows(self, n: int) -> FinishedRows:
        weights = self.weights[:n]
        covered = weights > 0
        probs = self.sums[:, :n] / torch.where(covered, weights, torch.ones_like(weights))
        labels = torch.where(covered, probs.argmax(0).to(torch.uint8), IGNORE_INDEX)
        kept = probs.cpu().numpy() if self.keep_probs else None
        return FinishedRows(self.top, labels.to(torch.uint8).cpu().numpy(), kept)
