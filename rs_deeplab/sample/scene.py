"""The scene generator: a deterministic, georeferenced aerial-like RGB+NIR scene with ISPRS class labels."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from affine import Affine

from rs_deeplab.cli.errors import InputError
from rs_deeplab.sample.layout import Layout
from rs_deeplab.sample.palette import class_lut
from rs_deeplab.sample.render import render
from rs_deeplab.sample.rural import rural_layout
from rs_deeplab.sample.urban import urban_layout

STYLES: dict[str, Callable[[Layout], None]] = {"urban": urban_layout, "rural": rural_layout}
"""Scene styles: ``urban`` (street grid, houses, apartments; Potsdam-like) and ``rural`` (fields, forest, water)."""


@dataclass(frozen=True, eq=False)
class Scene:
    """An in-memory synthetic scene.

    Attributes:
        image: ``(4, H, W)`` uint8 bands R, G, B, NIR.
        classes: ``(H, W)`` uint8 ISPRS class indices 0..5 (impervious, building, low vegetation, tree, car,
            clutter; :data:`rs_deeplab.labels.classes.ISPRS_CLASSES` order).
        transform: Affine geotransform of the top-left corner, north up.
        crs: Coordinate reference system, e.g. ``EPSG:32633``.
        materials: ``(H, W)`` uint8 material ids (:data:`rs_deeplab.sample.palette.MATERIALS`), finer than
            ``classes`` and mapped to other schemes by :meth:`classes_for`.
    """

    image: np.ndarray
    classes: np.ndarray
    transform: Affine
    crs: str
    materials: np.ndarray

    @property
    def gsd(self) -> float:
        """Pixel size in metres."""
        return float(self.transform.a)

    def classes_for(self, scheme: str) -> np.ndarray:
        """Class indices of ``scheme`` (``isprs``, ``loveda`` or ``isaid``) for every pixel."""
        return class_lut(scheme)[self.materials]


def _check_size(height: int, width: int | None) -> tuple[int, int]:
    """Validate the raster size; ``width`` defaults to ``height``."""
    w = height if width is None else width
    for name, value in (("height", height), ("width", w)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InputError(f"scene {name} must be a positive integer number of pixels, got {value!r}")
    return int(height), int(w)


def generate_scene(
    height: int,
    width: int | None = None,
    *,
    seed: int = 0,
    gsd: float = 0.05,
    origin: tuple[float, float] = (368_000.0, 5_808_000.0),
    style: str = "urban",
    crs: str = "EPSG:32633",
) -> Scene:
    """Generate a synthetic aerial scene; the same arguments always give byte-identical arrays.

    Args:
        height: Rows in pixels.
        width: Columns in pixels; defaults to ``height``.
        seed: Non-negative random seed.
        gsd: Pixel size in metres (object sizes are in metres, so a coarser gsd shows more of the city).
        origin: Map coordinates ``(x, y)`` of the top-left corner.
        style: ``urban`` (Potsdam-like) or ``rural`` (fields, forest, water, villages).
        crs: Coordinate reference system of ``origin``.

    Raises:
        InputError: A size is not a positive integer, ``gsd`` is not a positive number, ``seed`` is negative
            or ``style`` is unknown.
    """
    h, w = _check_size(height, width)
    if not (isinstance(gsd, (int, float)) and math.isfinite(gsd) and gsd > 0):
        raise InputError(f"gsd must be a positive number of metres per pixel, got {gsd!r}")
    if style not in STYLES:
        raise InputError(f"unknown scene style {style!r}; choose one of: {', '.join(STYLES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    layout_rng, render_rng, sun_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    azimuth, elevation = float(sun_rng.uniform(125.0, 235.0)), float(sun_rng.uniform(45.0, 62.0))
    layout = Layout(h * gsd, w * gsd, layout_rng, azimuth)
    STYLES[style](layout)
    image, materials = render(layout, (h, w), float(gsd), render_rng, elevation)
    transform = Affine(float(gsd), 0.0, float(origin[0]), 0.0, -float(gsd), float(origin[1]))
    return Scene(image, class_lut("isprs")[materials], transform, crs, materials)


def boundary_mask(classes: np.ndarray, radius: int = 3) -> np.ndarray:
    """Pixels within ``radius`` pixels (a disc) of a class boundary, as in the ISPRS ``noBoundary`` labels.

    Args:
        classes: ``(H, W)`` integer class raster.
        radius: Disc radius in pixels; 0 marks nothing.

    Returns:
        ``(H, W)`` bool mask, True where some pixel within the disc has another class.
    """
    if radius <= 0:
        return np.zeros(classes.shape, dtype=bool)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    data = classes.astype(np.uint8)
    hi = cv2.dilate(data, disc, borderType=cv2.BORDER_REPLICATE)
    lo = cv2.erode(data, disc, borderType=cv2.BORDER_REPLICATE)
    return hi != lo
