"""Shared helpers of the sample writers: derived seeds, size checks, atomic PNG/JPEG writes and previews."""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.raster import atomic_output
from rs_deeplab.labels.classes import get_scheme

PathLike = str | os.PathLike[str]
Size = int | Sequence[int]


def sub_seed(seed: int, *keys: int | str) -> int:
    """A seed derived deterministically from ``seed`` and ``keys`` (tile ids, split names, counters)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    words = [int(seed)] + [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return int(np.random.SeedSequence([abs(w) for w in words]).generate_state(1)[0])


def check_size(size: Size, what: str = "size") -> tuple[int, int]:
    """``N`` or ``(H, W)`` → ``(H, W)``; refuses anything but one or two positive integers."""
    values = [size] if isinstance(size, (int, np.integer)) else list(size)
    ok = len(values) in (1, 2) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values
    )
    if not ok:
        raise InputError(f"{what} must be N or (H, W) with positive integers, got {size!r}")
    return (int(values[0]), int(values[-1]))


def check_count(value: int, what: str, minimum: int = 1) -> int:
    """A count argument (images per folder, ...) that must be an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def folder(root: PathLike, *parts: str) -> Path:
    """``root/parts`` created if missing."""
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_image(path: PathLike, array: np.ndarray, *, palette: Sequence[tuple[int, int, int]] | None = None) -> Path:
    """Write an ``(H, W)`` or ``(H, W, 3)`` uint8 array atomically as PNG or JPEG (by suffix), via Pillow.

    Args:
        path: Destination ``.png``, ``.jpg`` or ``.jpeg``.
        array: Grey/index image or RGB image, channels last.
        palette: For a single-channel PNG, store it as a palette ("P") image with these colours.
    """
    p = Path(path)
    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    if palette is not None:
        flat = [c for rgb in palette for c in rgb]
        img.putpalette(flat + [0] * (768 - len(flat)))
    fmt = "JPEG" if p.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_output(p) as tmp:
        if fmt == "JPEG":
            img.save(tmp, format=fmt, quality=92)
        else:
            img.save(tmp, format=fmt, compress_level=6)
    return p


def preview_png(
    path: PathLike,
    image: np.ndarray,
    classes: np.ndarray,
    scheme: str = "potsdam",
    *,
    max_width: int | None = None,
    also: Sequence[np.ndarray] = (),
) -> Path:
    """Write a side-by-side PNG: the scene's first three bands | the class colours of ``scheme`` (| ``also``).

    Args:
        path: Destination PNG.
        image: ``(bands, H, W)`` (rasterio order, first three bands shown), ``(H, W, 3)`` or ``(H, W)`` uint8.
        classes: ``(H, W)`` class indices (255 and unknown values are drawn black).
        scheme: Dataset whose class colours to use.
        max_width: Downscale the whole preview to at most this many pixels wide.
        also: More ``(H, W)`` class rasters drawn to the right, e.g. a prediction next to its truth.
    """
    if image.ndim == 2 and image.shape == classes.shape:
        rgb = np.repeat(image[..., np.newaxis], 3, axis=2)
    elif image.ndim == 3 and image.shape[1:] == classes.shape:
        rgb = np.moveaxis(image[:3], 0, -1)
        rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
    elif image.ndim == 3 and image.shape[:2] == classes.shape and image.shape[2] >= 3:
        rgb = image[..., :3]
    else:
        raise InputError(f"image of shape {image.shape} does not match classes of shape {classes.shape}")
    panels = [np.moveaxis(get_scheme(scheme).encode_colours(c), 0, -1) for c in (classes, *also)]
    if any(c.shape != classes.shape for c in also):
        raise InputError(f"every class raster must have the shape {classes.shape} of the first")
    h, w = classes.shape
    n = 1 + len(panels)
    scale = min(1.0, max(1, max_width - 8 * (n - 1)) / (n * w)) if max_width else 1.0
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)
        panels = [cv2.resize(np.ascontiguousarray(c), size, interpolation=cv2.INTER_NEAREST) for c in panels]
    gap = np.full((rgb.shape[0], 8, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = [rgb[..., :3]]
    for panel in panels:
        parts += [gap, panel]
    return save_image(path, np.concatenate(parts, axis=1))
