"""iSAID objects stamped onto a coarse urban scene: tanks, courts, pools, planes, trucks, ships and harbours."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from rs_deeplab.labels.classes import ISAID_CLASSES

K = {name: i for i, name in enumerate(ISAID_CLASSES)}
"""iSAID class name → index."""
SHADOW = np.array([-0.55, -0.8])
"""Shadow direction in pixels per metre of object height (sun in the south-east)."""


class Canvas:
    """An RGB image ``(H, W, 3)`` and its class raster, drawn in metres (``gsd`` metres per pixel)."""

    def __init__(self, image: np.ndarray, classes: np.ndarray, gsd: float, rng: np.random.Generator) -> None:
        self.image, self.classes, self.gsd, self.rng = image, classes, gsd, rng

    def poly(
        self, points: np.ndarray, colour: tuple[int, ...], label: int | None = None, *, height: float = 0.0
    ) -> None:
        """Fill a polygon given in pixel coordinates; an object with ``height`` metres first casts its shadow."""
        pts = [np.round(np.asarray(points) * 8).astype(np.int32)]
        if height > 0:
            shadow = pts[0] + np.round(SHADOW * height / self.gsd * 8).astype(np.int32)
            self._darken(shadow, 0.45)
        cv2.fillPoly(self.image, pts, colour, shift=3)
        if label is not None:
            cv2.fillPoly(self.classes, pts, (label,), shift=3)

    def _darken(self, fixed: np.ndarray, factor: float) -> None:
        """Multiply the pixels inside a fixed-point (3 fractional bits) polygon by ``factor``."""
        h, w = self.classes.shape
        x0, y0 = np.clip(fixed.min(axis=0) // 8 - 1, 0, [w, h])
        x1, y1 = np.clip(fixed.max(axis=0) // 8 + 2, 0, [w, h])
        if x1 <= x0 or y1 <= y0:
            return
        mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        cv2.fillPoly(mask, [fixed - np.array([x0, y0]) * 8], (1,), shift=3)
        window = self.image[y0:y1, x0:x1]
        window[mask > 0] = (window[mask > 0] * factor).astype(np.uint8)

    def rect(self, x: float, y: float, a: float, b: float, angle: float) -> np.ndarray:
        """Corners of a rectangle centred on pixel ``(x, y)``, half sizes ``a`` x ``b`` metres, turned ``angle``."""
        return self.shape(x, y, np.array([[-a, -b], [a, -b], [a, b], [-a, b]]), angle)

    def shape(self, x: float, y: float, local: np.ndarray, angle: float) -> np.ndarray:
        """Pixel coordinates of ``local`` points (metres) around pixel ``(x, y)`` turned by ``angle``."""
        c, s = math.cos(angle), math.sin(angle)
        return np.asarray(local) @ np.array([[c, s], [-s, c]]) / self.gsd + np.array([x, y])

    def grey(self, lo: int, hi: int) -> tuple[int, int, int]:
        """A random grey level between ``lo`` and ``hi``."""
        g = int(self.rng.integers(lo, hi))
        return (g, g, g - 3)


def storage_tanks(cv: Canvas, x: float, y: float) -> None:
    """A concrete pad with 2-6 round tanks (light tops with a darker rim)."""
    rng = cv.rng
    cv.poly(cv.rect(x, y, 40, 30, 0.0), cv.grey(140, 165))
    radius = float(rng.uniform(5.0, 11.0))
    for k in range(int(rng.integers(2, 7))):
        tx, ty = x + ((k % 3) - 1) * 2.4 * radius / cv.gsd, y + ((k // 3) - 0.5) * 2.4 * radius / cv.gsd
        ring = cv.shape(tx, ty, _circle(radius), 0.0)
        cv.poly(ring, cv.grey(150, 175), K["storage_tank"], height=radius * 0.8)
        cv.poly(cv.shape(tx, ty, _circle(radius * 0.85), 0.0), cv.grey(200, 235))


def _circle(r: float, n: int = 32) -> np.ndarray:
    """A polygon approximating a circle of radius ``r``."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def tennis_courts(cv: Canvas, x: float, y: float) -> None:
    """1-3 courts side by side: coloured surround, white lines, net."""
    rng = cv.rng
    angle = float(rng.uniform(0, math.pi))
    surface = [(60, 110, 70), (150, 80, 60), (60, 90, 140)][int(rng.integers(3))]
    for k in range(int(rng.integers(1, 4))):
        cx, cy = x + k * 19.0 / cv.gsd * -math.sin(angle), y + k * 19.0 / cv.gsd * math.cos(angle)
        cv.poly(cv.rect(cx, cy, 18.0, 9.0, angle), surface, K["tennis_court"])
        pts = np.round(cv.rect(cx, cy, 11.9, 5.5, angle)).astype(np.int32)
        cv2.polylines(cv.image, [pts], True, (235, 235, 235), 1)
        net = np.round(cv.shape(cx, cy, np.array([[0.0, -6.0], [0.0, 6.0]]), angle)).astype(np.int32)
        cv2.line(cv.image, tuple(net[0]), tuple(net[1]), (220, 220, 220), 1)


