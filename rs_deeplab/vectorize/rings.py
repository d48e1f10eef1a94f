"""Vectorized ring operations on polygons with integer (pixel-corner) vertices: densify, drop collinear."""

from __future__ import annotations

import numpy as np
import shapely


def ring_coords(polys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(xy, ring_of_vertex, polygon_of_ring)`` for every ring (closed) of ``polys``."""
    rings, ring_poly = shapely.get_rings(polys, return_index=True)
    xy, ring_of = shapely.get_coordinates(rings, return_index=True)
    return xy, ring_of, ring_poly


def rebuild(xy: np.ndarray, ring_of: np.ndarray, ring_poly: np.ndarray) -> np.ndarray:
    """Polygons from ring vertices (open rings are closed automatically); the first ring of each is its shell."""
    return shapely.polygons(shapely.linearrings(xy, indices=ring_of), indices=ring_poly)


def ring_ends(ring_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the first and of the last vertex of each ring."""
    change = ring_of[1:] != ring_of[:-1]
    return np.concatenate(([True], change)), np.concatenate((change, [True]))


def densify_coords(xy: np.ndarray, ring_of: np.ndarray, grid: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Insert a vertex at every pixel corner along axis-parallel edges of closed rings.

    Args:
        xy: Closed ring vertices (integers).
        ring_of: Ring index of each vertex.
        grid: Only densify edges on the seam lines ``x % grid == 0`` or ``y % grid == 0`` (others may be
            oblique); None densifies every edge (all must then be axis-parallel).
    """
    _, last = ring_ends(ring_of)
    step = np.zeros_like(xy)
    step[:-1] = xy[1:] - xy[:-1]
    step[last] = 0
    counts = np.abs(step).sum(axis=1).astype(np.int64)
    if grid is not None:
        on_seam = ((step[:, 0] == 0) & (xy[:, 0] % grid == 0)) | ((step[:, 1] == 0) & (xy[:, 1] % grid == 0))
        counts[~on_seam] = 1
    counts[last] = 1
    long = np.flatnonzero(counts > 1)  # usually few: insert points only there
    if long.size == 0:
        return xy, ring_of
    extra = counts[long] - 1
    src = np.repeat(long, extra)
    k = np.arange(len(src)) - np.repeat(np.cumsum(extra) - extra, extra) + 1
    points = xy[src] + np.sign(step[src]) * k[:, None]
    at = src + 1
    return np.insert(xy, at, points, axis=0), np.insert(ring_of, at, ring_of[src])


def densify_pixel_polygons(polys: np.ndarray, grid: int | None = None) -> np.ndarray:
    """Polygons with a vertex at every pixel corner along their axis-parallel edges (see :func:`densify_coords`).

    GDAL omits the vertex where a neighbour's edge ends on a straight edge, while coverage operations need
    neighbours to share every vertex. Coordinates stay exact integers.
    """
    if len(polys) == 0:
        return polys
    xy, ring_of, ring_poly = ring_coords(polys)
    return rebuild(*densify_coords(xy, ring_of, grid), ring_poly)


def collinear_free(xy: np.ndarray, ring_of: np.ndarray) -> np.ndarray:
    """Mask of the vertices to keep: not collinear with their neighbours, and not the closing repeat."""
    first, last = ring_ends(ring_of)
    idx = np.arange(len(xy))
    prev_idx = idx - 1
    prev_idx[first] = np.flatnonzero(last) - 1
    next_idx = np.minimum(idx + 1, len(xy) - 1)
    d_in, d_out = xy - xy[prev_idx], xy[next_idx] - xy
    straight = (d_in[:, 0] * d_out[:, 1] == d_in[:, 1] * d_out[:, 0]) & ((d_in * d_out).sum(axis=1) > 0)
    return ~last & ~straight


def drop_collinear(polys: np.ndarray) -> np.ndarray:
    """Remove vertices lying on the straight line through their neighbours (exact for integer coordinates)."""
    if len(polys) == 0:
        return polys
    xy, ring_of, ring_poly = ring_coords(polys)
    keep = collinear_free(xy, ring_of)
    return rebuild(xy[keep], ring_of[keep], ring_poly)
