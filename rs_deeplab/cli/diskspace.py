"""Running out of space: free-space checks before large outputs, one line for a write that fails for lack of it.

A write fails for lack of space with ``ENOSPC`` (the disk is full), ``EDQUOT`` (the quota is used up) or ``EFBIG``
(a file over the file system's largest size or the process's file-size limit, ``ulimit -f``). How the failure
reaches Python depends on the writer: Python's own file writes raise the ``OSError``; ``torch.save`` raises a
``RuntimeError`` whose context is that ``OSError``; GDAL and SQLite put the reason into a message (``No space
left on device``, ``database or disk is full``) or only say that a write failed; and a GeoTIFF can be left
truncated with no error at all (see :mod:`rs_deeplab.geo.tiff_writes`). :func:`space_checked` turns each of these
into one :class:`~rs_deeplab.cli.errors.DiskFullError` naming the output and the space it needs, and keeps libtiff's
own lines off the terminal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from rs_deeplab.cli.errors import DiskFullError, RsDeeplabError
from rs_deeplab.geo import tiff_writes

SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""``errno`` values of a write that failed for lack of space."""
SPACE_MESSAGES = {
    "no space left": errno.ENOSPC,
    "disk is full": errno.ENOSPC,
    "disk full": errno.ENOSPC,
    "free disk space available": errno.ENOSPC,
    "quota exceeded": errno.EDQUOT,
    "file too large": errno.EFBIG,
}
"""Lower-case phrases of GDAL, SQLite and libc messages that mean the same, and the ``errno`` they stand for."""
NEARLY_FULL = 1 << 20
"""A file system with less free space than this (1 MiB) is taken as full when a writer failed without a reason."""


