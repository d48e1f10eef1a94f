"""Rural layout: a patchwork of fields, forest, meadows, bare land, ponds and villages, crossed by roads and a river."""

from __future__ import annotations

import math

import numpy as np

import rs_deeplab.sample.blocks as blocks
from rs_deeplab.sample.layout import Frame, Layout
from rs_deeplab.sample.objects import soil_heap, tree, tree_cluster
from rs_deeplab.sample.palette import pick_colour

PARCEL_KINDS = ("field", "forest", "meadow", "village", "barren", "pond")
PARCEL_WEIGHTS = (0.42, 0.18, 0.12, 0.14, 0.07, 0.07)


def rural_layout(layout: Layout) -> None:
    """Fill ``layout`` with rural land use, then roads and maybe a river on top."""
    rng = layout.rng
    grid = Frame(layout.width_m / 2, layout.height_m / 2, float(rng.uniform(0.0, math.pi)))
    extent = math.hypot(layout.width_m, layout.height_m) / 2 + 10.0
    layout.add_rect("ground", "grass", grid, extent, extent, colour=pick_colour(rng, "meadow"))
    for u0, u1, v0, v1 in _split(rng, -extent, extent, -extent, extent, 0):
        f = grid.sub((u0 + u1) / 2, (v0 + v1) / 2)
        a, b = (u1 - u0) / 2, (v1 - v0) / 2
        if layout.visible(f.ox, f.oy, math.hypot(a, b)):
            _parcel(layout, f, a, b)
    if rng.random() < 0.5:
        _river(layout, extent)
    for _ in range(int(rng.integers(1, 3))):
        road = grid.sub(0.0, float(rng.uniform(-0.6, 0.6)) * extent, float(rng.choice([0.0, math.pi / 2])))
        hw = float(rng.uniform(2.5, 3.5))
        layout.add_rect("ground", "asphalt", road, extent * 1.5, hw, colour=pick_colour(rng, "asphalt", 0.04))


def _split(
    rng: np.random.Generator, u0: float, u1: float, v0: float, v1: float, depth: int
) -> list[tuple[float, float, float, float]]:
    """Recursively cut a rectangle into parcels of roughly 40-180 m."""
    du, dv = u1 - u0, v1 - v0
    if max(du, dv) < 80.0 or (depth >= 3 and rng.random() < 0.4 and max(du, dv) < 180.0):
        return [(u0, u1, v0, v1)]
    t = float(rng.uniform(0.3, 0.7))
    if du >= dv:
        cut = u0 + t * du
        return _split(rng, u0, cut, v0, v1, depth + 1) + _split(rng, cut, u1, v0, v1, depth + 1)
    cut = v0 + t * dv
    return _split(rng, u0, u1, v0, cut, depth + 1) + _split(rng, u0, u1, cut, v1, depth + 1)


def _parcel(layout: Layout, f: Frame, a: float, b: float) -> None:
    """One parcel of a random kind; a 1-3 m grass margin separates neighbours."""
    rng = layout.rng
    kind = PARCEL_KINDS[int(rng.choice(len(PARCEL_KINDS), p=PARCEL_WEIGHTS))]
    m = float(rng.uniform(1.0, 3.0))
    a, b = a - m, b - m
    if kind == "field":
        rot = 0.0 if rng.random() < 0.5 else math.pi / 2
        fa, fb = (a, b) if rot == 0.0 else (b, a)
        colour = pick_colour(rng, "crop", 0.08)
        period = float(rng.uniform(0.6, 3.0))
        variant = int(rng.integers(3))
        layout.add_rect("ground", "field", f.sub(0, 0, rot), fa, fb, colour=colour, variant=variant, extra=period)
    elif kind == "forest":
        _forest(layout, f, a, b)
    elif kind == "meadow":
        layout.add_rect("ground", "grass", f, a, b, colour=pick_colour(rng, "meadow"), variant=1)
        tree_cluster(layout, f, a, b, int(a * b / 900), (2.5, 5.5))
    elif kind == "village":
        road = f.sub(0.0, 0.0, 0.0 if a >= b else math.pi / 2)
        long_, short = max(a, b), min(a, b)
        layout.add_rect("ground", "asphalt", road, long_ + m, 3.0, colour=pick_colour(rng, "asphalt", 0.04))
        for side in (1.0, -1.0):
            half = (short - 3.0) / 2
            if half > 6.0:
                blocks.fill_village(
                    layout, road.sub(0.0, side * (3.0 + half), math.pi if side > 0 else 0.0), long_, half
                )
    elif kind == "barren":
        layout.add_rect("ground", "barren", f, a, b, colour=pick_colour(rng, "barren"))
        for _ in range(int(rng.integers(0, 4))):
            x, y = f.xy(float(rng.uniform(-a, a)) * 0.8, float(rng.uniform(-b, b)) * 0.8)
            soil_heap(layout, x, y, float(rng.uniform(2.0, 5.0)))
    else:
        _pond(layout, f, a, b)


