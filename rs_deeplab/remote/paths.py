"""Remote paths: URLs mapped to GDAL's virtual file systems, COG read settings, the server asked about a scene.

A remote scene is an ``http(s)://``, ``s3://`` or ``gs://`` URL or a GDAL network path (``/vsicurl/``, ``/vsis3/``,
nested in ``/vsizip/``...), read window by window through GDAL (never downloaded whole); :func:`stat_remote` asks
the server once for the object's size and version (ETag, Last-Modified), which both checks that the windows can be
read (found, allowed, Range requests honoured) and fingerprints the scene for resuming.

The bottom of the remote modules: :mod:`rs_deeplab.geo.raster`, :mod:`rs_deeplab.remote.stac` and
:mod:`rs_deeplab.remote.reads`
build on it, and :mod:`rs_deeplab.remote.scenes` (scene arguments, STAC Items among them) re-exports every name here.
Timeouts and retries (``RS_DEEPLAB_HTTP_*``) and the probe live in :mod:`rs_deeplab.remote.http`, S3's HeadObject in
:mod:`rs_deeplab.remote.s3`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

import rasterio

from rs_deeplab.cli.errors import RasterError
from rs_deeplab.remote.http import (
    S3_CREDENTIALS_FIX,
    RemoteStat,
    http_problem,
    http_settings,
    http_stat,
    read_options,
)

log = logging.getLogger("rs_deeplab.remote.scenes")

URL_SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/"}
"""URL scheme → GDAL virtual file system it is read through."""
REMOTE_VSI = (
    "/vsicurl/",
    "/vsicurl?",
    "/vsis3/",
    "/vsigs/",
    "/vsiaz/",
    "/vsiadls/",
    "/vsioss/",
    "/vsiswift/",
    "/vsiwebhdfs/",
    "/vsihdfs/",
)
"""GDAL file systems that read over the network (also when nested, e.g. ``/vsizip//vsicurl/...``)."""
OPEN_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing, no probing for .aux.xml/.ovr/.msk
}
"""GDAL settings while a remote scene is opened. Not for local files: ``EMPTY_DIR`` hides world files (.tfw) and
side-car overviews. ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS`` is not set: ``EMPTY_DIR`` already stops the side-car
requests, and an allow-list would refuse URLs without a file extension (signed URLs, API endpoints).
``GDAL_INGESTED_BYTES_AT_OPEN`` stays GDAL's (16 KiB): 64 KiB took a 200×200 window of the 298 KB sample COG from
23% to 40% of the file."""


def is_url(arg: str | os.PathLike[str]) -> bool:
    """Whether ``arg`` is an ``http(s)://``, ``s3://`` or ``gs://`` URL."""
    return urlsplit(str(arg)).scheme.lower() in URL_SCHEMES and "://" in str(arg)


def is_remote(arg: str | os.PathLike[str]) -> bool:
    """Whether ``arg`` is read over the network: a URL or a GDAL network path (kept as a string, never resolved)."""
    text = str(arg)
    return is_url(text) or any(prefix in text for prefix in REMOTE_VSI)


def gdal_path(arg: str | os.PathLike[str]) -> str:
    """The path GDAL opens: ``https://h/x.tif`` → ``/vsicurl/https://h/x.tif``, ``s3://b/k`` → ``/vsis3/b/k``,
    ``gs://b/k`` → ``/vsigs/b/k``; anything else unchanged.
    """  # noqa: D205
    text = str(arg)
    if not is_url(text):
        return text
    scheme, rest = text.split("://", 1)
    vsi = URL_SCHEMES[scheme.lower()]
    return vsi + text if vsi == "/vsicurl/" else vsi + rest


def source_url(path: str) -> str:
    """The URL behind a GDAL network path (the inverse of :func:`gdal_path`); other paths unchanged."""
    if path.startswith("/vsicurl/"):
        return path[len("/vsicurl/") :]
    if path.startswith("/vsicurl?"):
        match = re.search(r"[?&]url=([^&]+)", path)
        return urllib.parse.unquote(match.group(1)) if match else path
    for scheme in ("s3", "gs"):
        if path.startswith(URL_SCHEMES[scheme]):
            return f"{scheme}://{path[len(URL_SCHEMES[scheme]) :]}"
    return path


