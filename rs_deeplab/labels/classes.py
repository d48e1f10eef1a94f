"""Class names, colour palettes and label encodings of every supported dataset (see DESIGN.md, Labels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255
"""Class value meaning ignore (training) and nodata (predictions)."""

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class ClassScheme:
    """The classes of one dataset, in index order, with their colours and how labels are stored on disk.

    Attributes:
        name: Dataset key (``potsdam``, ``loveda``, ...).
        classes: Class names in index order.
        colours: One RGB colour per class, used for previews and colour tables (and for decoding colour-coded
            labels when ``encoding == "rgb"``).
        encoding: ``rgb`` (colour-coded labels), ``index`` (class index raster) or ``offset`` (index + 1,
            0 = no-data, as LoveDA) or ``labelids`` (Cityscapes label ids mapped by ``id_to_train``).
        id_to_train: For ``labelids``: source id → class index; every other id maps to 255.
    """

    name: str
    classes: tuple[str, ...]
    colours: tuple[Colour, ...]
    encoding: str = "index"
    id_to_train: Mapping[int, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes (ignore excluded)."""
        return len(self.classes)

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL colour table for a uint8 class raster: class colours plus transparent black for 255."""
        table = {i: (*c, 255) for i, c in enumerate(self.colours)}
        table[IGNORE_INDEX] = (0, 0, 0, 0)
        return table

    def decode(self, label: np.ndarray) -> np.ndarray:
        """Turn a label as stored on disk into uint8 class indices with 255 for ignore.

        Args:
            label: ``(3, H, W)`` colour array (rasterio band order) for ``rgb``; ``(H, W)`` values otherwise.
        """
        if self.encoding == "rgb":
            return decode_colours(label, self.colours)
        if self.encoding == "offset":
            out = label.astype(np.int64) - 1
            out[(label == 0) | (out >= self.num_classes)] = IGNORE_INDEX
            return out.astype(np.uint8)
        if self.encoding == "labelids":
            lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
            for src, dst in self.id_to_train.items():
                lut[src] = dst
            return lut[label.astype(np.uint8)]
        out = label.astype(np.uint8)
        out[out >= self.num_classes] = IGNORE_INDEX
        return out

    def encode_colours(self, classes: np.ndarray, ignore_colour: Colour = (0, 0, 0)) -> np.ndarray:
        """Class indices ``(H, W)`` → colour image ``(3, H, W)`` uint8; 255 and unknown values get ``ignore_colour``."""
        lut = np.tile(np.array(ignore_colour, dtype=np.uint8), (256, 1))
        lut[: self.num_classes] = np.array(self.colours, dtype=np.uint8)
        return np.moveaxis(lut[classes], -1, 0)


def decode_colours(label: np.ndarray, colours: Sequence[Colour], *, channels_last: bool = False) -> np.ndarray:
    """Map a colour-coded label to class indices; any colour not in ``colours`` becomes 255.

    Args:
        label: ``(3, H, W)`` as rasterio reads it, or ``(H, W, 3)`` with ``channels_last=True`` (PIL/OpenCV).
        colours: RGB colour of each class, in index order.
        channels_last: Whether the colour axis is the last one.
    """
    rgb = np.moveaxis(label, -1, 0) if channels_last else label
    if rgb.ndim != 3 or rgb.shape[0] < 3:
        raise ValueError(f"expected a 3-band colour label, got shape {label.shape}")
    key = (rgb[0].astype(np.uint32) << 16) | (rgb[1].astype(np.uint32) << 8) | rgb[2].astype(np.uint32)
    lut_keys = np.array([(r << 16) | (g << 8) | b for r, g, b in colours], dtype=np.uint32)
    order = np.argsort(lut_keys)
    pos = np.clip(np.searchsorted(lut_keys[order], key), 0, len(colours) - 1)
    found = lut_keys[order][pos] == key
    return np.where(found, order[pos], IGNORE_INDEX).astype(np.uint8)


def voc_palette(n: int = 256) -> list[Colour]:
    """The Pascal VOC colour palette (bit-interleaved class index), also used for Cityscapes-free previews."""
    palette: list[Colour] = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


ISPRS_CLASSES = ("impervious_surface", "building", "low_vegetation", "tree", "car", "clutter")
ISPRS_COLOURS: tuple[Colour, ...] = (
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
)

LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agricultural")
LOVEDA_COLOURS: tuple[Colour, ...] = (
    (255, 255, 255),
    (255, 0, 0),
    (255, 255, 0),
    (0, 0, 255),
    (159, 129, 183),
    (0, 255, 0),
    (255, 195, 128),
)

ISAID_CLASSES = (
    "background",
    "ship",
    "storage_tank",
    "baseball_diamond",
    "tennis_court",
    "basketball_court",
    "ground_track_field",
    "bridge",
    "large_vehicle",
    "small_vehicle",
    "helicopter",
    "swimming_pool",
    "roundabout",
    "soccer_ball_field",
    "plane",
    "harbor",
)
ISAID_COLOURS: tuple[Colour, ...] = (
    (0, 0, 0),
    (0, 0, 63),
    (0, 63, 63),
    (0, 63, 0),
    (0, 63, 127),
    (0, 63, 191),
    (0, 63, 255),
    (0, 127, 63),
    (0, 127, 127),
    (0, 0, 127),
    (0, 0, 191),
    (0, 0, 255),
    (0, 191, 127),
    (0, 127, 191),
    (0, 127, 255),
    (0, 100, 155),
)

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic_light",
    "traffic_sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
CITYSCAPES_COLOURS: tuple[Colour, ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)
CITYSCAPES_ID_TO_TRAIN: dict[int, int] = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}

SCHEMES: dict[str, ClassScheme] = {
    "potsdam": ClassScheme("potsdam", ISPRS_CLASSES, ISPRS_COLOURS, "rgb"),
    "vaihingen": ClassScheme("vaihingen", ISPRS_CLASSES, ISPRS_COLOURS, "rgb"),
    "loveda": ClassScheme("loveda", LOVEDA_CLASSES, LOVEDA_COLOURS, "offset"),
    "isaid": ClassScheme("isaid", ISAID_CLASSES, ISAID_COLOURS, "rgb"),
    "voc": ClassScheme("voc", VOC_CLASSES, tuple(voc_palette(len(VOC_CLASSES))), "index"),
    "cityscapes": ClassScheme("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_COLOURS, "labelids", CITYSCAPES_ID_TO_TRAIN),
}
"""Every dataset's class scheme, keyed by dataset name."""


