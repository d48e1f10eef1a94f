"""Materials of the synthetic scenes, their class in every aerial scheme, and per-object colour palettes."""

from __future__ import annotations

import numpy as np

MATERIALS = (
    "grass",  # 0 lawns, meadows, verges
    "field",  # 1 striped crop fields
    "asphalt",  # 2 roads
    "marking",  # 3 road paint
    "paving",  # 4 sidewalks, driveways, paved squares
    "parking",  # 5 parking lots
    "roof",  # 6 buildings and their roof structures
    "tree",  # 7 tree crowns
    "car",  # 8 cars and vans
    "clutter",  # 9 containers, material piles, bins
    "soil",  # 10 bare soil heaps and construction ground
    "water",  # 11 ponds and rivers
    "barren",  # 12 bare land
)
M = {name: i for i, name in enumerate(MATERIALS)}
"""Material name → id."""

MATERIAL_TO_CLASS: dict[str, tuple[int, ...]] = {
    # ISPRS: impervious, building, low_vegetation, tree, car, clutter (water and bare soil are clutter there)
    "isprs": (2, 2, 0, 0, 0, 0, 1, 3, 4, 5, 5, 5, 5),
    # LoveDA: background, building, road, water, barren, forest, agricultural
    "loveda": (0, 6, 2, 2, 0, 0, 1, 5, 2, 0, 4, 3, 4),
    # iSAID: everything is background except small vehicles (class 9); other objects are stamped on top
    "isaid": (0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0),
}
"""Per scheme, the class index of each material (in :data:`MATERIALS` order)."""

# Mean colour (R, G, B, NIR) of each palette entry as sunlit digital numbers; one entry is drawn per object.
PALETTES: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "lawn": ((92, 118, 64, 196), (104, 124, 70, 205), (76, 100, 58, 180), (118, 128, 80, 176), (86, 104, 64, 170)),
    "meadow": ((128, 130, 84, 168), (118, 124, 78, 176), (140, 134, 96, 150), (100, 112, 70, 182)),
    "crop": ((88, 120, 62, 210), (150, 140, 88, 150), (120, 132, 74, 190)),
    "soil": ((128, 108, 86, 112), (112, 96, 80, 104), (146, 124, 98, 122)),
    "asphalt": ((98, 100, 102, 84), (88, 90, 94, 78), (110, 110, 110, 92), (104, 100, 96, 88)),
    "parking": ((118, 118, 116, 100), (104, 104, 104, 90), (132, 128, 122, 110)),
    "paving": (
        (162, 156, 146, 138),
        (150, 146, 140, 130),
        (170, 150, 136, 142),
        (140, 136, 132, 122),
        (156, 98, 82, 132),
        (136, 92, 80, 118),
        (120, 118, 116, 104),
    ),
    "marking": ((214, 214, 206, 190),),
    "roof_tile": ((168, 96, 78, 150), (152, 84, 70, 140), (180, 116, 88, 156), (128, 82, 72, 122)),
    "roof_dark": ((78, 80, 84, 70), (96, 92, 90, 84), (66, 70, 78, 62)),
    "roof_flat": ((150, 150, 146, 132), (176, 172, 164, 152), (112, 112, 110, 100), (136, 130, 120, 124)),
    "roof_green": ((96, 118, 76, 178), (110, 120, 84, 170)),
    "roof_box": ((196, 196, 192, 178), (150, 152, 154, 136), (120, 120, 124, 104)),
    "panel": ((40, 46, 70, 40), (32, 38, 58, 34)),
    "tree": ((84, 112, 64, 204), (98, 124, 70, 214), (74, 100, 62, 190), (108, 128, 76, 206), (116, 134, 80, 198)),
    "conifer": ((60, 84, 58, 180), (68, 92, 62, 192)),
    "car": (
        (214, 214, 214, 196),
        (170, 172, 176, 158),
        (40, 40, 44, 40),
        (86, 88, 92, 80),
        (172, 40, 36, 120),
        (34, 56, 124, 60),
        (120, 128, 132, 116),
        (60, 86, 70, 74),
        (196, 188, 164, 176),
    ),
    "container": ((44, 82, 150, 80), (160, 56, 44, 120), (62, 110, 70, 90), (170, 104, 56, 130), (196, 196, 190, 180)),
    "wood": ((176, 146, 104, 170), (150, 122, 88, 150), (190, 176, 150, 176)),
    "cover": ((200, 204, 208, 190), (64, 104, 160, 90), (116, 128, 82, 120)),
    "water": ((38, 56, 60, 14), (46, 66, 74, 16), (56, 72, 64, 20)),
    "barren": ((158, 140, 114, 132), (146, 132, 112, 124), (172, 156, 130, 146)),
}


def pick_colour(rng: np.random.Generator, palette: str, jitter: float = 0.07) -> tuple[float, float, float, float]:
    """One object's (R, G, B, NIR) colour: a random palette entry, with brightness and per-band jitter."""
    options = PALETTES[palette]
    base = np.array(options[int(rng.integers(len(options)))], dtype=np.float64)
    scale = 1.0 + jitter * rng.standard_normal() + 0.4 * jitter * rng.standard_normal(4)
    r, g, b, n = np.clip(base * scale, 4.0, 250.0)
    return float(r), float(g), float(b), float(n)


def class_lut(scheme: str) -> np.ndarray:
    """256-entry lookup table material id → class index of ``scheme`` (``isprs``, ``loveda`` or ``isaid``)."""
    lut = np.full(256, 255, dtype=np.uint8)
    lut[: len(MATERIALS)] = MATERIAL_TO_CLASS[scheme]
    return lut
