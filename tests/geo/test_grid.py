"""Window grid: property tests over random scene sizes, crop sizes and strides."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.grid import CropWindow, axis_offsets, chunk_rows, crop_transform, window_grid, window_rows


@st.composite
def axis_cases(draw: st.DrawFn) -> tuple[int, int, int]:
    size = draw(st.integers(1, 700))
    stride = draw(st.integers(1, size))
    length = draw(st.integers(1, 5000))
    return length, size, stride


@given(axis_cases())
@settings(max_examples=200, deadline=None)
def test_axis_offsets_cover_every_pixel_with_the_documented_count(case: tuple[int, int, int]) -> None:
    length, size, stride = case
    offsets = axis_offsets(length, size, stride)
    expected = 1 if length <= size else math.ceil((length - size) / stride) + 1
    assert len(offsets) == expected
    assert offsets[0] == 0
    assert offsets[-1] == max(0, length - size)  # the last window ends at the edge (shifted inward)
    assert all(b > a for a, b in itertools.pairwise(offsets))  # strictly increasing: no duplicates
    assert all(b - a <= stride for a, b in itertools.pairwise(offsets))  # no gap between windows
    assert all(o + min(size, length) <= length for o in offsets)  # every window inside the scene
    assert all(o == i * stride for i, o in enumerate(offsets[:-1]))  # regular steps before the last one


@given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 80), st.data())
@settings(max_examples=60, deadline=None)
def test_window_grid_covers_every_pixel(height: int, width: int, size: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, size))
    windows = window_grid(height, width, size, stride)
    covered = np.zeros((height, width), dtype=bool)
    for w in windows:
        assert w.size == size
        assert (w.height, w.width) == (min(size, height), min(size, width))
        assert w.padded == (height < size or width < size)
        covered[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = True
    assert covered.all()
    assert len(windows) == len(axis_offsets(height, size, stride)) * len(axis_offsets(width, size, stride))
    assert list(windows) == sorted(windows)  # row-major
    assert len(set(windows)) == len(windows)


@given(
    st.tuples(*[st.floats(-1e3, 1e3, allow_nan=False) for _ in range(6)]),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
)
def test_crop_transform_places_the_crop_origin_on_the_scene_pixel(
    coeffs: tuple[float, ...], row: int, col: int
) -> None:
    scene = Affine(*coeffs)
    window = CropWindow(row, col, 1, 1, 1)
    t = crop_transform(scene, window)
    assert t == scene @ Affine.translation(col, row)
    x, y = t @ (0.5, 0.5)
    sx, sy = scene @ (col + 0.5, row + 0.5)
    assert x == pytest.approx(sx, abs=1e-6 * (1 + abs(sx)))
    assert y == pytest.approx(sy, abs=1e-6 * (1 + abs(sy)))


def test_windows_are_frozen_and_validated() -> None:
    w = window_grid(100, 200, 64, 32)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.row_off = 3  # type: ignore[misc]
    assert w.window.width == 64 and w.window.col_off == 0
    assert w.name("scene") == "scene_0_0"
    with pytest.raises(ValueError, match="invalid crop window"):
        CropWindow(0, 0, 65, 10, 64)


def test_small_scene_gets_one_padded_window() -> None:
    (w,) = window_grid(37, 20, 64, 32)
    assert (w.row_off, w.col_off, w.height, w.width, w.size) == (0, 0, 37, 20, 64)
    assert w.padded


def test_example_grid_matches_design_rule() -> None:
    # 6000 px, 512/256: ceil((6000 - 512) / 256) + 1 = 23 windows, the last at 5488.
    offsets = axis_offsets(6000, 512, 256)
    assert len(offsets) == 23 and offsets[-2] == 21 * 256 and offsets[-1] == 5488


@pytest.mark.parametrize(
    ("size", "stride", "message"),
    [(0, 1, "crop size must be a positive"), (-5, 1, "crop size"), (8, 0, "crop stride"), (8, 9, "larger than")],
)
def test_bad_size_or_stride_is_refused(size: int, stride: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        window_grid(100, 100, size, stride)


def test_rows_group_and_chunk_in_order() -> None:
    rows = window_rows(window_grid(100, 70, 40, 20))
    assert list(rows) == [0, 20, 40, 60]
    assert all(len({w.row_off for w in ws}) == 1 for ws in rows.values())
    assert chunk_rows(list(rows), 3) == ((0, 20, 40), (60,))
    with pytest.raises(ValueError, match="positive"):
        chunk_rows([0], 0)
