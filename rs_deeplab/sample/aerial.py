"""LoveDA and iSAID sample images in the real datasets' folder layouts and PNG encodings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rs_deeplab.labels.classes import SCHEMES
from rs_deeplab.sample.isaid import LAND_STAMPS, Canvas, harbour
from rs_deeplab.sample.output import PathLike, Size, check_count, check_size, folder, save_image, sub_seed
from rs_deeplab.sample.scene import generate_scene

LOVEDA_FIRST_ID = {("Train", "Rural"): 0, ("Train", "Urban"): 1366, ("Val", "Rural"): 2522, ("Val", "Urban"): 3514}
"""First image id of each LoveDA folder (ids are consecutive integers, as in the real dataset)."""


@dataclass(frozen=True)
class LoveDAFiles:
    """One LoveDA image and its mask."""

    split: str
    domain: str
    id: int
    image: Path
    mask: Path


@dataclass(frozen=True)
class ISAIDFiles:
    """One iSAID image and its colour-coded semantic mask."""

    split: str
    id: str
    image: Path
    mask: Path


def _nodata(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A no-data region cut off by a slanted line across one corner or edge (bool mask)."""
    h, w = shape
    x0, x1 = float(rng.uniform(0.05, 0.6)) * w, float(rng.uniform(0.0, 0.3)) * w
    poly = np.array([[0, 0], [x0, 0], [x1, h], [0, h]], dtype=np.float64)
    if rng.random() < 0.5:
        poly[:, 0] = w - poly[:, 0]
    if rng.random() < 0.5:
        poly = poly[:, ::-1] * np.array([w / h, h / w])
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], (1,))
    return mask.astype(bool)


def write_loveda(root: PathLike, *, per_folder: int = 2, size: Size = 1024, seed: int = 0) -> list[LoveDAFiles]:
    """Write LoveDA ``{Train,Val}/{Urban,Rural}/{images_png,masks_png}/{id}.png`` under ``root``.

    Images are RGB PNGs at 0.3 m; masks hold 1..7 (background, building, road, water, barren, forest,
    agricultural) and 0 for no-data, which every other image has along one edge (the image is black there).

    Args:
        root: Dataset root (created if missing).
        per_folder: Images in each of the four folders.
        size: Image size ``N`` or ``(H, W)``.
        seed: Base seed; each image's seed is derived from it and its folder and position.
    """
    count = check_count(per_folder, "per_folder")
    h, w = check_size(size)
    written = []
    for (split, domain), first in LOVEDA_FIRST_ID.items():
        images, masks = folder(root, split, domain, "images_png"), folder(root, split, domain, "masks_png")
        for k in range(count):
            s = sub_seed(seed, "loveda", split, domain, k)
            scene = generate_scene(h, w, seed=s, gsd=0.3, style=domain.lower())
            rgb = np.moveaxis(scene.image[:3], 0, -1).copy()
            mask = scene.classes_for("loveda") + 1
            if k % 2 == 1 or count == 1:
                hole = _nodata(np.random.default_rng(s), (h, w))
                rgb[hole], mask[hole] = 0, 0
            files = LoveDAFiles(split, domain, first + k, images / f"{first + k}.png", masks / f"{first + k}.png")
            save_image(files.image, rgb)
            save_image(files.mask, mask)
            written.append(files)
    return written


def isaid_sample(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One iSAID-like image ``(H, W, 3)`` and its class raster: a 0.4 m urban scene plus stamped objects."""
    gsd = 0.4
    scene = generate_scene(h, w, seed=seed, gsd=gsd)
    rng = np.random.default_rng(seed)
    canvas = Canvas(np.moveaxis(scene.image[:3], 0, -1).copy(), scene.classes_for("isaid"), gsd, rng)
    edge = str(rng.choice(list("nsew"))) if rng.random() < 0.6 else ""
    cell = 115.0 / gsd
    rows, cols = max(1, round(h / cell)), max(1, round(w / cell))
    slots = [(r, c) for r in range(rows) for c in range(cols)]
    rng.shuffle(slots)
    for r, c in slots[: max(1, len(slots) * 2 // 3)]:
        stamp = LAND_STAMPS[int(rng.integers(len(LAND_STAMPS)))]
        stamp(canvas, (c + 0.5) * w / cols, (r + 0.5) * h / rows)
    if edge:
        harbour(canvas, edge)
    return canvas.image, canvas.classes


def write_isaid(root: PathLike, *, per_split: int = 2, size: Size = (1200, 1500), seed: int = 0) -> list[ISAIDFiles]:
    """Write iSAID ``{train,val}/images/P{NNNN}.png`` and ``Semantic_masks/images/P{NNNN}_instance_color_RGB.png``.

    Args:
        root: Dataset root (created if missing).
        per_split: Images in each split.
        size: Image size ``N`` or ``(H, W)`` (real iSAID images range from 800 to 13000 pixels).
        seed: Base seed.
    """
    count = check_count(per_split, "per_split")
    h, w = check_size(size)
    written = []
    for first, split in enumerate(("train", "val")):
        images, masks = folder(root, split, "images"), folder(root, split, "Semantic_masks", "images")
        for k in range(count):
            pid = f"P{first * 1000 + k:04d}"
            image, classes = isaid_sample(h, w, sub_seed(seed, "isaid", split, k))
            colours = np.moveaxis(SCHEMES["isaid"].encode_colours(classes), 0, -1)
            files = ISAIDFiles(split, pid, images / f"{pid}.png", masks / f"{pid}_instance_color_RGB.png")
            save_image(files.image, image)
            save_image(files.mask, colours)
            written.append(files)
    return written
