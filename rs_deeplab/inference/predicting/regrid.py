"""Predict a scene at another ground sampling distance: a working grid of the same footprint, and back, streamed.

The working grid covers exactly the scene's footprint with ``round(size × scene GSD / working GSD)`` pixels per
axis (its transform is the scene's scaled by the ratio of the sizes). Windows are read from it by GDAL resampled
reads (bilinear, nodata left out; :meth:`SceneInfo.file_window`), so no resampled copy of the scene is made.
The blended probabilities of the working rows come back to the scene's own grid by :class:`RowResampler`:
bilinear interpolation of the probabilities (nodata pixels hold none and so have no vote), then the arg-max.
This gives smoother class boundaries than nearest-neighbour labels when the working grid is coarser, and keeps
memory at one part of working rows; the output rasters are on the scene's grid, with 255 where most of the
interpolation weight falls on nodata.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
from affine import Affine

from rs_deeplab.inference.predicting.blending import FinishedRows
from rs_deeplab.inference.reading.reader import SceneInfo
from rs_deeplab.inference.writing.writer import RowSink
from rs_deeplab.labels.classes import IGNORE_INDEX

CHUNK_ROWS = 64
"""Scene rows interpolated at a time (bounds the temporaries: classes × rows × width floats)."""


def working_info(info: SceneInfo, factor: float) -> SceneInfo:
    """``info`` as a grid of the same footprint with ``factor`` times as many pixels per axis (at least one).

    Returns ``info`` itself when the rounded size is the scene's (nothing to resample).
    """
    height, width = max(1, round(info.height * factor)), max(1, round(info.width * factor))
    if (height, width) == (info.height, info.width):
        return info
    transform = info.transform @ Affine.scale(info.width / width, info.height / height)
    return replace(info, height=height, width=width, transform=transform, source_shape=(info.height, info.width))


def _axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre bilinear sampling of ``n_in`` samples at ``n_out`` points: ``(lower, upper, upper weight)``."""
    v = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(v).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (v - lo).astype(np.float32)


def first_working_row(scene_row: int, scene: SceneInfo, work: SceneInfo) -> int:
    """The first working row needed for scene rows from ``scene_row`` on (where a resumed run starts)."""
    if scene_row >= scene.height:
        return work.height
    v = (scene_row + 0.5) * (work.height / scene.height) - 0.5
    return max(0, min(work.height - 1, math.floor(v)))


class RowResampler:
    """A row sink on the working grid that writes the same rows resampled to the scene's grid into ``sink``.

    Working rows must arrive in order and contiguous; they may start before the rows needed for ``start`` (the
    first scene row to produce: a resumed run's first unfinished row). Working rows must carry probabilities.

    Args:
        sink: Where scene rows go (a :class:`~rs_deeplab.inference.writing.writer.RowWriter`).
        scene: The scene's grid (the output grid).
        work: The working grid (:func:`working_info`).
        start: First scene row to produce.
        keep_probs: Pass interpolated probabilities on (float32, summing to 1 per pixel).
    """

    def __init__(
        self, sink: RowSink, scene: SceneInfo, work: SceneInfo, start: int = 0, *, keep_probs: bool = False
    ) -> None:
        self.sink, self.scene, self.work, self.keep_probs = sink, scene, work, keep_probs
        self.next_row = start
        self.rows = _axis(scene.height, work.height)
        self.cols = _axis(scene.width, work.width)
        self._probs: np.ndarray | None = None
        self._first = 0  # working row held at self._probs[:, 0]

    def write(self, rows: FinishedRows) -> None:
        """Take working rows; write every scene row they complete."""
        if rows.probs is None:
            raise ValueError("resampling predictions back to the scene's grid needs their probabilities")
        probs = rows.probs  # kept as they come (uint8 when quantised): converted chunk by chunk
        if self._probs is None or self._probs.shape[1] == 0:
            self._probs, self._first = probs, rows.row_start
        else:
            stop = self._first + self._probs.shape[1]
            if rows.row_start != stop:
                raise ValueError(f"working rows arrived from {rows.row_start}, expected {stop}")
            self._probs = np.concatenate([self._probs, probs], axis=1)
        for part in self._ready():
            self.sink.write(part)

    def _ready(self) -> Iterator[FinishedRows]:
        assert self._probs is not None
        lo, hi, _ = self.rows
        held = self._first + self._probs.shape[1]
        end = self.next_row
        while end < self.scene.height and hi[end] < held:
            end += 1
        for a in range(self.next_row, end, CHUNK_ROWS):
            yield self._interpolate(a, min(a + CHUNK_ROWS, end))
        self.next_row = end
        keep_from = int(lo[end]) if end < self.scene.height else held
        drop = max(0, keep_from - self._first)
        self._probs, self._first = self._probs[:, drop:], self._first + drop

    def _interpolate(self, a: int, b: int) -> FinishedRows:
        assert self._probs is not None
        lo, hi, wy = (x[a:b] for x in self.rows)
        if lo[0] < self._first:
            raise ValueError(f"scene row {a} needs working row {lo[0]}, which came before row {self._first}")
        p = self._probs
        scale = np.float32(1 / 255 if p.dtype == np.uint8 else 1)
        wy = wy[None, :, None]
        rows = p[:, lo - self._first] * ((1 - wy) * scale) + p[:, hi - self._first] * (wy * scale)
        x0, x1, wx = self.cols
        probs = rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx
        total = probs.sum(0)  # 1 where every neighbour is valid, less toward nodata (whose probabilities are 0)
        labels = probs.argmax(0).astype(np.uint8)
        invalid = total < 0.5
        labels[invalid] = IGNORE_INDEX
        out = None
        if self.keep_probs:
            out = probs / np.where(invalid, 1, total)[None]
            out[:, invalid] = 0
        return FinishedRows(a, labels, out)
