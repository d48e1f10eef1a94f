"""Urban block fillers: houses with gardens, apartment blocks with parking, parks, fields and construction sites."""

from __future__ import annotations

import math

from rs_deeplab.sample.layout import Frame, Layout
from rs_deeplab.sample.objects import (
    building,
    car,
    clutter,
    clutter_group,
    parking_lot,
    soil_heap,
    tree,
    tree_cluster,
)
from rs_deeplab.sample.palette import pick_colour

BLOCK_KINDS = ("residential", "perimeter", "apartments", "industrial", "parking", "park", "field", "construction")
BLOCK_WEIGHTS = (0.3, 0.22, 0.16, 0.08, 0.05, 0.07, 0.03, 0.09)


def fill_block(layout: Layout, f: Frame, a: float, b: float) -> None:
    """Fill the block ``|u| < a, |v| < b`` of ``f`` (streets on every side) with one kind of land use."""
    rng = layout.rng
    if a < b:  # work along the long side
        f, a, b = f.sub(0.0, 0.0, math.pi / 2), b, a
    layout.add_rect("ground", "grass", f, a, b, colour=pick_colour(rng, "lawn", 0.1), variant=int(rng.integers(3)))
    if b < 7.0:
        tree_cluster(layout, f, a, b, int(a * b / 150) + int(rng.integers(2)), (2.0, 3.5))
        return
    kind = BLOCK_KINDS[int(rng.choice(len(BLOCK_KINDS), p=BLOCK_WEIGHTS))]
    if kind == "residential" or (kind != "park" and a * b < 500):
        _residential(layout, f, a, b)
    elif kind == "perimeter" and b > 16.0:
        _perimeter(layout, f, a, b)
    elif kind == "apartments":
        _apartments(layout, f, a, b)
    elif kind == "industrial":
        _industrial(layout, f, a, b)
    elif kind == "parking":
        parking_lot(layout, f.sub(0.0, b / 2), a - 1.0, b / 2 - 1.0, float(rng.uniform(0.3, 0.7)))
        for _ in range(int(rng.integers(1, 3))):
            clutter(layout, f.sub(float(rng.uniform(-a + 3, a - 3)), 1.5, float(rng.choice([0.0, math.pi]))))
        _residential(layout, f.sub(0.0, -b / 2, math.pi), a, b / 2, rows=1)
    elif kind == "park":
        _park(layout, f, a, b)
    elif kind == "field":
        _field(layout, f, a, b)
    else:
        _construction(layout, f, a, b)
        _residential(layout, f.sub(0.0, -b / 2, math.pi), a, b / 2, rows=1)


def fill_village(layout: Layout, f: Frame, a: float, b: float) -> None:
    """A row of house parcels in ``|u| < a, |v| < b`` of ``f`` facing a road along local +v."""
    _residential(layout, f, a, b, rows=1)


def _residential(layout: Layout, f: Frame, a: float, b: float, rows: int = 2) -> None:
    """Parcels 13-24 m wide along the long sides, each with a house, a garden and maybe a driveway."""
    rng = layout.rng
    sides = (1.0, -1.0) if rows == 2 and b > 18.0 else (1.0,)
    depth = 2.0 * b / len(sides)
    for side in sides:
        u = -a
        while a - u > 9.0:
            w = min(float(rng.uniform(13.0, 24.0)), a - u)
            pf = f.sub(u + w / 2, side * (b - depth / 2), 0.0 if side > 0 else math.pi)
            if layout.visible(pf.ox, pf.oy, w + depth):
                _house_parcel(layout, pf, w / 2, depth / 2)
            u += w


def _house_parcel(layout: Layout, f: Frame, pa: float, pd: float) -> None:
    """One parcel (street along local +v): house set back from the street, driveway, car, garden trees."""
    rng = layout.rng
    if rng.random() < 0.5:
        layout.add_rect("ground", "grass", f, pa - 0.3, pd - 0.3, colour=pick_colour(rng, "lawn", 0.1), variant=2)
    ha = float(rng.uniform(4.2, max(4.4, min(8.0, pa - 1.8))))
    hb = float(rng.uniform(4.2, max(4.4, min(7.0, pd * 0.5))))
    setback = float(rng.uniform(2.5, 6.0))
    hv = pd - setback - hb
    room = pa - ha - 0.8
    hu = float(rng.uniform(-room, room)) if room > 0 else 0.0
    building(layout, f.sub(hu, hv, float(rng.normal(0, 0.03))), ha, hb, eave=(5.0, 8.5), flat_share=0.2)
    side = 1.0 if hu < 0 else -1.0
    du = hu + side * (ha + 1.7)
    if abs(du) + 1.4 < pa and rng.random() < 0.65:
        length = (pd - hv + hb * 0.5) / 2
        drive = f.sub(du, pd - length)
        layout.add_rect("ground", "paving", drive, 1.4, length, colour=pick_colour(rng, "paving", 0.05), extra=0.2)
        if rng.random() < 0.55:
            car(layout, drive.sub(0.0, float(rng.uniform(-0.3, 0.3)) * length, math.pi / 2))
    back = hv - hb - 1.0  # free garden depth behind the house: v in (-pd, back)
    if back + pd > 4.0:
        _garden(layout, f.sub(0.0, (back - pd) / 2), pa, (back + pd) / 2, hu)
    if rng.random() < 0.3:
        x, y = f.xy(float(rng.uniform(-pa, pa)) * 0.8, pd - 1.5)
        tree(layout, x, y, float(rng.uniform(1.8, 3.5)))