def space_errno(exc: BaseException) -> int | None:
    """The ``errno`` when ``exc``, or an exception in its cause/context chain, is a lack of space; else None.

    Both an ``OSError`` with one of :data:`SPACE_ERRNOS` and a GDAL/SQLite message with one of
    :data:`SPACE_MESSAGES` count (a ``torch.save`` error keeps the ``OSError`` in its context).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFullError) and current.errno_code is not None:
            return current.errno_code
        if isinstance(current, OSError) and current.errno in SPACE_ERRNOS:
            return int(current.errno)
        code = message_errno(str(current))
        if code is not None:
            return code
        current = current.__cause__ or current.__context__
    return None


def message_errno(text: str) -> int | None:
    """The ``errno`` a GDAL, SQLite or libc message of lack of space stands for (:data:`SPACE_MESSAGES`), or None."""
    lower = text.lower()
    return next((code for phrase, code in SPACE_MESSAGES.items() if phrase in lower), None)


def os_space_error(exc: BaseException) -> DiskFullError | None:
    """The one-line error for an ``OSError`` of lack of space in the chain of ``exc`` that no library caught
    (naming its file where the ``OSError`` has one); None when there is none.
    """  # noqa: D205
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in SPACE_ERRNOS:
            return out_of_space(current.filename or "an output file", int(current.errno))
        current = current.__cause__ or current.__context__
    return None


def file_size_limit() -> int | None:
    """This process's largest file in bytes (``ulimit -f``), or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def nearest_folder(path: str | os.PathLike[str]) -> Path:
    """The folder ``path`` is (or would be) written in: itself if it is a folder, else the closest existing one."""
    current = Path(path).absolute()
    while not current.is_dir() and current != current.parent:
        current = current.parent
    return current


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes free for this user on the file system ``path`` is written to (None when it cannot be asked)."""
    try:
        return shutil.disk_usage(nearest_folder(path)).free
    except OSError:
        return None


def probe_errno(out: str | os.PathLike[str]) -> int | None:
    """Guess why a write that gave no reason failed (GDAL, SQLite and torch's C++ writer may not say).

    ``ENOSPC`` when the file system of ``out`` is nearly full (:data:`NEARLY_FULL`); else ``EFBIG`` when this
    process has a file-size limit (``ulimit -f``): SQLite, for one, reports a write over it as a bare I/O error and
    removes the journal that hit it, so the size of what is left tells nothing; else None.
    """
    free = free_bytes(out)
    if free is not None and free < NEARLY_FULL:
        return errno.ENOSPC
    return errno.EFBIG if file_size_limit() is not None else None


def size_text(n: float) -> str:
    """Bytes as a short size: ``16 KB``, ``95 MB``, ``1.2 GB`` (decimal units, as ``df -H`` and file managers)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{max(0, int(n))} bytes"


def _reason(code: int) -> str:
    if code == errno.EFBIG:
        limit = file_size_limit()
        where = (
            f"this process may write files of at most {size_text(limit)}, see ulimit -f"
            if limit is not None
            else ("the largest file this file system holds")
        )
        return f"file too large ({where})"
    return "no space left in the disk quota" if code == errno.EDQUOT else "no space left on the device"


def out_of_space(
    path: str | os.PathLike[str], code: int, needed: int | None = None, needed_for: str = ""
) -> DiskFullError:
    """The one-line error for a write of ``path`` that failed with ``code`` (``ENOSPC``, ``EDQUOT``, ``EFBIG``).

    It names the output, the reason, the space the output still needs (``needed`` bytes, where known; for what,
    when it is more than this file: ``needed_for``) and the space free on its file system, and says that the same
    command resumes once space is freed.
    """
    folder = nearest_folder(path)
    free = free_bytes(path)
    amounts = [f"needs about {size_text(needed)}{f' for {needed_for}' if needed_for else ''}"] if needed else []
    if free is not None:
        amounts.append(f"{size_text(free)} free in {folder}")
    room = "raise the limit" if code == errno.EFBIG and file_size_limit() is not None else "free some space"
    message = (
        f"{path}: cannot be written: {_reason(code)}{'; ' if amounts else ''}{', '.join(amounts)}; "
        f"{room} (or write elsewhere) and run the same command again to resume"
    )
    return DiskFullError(message, path=str(path), errno_code=code, needed=needed)


def check_free_space(path: str | os.PathLike[str], needed: int, what: str = "") -> None:
    """Refuse an output of about ``needed`` bytes before writing it when its file system has less free space.

    Args:
        path: The output (file or folder) about to be written.
        needed: Its estimated size in bytes (each caller documents its estimate).
        what: What the output is, e.g. ``the label raster``; starts the reason.

    Raises:
        DiskFullError: Less than ``needed`` bytes are free there.
    """
    free = free_bytes(path)
    if free is None or free >= needed:
        return
    folder = nearest_folder(path)
    raise DiskFullError(
        f"{path}: not enough free space for {what or 'this output'}: needs about {size_text(needed)}, "
        f"{size_text(free)} free in {folder}; free some space or write elsewhere",
        path=str(path),
        needed=needed,
    )


@contextlib.contextmanager
def space_checked(
    path: str | os.PathLike[str],
    *,
    needed: int | None = None,
    written: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    blocks: int | None = None,
) -> Iterator[None]:
    """Turn a write of ``path`` that fails for lack of space inside the block into one :class:`DiskFullError`.

    Covers an exception whose cause chain says so (:func:`space_errno`); a GDAL, SQLite or torch failure without a
    reason under a file-size limit or on a nearly full disk (:func:`probe_errno`); and, once the block ends, a
    GeoTIFF write that failed only in libtiff's handler or left a ``written`` GeoTIFF truncated
    (:func:`check_written`). Other failures propagate unchanged.

    Args:
        path: The output as the user knows it (named in the error).
        needed: Bytes the output still needs, where known (named in the error).
        written: The file(s) actually written (temporary or partial names; default ``path``), checked for
            truncation once the block ends.
        blocks: Check only the first this many blocks of a written GeoTIFF (the rows written so far).
    """
    files = [written] if isinstance(written, str | os.PathLike) else list(written or [path])
    with tiff_writes.listen() as tiff:
        try:
            yield
        except Exception as exc:
            if isinstance(exc, RsDeeplabError):
                raise
            code = space_errno(exc) or next((c for c, _ in tiff if c in SPACE_ERRNOS), None)
            if code is None and _from_io_library(exc):
                code = probe_errno(path)
            if code is None:
                raise
            raise out_of_space(path, code, needed) from None
    check_written(path, files, tiff, needed, blocks)


def check_written(
    path: str | os.PathLike[str],
    files: Sequence[str | os.PathLike[str]],
    tiff: Sequence[tiff_writes.TiffError] = (),
    needed: int | None = None,
    blocks: int | None = None,
) -> None:
    """Raise for a write that raised nothing but failed: errors only printed (``tiff``, see
    :func:`rs_deeplab.geo.tiff_writes.listen`), or a GeoTIFF cut short.

    A written GeoTIFF is cut short when its directory, or one of its first ``blocks`` blocks (all when None),
    lies beyond its end (:func:`rs_deeplab.geo.tiff_writes.tiff_truncated`).

    Raises:
        DiskFullError: For lack of space (libtiff's ``errno``, GDAL's words, or :func:`probe_errno`).
        OSError: Another failure (``EIO`` where nothing explains it), naming ``path``.
    """  # noqa: D205
    code, text = next(((c, t) for c, t in tiff if c in SPACE_ERRNOS), tiff[0] if tiff else (0, ""))
    if code not in SPACE_ERRNOS:
        short = [f for f in files if os.path.isfile(f) and tiff_writes.tiff_truncated(f, blocks)]
        if text or short:  # a failure without a reason (GDAL's own words, or none): ask the file system
            code = message_errno(text) or probe_errno(path) or code or errno.EIO
            text = text or f"{short[0]} is shorter than its blocks say"
    if code in SPACE_ERRNOS:
        raise out_of_space(path, code, needed)
    if text:
        raise OSError(code, f"cannot be written ({text})", str(path))


def _from_io_library(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a writer that may fail without a reason (GDAL, pyogrio, torch's C++ writer)."""
    module = type(exc).__module__ or ""
    return module.startswith(("rasterio", "pyogrio")) or (isinstance(exc, RuntimeError) and "iostream" in str(exc))
