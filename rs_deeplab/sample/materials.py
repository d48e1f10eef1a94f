"""Per-material appearance: albedo texture (R, G, B, NIR) and surface height of the pixels of each material."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rs_deeplab.sample.layout import C
from rs_deeplab.sample.objects import BOX, FLAT, GABLE, HIP, PANEL
from rs_deeplab.sample.palette import M
from rs_deeplab.sample.pixels import TAU, Pixels, cell_hash, local_coords, smoothstep

Result = tuple[np.ndarray, np.ndarray]
F = np.float32


def _mod(colour: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Multiply a ``(4, n)`` colour by a per-pixel factor."""
    return colour * factor[np.newaxis]


def grass(p: Pixels) -> Result:
    """Lawn: dry patches, soft blotches, slight grain; variant 2 has mowing stripes along the object axis."""
    u, _ = p.local
    coarse = p.field("coarse")
    t = 1.0 + F(0.06) * coarse + F(0.04) * p.field("mid") + F(0.03) * p.field("leaf") + F(0.04) * p.field("fine")
    t += np.where(p.col("variant") == 2, F(0.035) * np.tanh(3.0 * np.sin(u * (TAU / F(3.0)))), F(0.0))
    dry = smoothstep(p.field("mid") * F(0.5) - coarse + F(0.2)) * F(0.5)
    hay = np.array([[142], [136], [96], [150]], dtype=F)
    albedo = p.colour() * (1.0 - dry) + hay * dry
    return _mod(albedo, t), F(0.04) * p.field("mid")


def field(p: Pixels) -> Result:
    """Crop rows along the object axis (period ``extra``), alternating crop colour and soil."""
    u, _ = p.local
    period = np.maximum(p.col("extra"), F(0.3))
    rows = F(0.5) + F(0.5) * np.cos(u * TAU / period)
    colour = p.colour()
    soil = np.array([[128], [108], [86], [110]], dtype=F)
    mix = rows * np.where(p.col("variant") == 2, F(0.25), F(0.55))
    albedo = colour * (1.0 - mix) + soil * mix
    t = 1.0 + F(0.07) * p.field("coarse") + F(0.04) * p.field("fine")
    return _mod(albedo, t), F(0.12) * rows


def asphalt(p: Pixels) -> Result:
    """Road surface: grain, darker repaired patches."""
    patch = np.where(p.field("coarse") > 1.4, F(0.9), F(1.0))
    t = (1.0 + F(0.03) * p.field("coarse") + F(0.04) * p.field("leaf") + F(0.07) * p.field("fine")) * patch
    return _mod(p.colour(), t), np.zeros(p.idx.size, F)


def marking(p: Pixels) -> Result:
    """Road paint, worn where the mid-scale noise is high."""
    wear = smoothstep(p.field("mid") - F(0.4)) * F(0.45)
    grey = np.array([[100], [100], [102], [86]], dtype=F)
    albedo = p.colour() * (1.0 - wear) + grey * wear
    return _mod(albedo, 1.0 + F(0.05) * p.field("fine")), np.zeros(p.idx.size, F)


def paving(p: Pixels) -> Result:
    """Paving stones of size ``extra`` (default 0.3 m): dark joints and per-stone brightness."""
    u, v = p.local
    size = np.where(p.col("extra") > 0, p.col("extra"), F(0.3))
    gu, gv = u / size, v / (size * F(0.5))
    fu, fv = gu - np.floor(gu), gv - np.floor(gv)
    joint = np.minimum(np.minimum(fu, 1 - fu) * size, np.minimum(fv, 1 - fv) * size * F(0.5)) < F(0.012)
    t = 1.0 + F(0.05) * cell_hash(np.floor(gu), np.floor(gv)) + F(0.04) * p.field("coarse")
    t += F(0.04) * p.field("fine")
    t = np.where(joint, t * F(0.82), t)
    return _mod(p.colour(), t), np.zeros(p.idx.size, F)


def parking(p: Pixels) -> Result:
    """Parking-lot asphalt: like roads, lighter, with oil stains."""
    stain = np.where(p.field("leaf") > 1.8, F(0.85), F(1.0))
    t = (1.0 + F(0.03) * p.field("coarse") + F(0.06) * p.field("fine") + F(0.03) * p.field("mid")) * stain
    return _mod(p.colour(), t), np.zeros(p.idx.size, F)


