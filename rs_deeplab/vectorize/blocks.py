"""Read a label raster block by block and yield its finished regions, seams merged (see :mod:`.seams`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import shapely
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.windows import Window

from rs_deeplab.cli import progress
from rs_deeplab.errors import RasterError
from rs_deeplab.raster import read_error
from rs_deeplab.vectorize.clean import simplify_block
from rs_deeplab.vectorize.metadata import ClassSelection
from rs_deeplab.vectorize.polygonize import apply_affine, polygonize_block
from rs_deeplab.vectorize.seams import SeamMerger

_CAST: dict[str, type[np.integer[Any]]] = {"int8": np.int16, "uint32": np.int32, "int64": np.int32, "uint64": np.int32}
"""Integer types ``shapes`` cannot read, and the type they are read as (values must fit)."""


def block_windows(height: int, width: int, size: int) -> Iterator[tuple[int, int, Window]]:
    """Row-major ``(block_row, block_col, window)`` tiling of a raster; edge blocks are smaller."""
    for bi, row in enumerate(range(0, height, size)):
        for bj, col in enumerate(range(0, width, size)):
            yield bi, bj, Window(col, row, min(size, width - col), min(size, height - row))


def _read_block(src: Any, window: Window) -> np.ndarray:
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


class RegionStream:
    """Iterate over the finished regions of a label raster, one batch per block (row-major).

    Each batch holds the regions completed by that block: pieces that touch no unread block, and regions
    stitched from pieces of several blocks. Geometries are in the raster's CRS.

    Args:
        src: An open single-band integer rasterio dataset.
        selection: Which values become polygons.
        block_size: Block edge in pixels.
        simplify: Coverage simplification tolerance in pixels (0: none).
        quiet: No progress bar.
    """

    def __init__(
        self, src: Any, selection: ClassSelection, *, block_size: int, simplify: float = 0.0, quiet: bool = True
    ) -> None:
        self.src, self.selection, self.block_size = src, selection, block_size
        self.simplify, self.quiet = simplify, quiet
        self.transform = src.transform
        self.n_rows, self.n_cols = -(-src.height // block_size), -(-src.width // block_size)
        self.merger = SeamMerger(block_size, validate=simplify > 0)

    @property
    def blocks(self) -> int:
        """Number of blocks."""
        return self.n_rows * self.n_cols

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        windows = block_windows(self.src.height, self.src.width, self.block_size)
        for bi, bj, window in progress(windows, total=self.blocks, desc="vectorize", quiet=self.quiet):
            yield self.process(bi, bj, window, _read_block(self.src, window))

    def process(self, bi: int, bj: int, window: Window, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Polygonize one block; return the class ids and CRS geometries of the regions now complete."""
        row, col = int(window.row_off), int(window.col_off)
        height, width = data.shape
        mask = None if self.simplify > 0 else self.selection.mask(data)
        flat = polygonize_block(data, row, col, mask)
        kept = self.selection.keeps_array(flat.values)
        internal = {"left": bj > 0, "right": bj < self.n_cols - 1, "top": bi > 0, "bottom": bi < self.n_rows - 1}
        owners: dict[str, np.ndarray] = {}
        is_open = np.zeros(len(flat), dtype=bool)
        for side, own in flat.side_owners(row, col, height, width).items():
            if internal[side]:
                valid = own >= 0
                valid[valid] = kept[own[valid]]
                owners[side] = np.where(valid, own, -1)
                is_open[own[valid]] = True
        closed = kept & ~is_open
        if self.simplify > 0:
            pixel = simplify_block(flat.polygons(), self.simplify)
            closed_geoms = shapely.transform(pixel[closed], self._to_crs)
            open_geoms = pixel[is_open]
        else:
            closed_geoms = flat.polygons(closed, self.transform)
            open_geoms = flat.polygons(is_open)
        remap = np.full(len(flat) + 1, -1, dtype=np.int64)
        remap[np.flatnonzero(is_open)] = np.arange(int(is_open.sum()))
        owners = {s: remap[o] for s, o in owners.items()}
        values, merged = self.merger.add_block(bj, open_geoms, flat.values[is_open], owners)
        if len(merged):
            merged = shapely.transform(merged, self._to_crs)
        return np.concatenate([flat.values[closed], values]), np.concatenate([closed_geoms, merged])

    def _to_crs(self, xy: np.ndarray) -> np.ndarray:
        return apply_affine(self.transform, xy)
