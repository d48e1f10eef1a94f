"""Join the pieces of one region cut by block seams by splicing their outlines (no general polygon union).

Pieces are in global pixel coordinates, their seam edges lie on the grid lines ``x % grid == 0`` or
``y % grid == 0`` and their holes never touch a seam. So the union is: every hole kept as is, plus the outlines
with the unit seam edges that two pieces share (traversed in opposite directions) removed and the remaining
chains re-linked end to start. Work is linear in the vertices (NumPy) plus a Python loop over the chains, which
are few (one per seam crossing); a general overlay (GEOS) is several times slower on large regions. Anything
unexpected falls back to ``shapely.union_all``, which gives the same result.
"""

from __future__ import annotations

import logging

import numpy as np
import shapely

from rs_deeplab.vectorize.rings import collinear_free, densify_coords, drop_collinear, ring_ends

log = logging.getLogger(__name__)


class _FallbackError(Exception):
    """The fast path met a configuration it does not handle."""


def stitch(pieces: np.ndarray, grid: int, *, validate: bool = False) -> shapely.Geometry:
    """Union of the pieces of one 4-connected region (pixel coordinates, seams on multiples of ``grid``).

    Args:
        pieces: The region's pieces; their holes must not touch a seam.
        grid: Block size; seam lines are the multiples of it.
        validate: Check the spliced polygon and redo it with a full overlay if invalid. Needed after
            simplification, where two pieces may touch at a point lying inside an edge (exact pixel outlines
            only ever touch at shared vertices, which the splice handles).
    """
    try:
        polygon = _stitch(pieces, grid)
    except _FallbackError as why:
        log.debug("seam splice fell back to an overlay union: %s", why)
        return _overlay(pieces)
    if validate and not polygon.is_valid:
        log.debug("seam splice gave an invalid polygon; using an overlay union")
        return _overlay(pieces)
    return polygon


def _overlay(pieces: np.ndarray) -> shapely.Geometry:
    parts = drop_collinear(shapely.get_parts(shapely.union_all(pieces)))
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(list(parts))


def _stitch(pieces: np.ndarray, grid: int) -> shapely.Geometry:
    rings, owner = shapely.get_rings(pieces, return_index=True)
    shell_mask, _ = ring_ends(owner)
    xy, ring = shapely.get_coordinates(rings[shell_mask], return_index=True)
    xy, sign = _same_orientation(xy, ring)
    xy, ring = densify_coords(xy, ring, grid)
    xy, ring, cut = _rotate_to_cut(xy, ring, _shared_seam_edges(xy, ring, grid))
    _, last = ring_ends(ring)
    kept = ~cut & ~last
    starts = np.flatnonzero(kept & ~np.concatenate(([False], kept[:-1])))
    ends = np.flatnonzero(kept & ~np.concatenate((kept[1:], [False]))) + 1  # each chain's last vertex
    shells: list[np.ndarray] = []
    new_holes: list[np.ndarray] = []
    for cycle in _cycles(xy, starts, ends):
        joined = np.concatenate([xy[starts[c] : ends[c]] for c in cycle])
        for loop in _split_touching(joined):
            closed = np.concatenate((loop, loop[:1]))
            loop = loop[collinear_free(closed, np.zeros(len(closed), np.int64))[:-1]]
            (shells if _signed_area(loop) * sign > 0 else new_holes).append(loop)
    if len(shells) != 1:
        raise _FallbackError(f"{len(shells)} outer rings")
    holes = [*(shapely.LinearRing(h) for h in new_holes), *rings[~shell_mask]]
    return shapely.polygons(shapely.linearrings(shells[0]), holes=np.array(holes, dtype=object) if holes else None)


def _same_orientation(xy: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, float]:
    """Reverse the closed rings turning against the first one; return the vertices and that turning sign.

    GDAL writes every outline the same way round, so nothing is usually reversed; shells of the result then turn
    with the returned sign (+1 counter-clockwise), holes against it.
    """
    same = np.concatenate((ring[1:] == ring[:-1], [False]))
    nxt = np.concatenate((xy[1:], xy[:1]))
    cross = np.where(same, xy[:, 0] * nxt[:, 1] - nxt[:, 0] * xy[:, 1], 0.0)
    area = np.bincount(ring, weights=cross)
    sign = 1.0 if area[0] > 0 else -1.0
    flip = (area * sign < 0)[ring]
    if flip.any():
        first, last = ring_ends(ring)
        rank = np.cumsum(first) - 1
        idx = np.arange(len(ring))
        idx[flip] = (np.flatnonzero(first)[rank] + np.flatnonzero(last)[rank] - idx)[flip]
        xy = xy[idx]
    return xy, sign


