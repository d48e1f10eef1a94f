"""Read a label raster block by block and yield its finished regions, seams merged (see :mod:`.seams`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import shapely
from rasterio.windows import Window

from rs_deeplab.cli.console import progress
from rs_deeplab.vectorize.block_work import BlockPieces, block_windows, polygonize_window, read_block
from rs_deeplab.vectorize.metadata import ClassSelection
from rs_deeplab.vectorize.polygonize import apply_affine
from rs_deeplab.vectorize.seams import SeamMerger


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
        self,
        src: Any,
        selection: ClassSelection,
        *,
        block_size: int,
        simplify: float = 0.0,
        quiet: bool = True,
        workers: int = 1,
    ) -> None:
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
            from rs_deeplab.vectorize.parallel import BlockPool  # worker processes only where asked for

            with BlockPool(
                self.src.name,
                self.selection,
                (self.n_rows, self.n_cols),
                self.simplify,
                workers=min(self.workers, len(tasks)),
            ) as pool:
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
