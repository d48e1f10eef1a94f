"""Which scene owns each pixel of a mosaic: disjoint rectangles per scene, planned exactly without per-pixel arrays.

The rule (see :mod:`rs_deeplab.geo.mosaic`): a pixel (row ``r``, column ``c``) lies at distance
``d = min(r + 0.5 - r0, r1 - r - 0.5, c + 0.5 - c0, c1 - c - 0.5)`` from the border of a footprint
``[r0, r1) × [c0, c1)`` (Chebyshev distance of its centre); the covering scene with the largest ``d`` owns it. An
equal ``d`` goes to the scene whose centre is farther from its border on the other axis (``s``, the larger of the
row and the column distance), and a tie in both to the scene listed first. The second key matters where two scenes
share an outer edge of the region: there both are ``0.5`` from their border along the whole overlap, and the first
key alone would hand a triangle of the other's half to the first-listed one.

How: the region is cut at every footprint edge into cells covered by a fixed set of scenes (a sweep over rows,
never all pairs). A cell covered once is owned whole. Otherwise the distance of each scene is separable,
``d = min(fy(r), fx(c))`` with tent functions ``fy`` and ``fx``, so its exact minimum and maximum over a rectangle
come from a few rows and columns; a scene is dropped from a rectangle where another beats it on every pixel (by
those bounds, or because it is at least as far from the border on both axes). A rectangle left with one scene is
owned by it; else it is split where two survivors' tents cross (overlap middle lines), else halved, down to
:data:`LEAF_PIXELS`, where the keys are compared pixel by pixel. Rectangles are merged at the end.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from itertools import combinations, pairwise

import numpy as np

Rect = tuple[int, int, int, int]
"""``(row0, row1, col0, col1)``: half-open pixel ranges on the region grid."""
LEAF_PIXELS = 4096
"""Rectangles this small that the bounds do not settle are decided pixel by pixel."""


def ownership(footprints: Sequence[Rect]) -> list[list[Rect]]:
    """The disjoint rectangles each scene owns (module docstring: the farthest from its border wins).

    Args:
        footprints: Each scene's ``(row0, row1, col0, col1)`` on the region grid, half-open; an empty one owns
            nothing.

    Returns:
        Per scene, in the order given, its rectangles sorted by ``(row0, row1, col0, col1)``. Their union is the
        union of the footprints; a regular grid of equal overlapping tiles gives one rectangle per tile.

    Raises:
        ValueError: A footprint is not four integers.
    """
    fps = [_checked(f) for f in footprints]
    owned: list[list[Rect]] = [[] for _ in fps]
    for rect, cover in _cells(fps):
        if len(cover) == 1:
            owned[cover[0]].append(rect)
        else:
            _resolve(fps, rect, cover, owned)
    return [merge_rectangles(rects) for rects in owned]


def _checked(footprint: Rect) -> Rect:
    values = tuple(footprint)
    if len(values) != 4 or not all(isinstance(v, int | np.integer) for v in values):
        raise ValueError(f"a footprint is (row0, row1, col0, col1) in whole pixels, got {footprint!r}")
    r0, r1, c0, c1 = (int(v) for v in values)
    return r0, r1, c0, c1


def _cells(fps: Sequence[Rect]) -> Iterator[tuple[Rect, tuple[int, ...]]]:
    """Rectangles cut at every footprint edge, each with the scenes covering it (in input order)."""
    live = [i for i, (r0, r1, c0, c1) in enumerate(fps) if r0 < r1 and c0 < c1]
    starts: dict[int, list[int]] = defaultdict(list)
    for i in live:
        starts[fps[i][0]].append(i)
    edges = sorted({e for i in live for e in fps[i][:2]})
    active: list[int] = []
    for ra, rb in pairwise(edges):
        active = [i for i in active if fps[i][1] > ra] + starts.get(ra, [])
        begins: dict[int, list[int]] = defaultdict(list)
        for i in active:
            begins[fps[i][2]].append(i)
        cols = sorted({e for i in active for e in fps[i][2:]})
        current: list[int] = []
        for ca, cb in pairwise(cols):
            current = [i for i in current if fps[i][3] > ca] + begins.get(ca, [])
            if current:
                yield (ra, rb, ca, cb), tuple(sorted(current))


def _tent(t: int, e0: int, e1: int) -> int:
    """Twice the distance of pixel centre ``t + 0.5`` to the border of ``[e0, e1)`` (whole numbers only)."""
    return min(2 * t + 1 - 2 * e0, 2 * e1 - 2 * t - 1)


def _probes(a: int, b: int, *spans: tuple[int, int]) -> set[int]:
    """Pixels of ``[a, b)`` where a difference of tents over ``spans`` can be smallest: the ends, beside each peak."""
    last = b - 1
    points = {a, last}
    for e0, e1 in spans:
        points.update(min(max(p, a), last) for p in ((e0 + e1 - 1) // 2, (e0 + e1) // 2))
    return points


def _bounds(span: tuple[int, int], a: int, b: int) -> tuple[int, int]:
    """Smallest and largest doubled tent of ``span`` over pixels ``[a, b)`` (ends; the pixels beside the peak)."""
    e0, e1 = span
    last = b - 1
    lo = min(2 * a + 1 - 2 * e0, 2 * e1 - 2 * a - 1, 2 * last + 1 - 2 * e0, 2 * e1 - 2 * last - 1)
    peak = min(max((e0 + e1 - 1) // 2, a), last)
    nxt = min(peak + 1, last)
    return lo, max(_tent(peak, e0, e1), _tent(nxt, e0, e1))


def _least_gap(si: tuple[int, int], sj: tuple[int, int], a: int, b: int) -> int:
    """Smallest ``tent_i - tent_j`` over pixels ``[a, b)`` (both piecewise linear: checked at their kinks)."""
    if si == sj:
        return 0
    return min(_tent(t, *si) - _tent(t, *sj) for t in _probes(a, b, si, sj))


def _survivors(fps: Sequence[Rect], rect: Rect, cand: Sequence[int]) -> list[int]:
    """The scenes of ``cand`` that no other one beats on every pixel of ``rect``."""
    ra, rb, ca, cb = rect
    ys = {i: _bounds(fps[i][:2], ra, rb) for i in cand}
    xs = {i: _bounds(fps[i][2:], ca, cb) for i in cand}
    d = {i: (min(ys[i][0], xs[i][0]), min(ys[i][1], xs[i][1])) for i in cand}
    s = {i: (max(ys[i][0], xs[i][0]), max(ys[i][1], xs[i][1])) for i in cand}
    floor = max(lo for lo, _ in d.values())
    alive = [i for i in cand if d[i][1] >= floor]

    def beats(i: int, j: int) -> bool:
        if d[i][0] > d[j][1]:
            return True
        if d[i][0] == d[j][1] and (s[i][0] > s[j][1] or (i < j and s[i][0] >= s[j][1])):
            return True
        gy = _least_gap(fps[i][:2], fps[j][:2], ra, rb)
        gx = _least_gap(fps[i][2:], fps[j][2:], ca, cb)
        return gy >= 0 and gx >= 0 and (i < j or gy > 0 or gx > 0)

    return [j for j in alive if not any(beats(i, j) for i in alive if i != j)]


def _cuts(spans: Sequence[tuple[int, int]], a: int, b: int) -> list[int]:
    """Split positions inside ``(a, b)`` where two of ``spans``' tents cross (else their peaks), central first."""
    crossings: set[int] = set()
    for (p0, p1), (q0, q1) in combinations(set(spans), 2):
        crossings.update(k for e in (p0 + q1, p1 + q0) for k in (e // 2, (e + 1) // 2))
    peaks = {k for e0, e1 in spans for k in ((e0 + e1) // 2, (e0 + e1 + 1) // 2)}
    inside = [k for k in crossings if a < k < b] or [k for k in peaks if a < k < b]
    return sorted(inside, key=lambda k: (abs(2 * k - a - b), k))


def _split(fps: Sequence[Rect], rect: Rect, alive: Sequence[int]) -> tuple[Rect, Rect]:
    """``rect`` cut in two: at the most central crossing of the survivors' tents, else in half on its long side."""
    ra, rb, ca, cb = rect
    rows = _cuts([fps[i][:2] for i in alive], ra, rb)
    cols = _cuts([fps[i][2:] for i in alive], ca, cb)
    if not rows and not cols:
        rows, cols = ([(ra + rb) // 2], []) if rb - ra >= cb - ca else ([], [(ca + cb) // 2])
    row_score = min(rows[0] - ra, rb - rows[0]) / (rb - ra) if rows else -1.0
    col_score = min(cols[0] - ca, cb - cols[0]) / (cb - ca) if cols else -1.0
    if row_score >= col_score:
        return (ra, rows[0], ca, cb), (rows[0], rb, ca, cb)
    return (ra, rb, ca, cols[0]), (ra, rb, cols[0], cb)


def _resolve(fps: Sequence[Rect], cell: Rect, cover: tuple[int, ...], owned: list[list[Rect]]) -> None:
    """Hand out the pixels of ``cell`` (covered by every scene of ``cover``) to their owners."""
    stack: list[tuple[Rect, Sequence[int]]] = [(cell, cover)]
    while stack:
        rect, cand = stack.pop()
        alive = _survivors(fps, rect, cand)
        if len(alive) == 1:
            owned[alive[0]].append(rect)
        elif (rect[1] - rect[0]) * (rect[3] - rect[2]) <= LEAF_PIXELS:
            _leaf(fps, rect, alive, owned)
        else:
            stack.extend((half, alive) for half in _split(fps, rect, alive))


def owner_keys(fps: Sequence[Rect], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The ordering key of each scene at each pixel: ``(len(fps), len(rows), len(cols))`` int64, larger wins.

    The key packs the doubled distance ``d`` above the doubled ``s`` (the module docstring's rule); pixels outside
    a footprint get -1. ``argmax`` over the first axis gives the owner, ties to the first listed.
    """
    r = np.asarray(rows, np.int64)[:, None]
    c = np.asarray(cols, np.int64)[None, :]
    keys = np.full((len(fps), r.shape[0], c.shape[1]), -1, np.int64)
    for n, (r0, r1, c0, c1) in enumerate(fps):
        fy = np.minimum(2 * r + 1 - 2 * r0, 2 * r1 - 2 * r - 1)
        fx = np.minimum(2 * c + 1 - 2 * c0, 2 * c1 - 2 * c - 1)
        key = (np.minimum(fy, fx) << 32) | np.maximum(fy, fx)
        keys[n] = np.where((fy > 0) & (fx > 0), key, -1)
    return keys


def _leaf(fps: Sequence[Rect], rect: Rect, alive: Sequence[int], owned: list[list[Rect]]) -> None:
    """Decide a small rectangle pixel by pixel; each row's runs become rectangles (merged later)."""
    ra, rb, ca, cb = rect
    keys = owner_keys([fps[i] for i in alive], np.arange(ra, rb), np.arange(ca, cb))
    winner = np.asarray(alive)[keys.argmax(axis=0)]
    change = np.ones(winner.shape, bool)
    change[:, 1:] = winner[:, 1:] != winner[:, :-1]
    rows, starts = np.nonzero(change)
    stops = np.empty_like(starts)
    stops[:-1] = np.where(rows[1:] == rows[:-1], starts[1:], winner.shape[1])
    stops[-1:] = winner.shape[1]
    for who, r, c0, c1 in zip(
        winner[rows, starts].tolist(), (rows + ra).tolist(), (starts + ca).tolist(), (stops + ca).tolist(), strict=True
    ):
        owned[who].append((r, r + 1, c0, c1))


def merge_rectangles(rects: Sequence[Rect]) -> list[Rect]:
    """Disjoint rectangles joined where two share a whole side, until none do; sorted.

    Args:
        rects: Disjoint ``(row0, row1, col0, col1)`` rectangles.
    """
    current = sorted(set(rects))
    while True:
        merged = _join(_join(current, across=True), across=False)
        if len(merged) == len(current):
            return sorted(merged)
        current = merged


def _join(rects: Sequence[Rect], *, across: bool) -> list[Rect]:
    """Join neighbours along columns (``across``: same rows, touching columns) or along rows."""
    key = (lambda r: (r[0], r[1], r[2])) if across else (lambda r: (r[2], r[3], r[0]))
    out: list[Rect] = []
    for r in sorted(rects, key=key):
        if out:
            last = out[-1]
            if across and last[:2] == r[:2] and last[3] == r[2]:
                out[-1] = (last[0], last[1], last[2], r[3])
                continue
            if not across and last[2:] == r[2:] and last[1] == r[0]:
                out[-1] = (last[0], r[1], last[2], last[3])
                continue
        out.append(r)
    return out