def _shared_seam_edges(xy: np.ndarray, ring: np.ndarray, grid: int) -> np.ndarray:
    """Boolean per vertex: the edge starting there is a unit seam edge also present in another piece."""
    d = np.concatenate((xy[1:] - xy[:-1], [[0.0, 0.0]]))
    valid = np.concatenate((ring[1:] == ring[:-1], [False]))
    vertical = valid & (d[:, 0] == 0) & (np.abs(d[:, 1]) == 1) & (xy[:, 0] % grid == 0)
    horizontal = valid & (d[:, 1] == 0) & (np.abs(d[:, 0]) == 1) & (xy[:, 1] % grid == 0)
    seam = vertical | horizontal
    if not seam.any():
        raise _FallbackError("no seam edges")
    index = np.flatnonzero(seam)
    low = np.minimum(xy[seam], xy[seam] + d[seam]).astype(np.int64)
    key = (((low[:, 0] << 31) + low[:, 1]) << 1) + vertical[seam]
    order = np.argsort(key, kind="stable")
    twin = key[order][1:] == key[order][:-1]  # the same unit edge in two pieces
    if (twin[1:] & twin[:-1]).any():
        raise _FallbackError("overlapping pieces")
    cut = np.zeros(len(xy), dtype=bool)
    cut[index[order[1:][twin]]] = True
    cut[index[order[:-1][twin]]] = True
    return cut


def _rotate_to_cut(xy: np.ndarray, ring: np.ndarray, cut: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate each closed ring so its first edge is a removed seam edge (chains then never wrap around)."""
    first_vertex, _ = ring_ends(ring)
    starts = np.flatnonzero(first_vertex)
    sizes = np.diff(np.append(starts, len(ring))) - 1  # vertices without the closing one
    hit = np.flatnonzero(cut)
    first = np.flatnonzero(np.concatenate(([True], ring[hit][1:] != ring[hit][:-1])))
    if len(first) != len(starts):
        raise _FallbackError("a piece shares no seam edge")
    first_cut = hit[first] - starts
    n = sizes[ring]
    pos = np.arange(len(ring)) - starts[ring]
    src = starts[ring] + (first_cut[ring] + np.minimum(pos, n)) % n
    return xy[src], ring, cut[src] & (pos < n)


def _cycles(xy: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[list[int]]:
    """Link chains end to start into closed outlines.

    Pixel regions are 4-connected, so where outlines touch at a seam vertex they pass through it inside a
    chain, and each chain end meets exactly one chain start; anything else falls back to an overlay.
    """
    by_start: dict[tuple[float, float], list[int]] = {}
    for c, s in enumerate(starts.tolist()):
        by_start.setdefault((xy[s, 0], xy[s, 1]), []).append(c)
    nxt = np.full(len(starts), -1)
    taken = np.zeros(len(starts), dtype=bool)
    for c, e in enumerate(ends.tolist()):
        options = by_start.get((xy[e, 0], xy[e, 1]), [])
        if len(options) != 1 or taken[options[0]]:
            raise _FallbackError("several chains meet at one seam vertex")
        nxt[c], taken[options[0]] = options[0], True
    cycles: list[list[int]] = []
    seen = np.zeros(len(starts), dtype=bool)
    for c0 in range(len(starts)):
        cycle, c = [], c0
        while not seen[c]:
            seen[c] = True
            cycle.append(c)
            c = int(nxt[c])
        if cycle:
            cycles.append(cycle)
    return cycles


def _split_touching(loop: np.ndarray) -> list[np.ndarray]:
    """Split an open vertex loop that passes through a vertex twice into simple loops."""
    keys = (loop[:, 0].astype(np.int64) << 32) + loop[:, 1].astype(np.int64)
    ordered = np.sort(keys)
    if not (ordered[1:] == ordered[:-1]).any():
        return [loop]
    stack: list[int] = []
    where: dict[int, int] = {}
    out: list[np.ndarray] = []
    for i, k in enumerate(keys.tolist()):
        if k in where:
            at = where[k]
            out.append(loop[stack[at:]])
            for j in stack[at + 1 :]:
                del where[int(keys[j])]
            del stack[at + 1 :]
        else:
            where[k] = len(stack)
            stack.append(i)
    out.append(loop[stack])
    return [r for r in out if len(r) >= 3]


def _signed_area(loop: np.ndarray) -> float:
    x, y = loop[:, 0], loop[:, 1]
    return float((x * np.roll(y, -1) - np.roll(x, -1) * y).sum() / 2)