def swimming_pool(cv: Canvas, x: float, y: float) -> None:
    """A pale deck with a turquoise pool."""
    rng = cv.rng
    angle, a, b = float(rng.uniform(0, math.pi)), float(rng.uniform(5, 13)), float(rng.uniform(3, 7))
    cv.poly(cv.rect(x, y, a + 2.5, b + 2.5, angle), cv.grey(185, 215))
    cv.poly(
        cv.rect(x, y, a, b, angle), (60, int(rng.integers(150, 185)), int(rng.integers(190, 220))), K["swimming_pool"]
    )


def planes(cv: Canvas, x: float, y: float) -> None:
    """A concrete apron with 1-3 parked aircraft (fuselage, swept wings, tailplane)."""
    rng = cv.rng
    cv.poly(cv.rect(x, y, 55, 45, 0.0), cv.grey(120, 150))
    angle = float(rng.uniform(0, 2 * math.pi))
    for k in range(int(rng.integers(1, 4))):
        length = float(rng.uniform(28, 45))
        px, py = (
            x + (k - 1) * 0.9 * length / cv.gsd * math.cos(angle + 1.57),
            y + (k - 1) * 0.9 * length / cv.gsd * math.sin(angle + 1.57),
        )
        body = _plane_outline(length)
        cv.poly(cv.shape(px, py, body, angle), cv.grey(205, 240), K["plane"], height=4.0)


def _plane_outline(length: float) -> np.ndarray:
    """Top view of an airliner of ``length`` metres, nose towards +x, as one polygon."""
    h, w, span = length / 2, length * 0.05, length * 0.48
    half = [
        [h, 0.0],
        [h * 0.85, w],
        [h * 0.2, w],
        [-h * 0.15, span],
        [-h * 0.3, span],
        [-h * 0.1, w],
        [-h * 0.75, w * 0.8],
        [-h * 0.92, span * 0.35],
        [-h, span * 0.35],
        [-h, 0.0],
    ]
    pts = np.array(half)
    return np.concatenate([pts, pts[::-1][1:-1] * np.array([1.0, -1.0])])


def trucks(cv: Canvas, x: float, y: float) -> None:
    """A truck park: rows of articulated lorries (cab + trailer)."""
    rng = cv.rng
    angle = float(rng.uniform(0, math.pi))
    cv.poly(cv.rect(x, y, 40, 28, angle), cv.grey(105, 130))
    for k in range(-4, 5):
        if rng.random() < 0.7:
            tx, ty = x - k * 4.2 / cv.gsd * math.sin(angle), y + k * 4.2 / cv.gsd * math.cos(angle)
            tx += float(rng.normal(0, 1.0)) / cv.gsd * math.cos(angle)
            cv.poly(cv.rect(tx, ty, 8.0, 1.25, angle), cv.grey(170, 235), K["large_vehicle"], height=3.5)
            cab = cv.shape(tx, ty, np.array([[8.0, -1.2], [10.0, -1.2], [10.0, 1.2], [8.0, 1.2]]), angle)
            colour = tuple(int(c) for c in rng.integers(40, 220, 3))
            cv.poly(cab, colour, K["large_vehicle"], height=3.0)


