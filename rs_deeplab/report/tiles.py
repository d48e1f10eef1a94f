"""A pyramid of 256-pixel PNG tiles of a raster (scene composite or class layer), written once, tile by tile.

Level ``z`` of a pyramid with ``zmax`` levels shows the raster decimated by ``2 ** (zmax - z)`` (nearest: every
``2 ** (zmax - z)``-th pixel of every such row, from the top-left one); level ``zmax`` is full resolution and level 0
fits the whole raster in one tile. Tile ``(x, y)`` of level ``z`` covers the raster window whose top-left pixel is
``(x, y) * 256 * 2 ** (zmax - z)`` (:func:`tiles`). Tiles are anchored at the raster's top-left corner: the page's map
maps that corner to pixel (0, 0) (see ``static/rs_deeplab/map.js``), so the tiles' corners are the raster's bounds
exactly.

The raster is read once, at full resolution, one 256² window per full-resolution tile; each coarser tile is built
from its four children (tiles ``(2x..2x+1, 2y..2y+1)`` of level ``z + 1``), already rendered, by taking every
second pixel of their 2 × 2 mosaic (:func:`walk`). The walk is depth-first (a quadtree): memory holds the tile
being built and one child per level, whatever the raster's size. It visits the full-resolution tiles in Z order:
a tiled raster's blocks are each read once; a striped (untiled) one may have strips read again once GDAL's block
cache (:func:`rs_deeplab.geo.raster.small_block_cache`, 64 MB) no longer holds them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image, features
from rasterio.enums import ColorInterp, Resampling
from rasterio.windows import Window

from rs_deeplab.geo.raster import open_raster, small_block_cache
from rs_deeplab.remote.scenes import reads_remote, remote_env

TILE = 256
"""Side of a tile in pixels."""
LABEL_PAD = 255
"""Value of class-layer pixels outside the raster or without a prediction (the page draws them transparent)."""
STRETCH_SAMPLE = 1024
"""Longest side of the decimated read that sets the composite's contrast stretch."""


def max_zoom(width: int, height: int) -> int:
    """The pyramid's full-resolution level: the smallest ``z`` with the whole raster in one tile at level 0."""
    side = max(width, height)
    return math.ceil(math.log2(side / TILE)) if side > TILE else 0


@dataclass(frozen=True)
class TileSpec:
    """One tile: its level, column, row and the raster window it shows (clipped to the raster)."""

    z: int
    x: int
    y: int
    window: Window
    out_width: int
    out_height: int


def tile_spec(width: int, height: int, z: int, x: int, y: int) -> TileSpec | None:
    """Tile ``(x, y)`` of level ``z`` of the pyramid of a ``width`` × ``height`` raster; None past the raster."""
    factor = 2 ** (max_zoom(width, height) - z)
    span = TILE * factor
    col0, row0 = x * span, y * span
    if not (0 <= col0 < width and 0 <= row0 < height):
        return None
    cols, rows = min(width, col0 + span) - col0, min(height, row0 + span) - row0
    return TileSpec(z, x, y, Window(col0, row0, cols, rows), math.ceil(cols / factor), math.ceil(rows / factor))


def tiles(width: int, height: int) -> Iterator[TileSpec]:
    """Every tile of the pyramid of a ``width`` × ``height`` raster, coarsest level first."""
    zmax = max_zoom(width, height)
    for z in range(zmax + 1):
        span = TILE * 2 ** (zmax - z)
        for y in range(math.ceil(height / span)):
            for x in range(math.ceil(width / span)):
                spec = tile_spec(width, height, z, x, y)
                assert spec is not None
                yield spec


def walk(
    width: int,
    height: int,
    leaf: Callable[[TileSpec], np.ndarray],
    save: Callable[[TileSpec, np.ndarray], None],
) -> None:
    """Build every tile of the pyramid of a ``width`` × ``height`` raster, depth-first from level 0.

    ``leaf`` renders a full-resolution tile (an array of ``out_height`` × ``out_width`` pixels, any trailing axes);
    a coarser tile is every second pixel of the 2 × 2 mosaic of its children. ``save`` gets each tile once, children
    before their parent. Memory: the tile being built and one child, per level.
    """
    zmax = max_zoom(width, height)

    def build(spec: TileSpec) -> np.ndarray:
        data = leaf(spec) if spec.z == zmax else None
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)) if data is None else ():
            child = tile_spec(width, height, spec.z + 1, 2 * spec.x + dx, 2 * spec.y + dy)
            if child is None:  # past the raster's right or bottom edge
                continue
            half = build(child)[::2, ::2]
            if data is None:  # the top-left child: there is always one
                data = np.empty((spec.out_height, spec.out_width, *half.shape[2:]), half.dtype)
            top, left = dy * TILE // 2, dx * TILE // 2
            data[top : top + half.shape[0], left : left + half.shape[1]] = half
        assert data is not None
        assert data.shape[:2] == (spec.out_height, spec.out_width), (spec, data.shape)
        save(spec, data)
        return data

    root = tile_spec(width, height, 0, 0, 0)
    assert root is not None
    build(root)


def tile_path(root: Path, spec: TileSpec, suffix: str = "png") -> Path:
    """Where a tile goes: ``root/z/x/y.png`` (Leaflet's ``{z}/{x}/{y}.png``)."""
    return root / str(spec.z) / str(spec.x) / f"{spec.y}.{suffix}"


def scene_format() -> str:
    """The scene tiles' format: ``webp`` where Pillow has it, else ``png``.

    Lossy WebP (quality 85) with a lossless alpha channel is about 7× smaller than PNG on imagery.
    """
    return "webp" if features.check("webp") else "png"


