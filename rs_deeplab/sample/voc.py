"""Pascal VOC 2012 (+ SBD ``SegmentationClassAug``) sample images: simple objects of a few classes on backgrounds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from rs_deeplab.labels.classes import VOC_CLASSES, voc_palette
from rs_deeplab.sample.output import PathLike, check_count, folder, save_image, sub_seed
from rs_deeplab.sample.scene import boundary_mask

V = {name: i for i, name in enumerate(VOC_CLASSES)}
Draw = Callable[["Pen", np.random.Generator], None]


def _fill(img: np.ndarray, cls: np.ndarray, pts: np.ndarray, colour: tuple[int, ...], label: int) -> None:
    """Fill a polygon (float pixel coordinates) in the image and the class raster."""
    poly = [np.round(np.asarray(pts, dtype=np.float64) * 8).astype(np.int32)]
    cv2.fillPoly(img, poly, colour, lineType=cv2.LINE_AA, shift=3)
    cv2.fillPoly(cls, poly, (label,), shift=3)


class Pen:
    """Draws parts of one object of class ``label`` at ``(x, y)`` with size unit ``s`` pixels."""

    def __init__(self, img: np.ndarray, cls: np.ndarray, label: int, x: float, y: float, s: float) -> None:
        self.img, self.cls, self.label, self.x, self.y, self.s = img, cls, label, x, y, s

    def part(self, rel: list[tuple[float, float]], colour: tuple[int, ...]) -> None:
        """A polygon whose points are offsets from the anchor in units of ``s`` (y up)."""
        pts = np.array([[self.x + dx * self.s, self.y - dy * self.s] for dx, dy in rel])
        _fill(self.img, self.cls, pts, colour, self.label)

    def box(self, x0: float, y0: float, x1: float, y1: float, colour: tuple[int, ...]) -> None:
        """An axis-aligned box between relative corners ``(x0, y0)`` and ``(x1, y1)``."""
        self.part([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour)

    def disc(self, dx: float, dy: float, r: float, colour: tuple[int, ...]) -> None:
        """A disc at a relative position with relative radius ``r``."""
        centre = (round((self.x + dx * self.s) * 8), round((self.y - dy * self.s) * 8))
        rad = max(8, round(r * self.s * 8))
        cv2.circle(self.img, centre, rad, colour, -1, lineType=cv2.LINE_AA, shift=3)
        cv2.circle(self.cls, centre, rad, (self.label,), -1, shift=3)


def _colour(rng: np.random.Generator, lo: int = 20, hi: int = 230) -> tuple[int, int, int]:
    """A random RGB colour with components in ``[lo, hi)``."""
    r, g, b = (int(c) for c in rng.integers(lo, hi, 3))
    return r, g, b


def car(pen: Pen, rng: np.random.Generator) -> None:
    """Side view: body, cabin with windows, two wheels."""
    body = _colour(rng)
    pen.part([(-1, 0), (1, 0), (1, 0.4), (-1, 0.45)], body)
    pen.part([(-0.55, 0.42), (0.45, 0.42), (0.25, 0.8), (-0.4, 0.8)], body)
    pen.part([(-0.45, 0.45), (0.35, 0.45), (0.2, 0.72), (-0.35, 0.72)], (150, 190, 210))
    for wx in (-0.6, 0.6):
        pen.disc(wx, 0.0, 0.22, (25, 25, 25))
        pen.disc(wx, 0.0, 0.1, (160, 160, 160))


def person(pen: Pen, rng: np.random.Generator) -> None:
    """Standing figure: legs, torso, arms and head (the anchor is at the feet)."""
    shirt, trousers = _colour(rng), _colour(rng, 20, 120)
    for dx in (-0.12, 0.12):
        pen.part([(dx - 0.08, 0), (dx + 0.08, 0), (dx + 0.07, 0.9), (dx - 0.07, 0.9)], trousers)
    pen.part([(-0.25, 0.85), (0.25, 0.85), (0.27, 1.55), (-0.27, 1.55)], shirt)
    for side in (-1, 1):
        pen.part([(side * 0.27, 1.5), (side * 0.38, 1.45), (side * 0.36, 0.95), (side * 0.28, 0.95)], shirt)
    tone = float(rng.uniform(0.5, 1.0))
    pen.disc(0.0, 1.72, 0.16, (int(225 * tone), int(180 * tone), int(150 * tone)))


def bottle(pen: Pen, rng: np.random.Generator) -> None:
    """Glass bottle with shoulders, neck, cap and a highlight."""
    glass = [(40, 110, 50), (110, 60, 20), (170, 200, 190)][int(rng.integers(3))]
    pen.box(-0.25, 0, 0.25, 0.9, glass)
    pen.part([(-0.25, 0.9), (0.25, 0.9), (0.08, 1.2), (-0.08, 1.2)], glass)
    pen.box(-0.08, 1.2, 0.08, 1.5, _colour(rng))
    pen.box(-0.15, 0.1, -0.1, 0.8, (235, 235, 235))


def tvmonitor(pen: Pen, rng: np.random.Generator) -> None:
    """Monitor: stand, dark frame, screen with a faint picture."""
    pen.box(-0.1, 0, 0.1, 0.3, (30, 30, 30))
    pen.box(-1, 0.3, 1, 1.4, (25, 25, 28))
    pen.box(-0.9, 0.4, 0.9, 1.3, _colour(rng, 40, 120))


def pottedplant(pen: Pen, rng: np.random.Generator) -> None:
    """Terracotta pot with a clump of leaves."""
    for _ in range(9):
        leaf = (int(rng.integers(30, 70)), int(rng.integers(100, 160)), int(rng.integers(30, 70)))
        pen.disc(float(rng.normal(0, 0.25)), float(rng.uniform(0.7, 1.2)), float(rng.uniform(0.2, 0.35)), leaf)
    pen.part([(-0.3, 0), (0.3, 0), (0.4, 0.55), (-0.4, 0.55)], (170, 90, 60))


def aeroplane(pen: Pen, rng: np.random.Generator) -> None:
    """Side view of an airliner in the sky: fuselage, wing, tail fin."""
    hull = (int(rng.integers(200, 245)),) * 3
    pen.part([(-1.4, 0.1), (1.2, 0.16), (1.4, 0.0), (1.2, -0.16), (-1.3, -0.12)], hull)
    pen.part([(-0.2, 0), (0.2, 0), (-0.3, -0.5), (-0.5, -0.5)], hull)
    pen.part([(-1.35, 0), (-1.0, 0), (-1.3, 0.55), (-1.45, 0.55)], _colour(rng))
    pen.box(-0.9, 0.02, 1.0, 0.06, (60, 70, 90))


def boat(pen: Pen, rng: np.random.Generator) -> None:
    """Sailing boat: hull, mast and sail."""
    pen.part([(-1, 0.3), (1, 0.3), (0.7, 0), (-0.7, 0)], _colour(rng))
    pen.box(-0.03, 0.3, 0.03, 1.6, (90, 70, 50))
    pen.part([(0.06, 0.4), (0.8, 0.4), (0.06, 1.5)], (235, 235, 225))


INDOOR: tuple[Draw, ...] = (bottle, tvmonitor, pottedplant, person)
OUTDOOR: tuple[Draw, ...] = (car, person, aeroplane, boat, pottedplant)


def _background(rng: np.random.Generator, h: int, w: int, outdoor: bool) -> tuple[np.ndarray, float]:
    """Sky over ground (outdoor) or wall over floor (indoor) with soft gradients and grain; returns the horizon."""
    horizon = float(rng.uniform(0.45, 0.7)) * h
    top = np.array([120, 165, 225]) if outdoor else np.array(_colour(rng, 120, 230))
    bottom = np.array(_colour(rng, 60, 160)) if outdoor else np.array(_colour(rng, 70, 180))
    rows = np.arange(h, dtype=np.float32)[:, None, None]
    sky = top * (0.8 + 0.2 * rows / max(horizon, 1.0))
    img = np.where(rows < horizon, sky, bottom * (0.8 + 0.3 * (rows - horizon) / h))
    img = np.broadcast_to(img, (h, w, 3)) + rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), horizon


def voc_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image ``(H, W, 3)`` (300-500 px sides) with 1-3 objects and its class raster."""
    h, w = int(rng.integers(300, 501)), int(rng.integers(300, 501))
    outdoor = bool(rng.random() < 0.6)
    img, horizon = _background(rng, h, w, outdoor)
    cls = np.zeros((h, w), dtype=np.uint8)
    kinds = OUTDOOR if outdoor else INDOOR
    for _ in range(int(rng.integers(1, 4))):
        draw = kinds[int(rng.integers(len(kinds)))]
        s = float(rng.uniform(0.1, 0.22)) * min(h, w)
        y = horizon - 0.3 * h if draw is aeroplane else float(rng.uniform(horizon + 0.05 * h, h - 4))
        label = V[draw.__name__]
        draw(Pen(img, cls, label, float(rng.uniform(0.25, 0.75)) * w, y, s), rng)
    return img, cls


