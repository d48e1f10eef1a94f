"""Per-crop pixel statistics of a strip of window rows in one pass: class counts and valid pixels of overlapping crops.

Overlapping crops share pixels (a 512/256 grid covers each pixel four times), so instead of counting every crop
the strip is cut into cells at every crop edge, each cell is counted once, and a crop's totals are read from 2-D
prefix sums over the cells in four lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rs_deeplab.geo.grid import CropWindow

BINS = 256
"""Histogram bins: every uint8 class value."""


def _prefix(cells: np.ndarray) -> np.ndarray:
    """Inclusive 2-D prefix sums with a leading zero row and column: ``P[i, j]`` = sum of cells above-left."""
    out = np.zeros((cells.shape[0] + 1, cells.shape[1] + 1, *cells.shape[2:]), dtype=np.int64)
    out[1:, 1:] = cells.cumsum(axis=0).cumsum(axis=1)
    return out


class StripCounts:
    """Class counts and valid-pixel counts of crops whose windows lie in one strip of rows starting at ``top``.

    Args:
        windows: The crop windows of the strip (their scene parts must lie inside the arrays).
        top: Scene row of the strip's first row.
        label: ``(H, W)`` uint8 class ids of the strip, or None.
        mask: ``(H, W)`` bool validity of the strip, or None (every pixel valid).
    """

    def __init__(
        self, windows: Sequence[CropWindow], top: int, label: np.ndarray | None, mask: np.ndarray | None
    ) -> None:
        self.top = top
        self.rows = np.unique([e for w in windows for e in (w.row_off - top, w.row_off - top + w.height)])
        self.cols = np.unique([e for w in windows for e in (w.col_off, w.col_off + w.width)])
        self.labels = None if label is None else _prefix(self._cells(label, self._histogram))
        self.valid = None if mask is None else _prefix(self._cells(mask, np.count_nonzero))

    def _cells(self, array: np.ndarray, reduce: Callable[[np.ndarray], Any]) -> np.ndarray:
        """``reduce`` of every cell between consecutive crop edges, as a ``(rows, cols, ...)`` array."""
        r, c = self.rows, self.cols
        return np.array(
            [[reduce(array[r[i] : r[i + 1], c[j] : c[j + 1]]) for j in range(len(c) - 1)] for i in range(len(r) - 1)]
        )

    @staticmethod
    def _histogram(cell: np.ndarray) -> np.ndarray:
        return np.bincount(cell.reshape(-1), minlength=BINS)

    def _sum(self, prefix: np.ndarray, window: CropWindow) -> np.ndarray:
        r0, r1 = np.searchsorted(self.rows, [window.row_off - self.top, window.row_off - self.top + window.height])
        c0, c1 = np.searchsorted(self.cols, [window.col_off, window.col_off + window.width])
        result: np.ndarray = prefix[r1, c1] - prefix[r0, c1] - prefix[r1, c0] + prefix[r0, c0]
        return result

    def valid_pixels(self, window: CropWindow) -> int:
        """Valid scene pixels inside the crop (padding excluded)."""
        if self.valid is None:
            return window.height * window.width
        return int(self._sum(self.valid, window))

    def class_counts(self, window: CropWindow, ignore: int) -> dict[str, int]:
        """Pixel count of every class value in the crop (text keys), the padding counted as ``ignore``."""
        if self.labels is None:
            return {}
        counts = self._sum(self.labels, window)
        counts[ignore] += window.size**2 - window.height * window.width
        return {str(v): int(counts[v]) for v in np.flatnonzero(counts)}
