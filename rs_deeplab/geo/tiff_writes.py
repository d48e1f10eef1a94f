"""What GDAL does not say about a GeoTIFF it wrote: errors it only prints, and a file cut short on disk.

Three gaps let a GeoTIFF be left truncated while every rasterio call succeeds (rasterio does not check what closing
a dataset returns). A block that GDAL flushes as a dataset closes and that cannot be written is reported to
libtiff's process-wide error handler, whose default prints ``_tiffWriteProc: File too large.`` to stderr; the TIFF
directory that then cannot be rewritten is reported to GDAL's error handler, whose default prints ``ERROR 1:
TIFFRewriteDirectory:...`` (rasterio's own handler is in place only during the calls it checks). And the last
bytes, held in a C stdio buffer, can be lost when the file is closed without any report at all. :func:`listen`
catches the first two (and keeps those lines off the terminal); :func:`tiff_truncated` finds the third by reading
the file's first directory and the blocks it points to, which every complete GeoTIFF holds within its size.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TiffError = tuple[int, str]
"""One error reported while writing: ``(errno at the time or 0, text)``."""
CE_FAILURE = 3
"""GDAL's ``CPLErr`` of a failure (``CE_Warning`` is 2)."""


class _Listener:
    """Listens to libtiff's and GDAL's error handlers while a thread is inside :func:`listen`.

    libtiff's handler is process-wide: the first listener installs it and the last puts the previous one back;
    while it is installed, the errors of a listening thread are kept for it (with ``errno``, which ctypes hands the
    callback as it was when libtiff called) and other threads' errors are printed as libtiff would. GDAL's is
    pushed on the listening thread's own handler stack (``CPLPushErrorHandler``) and popped again; it keeps
    failures and prints warnings as GDAL would. Nothing stays changed once every block has ended.
    """

    _TIFF_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, use_errno=True)
    _GDAL_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_char_p)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved: list[tuple[ctypes.CDLL, int | None]] = []
        self.active: dict[int, list[list[TiffError]]] = {}
        self.tiff_handler = self._TIFF_PROTO(self._on_tiff_error)
        self.gdal_handler = self._GDAL_PROTO(self._on_gdal_error)
        self.libraries: tuple[list[ctypes.CDLL], list[ctypes.CDLL]] | None = None

    def _keep(self, code: int, text: str, unheard: str) -> None:
        stacks = self.active.get(threading.get_ident())
        if stacks:
            for found in stacks:
                found.append((code, text))
        else:
            sys.stderr.write(unheard)

    def _on_tiff_error(self, module: bytes | None, fmt: bytes | None, _args: int | None) -> None:
        try:
            code = ctypes.get_errno()
            name = (module or b"libtiff").decode(errors="replace")
            text = f"{name}: {os.strerror(code) if code else (fmt or b'').decode(errors='replace')}"
            self._keep(code, text, f"{text}.\n")
        except Exception:  # an exception must not cross back into C
            pass

    def _on_gdal_error(self, kind: int, number: int, message: bytes | None) -> None:
        try:
            text = (message or b"").decode(errors="replace")
            if kind >= CE_FAILURE:
                self._keep(0, text, f"ERROR {number}: {text}\n")
            elif kind > 1:  # warnings as GDAL prints them; debug messages as GDAL drops them (without CPL_DEBUG)
                sys.stderr.write(f"Warning {number}: {text}\n")
        except Exception:  # an exception must not cross back into C
            pass

    def _find(self) -> tuple[list[ctypes.CDLL], list[ctypes.CDLL]]:
        if self.libraries is not None:
            return self.libraries
        tiffs, gdals = [], []
        for path in _loaded_libraries():
            with contextlib.suppress(OSError, AttributeError):
                lib = ctypes.CDLL(path)
                if os.path.basename(path).startswith("libtiff"):
                    lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
                    lib.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
                    tiffs.append(lib)
                else:
                    lib.CPLPushErrorHandler.argtypes = [ctypes.c_void_p]
                    lib.CPLPopErrorHandler.argtypes = []
                    gdals.append(lib)
        if (tiffs and gdals) or "rasterio" in sys.modules:  # GDAL is loaded: what is there now is all there will be
            self.libraries = tiffs, gdals
        return tiffs, gdals

    @contextlib.contextmanager
    def listen(self) -> Iterator[list[TiffError]]:
        found: list[TiffError] = []
        ident = threading.get_ident()
        with self.lock:
            tiffs, gdals = self._find()
            if self.users == 0:
                pointer = ctypes.cast(self.tiff_handler, ctypes.c_void_p)
                self.saved = [(lib, lib.TIFFSetErrorHandler(pointer)) for lib in tiffs]
            self.users += 1
            self.active.setdefault(ident, []).append(found)
        for lib in gdals:
            lib.CPLPushErrorHandler(ctypes.cast(self.gdal_handler, ctypes.c_void_p))
        try:
            yield found
        finally:
            for lib in gdals:
                lib.CPLPopErrorHandler()
            with self.lock:
                stack = self.active[ident]
                stack.remove(found)
                if not stack:
                    del self.active[ident]
                self.users -= 1
                if self.users == 0:
                    for lib, previous in self.saved:
                        lib.TIFFSetErrorHandler(previous)
                    self.saved = []


