"""Read a sliding strip of scene rows: each row is read and decoded once, in chunks on a small thread pool.

Consecutive window rows overlap by ``size - stride`` scene rows. :class:`StripReader` keeps the previous strip
and reads only the rows the next one adds (any order of window rows works: a strip that does not overlap the previous
one is read whole). The new rows are split into chunks along GeoTIFF block boundaries (columns of a tiled file,
rows of a striped one) and read by up to ``threads`` threads; GDAL releases the GIL while it decodes, and each
thread opens its own dataset (a GDAL dataset must never be used by two threads at once). With more than one
thread, the next strip is read in the background while the caller cuts windows from the current one. Formats
that decode from the top (PNG, JPEG) are read whole-row by one thread, in order.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from rs_deeplab.geo.raster import open_raster, read_error
from rs_deeplab.remote.reads import read_retrying


@dataclass(frozen=True)
class SceneInfo:
    """What inference needs to know about a scene, read once from its header.

    Defined here, below :mod:`rs_deeplab.inference.reading.reader` (whose ``scene_info`` makes it, and which
    re-exports it),
    because the strip reader reads with it too.
    """

    path: str
    height: int
    width: int
    count: int
    dtype: str
    crs: object
    transform: object
    nodata: float | None
    mask_kind: str
    """``nodata`` (a nodata value), ``mask`` (an internal per-dataset mask) or ``none``."""
    source_shape: tuple[int, int] | None = None
    """The file's ``(height, width)`` when this describes a resampled working grid of the same footprint
    (:func:`~rs_deeplab.inference.predicting.regrid.working_info`); reads are then resampled bilinearly. None: the
    file's grid."""

    def file_window(self, window: Window) -> Window:
        """The window of the file (fractional where resampled) that covers ``window`` of this grid."""
        if self.source_shape is None:
            return window
        sy, sx = self.source_shape[0] / self.height, self.source_shape[1] / self.width
        return Window(window.col_off * sx, window.row_off * sy, window.width * sx, window.height * sy)


def default_read_threads() -> int:
    """Reading threads per scene: up to 4, never more than this machine's CPUs."""
    return max(1, min(4, os.cpu_count() or 1))


