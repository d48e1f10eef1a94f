"""Crop statistics from cell histograms equal counting every crop directly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rs_deeplab.geo.grid import window_grid, window_rows
from rs_deeplab.tiling.class_counts import StripCounts


@given(st.integers(1, 90), st.integers(1, 90), st.integers(1, 40), st.data())
@settings(max_examples=60, deadline=None)
def test_strip_counts_equal_direct_counts(height: int, width: int, size: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, size))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    label = rng.choice(np.array([0, 1, 2, 255], np.uint8), (height, width))
    mask = rng.random((height, width)) < 0.7
    rows = window_rows(window_grid(height, width, size, stride))
    chosen = sorted(rows)[data.draw(st.integers(0, len(rows) - 1)) :]  # a strip of rows, as one task gets
    top = chosen[0]
    windows = [w for r in chosen for w in rows[r]]
    stats = StripCounts(windows, top, label[top:], mask[top:])
    for w in windows:
        crop = label[w.window.toslices()]
        counts = np.bincount(crop.reshape(-1), minlength=256)
        counts[255] += size * size - crop.size
        assert stats.class_counts(w, 255) == {str(v): int(counts[v]) for v in np.flatnonzero(counts)}
        assert stats.valid_pixels(w) == int(mask[w.window.toslices()].sum())
    empty = StripCounts(windows, top, None, None)
    assert empty.class_counts(windows[0], 255) == {}
    assert empty.valid_pixels(windows[0]) == windows[0].height * windows[0].width