def distinct_colours(n: int) -> list[Colour]:
    """``n`` deterministic, well-separated RGB colours (golden-ratio hue steps at alternating lightness).

    Used for classes that no dataset scheme colours (your own data): the same count always gives the same colours.
    """
    import colorsys

    colours: list[Colour] = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.85, 0.95) if i % 2 == 0 else (0.6, 0.75)
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def class_colours(class_names: Sequence[str], scheme: str | None = None) -> list[Colour]:
    """Colours of ``class_names``: the scheme's when it names exactly these classes, else :func:`distinct_colours`."""
    known = SCHEMES.get(scheme or "")
    if known is not None and tuple(class_names) == known.classes:
        return list(known.colours)
    return distinct_colours(len(class_names))


def colour_table(colours: Sequence[Colour]) -> dict[int, tuple[int, int, int, int]]:
    """GDAL colour table for a uint8 class raster: ``colours`` by class index plus transparent black for 255."""
    table = {i: (*c, 255) for i, c in enumerate(colours)}
    table[IGNORE_INDEX] = (0, 0, 0, 0)
    return table


def get_scheme(name: str) -> ClassScheme:
    """Return the class scheme of dataset ``name`` or fail listing the known ones."""
    try:
        return SCHEMES[name]
    except KeyError:
        from rs_deeplab.cli.errors import InputError

        raise InputError(f"unknown dataset {name!r}; choose one of: {', '.join(SCHEMES)}") from None
