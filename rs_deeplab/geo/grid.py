"""Pure window geometry: the crop grid over a scene, frozen crop windows and their georeferencing."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from affine import Affine
from rasterio.windows import Window

from rs_deeplab.cli.errors import InputError


@dataclass(frozen=True, order=True)
class CropWindow:
    """One square crop of a scene: where it reads and how large the written crop is.

    A crop always has ``size × size`` pixels. Where the scene is smaller than ``size`` along an axis, only the
    first ``height`` rows / ``width`` columns hold scene pixels and the rest is padding.

    Attributes:
        row_off: First scene row of the crop.
        col_off: First scene column of the crop.
        height: Scene rows inside the crop (``< size`` only for a scene shorter than ``size``).
        width: Scene columns inside the crop (``< size`` only for a scene narrower than ``size``).
        size: Side of the written crop in pixels.
    """

    row_off: int
    col_off: int
    height: int
    width: int
    size: int

    def __post_init__(self) -> None:
        if min(self.row_off, self.col_off) < 0 or not 0 < self.height <= self.size or not 0 < self.width <= self.size:
            raise ValueError(f"invalid crop window {self}")

    @property
    def window(self) -> Window:
        """The rasterio window of scene pixels this crop reads."""
        return Window(self.col_off, self.row_off, self.width, self.height)

    @property
    def padded(self) -> bool:
        """Whether the crop extends past the scene (bottom or right padding)."""
        return self.height < self.size or self.width < self.size

    def transform(self, scene_transform: Affine) -> Affine:
        """The crop's geotransform: ``scene_transform @ Affine.translation(col_off, row_off)`` (DESIGN writes ``*``)."""
        return crop_transform(scene_transform, self)

    def name(self, scene_key: str) -> str:
        """File stem of this crop: ``<scene>_<row_off>_<col_off>``."""
        return f"{scene_key}_{self.row_off}_{self.col_off}"


def check_size_stride(size: int, stride: int) -> None:
    """Validate a crop size and stride.

    Raises:
        InputError: ``size`` or ``stride`` is not a positive integer, or ``stride > size`` (pixels would be skipped).
    """
    for name, value in (("size", size), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"crop {name} must be a positive whole number of pixels, got {value!r}")
    if stride > size:
        raise InputError(
            f"stride {stride} is larger than the crop size {size}, so pixels between crops would be skipped; "
            f"use a stride of at most {size}"
        )


def axis_offsets(length: int, size: int, stride: int) -> tuple[int, ...]:
    """Start offsets of the windows along one axis of ``length`` pixels.

    ``ceil((length - size) / stride) + 1`` windows every ``stride`` pixels; the last one is shifted inward to end
    exactly at the edge. An axis shorter than ``size`` gets one window at 0 (padded).

    Args:
        length: Pixels along the axis (> 0).
        size: Window side (> 0).
        stride: Step between window starts, ``0 < stride <= size``.
    """
    check_size_stride(size, stride)
    if length <= 0:
        raise InputError(f"a raster axis must have at least one pixel, got {length}")
    if length <= size:
        return (0,)
    count = math.ceil((length - size) / stride) + 1
    return (*(i * stride for i in range(count - 1)), length - size)


def window_grid(height: int, width: int, size: int, stride: int) -> tuple[CropWindow, ...]:
    """Every crop window of a ``height × width`` scene, row-major (sorted by ``row_off`` then ``col_off``).

    The windows cover every pixel of the scene; see :func:`axis_offsets` for the layout along each axis.
    """
    rows = axis_offsets(height, size, stride)
    cols = axis_offsets(width, size, stride)
    h, w = min(height, size), min(width, size)
    return tuple(CropWindow(r, c, h, w, size) for r in rows for c in cols)


def crop_transform(scene_transform: Affine, window: CropWindow | Window) -> Affine:
    """Geotransform of a crop whose top-left pixel is ``(row_off, col_off)`` (affine 3 composes with ``@``)."""
    return scene_transform @ Affine.translation(int(window.col_off), int(window.row_off))


def window_rows(windows: Iterable[CropWindow]) -> dict[int, tuple[CropWindow, ...]]:
    """Group windows by ``row_off`` (one row of windows shares the same strip of scene rows)."""
    rows: dict[int, list[CropWindow]] = {}
    for w in sorted(windows):
        rows.setdefault(w.row_off, []).append(w)
    return {r: tuple(ws) for r, ws in rows.items()}


def chunk_rows(row_offs: Sequence[int], per_chunk: int) -> tuple[tuple[int, ...], ...]:
    """Split sorted window-row offsets into consecutive chunks of at most ``per_chunk`` rows (one task each)."""
    if per_chunk <= 0:
        raise ValueError(f"per_chunk must be positive, got {per_chunk}")
    return tuple(tuple(row_offs[i : i + per_chunk]) for i in range(0, len(row_offs), per_chunk))