def _garden(layout: Layout, f: Frame, a: float, b: float, hu: float) -> None:
    """The back garden ``|u| < a, |v| < b`` (house side at +v): patio, shed or garage, trees, clutter."""
    rng = layout.rng
    if rng.random() < 0.45 and b > 3.0:  # patio behind the house
        pf = f.sub(hu, b - 1.6)
        layout.add_rect("ground", "paving", pf, float(rng.uniform(2.5, 4.0)), 1.5, colour=pick_colour(rng, "paving"))
    if rng.random() < 0.4 and b > 5.0 and a > 5.0:  # shed or garage at the back
        sa, sb = float(rng.uniform(1.5, 3.0)), float(rng.uniform(1.2, 2.8))
        sf = f.sub(float(rng.uniform(-a + sa + 0.5, a - sa - 0.5)), -b + sb + 0.5)
        building(layout, sf, sa, sb, eave=(2.2, 3.0), flat_share=0.6)
    n = int(rng.integers(2, 5)) + int(rng.random() < 0.4)
    tree_cluster(layout, f, a - 1.0, b - 1.0, n, (2.5, 5.5))
    if rng.random() < 0.45:
        clutter(
            layout,
            f.sub(float(rng.uniform(-a + 2, a - 2)), float(rng.uniform(-b, b)) * 0.6, float(rng.uniform(0, 3.1))),
        )


def _industrial(layout: Layout, f: Frame, a: float, b: float) -> None:
    """A large flat hall and a paved yard with containers, material piles and parked vans."""
    rng = layout.rng
    ha, hb = min(a - 4.0, float(rng.uniform(12.0, 30.0))), min(b * 0.45, float(rng.uniform(8.0, 16.0)))
    hall = f.sub(float(rng.uniform(-a + ha + 2.0, max(-a + ha + 2.0, a - ha - 2.0))), b - hb - 3.0)
    building(layout, hall, ha, hb, eave=(7.0, 12.0), flat_share=0.85)
    yb = b - hb - 3.5
    yard = f.sub(0.0, -hb - 3.0)
    layout.add_rect("ground", "parking", yard, a - 1.5, yb, colour=pick_colour(rng, "parking"))
    for _ in range(int(a * yb / 60) + 1):
        cf = yard.sub(
            float(rng.uniform(-a + 4, a - 4)), float(rng.uniform(-yb + 2, yb - 2)), float(rng.choice([0, 1.5708]))
        )
        if rng.random() < 0.75:
            clutter_group(layout, cf, int(rng.integers(1, 5)))
        else:
            car(layout, cf, van_share=0.7)


def _perimeter(layout: Layout, f: Frame, a: float, b: float) -> None:
    """Terraced buildings along all four streets around a courtyard with trees, parking and bins."""
    rng = layout.rng
    d = float(rng.uniform(5.0, 7.0))  # half depth of the building ring
    sides = [(f.sub(0.0, b - d - 0.5), a), (f.sub(0.0, -b + d + 0.5, math.pi), a)]
    if a > 2 * d + 8:
        sides += [
            (f.sub(a - d - 0.5, 0.0, -math.pi / 2), b - 2 * d - 1),
            (f.sub(-a + d + 0.5, 0.0, math.pi / 2), b - 2 * d - 1),
        ]
    for side, half in sides:
        u = -half
        while half - u > 4.0:
            w = min(float(rng.uniform(10.0, 28.0)), half - u)
            if half - u - w < 8.0:
                w = half - u
            bf = side.sub(u + w / 2, float(rng.uniform(-0.6, 0.0)))
            building(layout, bf, w / 2, d + float(rng.uniform(-0.8, 0.0)), eave=(10.0, 17.0), flat_share=0.45)
            u += w
    ca, cb = a - 2 * d - 2.0, b - 2 * d - 2.0
    if ca > 3.0 and cb > 3.0:
        court = f.sub(0.0, 0.0)
        if rng.random() < 0.35 and cb > 6.0:
            parking_lot(layout, court, ca, cb, float(rng.uniform(0.3, 0.7)))
        else:
            tree_cluster(layout, court, ca, cb, int(ca * cb / 55) + 1, (2.5, 6.0))
        for _ in range(int(rng.integers(1, 4))):
            cf = court.sub(float(rng.uniform(-ca, ca)), float(rng.uniform(-cb, cb)), float(rng.uniform(0, 3.1)))
            clutter_group(layout, cf, int(rng.integers(1, 4)))


