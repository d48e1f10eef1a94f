"""Small rasterio helpers: validated opening, atomic writes and GeoTIFF output profiles."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from rs_deeplab.cli.diskspace import out_of_space, space_checked, space_errno
from rs_deeplab.cli.errors import DiskFullError, InputError, RasterError
from rs_deeplab.remote.paths import gdal_path, gdal_problem, is_remote, is_url, reads_remote, remote_env, retry_or_raise

PathLike = str | os.PathLike[str]

WARNINGS_LOCK = threading.RLock()
"""Held around every ``warnings.catch_warnings()`` block that may run in several threads at once.

``catch_warnings`` saves the process-wide filter list on entry and puts it back on exit: two threads whose blocks
interleave would put back each other's filters, leaving an ``ignore`` in the caller's process for good (Dask
worker threads writing crops did). One block at a time keeps every block's changes scoped to itself."""


@contextlib.contextmanager
def quiet_georeferencing() -> Iterator[None]:
    """Silence rasterio's ``NotGeoreferencedWarning`` for PNG/JPEG inputs that carry pixel coordinates only.

    The filter is scoped to the block (and the block to one thread at a time, see :data:`WARNINGS_LOCK`).
    """
    with WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


SMALL_BLOCK_CACHE = 64 * 2**20
"""GDAL block cache of a run that reads or writes each block once (inference, vectorizing, a page's pyramid), in
bytes: rasterio hands an integer ``GDAL_CACHEMAX`` to GDAL as bytes (``GDAL_CACHEMAX=64`` is a 64-byte cache, which
re-reads a tile for every window that crosses it)."""


def small_block_cache() -> contextlib.AbstractContextManager[Any]:
    """Cap GDAL's block cache at :data:`SMALL_BLOCK_CACHE` for a run, unless the user set ``GDAL_CACHEMAX``.

    Each block is read once, so the default cache (5% of RAM) would only pile up dead blocks: on a 20,000² raster
    it added ~350 MB to a vectorizing run's peak memory.
    """
    if "GDAL_CACHEMAX" in os.environ:
        return contextlib.nullcontext()
    return rasterio.Env(GDAL_CACHEMAX=SMALL_BLOCK_CACHE)


def is_vsi(path: PathLike) -> bool:
    """Whether ``path`` is a GDAL virtual file system path (``/vsizip/...``), kept as a string, never resolved."""
    return str(path).startswith("/vsi")


def absolute(path: PathLike) -> str:
    """``path`` made absolute for the tile index; GDAL virtual paths are returned as they are, URLs as GDAL paths."""
    if is_url(path):
        return gdal_path(path)
    return str(path) if is_vsi(path) else str(Path(path).resolve())


def source_path(path: PathLike) -> str | Path:
    """A scene argument as the library keeps it: GDAL paths and URLs as strings (never resolved), files as Paths."""
    if is_url(path):
        return gdal_path(path)
    return str(path) if is_vsi(path) else Path(path)


def open_raster(path: PathLike) -> rasterio.io.DatasetReader:
    """Open ``path`` for reading, turning GDAL failures into one-line :class:`RasterError` messages.

    Args:
        path: Any file GDAL can read (GeoTIFF, PNG, JPEG, VRT, ...), a GDAL virtual path, or a URL (``https://``,
            ``s3://``, ``gs://``), opened through GDAL's network file systems with the COG settings of
            :func:`rs_deeplab.remote.paths.remote_env`.

    Raises:
        RasterError: The file does not exist or GDAL cannot read it as a raster; for a remote one, the server's
            problem (not found, access denied, no credentials, no answer: see
            :func:`rs_deeplab.remote.paths.retry_or_raise`) in one line. A remote open that fails while the server
            answers (a transfer cut short) is tried again after a pause.
    """
    if is_url(path):
        path = gdal_path(path)
    if is_vsi(path):  # a GDAL virtual path (``/vsizip//data/x.zip/a.tif``): GDAL alone can check it
        p: Any = str(path)
    else:
        p = Path(path)
        if not p.exists():
            raise RasterError(f"{p}: file not found; check the path")
    if not is_vsi(p) and p.is_dir():
        raise RasterError(f"{p}: is a directory, expected a raster file (GeoTIFF, PNG, ...)")
    remote = is_remote(p)
    attempt = 0
    while True:
        try:
            with quiet_georeferencing(), remote_env(opening=True) if reads_remote(p) else contextlib.nullcontext():
                return rasterio.open(p)
        except RasterioIOError as exc:
            problem = gdal_problem(p, str(exc)) if remote else None
            if problem:
                raise RasterError(problem) from None
            error = RasterError(f"{p}: not a raster GDAL can read ({gdal_reason(exc)}); pass a GeoTIFF, PNG or JPEG")
        if not remote:
            raise error
        retry_or_raise(p, error, attempt)  # a remote file: the server's problem, or a cut transfer opened again
        attempt += 1


