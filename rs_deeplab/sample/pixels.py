"""What a material renderer sees: one material's pixels, shared noise fields and small coordinate helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from rs_deeplab.sample.fields import fractal_noise, value_noise
from rs_deeplab.sample.layout import C


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


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] and ease the ends (used for soft stripes and rims)."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


TAU = np.float32(2.0 * math.pi)