def _ids(prefix: str, count: int) -> list[str]:
    """VOC-style ids ``YYYY_NNNNNN``."""
    return [f"{prefix}_{32 + 7 * k:06d}" for k in range(count)]


def write_voc(root: PathLike, *, n_train: int = 6, n_val: int = 3, seed: int = 0) -> Path:
    """Write ``VOCdevkit/VOC2012`` under ``root``: JPEGs, palette labels with 255 boundaries, SBD-style aug labels.

    ``SegmentationClass/`` (palette PNGs, 255 on object boundaries) exists for train and val ids;
    ``SegmentationClassAug/`` (grey class-index PNGs) also for ``n_train // 2 + 1`` extra SBD-only ids listed
    only in ``train_aug.txt``. Lists: ``ImageSets/Segmentation/{train,val,trainval,train_aug}.txt``.

    Returns:
        The ``VOCdevkit/VOC2012`` folder.
    """
    splits = {
        "train": _ids("2007", check_count(n_train, "n_train")),
        "val": _ids("2008", check_count(n_val, "n_val")),
        "aug": _ids("2011", n_train // 2 + 1),
    }
    base = folder(root, "VOCdevkit", "VOC2012")
    jpeg, seg, aug = folder(base, "JPEGImages"), folder(base, "SegmentationClass"), folder(base, "SegmentationClassAug")
    palette = voc_palette()
    for split, ids in splits.items():
        for sid in ids:
            img, cls = voc_sample(np.random.default_rng(sub_seed(seed, "voc", sid)))
            save_image(jpeg / f"{sid}.jpg", img)
            save_image(aug / f"{sid}.png", cls)
            if split != "aug":
                save_image(seg / f"{sid}.png", np.where(boundary_mask(cls, 2), 255, cls), palette=palette)
    lists = folder(base, "ImageSets", "Segmentation")
    content = {
        "train": splits["train"],
        "val": splits["val"],
        "trainval": splits["train"] + splits["val"],
        "train_aug": splits["train"] + splits["aug"],
    }
    for name, ids in content.items():
        _write_list(lists / f"{name}.txt", ids)
    return base


def _write_list(path: Path, ids: list[str]) -> None:
    """Write one id per line, atomically."""
    from rs_deeplab.geo.raster import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in ids))