def gdal_reason(exc: BaseException, limit: int = 300) -> str:
    """The most telling GDAL message of ``exc`` as one line, sentences kept whole up to ``limit`` characters.

    A generic ``Read failed. See previous exception`` gives way to its causes, where GDAL chains the details.
    """
    messages: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(messages) < 8:
        text = " ".join(str(current).split())
        if text and text not in messages:
            messages.append(text)
        current = current.__cause__ or current.__context__
    useful = [m for m in messages if "See previous exception" not in m] or messages or ["unknown GDAL error"]
    return short_message(useful[-1] if len(useful[-1]) >= 30 else useful[0], limit)  # the innermost says most


def short_message(text: str, limit: int = 300) -> str:
    """``text`` as one line of at most about ``limit`` characters, cut after a whole sentence (or word)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("; "))
    return cut[: end + 1] if end > limit // 3 else cut.rsplit(" ", 1)[0] + " ..."


class RasterReadError(RasterError):
    """A raster opened, but some of its pixels cannot be read (a truncated or corrupt file)."""


def read_error(path: PathLike, exc: BaseException, where: str = "") -> RasterReadError:
    """A one-line :class:`RasterReadError` for a GDAL read failure of ``path`` after it opened."""
    at = f" at {where}" if where else ""
    return RasterReadError(
        f"{path}: cannot be read{at} ({gdal_reason(exc)}); the file may be truncated or corrupt: "
        "copy or export it again"
    )


def write_error(path: PathLike, exc: BaseException, needed: int | None = None) -> RasterError | DiskFullError:
    """A one-line error for a failed write of ``path``: :class:`DiskFullError` for lack of space (naming the
    ``needed`` bytes where known, see :func:`rs_deeplab.cli.diskspace.out_of_space`), else :class:`RasterError`
    (folder gone, no permission, ...).
    """  # noqa: D205
    code = space_errno(exc)
    if code is not None:
        return out_of_space(path, code, needed)
    return RasterError(f"{path}: cannot be written ({gdal_reason(exc)}); check the folder and the disk")


def check_complete(src: Any, path: PathLike) -> None:
    """Refuse a local GeoTIFF whose last blocks lie beyond the end of the file (a truncated copy or download).

    Reads a few TIFF tags only (the last block of every band), so it costs nothing on a big scene.

    Raises:
        RasterError: The file is shorter than its blocks say.
    """
    if src.driver != "GTiff" or is_vsi(path) or is_url(path):
        return
    try:
        size = os.path.getsize(path)
    except OSError:
        return
    height, width = src.block_shapes[0]
    last = f"BLOCK_OFFSET_{-(-src.width // width) - 1}_{-(-src.height // height) - 1}"
    for bidx in range(1, src.count + 1) if src.interleaving != rasterio.enums.Interleaving.pixel else (1,):
        offset = src.get_tag_item(last, "TIFF", bidx=bidx)
        length = src.get_tag_item(last.replace("OFFSET", "SIZE"), "TIFF", bidx=bidx)
        if offset and length and int(offset) + int(length) > size:
            raise RasterError(
                f"{path}: is truncated ({size} bytes, its last block ends at byte "
                f"{int(offset) + int(length)}); copy or download it again"
            )


def temporary_sibling(path: PathLike) -> Path:
    """Return a unique temporary path in the same folder as ``path``, keeping its extension for GDAL."""
    p = Path(path)
    return p.with_name(f".{p.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{p.suffix}")


@contextlib.contextmanager
def atomic_output(path: PathLike, *, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Nothing is ever left half-written under the final name: on error the temporary file (and any GDAL
    side-car such as ``.aux.xml``) is removed and the exception propagates. A write that fails for lack of space
    (also one GDAL reports only to libtiff, as a GeoTIFF closes) is one :class:`DiskFullError` naming ``path``
    and the ``needed`` bytes, where known (:func:`rs_deeplab.cli.diskspace.space_checked`).

    Raises:
        InputError: The output folder does not exist.
        DiskFullError: The disk, the quota or the file-size limit stopped the write.
    """
    final = Path(path)
    if not final.parent.exists():
        raise InputError(f"{final}: output folder {final.parent} does not exist; create it first")
    tmp = temporary_sibling(final)
    try:
        with space_checked(final, needed=needed, written=tmp):
            yield tmp
        os.replace(tmp, final)
        aux = tmp.with_name(tmp.name + ".aux.xml")
        if aux.exists():
            os.replace(aux, final.with_name(final.name + ".aux.xml"))
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".aux.xml")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def geotiff_profile(
    *,
    width: int,
    height: int,
    count: int,
    dtype: str | np.dtype[Any],
    crs: Any = None,
    transform: Any = None,
    nodata: float | None = None,
    compress: str | None = "deflate",
    tiled: bool = True,
    blocksize: int = 256,
) -> dict[str, Any]:
    """Build a GeoTIFF creation profile; tiled only when the raster is at least one block in size."""
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": np.dtype(dtype).name,
        "crs": crs,
        "transform": transform if transform is not None else rasterio.transform.IDENTITY,
        "nodata": nodata,
        "BIGTIFF": "IF_SAFER",
    }
    if compress:
        profile["compress"] = compress
        if np.dtype(dtype).kind in "ui":
            profile["predictor"] = 2
    if tiled and width >= blocksize and height >= blocksize:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    if count > 1 and np.dtype(dtype) == np.uint8 and count in (3, 4):
        profile["interleave"] = "pixel"
    if count == 4 and np.dtype(dtype) == np.uint8:
        # GDAL tags the 4th band of a pixel-interleaved uint8 RGB GeoTIFF as alpha; in an RGB+NIR scene it is data,
        # and an alpha tag would make QGIS draw dark-NIR pixels transparent and rasterio report them as masked
        profile["alpha"] = "UNSPECIFIED"
    return profile