def roof_height(variant: np.ndarray, u: np.ndarray, v: np.ndarray, rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Roof surface height of gable, hip and flat roofs of objects ``rows`` at local ``(u, v)``."""
    a, b = table[rows, C["a"]], table[rows, C["b"]]
    eave, slope = table[rows, C["height"]], table[rows, C["extra"]]
    rise = np.where(variant == HIP, np.minimum(b - np.abs(v), a - np.abs(u)), b - np.abs(v))
    return eave + np.where((variant == GABLE) | (variant == HIP), slope * np.maximum(rise, 0), F(0.0))


def roof(p: Pixels) -> Result:
    """Buildings: tiled gable/hip roofs, gravel flat roofs with a parapet, boxes and solar panels."""
    u, v = p.local
    variant = p.col("variant")
    height = roof_height(variant, u, v, p.ids, p.table)
    albedo = p.colour()
    pitched = (variant == GABLE) | (variant == HIP)
    on_v = (variant == GABLE) | (p.col("b") - np.abs(v) < p.col("a") - np.abs(u))
    along, across = np.where(on_v, np.abs(v), np.abs(u)), np.where(on_v, u, v)
    row, col = along / F(0.32), across / F(0.22)
    tile = F(1.0) + F(0.05) * cell_hash(np.floor(row), np.floor(col + 0.5 * np.floor(row)))
    t = np.where(pitched, tile, F(1.0)) * (1.0 + F(0.06) * p.field("coarse") + F(0.03) * p.field("fine"))
    height += np.where(pitched, F(0.03) * (row - np.floor(row)), F(0.0))
    flat = variant == FLAT
    rim = np.minimum(p.col("a") - np.abs(u), p.col("b") - np.abs(v)) < F(0.3)
    t *= np.where(flat, 1.0 + F(0.06) * p.field("fine") + F(0.04) * p.field("leaf"), F(1.0))
    t *= np.where(flat & rim, F(1.12), F(1.0))
    height += np.where(flat & rim, F(0.3), F(0.0))
    box = variant == BOX
    height = np.where(box, p.col("height"), height)
    panel = variant == PANEL
    if panel.any():
        height[panel], t[panel] = _panels(p, panel, u[panel], v[panel])
    return _mod(albedo, t), height


def _panels(p: Pixels, sel: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solar panels follow their parent roof plane (id in ``extra``); light frame lines between cells."""
    parent = p.col("extra")[sel].astype(np.int64)
    pu, pv = local_coords(p.idx[sel], parent, p.table, p.width, p.gsd)
    height = roof_height(p.table[parent, C["variant"]], pu, pv, parent, p.table) + F(0.12)
    cu, cv = u / F(1.0), v / F(0.85)
    frame = (np.minimum(cu - np.floor(cu), np.ceil(cu) - cu) < 0.04) | (
        np.minimum(cv - np.floor(cv), np.ceil(cv) - cv) < 0.05
    )
    return height, np.where(frame, F(2.2), F(1.0) + F(0.04) * cell_hash(np.floor(cu), np.floor(cv), 3))


def tree(p: Pixels) -> Result:
    """Crowns: a dome over the crown centre plus leafy clumps whose shading gives the foliage texture."""
    u, v = p.local
    radius, top = p.col("a"), p.col("height")
    r = np.sqrt(u * u + v * v) / (radius * F(1.25))
    dome = np.sqrt(np.clip(1.0 - r * r, 0.05, 1.0))
    leaf = p.field("leaf")
    height = top - F(0.6) * radius * (1.0 - dome) + leaf * (F(0.08) * radius + F(0.25))
    t = 1.0 + F(0.14) * leaf + F(0.07) * p.field("fine") + F(0.06) * p.field("coarse")
    t = np.where(leaf < -1.2, t * F(0.7), t)  # gaps between leaf clusters
    return _mod(p.colour(), t), height


def car(p: Pixels) -> Result:
    """Cars and vans: hood, windshield, roof with side windows, rear window, trunk (front = local +u)."""
    u, v = p.local
    un, vn = u / p.col("a"), np.abs(v) / p.col("b")
    van, top = p.col("variant") == 1, p.col("height")
    shield_lo, shield_hi = np.where(van, F(0.68), F(0.12)), np.where(van, F(0.9), F(0.45))
    wind = (un > shield_lo) & (un <= shield_hi)
    rear = (un > -0.78) & (un <= -0.5) & ~van
    cabin = (un > -0.5) & (un <= shield_lo) | (van & (un <= shield_lo))
    glass = wind | rear | (cabin & (vn > 0.74))
    ramp_w = (un - shield_lo) / (shield_hi - shield_lo)
    level = np.where(cabin, F(1.0), np.where(wind, 1.0 - F(0.35) * ramp_w, F(0.62)))
    level = np.where(rear, F(0.62) + F(0.38) * (un + 0.78) / F(0.28), level)
    height = top * level * np.clip((1.0 - vn) * 5.0, 0.55, 1.0)
    glass_colour = np.array([[34], [40], [50], [30]], dtype=F) * (1.0 + F(0.25) * p.field("mid"))
    albedo = np.where(glass[np.newaxis], glass_colour, p.colour() * (1.0 + F(0.03) * p.field("fine")))
    return albedo, height


def clutter(p: Pixels) -> Result:
    """Containers (corrugated), pallets of material (stacks), covered stacks (wrinkled), bins."""
    u, v = p.local
    variant = p.col("variant")
    t = 1.0 + F(0.04) * p.field("fine")
    t *= np.where(variant == 0, 1.0 + F(0.08) * np.cos(u * TAU / F(0.3)), F(1.0))
    su, sv = np.floor(u / F(1.2)), np.floor(v / F(0.8))
    stack = cell_hash(su, sv, 7)
    t *= np.where(variant == 1, F(1.0) + F(0.1) * stack, F(1.0))
    t *= np.where(variant == 2, F(1.0) + F(0.1) * p.field("leaf"), F(1.0))
    height = p.col("height") * np.where(variant == 1, F(0.8) + F(0.3) * stack, F(1.0))
    height += np.where(variant == 2, F(0.15) * p.field("leaf"), F(0.0))
    return _mod(p.colour(), t), height


def soil(p: Pixels) -> Result:
    """Bare soil: heaps (variant 0, a rough mound) or flat construction ground with tyre tracks (variant 1)."""
    u, v = p.local
    heap = p.col("variant") == 0
    r2 = (u * u + v * v) / (p.col("a") * p.col("a"))
    mound = p.col("height") * np.clip(1.0 - r2, 0.0, 1.0) + F(0.12) * p.field("leaf")
    tracks = F(0.06) * np.cos(v * TAU / F(2.6)) * (p.field("mid") > 0)
    t = 1.0 + F(0.08) * p.field("coarse") + F(0.07) * p.field("leaf") + F(0.05) * p.field("fine")
    t += np.where(heap, F(0.0), tracks)
    return _mod(p.colour(), t), np.where(heap, mound, F(0.05) * p.field("coarse"))


def water(p: Pixels) -> Result:
    """Still water: dark, nearly uniform, with faint ripples."""
    t = 1.0 + F(0.04) * p.field("mid") + F(0.03) * p.field("fine")
    return _mod(p.colour(), t), np.zeros(p.idx.size, F)


def barren(p: Pixels) -> Result:
    """Bare land: blotchy, grainy, slight relief."""
    t = 1.0 + F(0.1) * p.field("coarse") + F(0.06) * p.field("mid") + F(0.05) * p.field("fine")
    return _mod(p.colour(), t), F(0.15) * p.field("coarse")


RENDERERS: dict[int, Callable[[Pixels], Result]] = {
    M["grass"]: grass,
    M["field"]: field,
    M["asphalt"]: asphalt,
    M["marking"]: marking,
    M["paving"]: paving,
    M["parking"]: parking,
    M["roof"]: roof,
    M["tree"]: tree,
    M["car"]: car,
    M["clutter"]: clutter,
    M["soil"]: soil,
    M["water"]: water,
    M["barren"]: barren,
}
"""Material id → renderer returning ``(albedo (4, n), height (n,))``."""