def reads_remote(path: str | os.PathLike[str]) -> bool:
    """Whether opening ``path`` reads over the network.

    True for a remote path, and for a local VRT with remote sources (a STAC Item's, :mod:`rs_deeplab.remote.stac`).
    """
    if is_remote(path):
        return True
    if not str(path).lower().endswith(".vrt"):
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return any(f">{prefix}" in head for prefix in REMOTE_VSI)


@contextlib.contextmanager
def remote_env(opening: bool = False) -> Iterator[None]:
    """GDAL settings for reading remote COGs (``opening``: also those for opening one), restored afterwards.

    Set through :class:`rasterio.Env` (GDAL configuration options, seen by reader threads too), never
    ``os.environ``. Credentials and endpoints (``AWS_S3_ENDPOINT``, ``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING``,
    ``AWS_ACCESS_KEY_ID``...) come from the environment, where GDAL reads them itself.
    """
    with rasterio.Env(**read_options(), **(OPEN_OPTIONS if opening else {})):
        yield


def stat_remote(path: str) -> RemoteStat:
    """Ask the server for a remote scene's size and version, checking that its windows can be read.

    Args:
        path: A URL or GDAL network path. ``http(s)`` objects get a one-byte Range request, ``s3`` a HeadObject
            (endpoint, credentials and addressing from the same ``AWS_*`` variables GDAL reads), ``gs`` the
            public HTTPS endpoint; other GDAL file systems are left to GDAL (no size or version).

    Raises:
        RasterError: Not found, access denied, no credentials, no Range support: one line naming the problem and
            the fix. :class:`RemoteUnavailableError` for no answer within the timeout, a refused connection, or 429/5xx
            answers after every retry.
    """
    url = source_url(gdal_path(path))
    scheme = urlsplit(url).scheme.lower() if is_url(url) else ""
    if scheme in ("http", "https"):
        return http_stat(url)
    if scheme == "s3":
        from rs_deeplab.remote.s3 import s3_stat

        return s3_stat(url)
    if scheme == "gs":
        parts = urlsplit(url)
        return http_stat(f"https://storage.googleapis.com/{parts.netloc}{parts.path}", name=url)
    return RemoteStat(path, None, None, None)


def retry_or_raise(path: str, error: RasterError, attempt: int) -> None:
    """After a failed open or read of remote ``path`` (the ``attempt``-th, from 0): return after a pause when it is
    worth trying again (the server answers), else raise.

    Raises:
        RasterError: The server's problem (:func:`server_problem`: no answer, refused, 404...), or ``error`` when
            ``RS_DEEPLAB_HTTP_RETRIES`` retries are used up (a file that is damaged on the server).
    """  # noqa: D205
    problem = server_problem(path)
    if problem is not None:
        raise problem from None
    settings = http_settings()
    if attempt >= settings.retries:
        raise error
    delay = settings.retry_delay * 2**attempt
    log.warning("%s: a transfer broke off (the server still answers); reading again in %g s", source_url(path), delay)
    log.debug("%s", error)
    time.sleep(delay)


def server_problem(path: str) -> RasterError | None:
    """Ask the server of ``path`` (after a read failed): the error to raise when it does not answer, answers 4xx or
    keeps failing, None when it answers (the failure was the transfer's: worth reading again).

    Local paths, and remote ones without a probe (``/vsiaz/``...), give None.
    """  # noqa: D205
    if not is_remote(path):
        return None
    try:
        stat_remote(path)
    except RasterError as exc:
        return exc
    return None


GDAL_PROBLEMS: Sequence[tuple[str, str]] = (
    (r"HTTP response code: ?404|does not exist in the file system|NoSuchKey|NoSuchBucket", "404"),
    (r"HTTP response code: ?40[13]|AccessDenied|Access Denied|InvalidAccessKeyId|SignatureDoesNotMatch", "403"),
    (r"AWS_SECRET_ACCESS_KEY|AWS_NO_SIGN_REQUEST|credentials", "credentials"),
    (r"Range downloading not supported", "range"),
)


def gdal_problem(path: str, message: str) -> str | None:
    """One line for a GDAL error opening a remote scene, or None when it is not about the network."""
    name = source_url(path)
    for pattern, kind in GDAL_PROBLEMS:
        if re.search(pattern, message):
            if kind == "credentials":
                return f"{name}: no credentials for the bucket; {S3_CREDENTIALS_FIX}"
            if kind == "range":
                return f"{name}: the server ignores HTTP Range requests; download the file and pass the local path"
            return http_problem(name, int(kind))
    return None
