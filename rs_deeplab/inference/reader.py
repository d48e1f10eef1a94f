"""Read a scene as batches of normalised windows, one band of rows at a time, skipping all-nodata windows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from rs_deeplab.errors import InputError
from rs_deeplab.grid import axis_offsets
from rs_deeplab.raster import PathLike, open_raster


@dataclass(frozen=True)
class SceneInfo:
    """What inference needs to know about a scene, read once from its header."""

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


def scene_info(path: PathLike) -> SceneInfo:
    """Read ``path``'s header (one-line errors for a missing file or one GDAL cannot read)."""
    with open_raster(path) as src:
        flags = [set(f) for f in src.mask_flag_enums]
        if src.nodata is not None:
            kind = "nodata"
        elif MaskFlags.per_dataset in flags[0] and MaskFlags.alpha not in flags[0]:
            kind = "mask"  # as the tiler: a 4-band RGBIR GeoTIFF is often tagged RGBA, and its NIR is no mask
        else:
            kind = "none"
        full = str(Path(path).resolve())  # absolute: Dask workers may run in another folder
        return SceneInfo(full, src.height, src.width, src.count, src.dtypes[0], src.crs, src.transform, src.nodata,
                         kind)  # fmt: skip


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
    """Up to ``batch_size`` windows of one window row, ready for the model."""

    row_off: int
    col_offs: tuple[int, ...]
    images: torch.Tensor
    """``(B, bands, size, size)`` float32, normalised; nodata and padding set to 0."""
    valid: torch.Tensor | None
    """``(B, size, size)`` bool, False on nodata and padding; None when every pixel is valid."""
    raw: np.ndarray | None = None
    """The band of raw rows the windows came from (kept only for CRF)."""


class WindowReader:
    """Iterate a scene's windows row by row as :class:`WindowBatch` objects.

    Each window row reads its band of ``size`` scene rows once (all columns, the chosen bands). Windows with no
    valid pixel are skipped without reaching the model. Batches never span two window rows, so the windows a
    model sees together do not depend on where a run starts (resume, Dask chunks).
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
    ) -> None:
        if batch_size <= 0:
            raise InputError(f"batch size must be a positive whole number, got {batch_size}")
        self.info, self.size, self.stride, self.batch_size = info, size, stride, batch_size
        self.bands = list(bands)
        self.row_offs = axis_offsets(info.height, size, stride)
        self.col_offs = axis_offsets(info.width, size, stride)
        self.keep_raw, self.pin_memory = keep_raw, pin_memory
        n = len(self.bands)
        self.mean = None if mean is None else np.asarray(mean, np.float32).reshape(n, 1, 1)
        self.std = None if std is None else np.asarray(std, np.float32).reshape(n, 1, 1)
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and values.size != n:
                raise InputError(f"{name} has {values.size} values for {n} bands")

    def windows_in(self, row_offs: Sequence[int]) -> int:
        """How many windows (before nodata skipping) the given window rows hold."""
        return len(row_offs) * len(self.col_offs)

    def batches(self, row_offs: Sequence[int] | None = None) -> Iterator[WindowBatch]:
        """Batches of the given window rows (all of them by default), in row-major order."""
        with open_raster(self.info.path) as src:
            for row_off in self.row_offs if row_offs is None else row_offs:
                yield from self._row_batches(src, row_off)

    def _row_batches(self, src: object, row_off: int) -> Iterator[WindowBatch]:
        band, valid = self._read_band(src, row_off)
        todo = [c for c in self.col_offs if valid is None or valid[:, c : c + self.size].any()]
        for i in range(0, len(todo), self.batch_size):
            cols = tuple(todo[i : i + self.batch_size])
            images = np.zeros((len(cols), len(self.bands), self.size, self.size), np.float32)
            masks = None if valid is None else np.zeros((len(cols), self.size, self.size), bool)
            for j, c in enumerate(cols):
                crop = band[:, :, c : c + self.size]
                h, w = crop.shape[1:]
                self._normalise(crop, images[j, :, :h, :w])
                if masks is not None and valid is not None:
                    masks[j, :h, :w] = valid[:, c : c + self.size]
                    images[j] *= masks[j]
            tensor = torch.from_numpy(images)
            yield WindowBatch(
                row_off,
                cols,
                tensor.pin_memory() if self.pin_memory else tensor,
                None if masks is None else torch.from_numpy(masks),
                band if self.keep_raw else None,
            )

    def _normalise(self, crop: np.ndarray, out: np.ndarray) -> None:
        """Write ``(crop - mean) / std`` into ``out`` (float32), per window so the band stays in its dtype."""
        out[...] = crop
        if self.mean is not None:
            out -= self.mean
        if self.std is not None:
            out /= self.std

    def _read_band(self, src: object, row_off: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw ``(bands, rows, width)`` band of the window row and its valid mask (None: all valid).

        The band stays in the scene's dtype (a 100,000-pixel-wide uint8 RGBIR band of 512 rows is 200 MB; as
        float32 it would be 800 MB); windows are converted one by one.
        """
        rows = min(self.size, self.info.height - row_off)
        window = Window(0, row_off, self.info.width, rows)
        data = src.read(self.bands, window=window)  # type: ignore[attr-defined]
        valid: np.ndarray | None = None
        if self.info.mask_kind == "nodata" and self.info.nodata is not None:
            nd = self.info.nodata
            valid = (~np.isnan(data) if np.isnan(nd) else data != nd).any(0)
        elif self.info.mask_kind == "mask":
            valid = src.read_masks(self.bands[0], window=window) > 0  # type: ignore[attr-defined]
        if np.issubdtype(data.dtype, np.floating):
            finite = np.isfinite(data).all(0)
            valid = finite if valid is None else valid & finite
            data = np.where(finite, data, 0)
        if valid is not None and valid.all():
            valid = None
        return data, valid
