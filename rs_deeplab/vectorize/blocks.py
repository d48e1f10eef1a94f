"""Read a label raster block by block and yield its finished regions, seams merged (see :mod:`.seams`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.windows import Window

from rs_deeplab.cli import progress
from rs_deeplab.errors import RasterError
from rs_deeplab.raster import read_error
from rs_deeplab.vectorize.clean import simplify_block
from rs_deeplab.vectorize.metadata import ClassSelection
from rs_deeplab.vectorize.polygonize import FlatPolygons, apply_affine, polygonize_block
from rs_deeplab.vectorize.seams import SeamMerger

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
    data: np.ndarray, window: Window, grid: tuple[int, int], block: tuple[int, int], selection: ClassSelection,
    simplify: float, transform: Affine,
) -> BlockPieces:  # fmt: skip
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


class RegionStream:
    """Iterate over the finished regions of a label raster, one batch per block (row-major).

    Each batch holds the regions completed by that block: pieces that touch no unread block, and regions
    stitched from pieces of several blocks. Geometries are in the raster's CRS. With ``workers`` > 1, blocks are
    read and polygonized in that many worker processes (:mod:`.parallel`) while this process merges seams, in
    the same block order: the regions, and their order, do not depend on the number of workers.

    Args:
        src: An open single-band integer rasterio dataset.
        selection: Which values become polygons.
        block_size: Block edge in pixels.
        simplify: Coverage simplification tolerance in pixels (0: none).
        quiet: No progress bar.
        workers: Processes that read and polygonize blocks; 1 polygonizes in this process.
    """

    def __init__(
        self, src: Any, selection: ClassSelection, *, block_size: int, simplify: float = 0.0, quiet: bool = True,
        workers: int = 1,
    ) -> None:  # fmt: skip
        self.src, self.selection, self.block_size = src, selection, block_size
        self.simplify, self.quiet, self.workers = simplify, quiet, workers
        self.transform = src.transform
        self.n_rows, self.n_cols = -(-src.height // block_size), -(-src.width // block_size)
        self.merger = SeamMerger(block_size, validate=simplify > 0, to_crs=self._to_crs)
        self.on_drain: Callable[[], None] | None = None
        """With workers: called once when the last blocks are being polygonized and a worker is free."""

    @property
    def blocks(self) -> int:
        """Number of blocks."""
        return self.n_rows * self.n_cols

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        tasks = list(block_windows(self.src.height, self.src.width, self.block_size))
        if self.workers > 1 and len(tasks) > 1:
            from rs_deeplab.vectorize.parallel import BlockPool

            with BlockPool(self.src.name, self.selection, (self.n_rows, self.n_cols), self.simplify,
                           workers=min(self.workers, len(tasks))) as pool:  # fmt: skip
                results = pool.map(tasks, on_drain=self.on_drain)
                pieces = progress(results, total=self.blocks, desc="vectorize", quiet=self.quiet)
                for (_, bj, _), piece in zip(tasks, pieces, strict=True):
                    yield self.assemble(bj, piece)
            return
        for bi, bj, window in progress(tasks, total=self.blocks, desc="vectorize", quiet=self.quiet):
            yield self.process(bi, bj, window, read_block(self.src, window))

    def process(self, bi: int, bj: int, window: Window, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Polygonize one block; return the class ids and CRS geometries of the regions now complete."""
        grid = (self.n_rows, self.n_cols)
        pieces = polygonize_window(data, window, grid, (bi, bj), self.selection, self.simplify, self.transform)
        return self.assemble(bj, pieces)

    def assemble(self, bj: int, pieces: BlockPieces) -> tuple[np.ndarray, np.ndarray]:
        """Merge the next block's pieces (row-major order); return the regions now complete, in the raster CRS."""
        if pieces.simplified is not None:
            closed_geoms = shapely.transform(pieces.simplified[0], self._to_crs)
            open_geoms = pieces.simplified[1]
        else:
            closed_geoms, open_geoms = pieces.closed.polygons(), pieces.open.polygons()
        values, merged = self.merger.add_block(bj, open_geoms, pieces.open.values, pieces.owners)  # in the CRS
        return np.concatenate([pieces.closed.values, values]), np.concatenate([closed_geoms, merged])

    def _to_crs(self, xy: np.ndarray) -> np.ndarray:
        return apply_affine(self.transform, xy)
