"""Read a scene as batches of raw windows, each scene row once, skipping all-nodata windows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rasterio.enums import MaskFlags

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.grid import axis_offsets
from rs_deeplab.geo.raster import PathLike, absolute, check_complete, open_raster
from rs_deeplab.inference.reading.strip_reader import SceneInfo, StripReader, default_read_threads


def scene_info(path: PathLike) -> SceneInfo:
    """Read ``path``'s header (one-line errors for a missing file or one GDAL cannot read)."""
    with open_raster(path) as src:
        check_complete(src, path)
        flags = [set(f) for f in src.mask_flag_enums]
        if src.nodata is not None:
            kind = "nodata"
        elif MaskFlags.per_dataset in flags[0] and MaskFlags.alpha not in flags[0]:
            kind = "mask"  # as the tiler: a 4-band RGBIR GeoTIFF is often tagged RGBA, and its NIR is no mask
        else:
            kind = "none"
        full = absolute(path)  # absolute: Dask workers may run in another folder; GDAL paths and URLs kept as text
        return SceneInfo(
            full, src.height, src.width, src.count, src.dtypes[0], src.crs, src.transform, src.nodata, kind
        )


def select_bands(info: SceneInfo, bands: Sequence[int] | None, expected: int | None) -> list[int]:
    """1-based band indexes to read; check them against the scene and the model's input channels.

    Raises:
        InputError: A band is missing from the scene, or the count differs from what the model expects.
    """
    chosen = list(range(1, info.count + 1)) if bands is None else list(bands)
    missing = [b for b in chosen if not 1 <= b <= info.count]
    if missing:
        raise InputError(f"{info.path}: has {info.count} bands, the model reads bands {chosen}; pass a scene with them")
    if expected is not None and len(chosen) != expected:
        raise InputError(
            f"{info.path}: has {len(chosen)} bands but the model was trained on {expected}; "
            f"pass a scene with the training data's bands (in the same order)"
        )
    return chosen


@dataclass(frozen=True)
class WindowBatch:
    """Up to ``batch_size`` windows of one window row, as raw pixels.

    :class:`~rs_deeplab.inference.predicting.predictor.Normaliser` converts and normalises them where the model runs.
    """

    row_off: int
    col_offs: tuple[int, ...]
    pixels: torch.Tensor
    """``(B, bands, size, size)`` raw values in :func:`transport_dtype` of the scene's dtype; padding is 0."""
    valid: torch.Tensor | None
    """``(B, size, size)`` bool, False on nodata and padding; None when every pixel is valid."""
    extent: tuple[int, int]
    """Rows and columns of each window that lie inside the scene (the rest is padding)."""
    raw: np.ndarray | None = None
    """The strip of raw rows the windows came from (kept only when asked)."""


def transport_dtype(dtype: np.dtype[Any] | str) -> np.dtype[Any]:
    """The dtype windows of a scene of ``dtype`` are shipped to the device in.

    The same where torch has it, else one that holds every value exactly (uint16 → int32 without
    ``torch.uint16``, uint32 → int64); float64 → float32 (the cast normalisation does first anyway).
    """
    dt = np.dtype(dtype)
    if dt == np.float64 or dt.kind not in "uif":
        return np.dtype(np.float32)
    if dt.kind == "u" and dt.itemsize > 1 and not _torch_has(dt):
        return np.dtype(np.int32) if dt.itemsize == 2 else np.dtype(np.float32 if dt.itemsize > 4 else np.int64)
    return dt


def _torch_has(dt: np.dtype[Any]) -> bool:
    """Whether torch has ``dt`` and converts it to float32 (unsigned types beyond uint8 came in torch 2.3)."""
    try:
        return bool(torch.from_numpy(np.ones(1, dt)).to(torch.float32).item() == 1)
    except (TypeError, RuntimeError):
        return False


