"""One block of a label raster read and polygonized: the work a vectorizing worker process does.

Below both :mod:`rs_deeplab.vectorize.blocks` (the stream of blocks, which re-exports these names) and
:mod:`rs_deeplab.vectorize.parallel` (the worker processes), so neither imports the other back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.windows import Window

from rs_deeplab.cli.errors import RasterError
from rs_deeplab.geo.raster import read_error
from rs_deeplab.vectorize.clean import simplify_block
from rs_deeplab.vectorize.metadata import ClassSelection
from rs_deeplab.vectorize.polygonize import FlatPolygons, polygonize_block

_CAST: dict[str, type[np.integer[Any]]] = {"int8": np.int16, "uint32": np.int32, "int64": np.int32, "uint64": np.int32}
"""Integer types ``shapes`` cannot read, and the type they are read as (values must fit)."""


def block_windows(height: int, width: int, size: int) -> Iterator[tuple[int, int, Window]]:
    """Row-major ``(block_row, block_col, window)`` tiling of a raster; edge blocks are smaller."""
    for bi, row in enumerate(range(0, height, size)):
        for bj, col in enumerate(range(0, width, size)):
            yield bi, bj, Window(col, row, min(size, width - col), min(size, height - row))


def read_block(src: Any, window: Window) -> np.ndarray:
    """Read one block's pixels as a type ``shapes`` accepts; read failures and values out of range as one line."""
    try:
        data = src.read(1, window=window)
    except (RasterioError, CPLE_BaseError) as exc:
        raise read_error(src.name, exc, f"rows {window.row_off}..{window.row_off + window.height}") from None
    cast = _CAST.get(data.dtype.name)
    if cast is not None:
        info = np.iinfo(cast)
        if data.size and (data.min() < info.min or data.max() > info.max):
            raise RasterError(f"{src.name}: label values outside {info.min}..{info.max} cannot be polygonized")
        data = data.astype(cast)
    return data


@dataclass(frozen=True)
class BlockPieces:
    """One polygonized block, as plain arrays (what a worker process hands back; cheap to pickle).

    Attributes:
        closed: Polygons kept and complete (touching no internal seam), in the raster CRS.
        open: Polygons kept that touch an internal seam (pieces to merge), in global pixel coordinates.
        owners: Per internal side, the index among the open pieces owning each pixel along it (-1: none).
        simplified: With ``simplify``: the closed and the open polygons simplified (shapely, pixel coordinates),
            else None.
    """

    closed: FlatPolygons
    open: FlatPolygons
    owners: dict[str, np.ndarray]
    simplified: tuple[np.ndarray, np.ndarray] | None = None


def polygonize_window(
    data: np.ndarray,
    window: Window,
    grid: tuple[int, int],
    block: tuple[int, int],
    selection: ClassSelection,
    simplify: float,
    transform: Affine,
) -> BlockPieces:
    """Polygonize one block and find which polygons are complete and which wait for a neighbouring block.

    Args:
        data: The block's pixels (as read by :func:`read_block`).
        window: Where the block lies in the raster.
        grid: Number of block rows and columns.
        block: This block's row and column in the block grid.
        selection: Which values become polygons.
        simplify: Coverage simplification tolerance in pixels (0: none).
        transform: The raster's transform (closed polygons are mapped through it).
    """
    row, col = int(window.row_off), int(window.col_off)
    height, width = data.shape
    (n_rows, n_cols), (bi, bj) = grid, block
    mask = None if simplify > 0 else selection.mask(data)
    flat = polygonize_block(data, row, col, mask)
    kept = selection.keeps_array(flat.values)
    internal = {"left": bj > 0, "right": bj < n_cols - 1, "top": bi > 0, "bottom": bi < n_rows - 1}
    owners: dict[str, np.ndarray] = {}
    is_open = np.zeros(len(flat), dtype=bool)
    for side, own in flat.side_owners(row, col, height, width).items():
        if internal[side]:
            valid = own >= 0
            valid[valid] = kept[own[valid]]
            owners[side] = np.where(valid, own, -1)
            is_open[own[valid]] = True
    remap = np.full(len(flat) + 1, -1, dtype=np.int64)
    remap[np.flatnonzero(is_open)] = np.arange(int(is_open.sum()))
    owners = {s: remap[o] for s, o in owners.items()}
    closed = kept & ~is_open
    if simplify > 0:
        pixel = simplify_block(flat.polygons(), simplify)
        simplified = (pixel[closed], pixel[is_open])
        return BlockPieces(flat.take(closed), flat.take(is_open), owners, simplified)
    return BlockPieces(flat.take(closed).mapped(transform), flat.take(is_open), owners)
