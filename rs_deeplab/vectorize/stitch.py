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
from collections.abc import Callable, Sequence

import numpy as np
import shapely

from rs_deeplab.vectorize.rings import densify_coords, drop_collinear, ring_ends

log = logging.getLogger(__name__)


class _FallbackError(Exception):
    """The fast path met a configuration it does not handle, in the groups marked in ``groups``."""

    def __init__(self, why: str, groups: np.ndarray) -> None:
        super().__init__(why)
        self.groups = groups


def stitch(pieces: np.ndarray, grid: int, *, validate: bool = False) -> shapely.Geometry:
    """Union of the pieces of one 4-connected region (pixel coordinates, seams on multiples of ``grid``).

    Args:
        pieces: The region's pieces; their holes must not touch a seam.
        grid: Block size; seam lines are the multiples of it.
        validate: Check the spliced polygon and redo it with a full overlay if invalid. Needed after
            simplification, where two pieces may touch at a point lying inside an edge (exact pixel outlines
            only ever touch at shared vertices, which the splice handles).
    """
    return stitch_many([pieces], grid, validate=validate)[0]


def stitch_many(
    groups: Sequence[np.ndarray],
    grid: int,
    *,
    validate: bool = False,
    to_crs: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """:func:`stitch` for several regions at once: one geometry per group of pieces, in order.

    The splice runs on the vertices of all the groups together: a few dozen NumPy calls for the lot instead of
    for each region (one block's seams close tens of regions). A group the splice does not handle is done alone
    with an overlay union and the others are spliced again without it, so every geometry is the one
    :func:`stitch` gives for its group.

    Args:
        groups: Each region's pieces (pixel coordinates).
        grid: Block size; seam lines are the multiples of it.
        validate: As in :func:`stitch`.
        to_crs: Maps ``(n, 2)`` pixel coordinates to the output's; the geometries come back mapped (the same
            coordinates as ``shapely.transform`` of the pixel ones, without building those first).
    """
    out = np.empty(len(groups), dtype=object)
    todo = np.arange(len(groups))
    early = None if validate else to_crs  # validity is checked in pixel coordinates, then mapped
    while len(todo):
        try:
            polygons = _splice([groups[k] for k in todo.tolist()], grid, early)
        except _FallbackError as why:
            for k in todo[why.groups]:
                log.debug("seam splice fell back to an overlay union: %s", why)
                out[k] = _overlay(groups[k]) if early is None else shapely.transform(_overlay(groups[k]), early)
            todo = todo[~why.groups]
            continue
        if validate:
            for i in np.flatnonzero(~shapely.is_valid(polygons)):
                log.debug("seam splice gave an invalid polygon; using an overlay union")
                polygons[i] = _overlay(groups[todo[i]])
        out[todo] = polygons
        break
    if to_crs is not None and early is None and len(out):
        out = shapely.transform(out, to_crs)
    return out


def _overlay(pieces: np.ndarray) -> shapely.Geometry:
    parts = drop_collinear(shapely.get_parts(shapely.union_all(pieces)))
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(list(parts))


def _check(bad: np.ndarray, why: str) -> None:
    """Stop the splice for the groups marked in ``bad`` (a boolean per group), if any."""
    if bad.any():
        raise _FallbackError(why, bad)


def _mark(groups: np.ndarray, n_groups: int) -> np.ndarray:
    bad = np.zeros(n_groups, dtype=bool)
    bad[groups] = True
    return bad


def _splice(
    groups: list[np.ndarray], grid: int, to_crs: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Splice each group's pieces along the seam edges they share; one polygon per group.

    Raises:
        _FallbackError: Marking the groups the splice does not handle.
    """
    n_groups = len(groups)
    pieces = np.concatenate(groups)
    piece_group = np.repeat(np.arange(n_groups), [len(g) for g in groups])
    rings, owner = shapely.get_rings(pieces, return_index=True)
    shell_mask, _ = ring_ends(owner)
    shell_group = piece_group[owner[shell_mask]]
    _check(np.bincount(shell_group, minlength=n_groups) == 0, "a region without an outline")
    xy, ring = shapely.get_coordinates(rings[shell_mask], return_index=True)
    _check(_mark(shell_group[np.bincount(ring, minlength=len(shell_group)) == 0], n_groups), "an empty outline")
    crowded = _crowded(xy, ring, shell_group, grid)
    xy, sign = _same_orientation(xy, ring, shell_group)
    xy, ring = densify_coords(xy, ring, grid)
    group = shell_group[ring]  # of each vertex
    cut, on_seam = _shared_seam_edges(xy, ring, group, grid, n_groups)
    src, cut = _rotate_to_cut(ring, cut, shell_group, n_groups)
    xy, may_touch = xy[src], on_seam[src] | crowded[ring]
    _, last = ring_ends(ring)
    kept = ~cut & ~last
    starts = np.flatnonzero(kept & ~np.concatenate(([False], kept[:-1])))
    ends = np.flatnonzero(kept & ~np.concatenate((kept[1:], [False]))) + 1  # each chain's last vertex
    chain_group = group[starts]
    loop_xy, loop_of, loop_group = _loops(xy, may_touch, starts, ends, chain_group, n_groups)
    is_shell = _signed_areas(loop_xy, loop_of) * sign[loop_group] > 0
    shells = np.bincount(loop_group[is_shell], minlength=n_groups)
    _check(shells != 1, "not one outer ring")
    holes = ~shell_mask
    old_holes = rings[holes] if to_crs is None or not holes.any() else shapely.transform(rings[holes], to_crs)
    new_rings = shapely.linearrings(loop_xy if to_crs is None else to_crs(loop_xy), indices=loop_of)
    all_rings = np.concatenate((new_rings, old_holes))
    all_groups = np.concatenate((loop_group, piece_group[owner[holes]]))
    kind = np.concatenate((np.where(is_shell, 0, 1), np.full(int(holes.sum()), 2)))  # shell, new holes, old holes
    order = np.lexsort((np.arange(len(all_rings)), kind, all_groups))
    return shapely.polygons(all_rings[order], indices=all_groups[order])


def _crowded(xy: np.ndarray, ring: np.ndarray, ring_group: np.ndarray, grid: int) -> np.ndarray:
    """Per outline: another piece of its group lies in the same block (the two may touch at a corner anywhere).

    Pieces from different blocks can only meet on seam lines, and GDAL's outlines never pass a vertex twice, so
    a spliced loop can pass a vertex twice only on a seam line or in such a block.
    """
    first, _ = ring_ends(ring)
    corner = (np.minimum.reduceat(xy, np.flatnonzero(first), axis=0) // grid).astype(np.int64)  # the block's
    order = np.lexsort((corner[:, 1], corner[:, 0], ring_group))
    same = (corner[order][1:] == corner[order][:-1]).all(axis=1) & (ring_group[order][1:] == ring_group[order][:-1])
    crowded = np.zeros(len(ring_group), dtype=bool)
    crowded[order[1:][same]] = True
    crowded[order[:-1][same]] = True
    return crowded


def _same_orientation(xy: np.ndarray, ring: np.ndarray, ring_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reverse the closed rings turning against their group's first; return the vertices and each group's sign.

    GDAL writes every outline the same way round, so nothing is usually reversed; shells of a group's result then
    turn with its sign (+1 counter-clockwise), holes against it.
    """
    same = np.concatenate((ring[1:] == ring[:-1], [False]))
    nxt = np.concatenate((xy[1:], xy[:1]))
    cross = np.where(same, xy[:, 0] * nxt[:, 1] - nxt[:, 0] * xy[:, 1], 0.0)
    area = np.bincount(ring, weights=cross, minlength=len(ring_group))
    first_of_group, _ = ring_ends(ring_group)
    sign = np.where(area[first_of_group] > 0, 1.0, -1.0)
    flip = (area * sign[ring_group] < 0)[ring]
    if flip.any():
        first, last = ring_ends(ring)
        rank = np.cumsum(first) - 1
        idx = np.arange(len(ring))
        idx[flip] = (np.flatnonzero(first)[rank] + np.flatnonzero(last)[rank] - idx)[flip]
        xy = xy[idx]
    return xy, sign


def _shared_seam_edges(
    xy: np.ndarray, ring: np.ndarray, group: np.ndarray, grid: int, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Booleans per vertex: the edge starting there is a unit seam edge also present in another piece of its
    group; the vertex lies on a seam line.
    """  # noqa: D205
    d = np.concatenate((xy[1:] - xy[:-1], [[0.0, 0.0]]))
    valid = np.concatenate((ring[1:] == ring[:-1], [False]))
    on_x, on_y = xy[:, 0] % grid == 0, xy[:, 1] % grid == 0
    vertical = valid & (d[:, 0] == 0) & (np.abs(d[:, 1]) == 1) & on_x
    horizontal = valid & (d[:, 1] == 0) & (np.abs(d[:, 0]) == 1) & on_y
    seam = vertical | horizontal
    _check(np.bincount(group[seam], minlength=n_groups) == 0, "no seam edges")
    index = np.flatnonzero(seam)
    low = np.minimum(xy[seam], xy[seam] + d[seam]).astype(np.int64)
    key = (((low[:, 0] << 31) + low[:, 1]) << 1) + vertical[seam]
    order = np.lexsort((key, group[seam]))
    key, edge_group = key[order], group[seam][order]
    twin = (key[1:] == key[:-1]) & (edge_group[1:] == edge_group[:-1])  # the same unit edge in two pieces
    _check(_mark(edge_group[1:-1][twin[1:] & twin[:-1]], n_groups), "overlapping pieces")
    cut = np.zeros(len(xy), dtype=bool)
    cut[index[order[1:][twin]]] = True
    cut[index[order[:-1][twin]]] = True
    return cut, on_x | on_y


def _rotate_to_cut(
    ring: np.ndarray, cut: np.ndarray, ring_group: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate each closed ring so its first edge is a removed seam edge (chains then never wrap around).

    Returns:
        The vertex order (indices into the vertices) and the cut edges in that order.
    """
    first_vertex, _ = ring_ends(ring)
    starts = np.flatnonzero(first_vertex)
    sizes = np.diff(np.append(starts, len(ring))) - 1  # vertices without the closing one
    hit = np.flatnonzero(cut)
    first = hit[np.concatenate(([True], ring[hit][1:] != ring[hit][:-1]))] if len(hit) else hit
    has_cut = np.zeros(len(starts), dtype=bool)
    has_cut[ring[first]] = True
    _check(_mark(ring_group[~has_cut], n_groups), "a piece shares no seam edge")
    first_cut = first - starts
    n = sizes[ring]
    pos = np.arange(len(ring)) - starts[ring]
    src = starts[ring] + (first_cut[ring] + np.minimum(pos, n)) % n
    return src, cut[src] & (pos < n)


def _loops(
    xy: np.ndarray,
    may_touch: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    chain_group: np.ndarray,
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Link chains end to start into closed loops; return their vertices (open), the loop of each, each loop's group.

    Loops passing a vertex twice (only ever at ``may_touch`` vertices) are split and straight-line vertices
    dropped. Pixel regions are 4-connected, so where outlines touch at a seam vertex they pass through it inside a
    chain, and each chain end meets exactly one chain start of its group; anything else falls back to an overlay.
    Loops come in the order of their first chain, each starting with it.
    """
    nxt = _link(xy, starts, ends, chain_group, n_groups)
    seen = bytearray(len(starts))
    seq: list[int] = []
    heads: list[int] = []
    for c0 in range(len(starts)):
        if seen[c0]:
            continue
        heads.append(len(seq))
        c = c0
        while not seen[c]:
            seen[c] = 1
            seq.append(c)
            c = nxt[c]
    chains = np.asarray(seq, dtype=np.int64)
    lengths = (ends - starts)[chains]
    vertex = np.repeat(starts[chains] - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
    cycle_head = np.zeros(len(chains), dtype=np.int64)
    cycle_head[heads] = 1
    loop_of = np.repeat(np.cumsum(cycle_head) - 1, lengths)
    loop_group = chain_group[chains[heads]]
    touching = _touching(xy[vertex[may_touch[vertex]]], loop_of[may_touch[vertex]], len(loop_group))
    if touching.any():  # the general way: split the loops, then find straight vertices on them
        loop_xy, loop_of, loop_group = _split_touching_loops(xy[vertex], loop_of, loop_group, touching)
        keep = ~_straight(loop_xy, loop_of)
        loop_xy, loop_of = loop_xy[keep], loop_of[keep]
    else:  # straight vertices found in the rings, the loops gathered once
        keep = ~_straight_in_chains(xy, starts, ends, nxt)[vertex]
        loop_xy, loop_of = xy[vertex[keep]], loop_of[keep]
    _check(_mark(loop_group[np.bincount(loop_of, minlength=len(loop_group)) < 3], n_groups), "a degenerate loop")
    return loop_xy, loop_of, loop_group


def _link(xy: np.ndarray, starts: np.ndarray, ends: np.ndarray, chain_group: np.ndarray, n_groups: int) -> list[int]:
    """The chain each chain's end leads to: the one chain of its group starting at that vertex."""
    by_start = np.lexsort((xy[starts, 1], xy[starts, 0], chain_group))
    by_end = np.lexsort((xy[ends, 1], xy[ends, 0], chain_group))
    s_xy, e_xy, g = xy[starts][by_start], xy[ends][by_end], chain_group[by_start]
    # each group has as many starts as ends: matched in sorted order, every end meets one start iff they agree
    unmatched = (s_xy != e_xy).any(axis=1) | (g != chain_group[by_end])
    repeated = (s_xy[1:] == s_xy[:-1]).all(axis=1) & (g[1:] == g[:-1])
    _check(_mark(np.concatenate((g[unmatched], g[1:][repeated])), n_groups), "several chains meet at one seam vertex")
    nxt = np.empty(len(starts), dtype=np.int64)
    nxt[by_end] = by_start
    return nxt.tolist()


def _touching(xy: np.ndarray, loop_of: np.ndarray, n_loops: int) -> np.ndarray:
    """Per loop: it passes a vertex twice (``xy``, ``loop_of``: the vertices that may repeat, in loop order)."""
    touching = np.zeros(n_loops, dtype=bool)
    if not len(xy):
        return touching
    x, y = xy[:, 0].astype(np.int64), xy[:, 1].astype(np.int64)
    bits_x, bits_y = int(x.max()).bit_length(), int(y.max()).bit_length()
    if int(loop_of[-1]).bit_length() + bits_x + bits_y < 63 and x.min() >= 0 and y.min() >= 0:
        keys = np.sort((((loop_of << bits_x) + x) << bits_y) + y)  # one integer per (loop, vertex): a fast sort
        touching[keys[1:][keys[1:] == keys[:-1]] >> (bits_x + bits_y)] = True
    else:
        order = np.lexsort((y, x, loop_of))
        x, y, of = x[order], y[order], loop_of[order]
        touching[of[1:][(x[1:] == x[:-1]) & (y[1:] == y[:-1]) & (of[1:] == of[:-1])]] = True
    return touching


def _split_touching_loops(
    xy: np.ndarray, loop_of: np.ndarray, loop_group: np.ndarray, touching: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split the ``touching`` loops (passing through a vertex twice) into simple loops (:func:`_split_touching`)."""
    first, _ = ring_ends(loop_of)
    bounds = np.append(np.flatnonzero(first), len(loop_of))
    parts: list[np.ndarray] = []
    groups: list[int] = []
    for k in range(len(loop_group)):
        loop = xy[bounds[k] : bounds[k + 1]]
        split = _split_touching(loop) if touching[k] else [loop]
        parts.extend(split)
        groups.extend([int(loop_group[k])] * len(split))
    sizes = [len(p) for p in parts]
    return np.concatenate(parts), np.repeat(np.arange(len(parts)), sizes), np.asarray(groups, dtype=np.int64)


def _straight_in_chains(xy: np.ndarray, starts: np.ndarray, ends: np.ndarray, nxt: list[int]) -> np.ndarray:
    """:func:`_straight` of the loops the chains form, computed in the rings the chains lie in.

    Inside a chain a vertex's neighbours in its loop are its neighbours in its ring, the next chain starting where
    the ring's next vertex is; only a chain's first vertex follows another vertex (the previous chain's last).
    """
    straight = np.zeros(len(xy), dtype=bool)
    straight[1:-1] = _turns_not(xy[1:-1] - xy[:-2], xy[2:] - xy[1:-1])
    previous = np.empty(len(starts), dtype=np.int64)
    previous[np.asarray(nxt, dtype=np.int64)] = np.arange(len(starts))
    straight[starts] = _turns_not(xy[starts] - xy[ends[previous] - 1], xy[starts + 1] - xy[starts])
    return straight


def _turns_not(d_in: np.ndarray, d_out: np.ndarray) -> np.ndarray:
    """Per vertex, from the edges into and out of it: they are collinear and the same way (exact)."""
    return (d_in[:, 0] * d_out[:, 1] == d_in[:, 1] * d_out[:, 0]) & ((d_in * d_out).sum(axis=1) > 0)


def _straight(xy: np.ndarray, loop_of: np.ndarray) -> np.ndarray:
    """Per vertex of open loops: it lies on the straight line from its predecessor to its successor (exact)."""
    first, last = ring_ends(loop_of)
    idx = np.arange(len(xy))
    prev, nxt = idx - 1, idx + 1
    prev[first], nxt[last] = np.flatnonzero(last), np.flatnonzero(first)
    return _turns_not(xy - xy[prev], xy[nxt] - xy)


def _signed_areas(xy: np.ndarray, loop_of: np.ndarray) -> np.ndarray:
    """Twice the signed area of each open loop (exact: integer vertices)."""
    first, last = ring_ends(loop_of)
    nxt = np.arange(1, len(xy) + 1)
    nxt[last] = np.flatnonzero(first)
    cross = xy[:, 0] * xy[nxt, 1] - xy[nxt, 0] * xy[:, 1]
    return np.bincount(loop_of, weights=cross, minlength=int(loop_of[-1]) + 1 if len(loop_of) else 0)


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
