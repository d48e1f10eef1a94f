"""Object primitives of the synthetic scenes: trees, cars, buildings, parking lots and clutter (sizes in metres)."""

from __future__ import annotations

import math

import numpy as np

from rs_deeplab.sample.layout import Frame, Layout
from rs_deeplab.sample.palette import pick_colour

GABLE, HIP, FLAT, BOX, PANEL = range(5)
"""Roof variants understood by the renderer."""


def tree(layout: Layout, x: float, y: float, radius: float, *, conifer: bool = False) -> int:
    """A tree crown of about ``radius`` metres at ``(x, y)``: a lumpy union of a core and 4-7 lobes."""
    rng = layout.rng
    f = Frame(x, y, float(rng.uniform(0.0, 2.0 * math.pi)))
    circles = [(x, y, radius * float(rng.uniform(0.55, 0.72)))]
    n = int(rng.integers(4, 8))
    for k in range(n):
        ang = 2.0 * math.pi * (k + rng.uniform(-0.3, 0.3)) / n
        dist = radius * float(rng.uniform(0.3, 0.55))
        lobe = radius * float(rng.uniform(0.35, 0.5))
        cx, cy = f.xy(dist * math.cos(ang), dist * math.sin(ang))
        circles.append((cx, cy, lobe))
    height = radius * float(rng.uniform(1.5, 2.4)) + 2.0
    colour = pick_colour(rng, "conifer" if conifer else "tree", 0.12)
    return layout.add(
        "tree", "tree", f, size=(radius, radius), colour=colour, height=height, variant=int(conifer), circles=circles
    )


def tree_cluster(layout: Layout, f: Frame, a: float, b: float, count: int, radius: tuple[float, float]) -> None:
    """``count`` trees scattered in the local rectangle ``|u| < a, |v| < b`` of ``f``."""
    rng = layout.rng
    for _ in range(count):
        x, y = f.xy(float(rng.uniform(-a, a)), float(rng.uniform(-b, b)))
        tree(layout, x, y, float(rng.uniform(*radius)), conifer=bool(rng.random() < 0.15))


def car(layout: Layout, f: Frame, *, van_share: float = 0.1) -> int:
    """A car (or van) centred on ``f`` with its front towards local +u; outline with cut corners."""
    rng = layout.rng
    van = bool(rng.random() < van_share)
    a = float(rng.uniform(2.5, 2.9) if van else rng.uniform(2.0, 2.4))
    b = float(rng.uniform(0.95, 1.05) if van else rng.uniform(0.84, 0.96))
    c = 0.32 * b
    outline = np.array(
        [[a, -b + c], [a - c, -b], [-a + c, -b], [-a, -b + c], [-a, b - c], [-a + c, b], [a - c, b], [a, b - c]]
    )
    height = float(rng.uniform(1.9, 2.3) if van else rng.uniform(1.35, 1.55))
    return layout.add(
        "car",
        "car",
        f,
        size=(a, b),
        colour=pick_colour(rng, "car", 0.05),
        height=height,
        variant=int(van),
        polygons=[f.points(outline)],
    )


def building(layout: Layout, f: Frame, a: float, b: float, *, eave: tuple[float, float], flat_share: float) -> int:
    """A building of half sizes ``a`` x ``b`` (ridge along local u), maybe L-shaped, with roof details."""
    rng = layout.rng
    roof = FLAT if rng.random() < flat_share else (GABLE if rng.random() < 0.7 else HIP)
    palette = ("roof_flat" if rng.random() < 0.9 else "roof_green") if roof == FLAT else "roof_tile"
    palette = "roof_dark" if roof != FLAT and rng.random() < 0.35 else palette
    colour = pick_colour(rng, palette, 0.06)
    h = float(rng.uniform(*eave))
    slope = 0.0 if roof == FLAT else math.tan(math.radians(float(rng.uniform(28.0, 45.0))))
    main = layout.add_rect("object", "roof", f, a, b, colour=colour, height=h, variant=roof, extra=slope)
    if main and a > 5.0 and rng.random() < 0.35:
        wb = float(rng.uniform(0.45, 0.75)) * b
        wl = float(rng.uniform(0.4, 0.9)) * b
        su, sv = (1 if rng.random() < 0.5 else -1), (1 if rng.random() < 0.5 else -1)
        wing = f.sub(su * (a - wb), sv * (b + wl / 2 - wb), math.pi / 2)
        layout.add_rect("object", "roof", wing, wl / 2 + wb, wb, colour=colour, height=h, variant=roof, extra=slope)
    if main:
        _roof_details(layout, f, a, b, roof, h, slope, main)
    return main


