"""Turn a layout into pixels: id raster, per-material albedo and height, sun shading, shadows and sensor noise."""

from __future__ import annotations

import cv2
import numpy as np

from rs_deeplab.sample.fields import cast_shadow, hillshade, sun_vector, value_noise
from rs_deeplab.sample.layout import C, Layout
from rs_deeplab.sample.materials import RENDERERS
from rs_deeplab.sample.pixels import Noise, Pixels

AMBIENT = (0.38, 0.41, 0.5, 0.34)
"""Share of each band's light (R, G, B, NIR) that still reaches shadowed pixels (blue sky light is largest)."""
SENSOR_NOISE = 2.2
"""Standard deviation of the additive sensor noise, in digital numbers."""


def surface(layout: Layout, shape: tuple[int, int], gsd: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Rasterize ``layout``: material ids ``(H, W)``, albedo ``(4, H*W)`` and height ``(H, W)`` in metres."""
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