def _save(image: Image.Image, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".webp":
        image.save(path, format="WEBP", quality=85, method=4)
    else:
        image.save(path, format="PNG", optimize=False, compress_level=6)
    return path.stat().st_size


def composite_bands(ds: rasterio.io.DatasetReader, bands: Sequence[int] | None = None) -> tuple[int, ...]:
    """The bands of the composite: ``bands`` as given, else red/green/blue by colour interpretation, else 1, 2, 3.

    A one- or two-band raster shows its first band in grey.
    """
    if bands:
        return tuple(bands)
    interp = list(ds.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in interp for c in wanted):
        return tuple(interp.index(c) + 1 for c in wanted)
    return (1, 2, 3) if ds.count >= 3 else (1,)


def stretch_limits(ds: rasterio.io.DatasetReader, bands: Sequence[int]) -> list[tuple[float, float]]:
    """Per band, the 2nd and 98th percentiles of its valid pixels (a decimated read); 8-bit bands keep 0-255."""
    if all(ds.dtypes[b - 1] == "uint8" for b in bands):
        return [(0.0, 255.0)] * len(bands)
    scale = max(1.0, max(ds.width, ds.height) / STRETCH_SAMPLE)
    shape = (len(bands), max(1, int(ds.height / scale)), max(1, int(ds.width / scale)))
    data = ds.read(list(bands), out_shape=shape, resampling=Resampling.nearest, masked=True)
    limits = []
    for band in data:
        valid = band.compressed().astype("float64")
        valid = valid[np.isfinite(valid)]
        lo, hi = np.percentile(valid, (2, 98)) if valid.size else (0.0, 1.0)
        limits.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
    return limits


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[Any]:
    """An open raster and, for a remote one (URL, or a VRT of remote sources), the project's GDAL settings for
    reading it (:func:`rs_deeplab.remote.scenes.remote_env`), as inference reads scenes: a page of a remote scene reads
    it like the run did.
    """  # noqa: D205
    with remote_env() if reads_remote(path) else contextlib.nullcontext(), open_raster(path) as ds:
        yield ds


@dataclass
class PyramidStats:
    """What a pyramid writer wrote: files, bytes, levels and (class layers) the pixel count of each class."""

    files: int = 0
    bytes: int = 0
    max_zoom: int = 0
    counts: np.ndarray | None = None


def write_scene_pyramid(
    scene: str | Path, root: Path, bands: Sequence[int] | None = None, suffix: str = "png"
) -> PyramidStats:
    """Write the RGBA pyramid of a scene's composite under ``root`` (nodata and padding transparent).

    ``suffix`` is the tiles' format: ``png`` or ``webp`` (see :func:`scene_format`). Coarser tiles take every
    second pixel of their children's RGBA (nearest, as the class layer; no averaging), before any lossy encoding.
    """
    stats = PyramidStats()
    with small_block_cache(), reading(scene) as ds:
        chosen = composite_bands(ds, bands)
        limits = stretch_limits(ds, chosen)
        stats.max_zoom = max_zoom(ds.width, ds.height)

        def leaf(spec: TileSpec) -> np.ndarray:
            data = ds.read(list(chosen), window=spec.window)
            mask = ds.dataset_mask(window=spec.window)
            rgba = np.empty((*data.shape[1:], 4), np.uint8)
            for i, (band, (lo, hi)) in enumerate(zip(data, limits, strict=True)):
                scaled = np.clip((band.astype("float32") - lo) * (255.0 / (hi - lo)), 0, 255)
                rgba[..., i] = np.nan_to_num(scaled).astype(np.uint8)
            if len(chosen) == 1:
                rgba[..., 1] = rgba[..., 2] = rgba[..., 0]
            rgba[..., 3] = np.where(mask > 0, 255, 0)
            return rgba

        def save(spec: TileSpec, rgba: np.ndarray) -> None:
            padded = np.zeros((TILE, TILE, 4), np.uint8)
            padded[: rgba.shape[0], : rgba.shape[1]] = rgba
            stats.bytes += _save(Image.fromarray(padded, "RGBA"), tile_path(root, spec, suffix))
            stats.files += 1

        walk(ds.width, ds.height, leaf, save)
    return stats


def write_label_pyramid(labels: str | Path, root: Path, classes: int) -> PyramidStats:
    """Write the pyramid of a class raster under ``root`` as 8-bit grey PNGs whose value is the class id.

    The page colours them with an SVG filter (one colour per class, hidden classes transparent), so toggling a class
    never rewrites a tile; 255 (no prediction, outside the raster) stays transparent. The full-resolution level
    reads every pixel once, so it also counts the pixels of each class (``stats.counts``); coarser tiles take every
    second pixel of their children (nearest: class ids are never mixed).
    """
    counts = np.zeros(256, np.int64)
    stats = PyramidStats(counts=counts)
    with small_block_cache(), reading(labels) as ds:
        stats.max_zoom = max_zoom(ds.width, ds.height)
        nodata = ds.nodata

        def leaf(spec: TileSpec) -> np.ndarray:
            data = ds.read(1, window=spec.window)
            values = data.astype(np.int64)
            values[(values < 0) | (values >= classes) | (values > 254)] = LABEL_PAD
            if nodata is not None:
                values[data == nodata] = LABEL_PAD
            counts[:] += np.bincount(values.ravel(), minlength=256)
            return values.astype(np.uint8)

        def save(spec: TileSpec, grey: np.ndarray) -> None:
            padded = np.full((TILE, TILE), LABEL_PAD, np.uint8)
            padded[: grey.shape[0], : grey.shape[1]] = grey
            stats.bytes += _save(Image.fromarray(padded, "L"), tile_path(root, spec))
            stats.files += 1

        walk(ds.width, ds.height, leaf, save)
    return stats