def _loaded_libraries() -> list[str]:
    """The libtiff and GDAL libraries rasterio writes with: loaded ones (Linux), else those bundled with rasterio.

    pyogrio's own copy of GDAL (its wheels bundle one) is left alone: it raises its errors itself.
    """
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split(maxsplit=5)[-1].strip() for line in fh if "/lib" in line}
        return sorted(p for p in paths if os.path.basename(p).startswith(("libtiff", "libgdal")) and "pyogrio" not in p)
    except OSError:
        pass
    rasterio = sys.modules.get("rasterio")
    if rasterio is None or rasterio.__file__ is None:
        return []
    base = Path(rasterio.__file__).parent
    return [
        str(p)
        for folder in (base / ".dylibs", base.parent / "rasterio.libs")
        for name in ("libtiff*", "libgdal*")
        for p in folder.glob(name)
    ]


_LISTENER = _Listener()


def listen() -> contextlib.AbstractContextManager[list[TiffError]]:
    """Collect this thread's libtiff errors (``(errno, text)``) and GDAL failures (``(0, text)``) while the block
    runs; none is printed.
    """  # noqa: D205
    return _LISTENER.listen()


# TIFF tags of the block offsets and byte counts (strips, tiles), and the byte size of each value type
_BLOCK_TAGS = {273: "offsets", 279: "counts", 324: "offsets", 325: "counts"}
_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


def tiff_truncated(path: str | os.PathLike[str], blocks: int | None = None) -> bool:
    """Whether a (Geo)TIFF's first directory, or a block it points to, lies beyond the end of the file.

    Reads the header, the first directory and its block offsets and sizes only (no pixels, no GDAL). Files that
    are no TIFF are never truncated here; a directory that cannot be read whole is.

    Args:
        path: The file.
        blocks: Check only the first this many blocks (in file order: the top rows of blocks of a
            pixel-interleaved raster); all when None.
    """
    try:
        with open(path, "rb") as fh:
            end = _data_end(fh, blocks)
            return end is not None and end > os.fstat(fh.fileno()).st_size
    except (struct.error, ValueError):
        return True


def _data_end(fh: BinaryIO, limit: int | None = None) -> int | None:
    """The byte just past the first directory and the (first ``limit``) blocks it points to; None for no TIFF.

    Raises:
        struct.error: Bytes of the directory or of its offset arrays are missing.
    """
    head = fh.read(16)
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    magic = struct.unpack(f"{order}H", head[2:4])[0] if order and len(head) >= 4 else None
    if magic not in (42, 43):
        return None
    big = magic == 43
    word = "Q" if big else "I"
    ifd = struct.unpack(f"{order}{word}", head[8:16] if big else head[4:8])[0]
    fh.seek(ifd)
    count_fmt, entry, pointer = ("Q", 20, 8) if big else ("H", 12, 4)
    n = struct.unpack(f"{order}{count_fmt}", fh.read(struct.calcsize(count_fmt)))[0]
    entries = fh.read(n * entry)
    end = ifd + struct.calcsize(count_fmt) + n * entry + pointer
    blocks: dict[str, list[int]] = {"offsets": [], "counts": []}
    for i in range(n):
        tag, kind = struct.unpack(f"{order}HH", entries[i * entry : i * entry + 4])
        if tag not in _BLOCK_TAGS or kind not in _TYPES:
            continue
        fmt, size = _TYPES[kind]
        at = i * entry + (12 if big else 8)
        count = struct.unpack(f"{order}{word}", entries[i * entry + 4 : at])[0]
        raw = entries[at : at + count * size]
        if count * size > pointer:  # stored outside the directory: the entry holds where
            where = struct.unpack(f"{order}{word}", entries[at : at + pointer])[0]
            fh.seek(where)
            raw = fh.read(count * size)
            end = max(end, where + count * size)
        blocks[_BLOCK_TAGS[tag]].extend(struct.unpack(f"{order}{count}{fmt}", raw))
    for offset, length in list(zip(blocks["offsets"], blocks["counts"], strict=False))[:limit]:
        if offset and length:
            end = max(end, offset + length)
    return end
