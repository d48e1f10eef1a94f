"""Reads of remote rasters that ride out a server's hiccup and name a server that stopped answering.

GDAL retries HTTP 429/5xx answers and resets itself (:func:`rs_deeplab.remote.http.read_options`); what it does not
retry (a transfer cut off after its headers) fails the read. Then the server is asked once
(:func:`rs_deeplab.remote.paths.retry_or_raise`): when it does not answer, the job stops with that one line
(:class:`~rs_deeplab.remote.http.RemoteUnavailableError`, resumable), else the read runs again after a pause, from a
freshly opened file (GDAL forgets the cut transfer when the old one closes). Opening retries the same way
(:func:`rs_deeplab.geo.raster.open_raster`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from rs_deeplab.geo.raster import PathLike, RasterReadError
from rs_deeplab.remote.paths import is_remote, retry_or_raise

T = TypeVar("T")


def read_retrying(path: PathLike, read: Callable[[], T], reset: Callable[[], None] | None = None) -> T:
    """``read()``, repeated while it fails with a :class:`~rs_deeplab.geo.raster.RasterReadError` on a remote ``path``
    whose server answers.

    Args:
        path: The raster ``read`` reads (local paths: ``read()`` once, as it is).
        read: Reads, raising :class:`~rs_deeplab.geo.raster.RasterReadError` on failure
            (:func:`rs_deeplab.geo.raster.read_error`); it may open the file itself.
        reset: Called before each retry: close the datasets ``read`` uses, so that it opens them afresh.

    Raises:
        RemoteUnavailableError: The server did not answer (within ``RS_DEEPLAB_HTTP_TIMEOUT``), refused, or kept
            failing; the job may resume later.
        RasterReadError: The server answers and the read failed again after ``RS_DEEPLAB_HTTP_RETRIES`` retries
            (a file that is damaged on the server).
    """  # noqa: D205
    if not is_remote(path):
        return read()
    attempt = 0
    while True:
        try:
            return read()
        except RasterReadError as exc:
            retry_or_raise(str(path), exc, attempt)
        attempt += 1
        if reset is not None:
            reset()
