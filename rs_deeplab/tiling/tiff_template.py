"""Crops written without GDAL: one GeoTIFF crop GDAL wrote is the template of the next crops of its scene.

An uncompressed, tiled GeoTIFF crop of a scene differs from the other crops of that scene only in its pixels and in
the two numbers of its origin (``transform.c`` and ``transform.f``, in the ModelTiepoint or ModelTransformation
tag, and in the stale copy of the first directory GDAL leaves when it rewrites it at the end): the header, the
directories, the CRS keys, the colour map and the band descriptions are the same bytes. Writing a crop is then
one file write of those bytes with the crop's tiles and origin in place, about 4× cheaper than GDAL's create,
write and close (which spends most of its time on the CRS, bench/RESULTS.md, tiling near the floor).

The template is used only once it has proved itself (:class:`TemplateLearner`): it is learnt from one crop GDAL
wrote and checked byte for byte against GDAL's own bytes of the same pixels at an origin that differs in both
numbers; until then, and for anything it cannot describe (compression, strips, partial edge tiles, several directories,
floating-point pixels, an ambiguous origin), crops are written by GDAL. A crop with a tile entirely of nodata
(0 without a nodata value) is left to GDAL too: GDAL skips such tiles and appends them when the file closes,
which changes the layout.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_TILE_TAGS = {
    "width": 256,
    "height": 257,
    "compression": 259,
    "planar": 284,
    "tile_width": 322,
    "tile_height": 323,
    "offsets": 324,
    "counts": 325,
}
_TYPES = {3: ("H", 2), 4: ("I", 4)}
LEARN_TRIES = 6
"""GDAL writes a template may learn from (or be checked on) before a writer gives up and keeps GDAL for all."""


def _tags(data: bytes, order: str) -> dict[int, tuple[int, ...]] | None:
    """Values of the integer tags of the only directory of a classic TIFF (None: another layout)."""
    ifd = struct.unpack_from(f"{order}I", data, 4)[0]
    n = struct.unpack_from(f"{order}H", data, ifd)[0]
    if struct.unpack_from(f"{order}I", data, ifd + 2 + 12 * n)[0] != 0:
        return None  # several directories (overviews, masks)
    tags: dict[int, tuple[int, ...]] = {}
    for i in range(n):
        tag, kind, count = struct.unpack_from(f"{order}HHI", data, ifd + 2 + 12 * i)
        if kind not in _TYPES:
            continue
        fmt, size = _TYPES[kind]
        at = ifd + 10 + 12 * i if count * size <= 4 else struct.unpack_from(f"{order}I", data, ifd + 10 + 12 * i)[0]
        tags[tag] = struct.unpack_from(f"{order}{count}{fmt}", data, at)
    return tags


@dataclass(frozen=True)
class TiffTemplate:
    """The bytes of a crop around its tiles, and where its origin's two numbers lie in them.

    Attributes:
        head, tail: The file's bytes before and after its tile data (one run of tiles in file order).
        order: The file's byte order (``<`` or ``>``).
        dtype: Pixel type in the file's byte order. shape: ``(bands, height, width)``. tile: ``(rows, cols)``.
        nodata: The value of an empty tile (GDAL's nodata, or 0).
        origin: ``(x, y)`` of the template crop. spots: ``(offset, 0 for x / 1 for y)`` of those numbers in
            ``head + tail`` (offsets into the whole file; none in the tiles).
    """

    head: bytes
    tail: bytes
    order: str
    dtype: np.dtype[Any]
    shape: tuple[int, int, int]
    tile: tuple[int, int]
    nodata: int
    origin: tuple[float, float]
    spots: tuple[tuple[int, int], ...]

    @classmethod
    def learn(
        cls, data: bytes, pixels: np.ndarray, origin: tuple[float, float], nodata: float | None
    ) -> TiffTemplate | None:
        """The template of GDAL's file ``data`` of ``pixels`` (bands, rows, cols) at ``origin``; None where the
        layout is not one this module writes (the crops then stay with GDAL).
        """  # noqa: D205
        try:
            return cls._learn(data, pixels, origin, nodata)
        except struct.error:
            return None

    @classmethod
    def _learn(
        cls, data: bytes, pixels: np.ndarray, origin: tuple[float, float], nodata: float | None
    ) -> TiffTemplate | None:
        order = {b"II": "<", b"MM": ">"}.get(data[:2])
        if order is None or struct.unpack_from(f"{order}H", data, 2)[0] != 42 or pixels.dtype.kind not in "ui":
            return None
        fill = 0 if nodata is None else nodata
        info = np.iinfo(pixels.dtype)
        if not math.isfinite(fill) or fill != int(fill) or not info.min <= fill <= info.max:
            return None  # GDAL's test of such a nodata value is not this module's
        tags = _tags(data, order)
        if tags is None or any(_TILE_TAGS[k] not in tags for k in ("tile_width", "tile_height", "offsets", "counts")):
            return None
        value = {k: tags.get(t, (0,))[0] for k, t in _TILE_TAGS.items() if k not in ("offsets", "counts")}
        bands, height, width = pixels.shape
        th, tw = value["tile_height"], value["tile_width"]
        planar_ok = value["planar"] == 2 or bands == 1
        if (
            value["compression"] != 1
            or not planar_ok
            or (value["height"], value["width"]) != (height, width)
            or height % th
            or width % tw
        ):
            return None
        tile_bytes = th * tw * pixels.dtype.itemsize
        offsets, counts = tags[_TILE_TAGS["offsets"]], tags[_TILE_TAGS["counts"]]
        n = bands * (height // th) * (width // tw)
        if len(offsets) != n or any(c != tile_bytes for c in counts):
            return None
        start, end = offsets[0], offsets[0] + n * tile_bytes
        if any(o != start + i * tile_bytes for i, o in enumerate(offsets)) or len(data) < end:
            return None  # tiles out of order (GDAL appended an empty one): not a layout to copy
        dtype = pixels.dtype.newbyteorder("<" if order == "<" else ">")
        if bytes(np.ascontiguousarray(_tiles(pixels, th, tw), dtype=dtype).data) != data[start:end]:
            return None
        x, y = (struct.pack(f"{order}d", v) for v in origin)
        if x == y:
            return None
        spots = [(at, k) for k, pattern in enumerate((x, y)) for at in _find(data, pattern, start, end)]
        if not any(k == 0 for _, k in spots) or not any(k == 1 for _, k in spots):
            return None
        return cls(
            data[:start],
            data[end:],
            order,
            dtype,
            (bands, height, width),
            (th, tw),
            int(fill),
            origin,
            tuple(sorted(spots)),
        )

    def render(
        self, pixels: np.ndarray, origin: tuple[float, float]
    ) -> Sequence[bytes | bytearray | memoryview] | None:
        """The bytes of the crop of ``pixels`` at ``origin`` (pieces, in file order); None where GDAL would lay it
        out otherwise (a tile entirely of nodata) or ``pixels`` do not fit the template.
        """  # noqa: D205
        if pixels.shape != self.shape or pixels.dtype.str[1:] != self.dtype.str[1:]:  # kind and size, any byte order
            return None
        tiles = np.ascontiguousarray(_tiles(pixels, *self.tile), dtype=self.dtype)
        corners = tiles[..., 0, 0] == self.nodata  # GDAL's own order: the first pixel, then the whole tile
        if corners.any() and (tiles[corners] == self.nodata).all(axis=(-2, -1)).any():
            return None
        head, tail = bytearray(self.head), bytearray(self.tail)
        start = len(self.head)
        end = start + tiles.nbytes
        for at, k in self.spots:
            packed = struct.pack(f"{self.order}d", origin[k])
            if at < start:
                head[at : at + 8] = packed
            else:
                tail[at - end : at - end + 8] = packed
        return [head, tiles.data.cast("B"), tail]


def _tiles(pixels: np.ndarray, th: int, tw: int) -> np.ndarray:
    """``(bands, rows, cols)`` pixels as ``(bands, tile_rows, tile_cols, th, tw)`` tiles (a view)."""
    bands, height, width = pixels.shape
    return pixels.reshape(bands, height // th, th, width // tw, tw).swapaxes(2, 3)


def _find(data: bytes, pattern: bytes, start: int, end: int) -> list[int]:
    """Offsets of ``pattern`` in ``data`` outside ``[start, end)``."""
    found, at = [], data.find(pattern)
    while at != -1:
        if at + len(pattern) <= start or at >= end:
            found.append(at)
        at = data.find(pattern, at + 1)
    return found


class TemplateLearner:
    """The template of one kind of crop (images or labels) of one writer, learnt from a crop GDAL wrote.

    :meth:`learn` takes GDAL's bytes of a crop, learns a candidate from them, and has GDAL write the same pixels
    at another origin (both numbers different) to check the candidate byte for byte; only a candidate that
    passes becomes :attr:`template`. A writer tries at most :data:`LEARN_TRIES` crops.

    Args:
        nodata: The crops' nodata value (None: none, empty tiles are 0).
        enabled: False keeps every crop with GDAL.
    """

    def __init__(self, nodata: float | None, enabled: bool = True) -> None:
        self.nodata = nodata
        self.template: TiffTemplate | None = None
        self.tries = 0 if enabled else LEARN_TRIES

    def wants(self, origin: tuple[float, float]) -> bool:
        """Whether GDAL's crop at ``origin`` should be learnt from: no template yet, tries left, and an origin
        whose numbers differ and are not 0 (eight zero bytes are everywhere in a TIFF: the spots would be ambiguous).
        """  # noqa: D205
        x, y = origin
        return self.template is None and self.tries < LEARN_TRIES and x != y and x != 0 and y != 0

    def learn(
        self,
        data: bytes,
        pixels: np.ndarray,
        origin: tuple[float, float],
        check: tuple[tuple[float, float], Callable[[], bytes]],
    ) -> None:
        """Learn from GDAL's bytes ``data`` of ``pixels`` at ``origin``; ``check`` is another origin and what
        writes the same pixels there with GDAL and returns the file's bytes.
        """  # noqa: D205
        self.tries += 1
        other, write = check
        if other[0] == origin[0] or other[1] == origin[1]:
            return
        candidate = TiffTemplate.learn(data, pixels, origin, self.nodata)
        if candidate is None:
            return
        pieces = candidate.render(pixels, other)
        if pieces is not None and b"".join(pieces) == write():
            self.template = candidate