def soccer_field(cv: Canvas, x: float, y: float) -> None:
    """A grass pitch with white lines: touch lines, halfway line, centre circle, penalty areas."""
    angle = float(cv.rng.uniform(0, math.pi))
    cv.poly(cv.rect(x, y, 55, 37, angle), (70, 130, 65), K["soccer_ball_field"])
    lines = [cv.rect(x, y, 52, 34, angle), cv.shape(x, y, np.array([[0, -34], [0, 34]]), angle)]
    lines += [cv.shape(x, y, _circle(9.15, 24), angle)]
    for s in (-1, 1):
        lines.append(cv.shape(x, y, np.array([[s * 52, -20], [s * 35.5, -20], [s * 35.5, 20], [s * 52, 20]]), angle))
    cv2.polylines(cv.image, [np.round(p).astype(np.int32) for p in lines], False, (235, 235, 235), 1)


def harbour(cv: Canvas, edge: str) -> None:
    """Water along one image edge (``n``, ``s``, ``w`` or ``e``) with piers (harbor) and moored ships."""
    rng = cv.rng
    h, w = cv.classes.shape
    size, depth = (w, h) if edge in "ns" else (h, w)
    depth = float(rng.uniform(0.25, 0.4)) * depth
    yy, xx = np.mgrid[0:h, 0:w]
    along, across = (xx, yy) if edge in "ns" else (yy, xx)
    dist = across if edge in "nw" else ((h if edge == "s" else w) - 1 - across)
    water = dist < depth + 6.0 * np.sin(along / 37.0)
    noise = rng.normal(0, 2, (int(water.sum()), 3))
    cv.image[water] = (np.array([38, 62, 70]) + noise).clip(0, 255).astype(np.uint8)
    cv.classes[water] = K["background"]
    angle = 0.0 if edge in "ns" else math.pi / 2
    for _ in range(int(rng.integers(1, 4))):
        reach = float(rng.uniform(0.3, 0.6)) * depth
        x, y = _edge_xy(edge, float(rng.uniform(0.1, 0.9)) * size, depth - reach / 2 + 4, h, w)
        pier = cv.rect(x, y, float(rng.uniform(4.0, 8.0)), (reach / 2 + 6) * cv.gsd, angle)
        cv.poly(pier, cv.grey(130, 170), K["harbor"], height=1.5)
    for _ in range(int(rng.integers(4, 9))):
        x, y = _edge_xy(edge, float(rng.uniform(0.05, 0.95)) * size, float(rng.uniform(0.15, 0.75)) * depth, h, w)
        if water[min(max(int(y), 0), h - 1), min(max(int(x), 0), w - 1)]:
            _ship(cv, x, y, angle + float(rng.normal(0, 0.15)))


def _edge_xy(edge: str, along: float, dist: float, h: int, w: int) -> tuple[float, float]:
    """Pixel position ``along`` the edge and ``dist`` pixels into the image from it."""
    return {"n": (along, dist), "s": (along, h - dist), "w": (dist, along), "e": (w - dist, along)}[edge]


def _ship(cv: Canvas, x: float, y: float, angle: float) -> None:
    """One ship: a pointed hull with a darker deck house."""
    length = float(cv.rng.uniform(15, 70))
    b = length * 0.09
    hull = np.array([[length / 2, 0], [length * 0.3, b], [-length / 2, b], [-length / 2, -b], [length * 0.3, -b]])
    cv.poly(cv.shape(x, y, hull, angle), cv.grey(180, 235), K["ship"], height=3.0)
    cabin = np.array([[-0.1, -0.6], [-0.35, -0.6], [-0.35, 0.6], [-0.1, 0.6]]) * np.array([length, b])
    cv.poly(cv.shape(x, y, cabin, angle), cv.grey(90, 140), K["ship"])


LAND_STAMPS: tuple[Callable[[Canvas, float, float], None], ...] = (
    storage_tanks,
    tennis_courts,
    swimming_pool,
    swimming_pool,
    planes,
    trucks,
    soccer_field,
)
"""Objects placed on land, one per free slot."""