class WindowReader:
    """Iterate a scene's windows row by row as :class:`WindowBatch` objects.

    A :class:`~rs_deeplab.inference.reading.strip_reader.StripReader` reads each scene row once (``read_threads``
    threads),
    keeping the overlap of consecutive window rows. Windows with no valid pixel are skipped without reaching the
    model. Batches never span two window rows, so the windows a model sees together do not depend on where a run
    starts (resume, Dask chunks). ``mean``/``std`` are checked here and applied by the normaliser.

    With ``cols`` (a column panel ``[first, stop)`` of the scene), only the windows that overlap those columns are
    read and handed out, at their scene positions, and only the columns those windows span are read
    (:meth:`read_span`): memory then depends on the panel's width, not the scene's.
    """

    def __init__(
        self,
        info: SceneInfo,
        *,
        size: int,
        stride: int,
        batch_size: int,
        bands: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        keep_raw: bool = False,
        pin_memory: bool = False,
        read_threads: int | None = None,
        cols: tuple[int, int] | None = None,
    ) -> None:
        if batch_size <= 0:
            raise InputError(f"batch size must be a positive whole number, got {batch_size}")
        self.info, self.size, self.stride, self.batch_size = info, size, stride, batch_size
        self.bands = list(bands)
        self.row_offs = axis_offsets(info.height, size, stride)
        self.col_offs = axis_offsets(info.width, size, stride)
        if cols is not None:
            self.col_offs = tuple(c for c in self.col_offs if c < cols[1] and c + size > cols[0])
        self.span = (self.col_offs[0], min(info.width, self.col_offs[-1] + size))
        """Scene columns ``[first, stop)`` the windows span: what is read."""
        self.keep_raw, self.pin_memory = keep_raw, pin_memory
        self.read_threads = default_read_threads() if read_threads is None else read_threads
        self.dtype = transport_dtype(info.dtype)
        self.rows_read = 0
        """Scene rows read from the file by :meth:`batches` (each one once per call)."""
        n = len(self.bands)
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != n:
                raise InputError(f"{name} has {len(values)} values for {n} bands")

    def windows_in(self, row_offs: Sequence[int]) -> int:
        """How many windows (before nodata skipping) the given window rows hold."""
        return len(row_offs) * len(self.col_offs)

    def batches(
        self, row_offs: Sequence[int] | None = None, source: StripReader | None = None
    ) -> Iterator[WindowBatch]:
        """Batches of the given window rows (all of them by default), in row-major order.

        ``source``: a strip reader to reuse (retargeted to this reader's columns), e.g. one for every column panel.
        """
        offs = list(self.row_offs if row_offs is None else row_offs)
        if source is not None:
            source.retarget(self.span)
            yield from self._batches(offs, source)
            return
        span = None if self.span == (0, self.info.width) else self.span
        with StripReader(self.info, self.bands, self.size, self.read_threads, span) as own:
            try:
                yield from self._batches(offs, own)
            finally:
                self.rows_read += own.rows_read

    def _batches(self, offs: Sequence[int], source: StripReader) -> Iterator[WindowBatch]:
        for i, row_off in enumerate(offs):
            ahead = offs[i + 1] if i + 1 < len(offs) else None
            yield from self._row_batches(source.strip(row_off, ahead), row_off)

    def _row_batches(self, read: tuple[np.ndarray, np.ndarray | None], row_off: int) -> Iterator[WindowBatch]:
        strip, valid = read
        lo = self.span[0]  # scene column of the strip's first column
        todo = [c for c in self.col_offs if valid is None or valid[:, c - lo : c - lo + self.size].any()]
        h, w = strip.shape[1], min(self.size, self.info.width)
        padded = h < self.size or w < self.size
        raw = strip.copy() if self.keep_raw else None
        for i in range(0, len(todo), self.batch_size):
            cols = tuple(todo[i : i + self.batch_size])
            pixels = self._empty((len(cols), len(self.bands), self.size, self.size), self.dtype, padded)
            masks = None if valid is None else self._empty((len(cols), self.size, self.size), np.dtype(bool), padded)
            out, out_masks = pixels.numpy(), None if masks is None else masks.numpy()
            for j, c in enumerate(cols):
                out[j, :, :h, :w] = strip[:, :, c - lo : c - lo + w]
                if out_masks is not None and valid is not None:
                    out_masks[j, :h, :w] = valid[:, c - lo : c - lo + w]
            yield WindowBatch(row_off, cols, pixels, masks, (h, w), raw)

    def _empty(self, shape: tuple[int, ...], dtype: np.dtype[Any], zero: bool) -> torch.Tensor:
        """A host tensor (pinned for a CUDA copy), zeroed when windows are padded."""
        tdtype = torch.from_numpy(np.empty(0, dtype)).dtype
        make = torch.zeros if zero else torch.empty
        return make(shape, dtype=tdtype, pin_memory=self.pin_memory)