class StripReader:
    """Strips of ``size`` scene rows (the columns ``cols``, all by default; the chosen raster bands) in the scene's
    dtype, plus their valid mask.

    Non-finite values of a float scene are set to 0 and counted as invalid, as are nodata pixels (every band equal
    to the nodata value, NaN included) and pixels outside an internal dataset mask. Use as a context manager (it
    owns the thread pool and the open datasets).
    """  # noqa: D205

    def __init__(
        self, info: SceneInfo, bands: Sequence[int], size: int, threads: int = 1, cols: tuple[int, int] | None = None
    ) -> None:
        if threads < 1:
            raise ValueError(f"read_threads must be >= 1, got {threads}")
        self.info, self.bands, self.size, self.threads = info, list(bands), size, threads
        self.cols = (0, info.width) if cols is None else cols
        """Scene columns ``[first, stop)`` of the strips (column 0 of a strip is scene column ``first``)."""
        self.rows = min(size, info.height)
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rs-deeplab-read-ahead") if threads > 1 else None
        self._chunk_pool = ThreadPoolExecutor(threads, thread_name_prefix="rs-deeplab-read") if threads > 1 else None
        self._ahead: tuple[int, Future[tuple[np.ndarray, np.ndarray | None]]] | None = None
        shape = (len(self.bands), self.rows, self.cols[1] - self.cols[0])
        self._data = [np.empty(shape, np.dtype(info.dtype)) for _ in range(2)]
        self._masked = info.mask_kind != "none" or np.dtype(info.dtype).kind == "f"
        self._valid = [np.empty(shape[1:], bool) for _ in range(2)] if self._masked else None
        self._current, self._off, self._held = -1, -1, 0
        self.rows_read = 0
        """Scene rows read from the file so far (statistics)."""
        first = self._dataset()
        self._block: tuple[int, int] = first.block_shapes[0]
        self._random_access = first.driver == "GTiff" or self._block[1] < info.width
        """Whether rows can be read in any order cheaply (not PNG or JPEG: those decode from the top)."""

    def __enter__(self) -> StripReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads and close every dataset they opened."""
        for pool in (self._pool, self._chunk_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._ahead = None
        with self._lock:
            for ds in self._opened:
                ds.close()
            self._opened = []

    def retarget(self, cols: tuple[int, int]) -> None:
        """Read the columns ``cols`` from now on (no wider than those the reader was made for).

        The next column panel of a wide scene reuses the buffers, threads and open datasets: memory and threads do
        not pile up panel after panel.
        """
        if cols[1] - cols[0] > self._data[0].shape[2]:
            raise ValueError(f"columns {cols} are wider than this reader's {self._data[0].shape[2]}")
        if self._ahead is not None:
            self._ahead[1].result()
            self._ahead = None
        self.cols, self._current, self._off, self._held = cols, -1, -1, 0

    def _dataset(self) -> Any:
        """This thread's own open dataset."""
        ds = getattr(self._local, "ds", None)
        if ds is None or ds.closed:
            ds = open_raster(self.info.path)
            self._local.ds = ds
            with self._lock:
                self._opened.append(ds)
        return ds

    def strip(self, row_off: int, next_off: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(bands, rows, columns)`` raw rows ``row_off ..`` (at most ``size``) and their valid mask (None: all valid).

        With more than one thread, ``next_off`` (the strip asked for next) is read in the background while the
        caller works on this one. The arrays are buffers reused by the next call: copy what must live longer.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] != row_off:
            ahead[1].result()  # a different strip came next: finish the read in flight, then read this one
            ahead = None
        if ahead is not None:
            got = ahead[1].result()
        elif self._pool is not None:  # strips are assembled on one thread: a PNG is decoded by one dataset, in order
            got = self._pool.submit(self._assemble, row_off).result()
        else:
            got = self._assemble(row_off)
        if next_off is not None and self._pool is not None:
            self._ahead = (next_off, self._pool.submit(self._assemble, next_off))
        return got

    def _assemble(self, row_off: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Build strip ``row_off`` in the spare buffer from the overlap of the current one and the new rows."""
        rows = min(self.size, self.info.height - row_off)
        keep = 0
        if self._current >= 0 and self._off <= row_off < self._off + self._held:
            keep = min(rows, self._off + self._held - row_off)
        target = 1 - self._current if self._current >= 0 else 0
        width = self.cols[1] - self.cols[0]
        data = self._data[target][:, :rows, :width]
        valid = None if self._valid is None else self._valid[target][:rows, :width]
        if keep:
            skip = row_off - self._off
            data[:, :keep] = self._data[self._current][:, skip : skip + keep, :width]
            if valid is not None and self._valid is not None:
                valid[:keep] = self._valid[self._current][skip : skip + keep, :width]
        self._read(row_off + keep, row_off + rows, data[:, keep:], None if valid is None else valid[keep:])
        self._current, self._off, self._held = target, row_off, rows
        return data, None if valid is None or valid.all() else valid

    def _read(self, first: int, stop: int, data: np.ndarray, valid: np.ndarray | None) -> None:
        """Read scene rows ``[first, stop)`` into ``data`` (and ``valid``), chunk by chunk."""
        if stop <= first:
            return
        self.rows_read += stop - first
        chunks = self._chunks(first, stop)
        if self._chunk_pool is None or len(chunks) == 1:
            for chunk in chunks:
                self._read_chunk(first, chunk, data, valid)
            return
        for future in [self._chunk_pool.submit(self._read_chunk, first, c, data, valid) for c in chunks]:
            future.result()

    def _chunks(self, first: int, stop: int) -> list[tuple[int, int, int, int]]:
        """``(row0, row1, col0, col1)`` pieces of rows ``[first, stop)``, rows relative to ``first``, columns to
        :attr:`cols`.

        Cut along block edges over the threads: the columns of a tiled file (each thread decodes its own tiles),
        else the rows.
        """  # noqa: D205
        lo, hi = self.cols
        block_h, block_w = self._block
        if not self._random_access:
            return [(0, stop - first, 0, hi - lo)]
        if block_w < hi - lo:
            return [(0, stop - first, a - lo, b - lo) for a, b in _split(lo, hi, block_w, self.threads)]
        return [(a - first, b - first, 0, hi - lo) for a, b in _split(first, stop, block_h, self.threads)]

    def _read_chunk(
        self, first: int, chunk: tuple[int, int, int, int], data: np.ndarray, valid: np.ndarray | None
    ) -> None:
        """Read one chunk; a remote scene's server that hiccups is read again, from a freshly opened file."""
        read_retrying(self.info.path, lambda: self._read_chunk_once(first, chunk, data, valid), self._drop_dataset)

    def _drop_dataset(self) -> None:
        """Close this thread's dataset, so that the next read opens the file again."""
        ds = getattr(self._local, "ds", None)
        self._local.ds = None
        if ds is not None:
            with self._lock:
                self._opened = [d for d in self._opened if d is not ds]
            ds.close()

    def _read_chunk_once(
        self, first: int, chunk: tuple[int, int, int, int], data: np.ndarray, valid: np.ndarray | None
    ) -> None:
        r0, r1, c0, c1 = chunk
        src = self._dataset()
        info = self.info
        window = info.file_window(Window(self.cols[0] + c0, first + r0, c1 - c0, r1 - r0))  # fractional if resampled
        out = data[:, r0:r1, c0:c1]
        resampling = Resampling.nearest if info.source_shape is None else Resampling.bilinear  # GDAL skips nodata
        try:
            src.read(self.bands, window=window, out=out, resampling=resampling)
        except (RasterioError, CPLE_BaseError) as exc:
            raise read_error(info.path, exc, f"rows {first + r0}..{first + r1}") from None
        if valid is None:
            return
        ok = valid[r0:r1, c0:c1]
        if info.mask_kind == "nodata" and info.nodata is not None:
            nd = info.nodata
            np.any(~np.isnan(out) if np.isnan(nd) else out != nd, axis=0, out=ok)
        elif info.mask_kind == "mask":
            try:
                ok[...] = src.read_masks(self.bands[0], window=window, out_shape=ok.shape) > 0
            except (RasterioError, CPLE_BaseError) as exc:
                raise read_error(info.path, exc, f"the mask of rows {first + r0}..{first + r1}") from None
        else:
            ok[...] = True
        if out.dtype.kind == "f":
            finite = np.isfinite(out).all(0)
            ok &= finite
            np.copyto(out, 0, where=~finite)


def _split(start: int, stop: int, block: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into at most ``parts`` pieces whose inner edges are multiples of ``block``."""
    block = max(1, block)
    first, last = start // block, -(-stop // block)
    n = max(1, min(parts, last - first))
    edges = [min(stop, max(start, (first + round(i * (last - first) / n)) * block)) for i in range(n + 1)]
    edges[0], edges[-1] = start, stop
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]
