"""Turn a layout into pixels: id raster, per-material albedo and height, sun shading, shadows and sensor noise."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from rs_deeplab.sample.fields import cast_shadow, fractal_noise, hillshade, sun_vector, value_noise
from rs_deeplab.sample.layout import C, Layout

AMBIENT = (0.38, 0.41, 0.5, 0.34)
"""Share of each band's light (R, G, B, NIR) that still reaches shadowed pixels (blue sky light is largest)."""
SENSOR_NOISE = 2.2
"""Standard deviation of the additive sensor noise, in digital numbers."""


@dataclass
class Noise:
    """Shared flat noise fields (zero mean, about unit variance) at fixed sizes in metres."""

    fine: np.ndarray  # per pixel
    leaf: np.ndarray  # ~0.35 m clumps
    mid: np.ndarray  # ~1.5 m
    coarse: np.ndarray  # ~8 m

    @classmethod
    def make(cls, rng: np.random.Generator, shape: tuple[int, int], gsd: float) -> Noise:
        """Generate the four fields for a raster of ``shape`` with pixels of ``gsd`` metres."""
        return cls(
            value_noise(rng, shape, 1.0).ravel(),
            fractal_noise(rng, shape, 0.45 / gsd, octaves=2).ravel(),
            fractal_noise(rng, shape, 1.5 / gsd, octaves=2).ravel(),
            fractal_noise(rng, shape, 8.0 / gsd, octaves=3).ravel(),
        )


@dataclass
class Pixels:
    """The pixels of one material: flat indices, object ids, scene and object-local coordinates (metres)."""

    idx: np.ndarray
    ids: np.ndarray
    table: np.ndarray
    noise: Noise
    width: int
    gsd: float

    def col(self, name: str) -> np.ndarray:
        """Attribute ``name`` (a :data:`COLUMNS` entry) of each pixel's object, float32."""
        return self.table[self.ids, C[name]]

    def colour(self) -> np.ndarray:
        """``(4, n)`` sunlit colour (R, G, B, NIR) of each pixel's object."""
        return np.take(self.table.T[C["r"] : C["nir"] + 1], self.ids, axis=1)

    @cached_property
    def local(self) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates ``(u, v)`` in metres along the axes of each pixel's object."""
        return local_coords(self.idx, self.ids, self.table, self.width, self.gsd)

    def field(self, name: str) -> np.ndarray:
        """Noise field ``name`` (fine, leaf, mid, coarse) at these pixels."""
        return getattr(self.noise, name)[self.idx]


def local_coords(
    idx: np.ndarray, ids: np.ndarray, table: np.ndarray, width: int, gsd: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates relative to object ``ids`` (centre ``cx, cy``, axis ``angle``), in metres."""
    x = ((idx % width).astype(np.float32) + 0.5) * np.float32(gsd) - table[ids, C["cx"]]
    y = ((idx // width).astype(np.float32) + 0.5) * np.float32(gsd) - table[ids, C["cy"]]
    ang = table[ids, C["angle"]]
    c, s = np.cos(ang), np.sin(ang)
    return x * c + y * s, y * c - x * s


def cell_hash(i: np.ndarray, j: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic pseudo-random value in [-1, 1] per integer cell ``(i, j)`` (tiles, paving stones)."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h >> 7) & 1023).astype(np.float32) / np.float32(511.5) - np.float32(1.0)


def surface(layout: Layout, shape: tuple[int, int], gsd: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Rasterize ``layout``: material ids ``(H, W)``, albedo ``(4, H*W)`` and height ``(H, W)`` in metres."""
    from rs_deeplab.sample.materials import RENDERERS

    ids = layout.rasterize(shape, gsd).ravel()
    table = layout.table().astype(np.float32)
    materials = table[:, C["material"]].astype(np.uint8)[ids]
    noise = Noise.make(rng, shape, gsd)
    albedo = np.empty((4, ids.size), dtype=np.float32)
    height = np.zeros(ids.size, dtype=np.float32)
    for material, renderer in RENDERERS.items():
        idx = np.flatnonzero(materials == material)
        if idx.size:
            pix = Pixels(idx, ids[idx], table, noise, shape[1], gsd)
            albedo[:, idx], height[idx] = renderer(pix)
    return materials.reshape(shape), albedo, height.reshape(shape)


def compose(
    albedo: np.ndarray,
    height: np.ndarray,
    gsd: float,
    sun: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Light the surface: hillshade, cast shadows, a smooth illumination field, lens blur and sensor noise.

    Returns:
        ``(4, H, W)`` uint8 image.
    """
    shape = height.shape
    azimuth, elevation = sun
    direct = hillshade(height, gsd, sun_vector(azimuth, elevation))
    shadow = cast_shadow(height, gsd, azimuth, elevation)
    np.subtract(np.float32(1.0), shadow, out=shadow)
    direct *= shadow
    del shadow
    illumination = value_noise(rng, shape, max(shape) / 2.5)
    illumination *= np.float32(0.05)
    illumination += np.float32(1.0)
    out = np.empty((4, *shape), dtype=np.uint8)
    light, value, noise = (np.empty(shape, dtype=np.float32) for _ in range(3))
    for band in range(4):
        amb = np.float32(AMBIENT[band])
        np.multiply(direct, 1.0 - amb, out=light)
        light += amb
        np.multiply(albedo[band].reshape(shape), light, out=value)
        value *= illumination
        cv2.GaussianBlur(value, (0, 0), 0.55, dst=value)
        rng.standard_normal(dtype=np.float32, out=noise)
        noise *= np.float32(SENSOR_NOISE)
        value += noise
        value += np.float32(0.5)
        np.clip(value, 0.0, 255.0, out=value)
        np.copyto(out[band], value, casting="unsafe")
    return out


def render(layout: Layout, shape: tuple[int, int], gsd: float, rng: np.random.Generator, elevation: float) -> tuple:
    """Render ``layout`` into ``(image (4, H, W) uint8, materials (H, W) uint8)``."""
    materials, albedo, height = surface(layout, shape, gsd, rng)
    image = compose(albedo, height, gsd, (layout.sun_azimuth, elevation), rng)
    return image, materials


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] and ease the ends (used for soft stripes and rims)."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


TAU = np.float32(2.0 * math.pi)
