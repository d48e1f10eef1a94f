"""Blocks read and polygonized in worker processes, handed back in block order.

GDAL's polygonizer (``rasterio.features.shapes``) holds the GIL while it traces a block (measured: a Python
thread beside it ran at ~5% of its speed), so threads would take turns; processes run side by side. Each worker
opens the raster itself (a path crosses the process boundary, never an open dataset) and returns plain arrays
(:class:`~rs_deeplab.vectorize.blocks.BlockPieces`); the calling process merges seams and writes, taking the
blocks in the same row-major order whatever the number of workers, so the output is byte for byte the same. At
most a few blocks per worker are in flight, so memory stays bounded by blocks, not by the raster.
"""

from __future__ import annotations

import collections
import concurrent.futures
import gc
import logging
import multiprocessing
import numbers
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import rasterio
import rasterio.env
from rasterio.windows import Window

from rs_deeplab.cli.errors import InputError, RasterError
from rs_deeplab.geo.raster import open_raster
from rs_deeplab.runtime.cluster import default_workers
from rs_deeplab.runtime.cores import start_method
from rs_deeplab.vectorize.block_work import BlockPieces, polygonize_window, read_block
from rs_deeplab.vectorize.metadata import ClassSelection

log = logging.getLogger(__name__)


AHEAD_PER_WORKER = 2
"""Blocks submitted ahead of the one being merged, per worker: enough to keep workers busy, little memory."""

AUTO_MIN_PIXELS = 2048 * 2048 * 2
"""``workers=None`` uses one process below this many pixels: starting workers would cost more than they save."""


def check_workers(workers: Any) -> None:
    """Refuse a worker count that is not a whole number of at least 1 (None means automatic).

    Raises:
        InputError: ``workers`` is 0, negative, fractional or not a number.
    """
    if workers is None:
        return
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise InputError(
            f"workers must be a whole number of at least 1 (processes polygonizing blocks), got "
            f"{workers!r}; 1 runs in this process"
        )


def resolve_workers(workers: int | None, *, pixels: int, blocks: int) -> int:
    """How many processes polygonize: ``workers``, or for None the cores this process may use.

    None gives one process for a raster under :data:`AUTO_MIN_PIXELS`; never more processes than blocks. A
    daemonic process (a Dask or multiprocessing worker) may not start processes: it polygonizes itself, and says so.
    """
    check_workers(workers)
    if workers is None:
        workers = default_workers() if pixels >= AUTO_MIN_PIXELS else 1
    workers = max(1, min(int(workers), blocks))
    if workers > 1 and multiprocessing.current_process().daemon:
        log.info(
            "vectorizing in this process: a daemonic process (a Dask or multiprocessing worker) cannot start "
            "%d worker processes",
            workers,
        )
        return 1
    return workers


_WORKER: dict[str, Any] = {}


def _start_worker(
    path: str, selection: ClassSelection, grid: tuple[int, int], simplify: float, options: dict[str, Any]
) -> None:
    """Start a worker process: open the raster once, under the caller's GDAL settings.

    Ctrl-C is the parent's to handle: it stops the pool, so a worker ignores it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.freeze()  # objects inherited through fork: the worker's collections never walk (and copy) them
    env = rasterio.Env(**options)
    env.__enter__()  # for the life of the worker process
    src = open_raster(path)
    _WORKER.update(env=env, src=src, selection=selection, grid=grid, simplify=simplify, transform=src.transform)


def _polygonize(bi: int, bj: int, window: Window) -> BlockPieces:
    w = _WORKER
    data = read_block(w["src"], window)
    return polygonize_window(data, window, w["grid"], (bi, bj), w["selection"], w["simplify"], w["transform"])


class BlockPool:
    """Worker processes that read and polygonize the blocks of one raster; a context manager.

    Args:
        path: The raster (any path :func:`rs_deeplab.geo.raster.open_raster` takes).
        selection: Which values become polygons.
        grid: Number of block rows and columns.
        simplify: Coverage simplification tolerance in pixels (0: none).
        workers: Number of processes.
    """

    def __init__(
        self, path: str, selection: ClassSelection, grid: tuple[int, int], simplify: float, *, workers: int
    ) -> None:
        self.path, self.workers = path, workers
        options = rasterio.env.getenv() if rasterio.env.hasenv() else {}
        method = start_method()
        log.debug("polygonizing in %d worker processes (%s)", workers, method)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_start_worker,
            initargs=(path, selection, grid, simplify, options),
        )

    def __enter__(self) -> BlockPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def map(
        self, tasks: Sequence[tuple[int, int, Window]], on_drain: Callable[[], None] | None = None
    ) -> Iterator[BlockPieces]:
        """Polygonize ``(block_row, block_col, window)`` tasks; yield the results in the order of ``tasks``.

        Args:
            tasks: The blocks.
            on_drain: Called once, between two results, when every block is handed out and a worker is free
                (the caller can then write what it holds while the last blocks are polygonized).

        Raises:
            RasterError: A block cannot be read (as in one process), or a worker process died.
        """
        ahead: collections.deque[concurrent.futures.Future[BlockPieces]] = collections.deque()
        todo = iter(tasks)
        limit = AHEAD_PER_WORKER * self.workers
        submitted = 0
        try:
            while True:
                while len(ahead) < limit and (task := next(todo, None)) is not None:
                    ahead.append(self._pool.submit(_polygonize, *task))
                    submitted += 1
                if not ahead:
                    return
                if on_drain is not None and submitted == len(tasks) and len(ahead) < self.workers:
                    on_drain()
                    on_drain = None
                yield ahead.popleft().result()
        except BrokenProcessPool:
            raise RasterError(
                f"{self.path}: a vectorizing worker process died (killed, or out of memory); run "
                "again with fewer workers (--workers 1 uses none)"
            ) from None
        finally:
            for future in ahead:
                future.cancel()