def _roof_details(layout: Layout, f: Frame, a: float, b: float, roof: int, h: float, slope: float, parent: int) -> None:
    """Chimneys and solar panels on pitched roofs; boxes (vents, lift houses, skylights) on flat roofs."""
    rng = layout.rng
    if roof == FLAT:
        for _ in range(int(rng.integers(1, 3 + int(a * b / 60)))):
            bu, bv = float(rng.uniform(0.4, 1.8)), float(rng.uniform(0.4, 1.4))
            if bu > a - 1.0 or bv > b - 1.0:
                continue
            sub = f.sub(
                float(rng.uniform(-a + bu + 0.6, a - bu - 0.6)), float(rng.uniform(-b + bv + 0.6, b - bv - 0.6))
            )
            top = h + float(rng.uniform(0.5, 2.0))
            layout.add_rect("detail", "roof", sub, bu, bv, colour=pick_colour(rng, "roof_box"), height=top, variant=BOX)
        return
    if rng.random() < 0.5:
        sub = f.sub(float(rng.uniform(-0.6, 0.6)) * a, float(rng.uniform(-0.5, 0.5)) * b)
        top = h + slope * b + 0.8
        layout.add_rect(
            "detail", "roof", sub, 0.35, 0.35, colour=pick_colour(rng, "roof_dark"), height=top, variant=BOX
        )
    if roof == GABLE and rng.random() < 0.3 and a > 3.5:
        side = 1.0 if _faces_sun(f, layout.sun_azimuth) else -1.0
        pa, pb = float(rng.uniform(0.4, 0.8)) * (a - 0.8), 0.35 * b
        sub = f.sub(float(rng.uniform(-0.2, 0.2)) * a, side * 0.5 * b)
        layout.add_rect(
            "detail", "roof", sub, pa, pb, colour=pick_colour(rng, "panel", 0.04), variant=PANEL, extra=parent
        )


def _faces_sun(f: Frame, sun_azimuth: float) -> bool:
    """Whether the roof half on local +v faces the sun (its outward normal points towards the sun)."""
    nx, ny = -math.sin(f.angle), math.cos(f.angle)
    sx, sy = math.sin(math.radians(sun_azimuth)), -math.cos(math.radians(sun_azimuth))
    return nx * sx + ny * sy > 0


def parking_lot(layout: Layout, f: Frame, a: float, b: float, fill: float) -> None:
    """A paved lot with rows of stalls (5 m deep, 2.5 m wide) along u, aisles between rows, cars in ``fill`` of them."""
    rng = layout.rng
    layout.add_rect("ground", "parking", f, a, b, colour=pick_colour(rng, "parking", 0.05))
    lines: list[np.ndarray] = []
    v = -b + 0.3
    facing = 1.0
    while v + 5.0 <= b:
        stalls = int((2 * a - 0.6) // 2.5)
        u0 = -stalls * 1.25
        for k in range(stalls + 1):
            lines.append(f.rect(u0 + 2.5 * k, v + 2.5, 0.06, 2.4))
        for k in range(stalls):
            if rng.random() < fill:
                cf = f.sub(u0 + 2.5 * k + 1.25 + float(rng.normal(0, 0.1)), v + 2.5, facing * math.pi / 2)
                car(layout, cf.sub(0.0, 0.0, float(rng.normal(0, 0.03))))
        v += 5.0
        facing = -facing
        if facing > 0:  # an aisle after every double row
            v += 6.0
    if lines:
        layout.add("marking", "marking", f, size=(a, b), colour=pick_colour(rng, "marking", 0.03), polygons=lines)


def clutter(layout: Layout, f: Frame, kind: int | None = None) -> int:
    """One clutter object: a container (0), a pile of building material (1), a covered stack (2) or a bin (3)."""
    rng = layout.rng
    kind = int(rng.choice(4, p=[0.35, 0.3, 0.2, 0.15])) if kind is None else kind
    if kind == 0:
        a, b, palette, h = (6.05 if rng.random() < 0.5 else 3.0), 1.22, "container", 2.6
    elif kind == 1:
        a, b, palette, h = float(rng.uniform(1.0, 3.5)), float(rng.uniform(0.8, 2.0)), "wood", 1.0
    elif kind == 2:
        a, b, palette, h = float(rng.uniform(1.2, 3.0)), float(rng.uniform(1.0, 2.0)), "cover", 1.2
    else:
        a, b, palette, h = 0.6, 0.6, "container", 1.3
    colour = pick_colour(rng, palette, 0.06)
    return layout.add_rect("object", "clutter", f, a, b, colour=colour, height=h, variant=kind)


def clutter_group(layout: Layout, f: Frame, count: int) -> None:
    """A row of ``count`` clutter objects of one kind side by side along local v (containers, skips, stacks)."""
    kind = int(layout.rng.choice(4, p=[0.45, 0.3, 0.2, 0.05]))
    v = 0.0
    for _ in range(count):
        oid = clutter(layout, f.sub(0.0, v), kind=kind)
        if not oid:
            return
        v += 2.0 * layout.rows[oid][6] + 0.5


def soil_heap(layout: Layout, x: float, y: float, radius: float) -> int:
    """A heap of bare soil or gravel: an irregular mound with a lumpy outline."""
    rng = layout.rng
    f = Frame(x, y, float(rng.uniform(0, 2 * math.pi)))
    circles = [(x, y, radius * 0.8)]
    for k in range(4):
        px, py = f.xy(radius * 0.35 * math.cos(k * 1.57), radius * 0.3 * math.sin(k * 1.57))
        circles.append((px, py, radius * float(rng.uniform(0.5, 0.75))))
    height = radius * float(rng.uniform(0.35, 0.6))
    colour = pick_colour(rng, "soil", 0.08)
    return layout.add("object", "soil", f, size=(radius, radius), colour=colour, height=height, circles=circles)