def write_geotiff(
    path: PathLike,
    array: np.ndarray,
    *,
    crs: Any = None,
    transform: Any = None,
    nodata: float | None = None,
    descriptions: Sequence[str | None] | None = None,
    colormap: Mapping[int, Sequence[int]] | None = None,
    tags: Mapping[str, str] | None = None,
    compress: str | None = "deflate",
) -> Path:
    """Write a ``(bands, H, W)`` or ``(H, W)`` array to ``path`` atomically as a GeoTIFF.

    Args:
        path: Destination file.
        array: Pixel values; a 2-D array is written as one band.
        crs: Coordinate reference system (anything rasterio accepts) or None for pixel coordinates.
        transform: Affine geotransform; identity when None.
        nodata: Nodata value recorded in the file.
        descriptions: Optional per-band descriptions.
        colormap: Optional colour table for a single-band uint8 raster, ``{value: (r, g, b[, a])}``.
        tags: Optional dataset-level metadata.
        compress: GDAL compression (``deflate``, ``lzw``, ``none`` or None).

    Returns:
        The final path.
    """
    data = array[np.newaxis] if array.ndim == 2 else array
    if data.ndim != 3:
        raise ValueError(f"expected a (bands, H, W) or (H, W) array, got shape {array.shape}")
    profile = geotiff_profile(
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress=None if compress in (None, "none") else compress,
    )
    with atomic_output(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            for i, desc in enumerate(descriptions, start=1):
                if desc:
                    dst.set_band_description(i, desc)
        if colormap is not None:
            dst.write_colormap(1, {int(k): tuple(v) for k, v in colormap.items()})
        if tags:
            dst.update_tags(**tags)
    return Path(path)