def _apartments(layout: Layout, f: Frame, a: float, b: float) -> None:
    """Long blocks along the streets, parking or lawn with trees in the yard, bins and containers."""
    rng = layout.rng
    hb = float(rng.uniform(6.0, 9.0))
    setback = float(rng.uniform(3.0, 8.0))
    rows = (1.0, -1.0) if b > 2 * (setback + 2 * hb) + 10 else (1.0,)
    for side in rows:
        u = -a + float(rng.uniform(2.0, 8.0))
        while a - u > 16.0:
            ha = min(float(rng.uniform(9.0, 28.0)), (a - u) / 2 - 1.0)
            bf = f.sub(u + ha, side * (b - setback - hb), float(rng.normal(0, 0.02)))
            building(layout, bf, ha, hb, eave=(8.0, 16.0), flat_share=0.6)
            u += 2 * ha + float(rng.uniform(5.0, 14.0))
    yard = b - 2 * (setback + hb) if len(rows) == 2 else b - (setback + hb)
    centre = 0.0 if len(rows) == 2 else -(setback + 2 * hb) / 2
    if yard > 4.0:
        yf = f.sub(0.0, centre)
        if rng.random() < 0.6 and yard > 7.0:
            parking_lot(layout, yf, a - float(rng.uniform(3, 10)), yard - 1.5, float(rng.uniform(0.3, 0.7)))
        else:
            tree_cluster(layout, yf, a - 2.0, yard - 1.0, int(a * yard / 60) + 1, (2.5, 5.5))
        for _ in range(int(rng.integers(1, 4))):
            uu = float(rng.uniform(-a + 3, a - 3))
            cf = f.sub(uu, centre + float(rng.uniform(-1, 1)) * (yard - 1.5), float(rng.uniform(0, 3.1)))
            clutter_group(layout, cf, int(rng.integers(1, 4)))


def _park(layout: Layout, f: Frame, a: float, b: float) -> None:
    """Lawn with clustered trees and paved footpaths."""
    rng = layout.rng
    for _ in range(int(rng.integers(1, 3))):
        pf = f.sub(0.0, float(rng.uniform(-0.7, 0.7)) * b)
        layout.add_rect("ground", "paving", pf, a, float(rng.uniform(1.0, 1.6)), colour=pick_colour(rng, "paving"))
    for _ in range(int(a * b / 250) + 1):
        cf = f.sub(float(rng.uniform(-a, a)) * 0.8, float(rng.uniform(-b, b)) * 0.8)
        tree_cluster(layout, cf, min(a, 12.0), min(b, 12.0), int(rng.integers(2, 7)), (2.5, 6.0))


def _field(layout: Layout, f: Frame, a: float, b: float) -> None:
    """A striped crop field with a grass margin, maybe a hedge of trees along one side."""
    rng = layout.rng
    m = float(rng.uniform(2.0, 5.0))
    rot = 0.0 if rng.random() < 0.6 else math.pi / 2
    field = f.sub(0.0, 0.0, rot)
    fa, fb = (a - m, b - m) if rot == 0.0 else (b - m, a - m)
    colour = pick_colour(rng, "crop", 0.07)
    variant = int(rng.integers(3))
    layout.add_rect(
        "ground", "field", field, fa, fb, colour=colour, variant=variant, extra=float(rng.uniform(0.5, 2.5))
    )
    if rng.random() < 0.5:
        radius = float(rng.uniform(2.5, 4.0))
        for u in range(int(-a), int(a), int(radius * 1.6)):
            x, y = f.xy(u, b - m / 2)
            tree(layout, x, y, radius * float(rng.uniform(0.8, 1.2)))


def _construction(layout: Layout, f: Frame, a: float, b: float) -> None:
    """A fenced patch of bare soil (at most 40 x 30 m) with heaps, containers and material piles."""
    rng = layout.rng
    sa, sb = min(a * 0.7, 25.0), min(b * 0.45, 18.0)
    site = f.sub(float(rng.uniform(-a + sa, a - sa)), b - sb - 1.0)
    layout.add_rect("ground", "soil", site, sa, sb, colour=pick_colour(rng, "soil", 0.06), variant=1)
    for _ in range(int(rng.integers(1, 4))):
        x, y = site.xy(float(rng.uniform(-sa, sa)) * 0.7, float(rng.uniform(-sb, sb)) * 0.7)
        soil_heap(layout, x, y, float(rng.uniform(1.5, 4.0)))
    for _ in range(int(rng.integers(2, 6))):
        cf = site.sub(float(rng.uniform(-sa, sa)) * 0.8, float(rng.uniform(-sb, sb)) * 0.8, float(rng.uniform(0, 3.1)))
        clutter_group(layout, cf, int(rng.integers(1, 4)))
