"""Raster fields for the synthetic scenes: smooth noise, hillshading and cast shadows (numpy + OpenCV)."""

from __future__ import annotations

import math

import cv2
import numpy as np


def value_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth random field of unit-ish standard deviation whose features are about ``scale`` pixels wide.

    Args:
        rng: Random generator (the only source of randomness, so results are reproducible).
        shape: ``(H, W)`` of the field.
        scale: Feature size in pixels; below 1.5 the field is plain per-pixel noise.
    """
    h, w = shape
    if scale < 1.5:
        return rng.standard_normal((h, w), dtype=np.float32)
    grid = rng.standard_normal((math.ceil(h / scale) + 2, math.ceil(w / scale) + 2), dtype=np.float32)
    field: np.ndarray = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    np.multiply(field, np.float32(1.25), out=field)
    return field


def fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], scale: float, *, octaves: int = 3, persistence: float = 0.5
) -> np.ndarray:
    """Sum of ``octaves`` value-noise fields, each half the feature size and ``persistence`` times the amplitude."""
    total = np.zeros(shape, dtype=np.float32)
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        layer = value_noise(rng, shape, scale / 2**k)
        layer *= np.float32(amp)
        total += layer
        del layer
        norm += amp**2
        amp *= persistence
    total *= np.float32(1.0 / math.sqrt(norm))
    return total


def sun_vector(azimuth_deg: float, elevation_deg: float) -> tuple[float, float, float]:
    """Unit vector towards the sun in image axes (x right/east, y down/south, z up)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)


def hillshade(height: np.ndarray, gsd: float, sun: tuple[float, float, float], max_slope: float = 3.0) -> np.ndarray:
    """Direct-light factor of a height field (metres), 1.0 on flat ground; steep edges are clipped to ``max_slope``."""
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3, scale=1.0 / (8.0 * gsd))
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3, scale=1.0 / (8.0 * gsd))
    np.clip(gx, -max_slope, max_slope, out=gx)
    np.clip(gy, -max_slope, max_slope, out=gy)
    sx, sy, sz = sun
    dot = (np.float32(sz) - gx * np.float32(sx) - gy * np.float32(sy)) / np.sqrt(1.0 + gx * gx + gy * gy)
    return np.clip(dot * np.float32(1.0 / sz), 0.0, 2.0)


def _shifted(field: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``out[y, x] = field[y + dy, x + dx]`` with bilinear sampling; outside the raster counts as very low."""
    m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float64)
    h, w = field.shape
    return cv2.warpAffine(
        field,
        m,
        (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=-1e4,
    )


def cast_shadow(
    height: np.ndarray, gsd: float, azimuth_deg: float, elevation_deg: float, softness: float = 0.25
) -> np.ndarray:
    """Shadow strength in [0, 1] of every pixel of a height field (metres) lit by the sun.

    A pixel is shadowed when some pixel towards the sun rises above the sun ray through it. The horizon
    ``max_t h(p + t d) - t tan(elevation)`` is found with log2(longest shadow) doubling steps of shifted
    maxima, computed on a grid no finer than 10 cm and compared with the full-resolution height.
    """
    h, w = height.shape
    factor = max(1, int(0.1 / gsd + 1e-6))
    small = cv2.resize(height, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    step = gsd * factor * math.tan(math.radians(elevation_deg))
    dx, dy = math.sin(math.radians(azimuth_deg)), -math.cos(math.radians(azimuth_deg))
    longest = float(small.max()) / step
    horizon: np.ndarray = _shifted(small, dx, dy) - np.float32(step)
    k = 1
    while k < longest:
        np.maximum(horizon, _shifted(horizon, k * dx, k * dy) - np.float32(k * step), out=horizon)
        k *= 2
    if factor > 1:
        horizon = cv2.resize(horizon, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip((horizon - height) * np.float32(1.0 / softness), 0.0, 1.0)
