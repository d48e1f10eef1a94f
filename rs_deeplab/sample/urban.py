"""Urban layout: a rotated street grid (asphalt, sidewalks, lane markings, parked cars, street trees) and blocks."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

import rs_deeplab.sample.blocks as blocks
from rs_deeplab.sample.layout import Frame, Layout
from rs_deeplab.sample.objects import car, clutter, tree
from rs_deeplab.sample.palette import pick_colour


@dataclass(frozen=True)
class Road:
    """One street: centre-line position across the grid direction, asphalt half width, sidewalk width."""

    pos: float
    hw: float
    sw: float
    main: bool


def _roads(rng: np.random.Generator, extent: float, spacing: tuple[float, float]) -> list[Road]:
    """Parallel streets covering ``[-extent, extent]`` with random spacing; one in three is a main road."""
    roads = []
    pos = -extent - float(rng.uniform(0.0, spacing[1]))
    while pos < extent + spacing[1]:
        main = bool(rng.random() < 0.3)
        hw = float(rng.uniform(4.5, 6.5) if main else rng.uniform(3.0, 4.0))
        roads.append(Road(pos, hw, float(rng.uniform(2.0, 3.5)), main))
        pos += float(rng.uniform(*spacing))
    return roads


def urban_layout(layout: Layout, *, spacing: float = 1.0) -> None:
    """Fill ``layout`` with a street grid and its blocks (``spacing`` scales the distance between streets)."""
    rng = layout.rng
    theta = float(rng.uniform(0.0, math.pi / 2))
    grid = Frame(layout.width_m / 2, layout.height_m / 2, theta)
    extent = math.hypot(layout.width_m, layout.height_m) / 2 + 10.0
    across = _roads(rng, extent, (62.0 * spacing, 105.0 * spacing))  # streets along u, at v = pos
    along = _roads(rng, extent, (70.0 * spacing, 125.0 * spacing))  # streets along v, at u = pos
    segments: list[list[Road]] = []
    for _ in range(len(across) - 1):
        segments.append([r for r in along if r.main or rng.random() < 0.7])
    for k, road in enumerate(across):
        crossings = {r.pos: r for seg in segments[max(k - 1, 0) : k + 1] for r in seg}
        _street(layout, grid.sub(0.0, road.pos), extent + 20.0, road, list(crossings.values()))
    for k in range(len(across) - 1):
        lo, hi = across[k], across[k + 1]
        half = (hi.pos - lo.pos) / 2
        for road in segments[k]:
            ends = [Road(-half, lo.hw, lo.sw, lo.main), Road(half, hi.hw, hi.sw, hi.main)]
            seg = grid.sub(road.pos, lo.pos + half, math.pi / 2)
            _street(layout, seg, half, road, ends)
    for k in range(len(across) - 1):
        _blocks_of_strip(layout, grid, across[k], across[k + 1], segments[k])


def _street(layout: Layout, f: Frame, half: float, road: Road, crossings: list[Road]) -> None:
    """A street along local u of ``f`` (|u| < ``half``): sidewalks, asphalt, markings, cars and trees."""
    rng = layout.rng
    if not layout.visible(f.ox, f.oy, half + 20.0):
        return
    layout.add_rect("ground", "paving", f, half, road.hw + road.sw, colour=pick_colour(rng, "paving", 0.04), extra=0.3)
    layout.add_rect("ground", "asphalt", f, half, road.hw, colour=pick_colour(rng, "asphalt", 0.04))
    gaps = [(c.pos - c.hw - c.sw - 1.0, c.pos + c.hw + c.sw + 1.0) for c in crossings]

    def free(u: float, margin: float = 0.0) -> bool:
        return -half + margin < u < half - margin and all(not (lo - margin < u < hi + margin) for lo, hi in gaps)

    dashes = [f.rect(u + 1.5, 0.0, 1.5, 0.07) for u in np.arange(-half, half, 9.0) if free(u) and free(u + 3.0)]
    if road.main:
        step = np.arange(-half, half, 1.0)
        dashes += [f.rect(u + 0.5, s * (road.hw - 0.4), 0.5, 0.08) for u in step for s in (-1, 1) if free(u)]
    if dashes:
        layout.add(
            "marking", "marking", f, size=(half, road.hw), colour=pick_colour(rng, "marking", 0.03), polygons=dashes
        )
    for side in (-1.0, 1.0):
        if rng.random() < 0.35:  # parked cars along the kerb
            for u in np.arange(-half + float(rng.uniform(0, 6)), half, float(rng.uniform(5.3, 6.5))):
                if rng.random() < 0.55 and free(u, 3.0):
                    car(layout, f.sub(u, side * (road.hw - 1.15), 0.0 if rng.random() < 0.8 else math.pi))
        for u in rng.uniform(-half, half, int(rng.poisson(2.0 * half / 70.0))):
            if free(u, 3.0):  # moving traffic, driving on the right
                car(layout, f.sub(u, side * road.hw * 0.45, 0.0 if side > 0 else math.pi))
        if rng.random() < 0.3:  # bins and skips on the sidewalk
            for u in rng.uniform(-half, half, int(rng.integers(1, 3))):
                if free(u, 4.0):
                    clutter(layout, f.sub(u, side * (road.hw + road.sw * 0.5)))
        if rng.random() < 0.65:  # street trees on the kerb line
            radius = float(rng.uniform(2.5, 4.2))
            for u in np.arange(-half + float(rng.uniform(0, 10)), half, float(rng.uniform(8.0, 12.0))):
                if free(u, radius):
                    x, y = f.xy(u, side * (road.hw + 0.9))
                    tree(layout, x, y, radius * float(rng.uniform(0.85, 1.15)))


def _blocks_of_strip(layout: Layout, grid: Frame, lo: Road, hi: Road, cross: list[Road]) -> None:
    """The blocks between two parallel streets, cut by the crossing streets present in this strip."""
    v0, v1 = lo.pos + lo.hw + lo.sw, hi.pos - hi.hw - hi.sw
    edges = sorted(cross, key=lambda r: r.pos)
    bounds = [(-1e9, -1e9)] + [(r.pos - r.hw - r.sw, r.pos + r.hw + r.sw) for r in edges] + [(1e9, 1e9)]
    limit = math.hypot(layout.width_m, layout.height_m)
    for (_, u0), (u1, _) in itertools.pairwise(bounds):
        u0, u1 = max(u0, -limit), min(u1, limit)
        if u1 - u0 < 4.0 or v1 - v0 < 4.0:
            continue
        f = grid.sub((u0 + u1) / 2, (v0 + v1) / 2)
        a, b = (u1 - u0) / 2, (v1 - v0) / 2
        if layout.visible(f.ox, f.oy, math.hypot(a, b)):
            blocks.fill_block(layout, f, a, b)
