"""Cityscapes sample street views: sky, facades, road in perspective, sidewalks, trees, cars, poles, ego car."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from rs_deeplab.sample.output import PathLike, Size, check_count, check_size, folder, save_image, sub_seed

LABEL_IDS = {
    "unlabeled": 0,
    "ego vehicle": 1,
    "static": 4,
    "road": 7,
    "sidewalk": 8,
    "building": 11,
    "pole": 17,
    "traffic sign": 20,
    "vegetation": 21,
    "terrain": 22,
    "sky": 23,
    "person": 24,
    "car": 26,
}
"""Cityscapes label ids used by the samples (``gtFine_labelIds``)."""
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}


class Street:
    """A street-view canvas: RGB image, label ids, horizon and vanishing point."""

    def __init__(self, h: int, w: int, rng: np.random.Generator) -> None:
        self.h, self.w, self.rng = h, w, rng
        self.image = np.zeros((h, w, 3), dtype=np.uint8)
        self.ids = np.zeros((h, w), dtype=np.uint8)
        self.horizon = float(rng.uniform(0.38, 0.46)) * h
        self.vx = float(rng.uniform(0.4, 0.6)) * w

    def fill(self, pts: list[tuple[float, float]] | np.ndarray, colour: tuple[int, ...], name: str) -> None:
        """Fill a polygon in the image and the label ids."""
        poly = [np.round(np.asarray(pts, dtype=np.float64) * 8).astype(np.int32)]
        cv2.fillPoly(self.image, poly, colour, lineType=cv2.LINE_AA, shift=3)
        cv2.fillPoly(self.ids, poly, (LABEL_IDS[name],), shift=3)

    def box(
        self, x: float, y: float, m: float, rect: tuple[float, float, float, float], colour: tuple[int, ...], name: str
    ) -> None:
        """A box ``(x0, y0, x1, y1)`` in metres around anchor ``(x, y)`` (y up) at ``m`` pixels per metre."""
        x0, y0, x1, y1 = rect
        self.fill(
            [(x + x0 * m, y - y0 * m), (x + x1 * m, y - y0 * m), (x + x1 * m, y - y1 * m), (x + x0 * m, y - y1 * m)],
            colour,
            name,
        )

    def toward(self, x: float, y: float, t: float) -> tuple[float, float]:
        """The point a fraction ``t`` of the way from ``(x, y)`` to the vanishing point."""
        return x + (self.vx - x) * t, y + (self.horizon - y) * t

    def depth_scale(self, y: float) -> float:
        """Apparent size in pixels of one metre at image row ``y`` (below the horizon)."""
        return max(0.5, (y - self.horizon) / (self.h - self.horizon) * self.w / 9.0)


def _grey(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int, int]:
    g = int(rng.integers(lo, hi))
    return g, g, g


def _ground(st: Street) -> None:
    """Sky gradient, road trapezoid, sidewalks and a strip of terrain on each side."""
    rows = np.arange(st.h, dtype=np.float32)[:, None]
    sky = np.array([70, 130, 200]) + (rows / st.h * 120)[..., None] * np.array([1.0, 0.6, 0.2])
    st.image[:] = np.clip(sky, 0, 255).astype(np.uint8)
    st.ids[:] = LABEL_IDS["sky"]
    h, w, hz, vx = st.h, st.w, st.horizon, st.vx
    st.fill([(-w, h), (2 * w, h), (vx, hz)], (90, 110, 80), "terrain")
    st.fill([(-0.6 * w, h), (1.6 * w, h), (vx + 2, hz), (vx - 2, hz)], _grey(st.rng, 150, 175), "sidewalk")
    st.fill([(-0.05 * w, h), (1.05 * w, h), (vx + 1, hz), (vx - 1, hz)], _grey(st.rng, 80, 105), "road")
    for t in np.arange(0.0, 0.95, 0.12):
        x0, y0 = st.toward(0.5 * w, h, t)
        x1, y1 = st.toward(0.5 * w, h, t + 0.05)
        cv2.line(st.image, (round(x0), round(y0)), (round(x1), round(y1)), (220, 220, 220), max(1, round(6 * (1 - t))))


def _facades(st: Street) -> None:
    """Building facades on both sides receding to the vanishing point, with window grids."""
    rng = st.rng
    for side in (-1, 1):
        t = 0.0
        while t < 0.9:
            dt = float(rng.uniform(0.15, 0.35))
            x0 = -0.7 * st.w if side < 0 else 1.7 * st.w
            top = -float(rng.uniform(0.3, 1.2)) * st.h
            foot = st.h * 1.05
            (ax, ay), (bx, by) = st.toward(x0, foot, t), st.toward(x0, foot, min(t + dt, 0.97))
            (cx, cy), (dx, dy) = st.toward(x0, top, min(t + dt, 0.97)), st.toward(x0, top, t)
            colour = tuple(int(c) for c in rng.integers(90, 200, 3))
            st.fill([(ax, ay), (bx, by), (cx, cy), (dx, dy)], colour, "building")
            _windows(st, np.array([[ax, ay], [bx, by], [cx, cy], [dx, dy]]))
            t += dt


def _windows(st: Street, quad: np.ndarray) -> None:
    """Dark windows on a facade quad (bottom-near, bottom-far, top-far, top-near corners)."""
    dark = (40, 45, 55)
    for i in np.arange(0.1, 0.9, 0.2):
        for j in np.arange(0.15, 0.85, 0.12):
            corners = []
            for di, dj in ((0, 0), (0.1, 0), (0.1, 0.06), (0, 0.06)):
                near = quad[0] + (quad[3] - quad[0]) * (j + dj)
                far = quad[1] + (quad[2] - quad[1]) * (j + dj)
                corners.append(near + (far - near) * (i + di))
            poly = [np.round(np.array(corners) * 8).astype(np.int32)]
            cv2.fillPoly(st.image, poly, dark, lineType=cv2.LINE_AA, shift=3)


def _roadside(st: Street) -> None:
    """Trees, poles with signs and a static box along the sidewalks, drawn far to near."""
    rng = st.rng
    for t in sorted(rng.uniform(0.1, 0.85, 6), reverse=True):
        side = -1 if rng.random() < 0.5 else 1
        x, y = st.toward(0.5 * st.w + side * 0.85 * st.w, st.h, float(t))
        m = st.depth_scale(y)
        kind = rng.random()
        if kind < 0.5:
            st.box(x, y, m, (-0.15, 0, 0.15, 3), (90, 70, 50), "vegetation")
            for _ in range(7):
                cx, cy = round(x + rng.normal(0, 1.0) * m), round(y - (4 + rng.normal(0, 0.8)) * m)
                r = max(1, round(m * rng.uniform(1.0, 1.8)))
                crown = cv2.ellipse2Poly((cx, cy), (r, r), 0, 0, 360, 20)
                st.fill(np.asarray(crown), (60, int(rng.integers(100, 140)), 50), "vegetation")
        elif kind < 0.8:
            st.box(x, y, m, (-0.08, 0, 0.08, 4), (150, 150, 150), "pole")
            st.box(x, y, m, (-0.4, 3.4, 0.4, 4.2), (220, 200, 40), "traffic sign")
        else:
            st.box(x, y, m, (-0.5, 0, 0.5, 1), (120, 100, 90), "static")


def _cars(st: Street) -> None:
    """Rear views of cars on the road, far to near, and a pedestrian on the sidewalk."""
    rng = st.rng
    for t in sorted(rng.uniform(0.3, 0.85, int(rng.integers(1, 5))), reverse=True):
        x, y = st.toward(float(rng.uniform(0.2, 0.8)) * st.w, st.h, float(t))
        m = st.depth_scale(y)
        body = tuple(int(c) for c in rng.integers(20, 220, 3))
        st.box(x, y, m, (-0.9, 0, 0.9, 1.0), body, "car")
        st.fill(
            [(x - 0.7 * m, y - m), (x + 0.7 * m, y - m), (x + 0.6 * m, y - 1.45 * m), (x - 0.6 * m, y - 1.45 * m)],
            (50, 60, 70),
            "car",
        )
        for dx in (-0.75, 0.6):
            st.box(x, y, m, (dx, 0.6, dx + 0.15, 0.75), (200, 30, 30), "car")
    x, y = st.toward(-0.2 * st.w, st.h, float(rng.uniform(0.3, 0.7)))
    st.box(x, y, st.depth_scale(y), (-0.25, 0, 0.25, 1.7), tuple(int(c) for c in rng.integers(20, 200, 3)), "person")


def street_view(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One street view ``(H, W, 3)`` and its ``labelIds`` raster."""
    st = Street(h, w, rng)
    _ground(st)
    _facades(st)
    _roadside(st)
    _cars(st)
    st.fill([(-1, h + 1), (w + 1, h + 1), (0.8 * w, 0.92 * h), (0.2 * w, 0.92 * h)], (30, 30, 35), "ego vehicle")
    st.ids[:, :2] = LABEL_IDS["unlabeled"]
    noisy = st.image + rng.normal(0, 3, st.image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), st.ids


def write_cityscapes(root: PathLike, *, per_split: int = 2, size: Size = (256, 512), seed: int = 0) -> Path:
    """Write ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and ``gtFine/{split}/{city}/*_gtFine_labelIds.png``.

    Args:
        root: Dataset root (created if missing); returned.
        per_split: Images in each of ``train`` (cities aachen, bochum) and ``val`` (frankfurt).
        size: Image size ``N`` or ``(H, W)`` (the real images are 1024 x 2048).
        seed: Base seed.
    """
    count = check_count(per_split, "per_split")
    h, w = check_size(size)
    for split, cities in CITIES.items():
        for k in range(count):
            city = cities[k % len(cities)]
            stem = f"{city}_{k // len(cities):06d}_{19 + k:06d}"
            image, ids = street_view(h, w, np.random.default_rng(sub_seed(seed, "cityscapes", split, k)))
            save_image(folder(root, "leftImg8bit", split, city) / f"{stem}_leftImg8bit.png", image)
            save_image(folder(root, "gtFine", split, city) / f"{stem}_gtFine_labelIds.png", ids)
    return Path(root)
