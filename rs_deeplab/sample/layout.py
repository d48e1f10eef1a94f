"""Scene layout: drawable primitives (polygons, circles; metres) with one attribute row per object."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from rs_deeplab.sample.palette import M

LAYERS = ("ground", "marking", "object", "detail", "car", "tree")
"""Drawing order: a later layer covers an earlier one (tree crowns win over everything)."""

COLUMNS = ("material", "variant", "cx", "cy", "angle", "a", "b", "height", "r", "g", "b_", "nir", "extra")
"""Attribute columns of :attr:`Layout.rows`; ``a``/``b`` are half length/width in metres along the object axes."""
C = {name: i for i, name in enumerate(COLUMNS)}

Colour = tuple[float, float, float, float]
_SHIFT = 3  # fixed-point bits for sub-pixel drawing


@dataclass(frozen=True)
class Frame:
    """A rotated local frame: ``(u, v)`` metres around ``(ox, oy)`` with the u axis at ``angle`` radians."""

    ox: float
    oy: float
    angle: float

    def xy(self, u: float, v: float) -> tuple[float, float]:
        """Scene coordinates (metres, x right, y down) of local point ``(u, v)``."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.ox + u * c - v * s, self.oy + u * s + v * c

    def sub(self, u: float, v: float, rot: float = 0.0) -> Frame:
        """A child frame centred on local ``(u, v)`` and turned by ``rot`` radians."""
        x, y = self.xy(u, v)
        return Frame(x, y, self.angle + rot)

    def points(self, uv: np.ndarray) -> np.ndarray:
        """Scene coordinates of an ``(N, 2)`` array of local points."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.array([[c, s], [-s, c]])
        return np.asarray(uv, dtype=np.float64) @ rot + np.array([self.ox, self.oy])

    def rect(self, u: float, v: float, a: float, b: float) -> np.ndarray:
        """Corners of the axis-aligned local rectangle centred on ``(u, v)`` with half sizes ``a`` x ``b``."""
        return self.points(np.array([[u - a, v - b], [u + a, v - b], [u + a, v + b], [u - a, v + b]]))


class Layout:
    """Collects primitives layer by layer; each object gets an id (its row in :attr:`rows`, 0 = nothing)."""

    def __init__(self, height_m: float, width_m: float, rng: np.random.Generator, sun_azimuth: float) -> None:
        self.height_m, self.width_m = height_m, width_m
        self.rng = rng
        self.sun_azimuth = sun_azimuth
        # row 0 = "nothing drawn": plain lawn
        self.rows: list[list[float]] = [[M["grass"], 0, 0, 0, 0, 1, 1, 0, 96, 118, 66, 192, 0]]
        self.shapes: list[list[tuple[int, str, Any]]] = [[] for _ in LAYERS]

    def visible(self, x: float, y: float, radius: float) -> bool:
        """Whether a disc at ``(x, y)`` of ``radius`` metres touches the scene."""
        return -radius < x < self.width_m + radius and -radius < y < self.height_m + radius

    def add(
        self,
        layer: str,
        material: str,
        frame: Frame,
        *,
        size: tuple[float, float],
        colour: Colour,
        height: float = 0.0,
        variant: int = 0,
        extra: float = 0.0,
        polygons: Sequence[np.ndarray] = (),
        circles: Sequence[tuple[float, float, float]] = (),
    ) -> int:
        """Add one object whose local axes are ``frame``; returns its id (0 when it lies outside the scene).

        Args:
            layer: One of :data:`LAYERS`.
            material: A material name of :mod:`rs_deeplab.sample.palette`.
            frame: The object's own frame (centre and orientation).
            size: Half length ``a`` and half width ``b`` in metres (used by the renderer's local coordinates).
            colour: Sunlit (R, G, B, NIR) digital numbers.
            height: Object height in metres (renderer-specific meaning).
            variant: Renderer-specific sub-type.
            extra: Renderer-specific parameter.
            polygons: Footprint polygons in scene metres.
            circles: Footprint discs ``(x, y, r)`` in scene metres.
        """
        a, b = size
        if not self.visible(frame.ox, frame.oy, 2.0 * max(a, b) + 1.0):
            return 0
        oid = len(self.rows)
        self.rows.append([M[material], variant, frame.ox, frame.oy, frame.angle, a, b, height, *colour, extra])
        target = self.shapes[LAYERS.index(layer)]
        target.extend((oid, "poly", p) for p in polygons)
        target.extend((oid, "circle", c) for c in circles)
        return oid

    def add_rect(self, layer: str, material: str, frame: Frame, a: float, b: float, **kwargs: Any) -> int:
        """Add a rectangle of half sizes ``a`` x ``b`` centred on ``frame``'s origin along its axes."""
        return self.add(layer, material, frame, size=(a, b), polygons=[frame.rect(0, 0, a, b)], **kwargs)

    def table(self) -> np.ndarray:
        """Attribute rows as a float64 ``(n_objects + 1, len(COLUMNS))`` array."""
        return np.array(self.rows, dtype=np.float64)

    def rasterize(self, shape: tuple[int, int], gsd: float) -> np.ndarray:
        """Draw every primitive into an int32 id raster of ``shape`` (later layers and objects on top)."""
        ids = np.zeros(shape, dtype=np.int32)
        scale = (1 << _SHIFT) / gsd
        half = 0.5 * (1 << _SHIFT)
        for layer in self.shapes:
            for oid, kind, geom in layer:
                if kind == "poly":
                    pts = np.round(np.asarray(geom) * scale - half).astype(np.int32)
                    cv2.fillPoly(ids, [pts], (oid,), lineType=cv2.LINE_8, shift=_SHIFT)
                else:
                    x, y, r = geom
                    centre = (round(x * scale - half), round(y * scale - half))
                    cv2.circle(ids, centre, max(1, round(r * scale)), (oid,), -1, lineType=cv2.LINE_8, shift=_SHIFT)
        return ids
