"""Polygonize one block of a label raster with ``rasterio.features.shapes`` into flat coordinate arrays.

Coordinates stay in *global pixel units* (column, row of the whole raster) until the very end: every vertex of
a pixel polygon is then an integer stored exactly in a float64, so pieces of the same region cut by a block seam
share bit-identical seam vertices, and which piece owns which pixel along a seam can be read off the rings.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes

SIDES = ("left", "right", "top", "bottom")
"""Block sides, in the order used by :meth:`FlatPolygons.side_owners`."""

_chain = itertools.chain.from_iterable


@dataclass(frozen=True)
class FlatPolygons:
    """Polygons of one block as flat arrays (much cheaper than one Python object per vertex).

    Attributes:
        values: Pixel value (class id) of each polygon.
        ring_counts: Number of rings of each polygon (exterior first).
        ring_sizes: Number of vertices of each ring, closing vertex included.
        xy: ``(n, 2)`` vertices in global pixel coordinates (x = column, y = row).
    """

    values: np.ndarray
    ring_counts: np.ndarray
    ring_sizes: np.ndarray
    xy: np.ndarray

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def from_shapes(cls, results: Iterable[tuple[dict[str, Any], float]]) -> FlatPolygons:
        """Flatten the ``(geojson, value)`` pairs produced by ``rasterio.features.shapes``."""
        values: list[float] = []
        ring_counts: list[int] = []
        rings: list[list[tuple[float, float]]] = []
        for geom, value in results:
            coords = geom["coordinates"]
            values.append(value)
            ring_counts.append(len(coords))
            rings.extend(coords)
        sizes = np.fromiter(map(len, rings), dtype=np.int64, count=len(rings))
        n = int(sizes.sum())
        xy = np.fromiter(_chain(_chain(rings)), dtype=np.float64, count=2 * n).reshape(n, 2)
        return cls(np.asarray(values, dtype=np.int64), np.asarray(ring_counts, dtype=np.int64), sizes, xy)

    def take(self, select: np.ndarray) -> FlatPolygons:
        """The polygons where ``select`` (boolean per polygon) is True."""
        if select.all():
            return self
        ring_mask = np.repeat(select, self.ring_counts)
        xy = self.xy[np.repeat(ring_mask, self.ring_sizes)]
        return FlatPolygons(self.values[select], self.ring_counts[select], self.ring_sizes[ring_mask], xy)

    def mapped(self, transform: Affine) -> FlatPolygons:
        """The same polygons with their vertices mapped through ``transform``."""
        return FlatPolygons(self.values, self.ring_counts, self.ring_sizes, apply_affine(transform, self.xy))

    def polygons(self, select: np.ndarray | None = None, transform: Affine | None = None) -> np.ndarray:
        """Build shapely polygons, optionally only ``select`` (boolean per polygon) and mapped by ``transform``."""
        ring_counts, ring_sizes, xy = self.ring_counts, self.ring_sizes, self.xy
        if select is not None and not select.all():
            ring_mask = np.repeat(select, ring_counts)
            ring_counts, ring_sizes = ring_counts[select], ring_sizes[ring_mask]
            xy = xy[np.repeat(ring_mask, self.ring_sizes)]
        if len(ring_counts) == 0:
            return np.empty(0, dtype=object)
        if transform is not None:
            xy = apply_affine(transform, xy)
        ring_offsets = np.concatenate(([0], np.cumsum(ring_sizes)))
        polygon_offsets = np.concatenate(([0], np.cumsum(ring_counts)))
        # one call from offsets, no index per vertex: ~2x faster than linearrings + polygons with indices
        return shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (ring_offsets, polygon_offsets))

    def side_owners(self, row_off: int, col_off: int, height: int, width: int) -> dict[str, np.ndarray]:
        """For each block side, the index of the polygon owning each pixel along it (-1: none).

        A ring segment lying on a side's line belongs to the polygon whose pixels are just inside the block
        there, so painting those segments gives, per pixel along the side, the polygon that contains it.
        """
        x, y = self.xy[:, 0], self.xy[:, 1]
        right, bottom = col_off + width, row_off + height
        border = (x == col_off) | (x == right) | (y == row_off) | (y == bottom)
        i = np.flatnonzero(border[:-1] & border[1:])  # edges from vertex i to i + 1 along the block outline
        ring_start = np.cumsum(self.ring_sizes) - self.ring_sizes
        ring = np.searchsorted(ring_start, i, side="right") - 1
        i, ring = (
            i[i + 1 < ring_start[ring] + self.ring_sizes[ring]],
            ring[i + 1 < ring_start[ring] + self.ring_sizes[ring]],
        )
        poly = np.searchsorted(np.cumsum(self.ring_counts), ring, side="right")
        a, b = self.xy[i], self.xy[i + 1]
        owners: dict[str, np.ndarray] = {}
        lines = {"left": (0, col_off), "right": (0, right), "top": (1, row_off), "bottom": (1, bottom)}
        for side, (axis, at) in lines.items():
            along, start, length = (1, row_off, height) if axis == 0 else (0, col_off, width)
            on = (a[:, axis] == at) & (b[:, axis] == at)
            lo = np.minimum(a[on, along], b[on, along]).astype(np.int64) - start
            hi = np.maximum(a[on, along], b[on, along]).astype(np.int64) - start
            owners[side] = paint(length, lo, hi, poly[on])
        return owners


def paint(length: int, lo: np.ndarray, hi: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """An array of ``length`` filled with -1, then ``ids[k]`` over each half-open range ``[lo[k], hi[k])``."""
    out = np.full(length, -1, dtype=np.int64)
    spans = hi - lo
    if spans.size:
        starts = np.repeat(lo - (np.cumsum(spans) - spans), spans)
        out[starts + np.arange(int(spans.sum()))] = np.repeat(ids, spans)
    return out


def apply_affine(transform: Affine, xy: np.ndarray) -> np.ndarray:
    """Map ``(n, 2)`` pixel coordinates through an affine transform."""
    a, b, c, d, e, f = transform[:6]
    if b == 0 and d == 0:  # north-up: scale and shift each axis in one pass
        return xy * np.array([a, e]) + np.array([c, f])
    return xy @ np.array([[a, d], [b, e]]) + np.array([c, f])


def polygonize_block(data: np.ndarray, row_off: int, col_off: int, mask: np.ndarray | None = None) -> FlatPolygons:
    """Run ``rasterio.features.shapes`` (4-connected regions) on one block, in global pixel coordinates.

    Args:
        data: The block's pixel values (uint8, uint16, int16 or int32).
        row_off: Row of the block's first pixel in the whole raster.
        col_off: Column of the block's first pixel in the whole raster.
        mask: Pixels to polygonize (True), or None for all.
    """
    transform = Affine.translation(col_off, row_off)
    with no_collection():
        return FlatPolygons.from_shapes(shapes(data, mask=mask, connectivity=4, transform=transform))


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """Pause Python's cyclic garbage collector inside the block (restored after, if it was on).

    ``shapes`` returns millions of coordinate tuples, which cannot form cycles, yet every 700 new objects start
    a collection that walks them: pausing it saves ~10% of polygonizing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