def _forest(layout: Layout, f: Frame, a: float, b: float) -> None:
    """Dense canopy: trees on a jittered grid over a dark forest floor."""
    rng = layout.rng
    layout.add_rect("ground", "grass", f, a, b, colour=pick_colour(rng, "meadow"), variant=1)
    conifer_share = float(rng.uniform(0.0, 0.8))
    step = float(rng.uniform(4.5, 6.5))
    for u in np.arange(-a + step / 2, a, step):
        for v in np.arange(-b + step / 2, b, step):
            if rng.random() < 0.9:
                x, y = f.xy(u + float(rng.normal(0, step / 4)), v + float(rng.normal(0, step / 4)))
                tree(layout, x, y, step * float(rng.uniform(0.5, 0.75)), conifer=bool(rng.random() < conifer_share))


def _pond(layout: Layout, f: Frame, a: float, b: float) -> None:
    """A lumpy pond in a meadow with a few trees around it."""
    rng = layout.rng
    layout.add_rect("ground", "grass", f, a, b, colour=pick_colour(rng, "meadow"), variant=1)
    r = 0.6 * min(a, b)
    circles = [(*f.xy(0.0, 0.0), r * 0.8)]
    for k in range(6):
        ang = k * math.pi / 3 + float(rng.uniform(-0.4, 0.4))
        circles.append((*f.xy(0.45 * r * math.cos(ang), 0.45 * r * math.sin(ang)), r * float(rng.uniform(0.4, 0.6))))
    layout.add("ground", "water", f, size=(r, r), colour=pick_colour(rng, "water", 0.05), circles=circles)
    for _ in range(int(rng.integers(2, 8))):
        ang = float(rng.uniform(0, 2 * math.pi))
        x, y = f.xy(1.15 * r * math.cos(ang), 1.15 * r * math.sin(ang))
        tree(layout, x, y, float(rng.uniform(2.5, 5.0)))


def _river(layout: Layout, extent: float) -> None:
    """A meandering river across the scene, drawn as overlapping quads, with trees on its banks."""
    rng = layout.rng
    f = Frame(layout.width_m / 2, layout.height_m / 2, float(rng.uniform(0, math.pi)))
    width = float(rng.uniform(8.0, 25.0))
    offset = float(rng.uniform(-0.4, 0.4)) * extent
    amp, wave, phase = float(rng.uniform(5, 30)), float(rng.uniform(80, 250)), float(rng.uniform(0, 6.3))
    us = np.arange(-extent - 10, extent + 10, 4.0)
    vs = offset + amp * np.sin(us * 2 * math.pi / wave + phase)
    polys = []
    for k in range(len(us) - 1):
        quad = [[us[k], vs[k] - width / 2], [us[k + 1] + 0.5, vs[k + 1] - width / 2]]
        quad += [[us[k + 1] + 0.5, vs[k + 1] + width / 2], [us[k], vs[k] + width / 2]]
        polys.append(f.points(np.array(quad)))
    layout.add("ground", "water", f, size=(extent, width), colour=pick_colour(rng, "water", 0.05), polygons=polys)
    for k in range(0, len(us), 3):
        if rng.random() < 0.35:
            side = 1.0 if rng.random() < 0.5 else -1.0
            x, y = f.xy(us[k], vs[k] + side * (width / 2 + float(rng.uniform(0.5, 3.0))))
            tree(layout, x, y, float(rng.uniform(2.5, 5.0)))
